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
for GPUs) with its defaults otherwise — gradient checkpointing on — and again with it off. The two
run interleaved in one process: after each TRL step (a callback) one alignbench iteration runs, so
every TRL iteration has an alignbench iteration next to it in time and load changes (this machine
is shared) hit both alike; TRL's first step and alignbench's first iteration are warm-ups. Reported:
medians of each side, ``ratio`` = alignbench median / TRL median, and the median of the per-pair
ratios (the more robust figure on a busy machine).

The PPO-Lag part runs ``algorithms/ppo.py``'s ``SafeRLHF.training_step`` directly (six LoRA roles on
the same base; untrained score heads) on the same prompts × group as one batch and reports its
``timing/generation``, ``timing/scoring``, ``timing/train`` and tokens/s.

    python benchmarks/rl_step.py --compare trl [--prompts 8 --group 4 --new-tokens 64 --beta 0.04]

Last stdout line: JSON (see ``main``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

TEMPLATE = "USER: {prompt} ASSISTANT:"


# ----------------------------------------------------------------------------- the shared workload
def build_workload(args, folder: Path):
    """Save a config-built Llama and its tokenizer to ``folder``; return (tokenizer, prompts, params_m)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignbench.data.world import SafetyWorld
    from alignbench.models.tiny import build_word_tokenizer

    world = SafetyWorld()
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
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts = [record.prompt for record in world.prompts("train")[: args.prompts]]
    return tokenizer, prompts, sum(p.numel() for p in model.parameters()) / 1e6


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
def iteration_flops(cfg, batch: int, prompt_width: int, steps: int, train_factor: float) -> dict[str, float]:
    """Analytic matmul FLOPs (2 per multiply-add) of one GRPO iteration, padded positions included.

    Per token: 2 * (linear weights of all layers) + attention 4 * layers * hidden * keys; the LM
    head (2 * vocab * hidden) only where logits are needed (one position per decode step; the
    response positions when scoring). Training = ``train_factor`` x a forward (3: full, 2: LoRA).
    """
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    linear = layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
    head = vocab * d
    width = prompt_width + steps

    def forward(tokens_per_row: int, keys_from: int, head_positions: int) -> float:
        attention = sum(4 * layers * d * (keys_from + i + 1) for i in range(tokens_per_row))
        return batch * (2 * linear * tokens_per_row + attention + 2 * head * head_positions)

    prefill = forward(prompt_width, 0, 1)
    decode = sum(forward(1, prompt_width + i, 1) for i in range(max(0, steps - 1)))
    score = forward(width, 0, steps + 1)
    return {"generation": prefill + decode, "reference": score, "train": train_factor * score}


# ----------------------------------------------------------------------------- alignbench GRPO
class AlignbenchGRPO:
    """alignbench's RL core on the workload: roles, one optimiser, one iteration per ``step()``."""

    def __init__(self, args, folder: Path, tokenizer, prompts: list[str]) -> None:
        from alignbench.models.text import TextLimits
        from alignbench.config import GenerationConfig, ModelConfig
        from alignbench.models.roles import RoleSet, RoleSpec
        from alignbench.training.module import adamw

        self.args, self.tokenizer = args, tokenizer
        self.model_cfg = ModelConfig(name="bench", source="hf", prompt_template=TEMPLATE,
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
        from alignbench.models.text import encode_prompts
        from alignbench.rl.advantages import grpo_advantages
        from alignbench.rl.experience import Experience, actor_loss, policy_logprobs
        from alignbench.rl.rollout import generate_rollout

        args, ctx, roles = self.args, self.ctx, self.roles
        started = time.perf_counter()
        # == rl.experience.collect(..., old_logprobs=False), timed piece by piece
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
        loss, _ = actor_loss(roles, "policy", exp, advantages, clip_eps=0.2, kl_loss_coef=args.beta,
                             kl_estimator="k3", per_sequence=False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        done = time.perf_counter()
        self.last = {"generation": generated - started, "reference": scored - generated, "train": done - scored,
                     "prompt_width": rollout.response_start, "steps": rollout.response_ids.shape[1],
                     "tokens": rollout.num_generated_tokens}
        self.history.append(self.last)
        return done - started


# ----------------------------------------------------------------------------- TRL GRPO, paired
def trl_paired(args, folder: Path, tokenizer, prompts: list[str], gradient_checkpointing: bool,
               ours: "AlignbenchGRPO") -> tuple[list[float], list[float]]:
    """Run TRL's GRPOTrainer for ``args.reps + 1`` steps and one alignbench iteration after each of
    the first ``args.reps``: returns (TRL seconds, alignbench seconds), pair i adjacent in time.

    TRL's first step is its warm-up; TRL step k >= 2 is timed from the end of the alignbench
    iteration that ran after step k - 1 to the end of step k (``on_step_end``).
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    trl_times: list[float] = []
    our_times: list[float] = []
    resumed: list[float] = []

    class Interleave(TrainerCallback):
        def on_step_end(self, cb_args, state, control, **kwargs):
            ended = time.perf_counter()
            if resumed:
                trl_times.append(ended - resumed[-1])
            if state.global_step <= args.reps:
                our_times.append(ours.step())
            resumed.append(time.perf_counter())

    def reward(prompts, completions, **kwargs):
        return [reward_of(text) for text in completions]

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, report_to=[], bf16=False, seed=0,
            per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
            max_completion_length=args.new_tokens, beta=args.beta, max_steps=args.reps + 1,
            learning_rate=1e-6, logging_steps=10**6, save_strategy="no", disable_tqdm=True,
            gradient_checkpointing=gradient_checkpointing, temperature=1.0,
        )
        peft_config = None
        if args.mode == "lora":
            from peft import LoraConfig as PeftLoraConfig

            lora = lora_settings(args)
            peft_config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                         target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
        model = load_model(folder)  # config._name_or_path = folder: TRL rebuilds its reference from it
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config,
                              train_dataset=Dataset.from_dict({"prompt": [TEMPLATE.format(prompt=p) for p in prompts]}),
                              processing_class=tokenizer, callbacks=[Interleave()], peft_config=peft_config)
        torch.set_num_threads(args.threads)
        trainer.train()
    return trl_times, our_times


# ----------------------------------------------------------------------------- PPO-Lag
def ppo_lag_timings(args, folder: Path, tokenizer, prompts: list[str]) -> dict[str, float]:
    """Median timing metrics of ``SafeRLHF.training_step`` on the same prompts × group."""
    from alignbench.algorithms.base import StageOutputs
    from alignbench.algorithms.ppo import SafeRLHF
    from alignbench.models.text import TextLimits
    from alignbench.config import GenerationConfig, ModelConfig
    from alignbench.data.world import SafetyWorld
    from alignbench.models.roles import RoleSet
    from alignbench.signals import TrainingSignals
    from alignbench.training.module import adamw

    model_cfg = ModelConfig(name="bench", source="hf", prompt_template=TEMPLATE, adapters=True, lora=lora_settings(args))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=["trl", "none"], default="none")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--engine", default="auto", help="alignbench rollout engine: auto (fused on CPU) | fused | lean | hf")
    parser.add_argument("--reps", type=int, default=3, help="timed iterations per TRL run (each paired with one of ours)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (TRL, TRL no-GC) runs")
    parser.add_argument("--ppo-reps", type=int, default=3, help="timed PPO-Lag iterations (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    args = parser.parse_args()
    if args.beta <= 0 and args.compare == "trl":
        parser.error("--beta must be > 0 so that both sides compute reference log-probs")
    torch.set_num_threads(args.threads)
    load_before = load_average()

    with tempfile.TemporaryDirectory(prefix="alignbench-rl-step-") as tmp:
        folder = Path(tmp) / "model"
        tokenizer, prompts, params_m = build_workload(args, folder)
        ours = AlignbenchGRPO(args, folder, tokenizer, prompts)
        ours.step()  # warm-up
        times = {"alignbench": [], "trl": [], "trl_nogc": []}
        paired = {"trl": [], "trl_nogc": []}  # alignbench / TRL of iterations adjacent in time
        for _ in range(args.rounds):
            if args.compare == "trl":
                for key, checkpointing in (("trl", True), ("trl_nogc", False)):
                    theirs, mine = trl_paired(args, folder, tokenizer, prompts, checkpointing, ours)
                    torch.set_num_threads(args.threads)
                    times[key] += theirs
                    times["alignbench"] += mine
                    paired[key] += [a / b for a, b in zip(mine, theirs)]
            else:
                for _ in range(args.reps):
                    times["alignbench"].append(ours.step())
        phases = ours.history[1:]  # without the warm-up
        ppo = ppo_lag_timings(args, folder, tokenizer, prompts) if args.ppo_reps else {}
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(folder)

    median = {k: (statistics.median(v) if v else None) for k, v in times.items()}
    phase = {k: statistics.median(p[k] for p in phases) for k in ("generation", "reference", "train")}
    shape = phases[-1]
    flops = iteration_flops(model_config, args.prompts * args.group, shape["prompt_width"], shape["steps"],
                            3.0 if args.mode == "full" else 2.0)
    total_flops = sum(flops.values())
    ours_s = median["alignbench"]

    def rounded(x, digits=4):
        """Four significant digits: toy workloads take ~10 ms, where round(x, 3) would skew the ratio."""
        return None if x is None else float(f"{x:.{digits}g}")

    import transformers

    result = {
        "alignbench_s_per_iter": rounded(ours_s),
        "trl_s_per_iter": rounded(median["trl"]),
        "trl_nogc_s_per_iter": rounded(median["trl_nogc"]),
        "ratio": rounded(ours_s / median["trl"]) if median["trl"] else None,
        "ratio_vs_trl_nogc": rounded(ours_s / median["trl_nogc"]) if median["trl_nogc"] else None,
        "ratio_paired_median": rounded(statistics.median(paired["trl"])) if paired["trl"] else None,
        "ratio_vs_trl_nogc_paired_median": rounded(statistics.median(paired["trl_nogc"])) if paired["trl_nogc"] else None,
        "alignbench_gflops_per_s": rounded(total_flops / 1e9 / ours_s),
        "alignbench_gflop_per_iter": rounded(total_flops / 1e9),
        "alignbench_phases_s": {k: rounded(v) for k, v in phase.items()},
        "alignbench_phase_gflop": {k: rounded(v / 1e9) for k, v in flops.items()},
        "alignbench_times_s": [rounded(t) for t in times["alignbench"]],
        "trl_times_s": [rounded(t) for t in times["trl"]],
        "trl_nogc_times_s": [rounded(t) for t in times["trl_nogc"]],
        "ppo_lag": ppo,
        "model_params_m": round(params_m, 2), "prompts": args.prompts, "group": args.group,
        "new_tokens": args.new_tokens, "beta": args.beta, "mode": args.mode, "engine": args.engine,
        "generated_tokens_last": shape["tokens"], "threads": args.threads, "rounds": args.rounds, "reps": args.reps,
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
