"""One job from a validated config to its summary: data, base model, stages, training, evaluation.

    build_context -> stages (cached) -> component + roles -> Lightning fit -> evaluation -> summary

``run_job`` never writes the summary itself (``alignbench.cli`` does, also for failed jobs); it
returns the metrics and perf figures that go into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from alignbench.algorithms.base import AlgorithmComponent, StageOutputs
from alignbench.algorithms.preference import PreferenceStage
from alignbench.algorithms.sft import SFTStage
from alignbench.algorithms.text import TextLimits
from alignbench.config import RunConfig
from alignbench.data.datamodule import ComponentDataModule, DataBundle, build_data
from alignbench.eval.harness import evaluate
from alignbench.models.loading import load_base
from alignbench.models.roles import RoleSet, RoleSpec
from alignbench.registry import ALGORITHMS, JUDGES
from alignbench.training.sink import MetricsSink
from alignbench.training.stages import STAGE_ORDER, cached_stage, stage_key
from alignbench.utils.distributed import is_rank_zero


@dataclass
class RunContext:
    """Everything components share within one job."""

    rc: RunConfig
    tokenizer: Any
    base: Any
    data: DataBundle
    judge: Any
    device: torch.device
    sink: MetricsSink | None
    limits: TextLimits = field(default_factory=TextLimits)  # model.max_prompt_length / max_length, cuts counted
    counters: dict[str, float] = field(default_factory=lambda: {"gen_tokens": 0, "train_tokens": 0})

    @property
    def model_cfg(self):
        return self.rc.model

    @property
    def eval_cfg(self):
        return self.rc.eval

    def decode(self, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
        """Response texts without special tokens (EOS, padding)."""
        texts = []
        for ids, mask in zip(response_ids.tolist(), response_mask.tolist()):
            kept = [t for t, m in zip(ids, mask) if m and t not in self.tokenizer.all_special_ids]
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=True).strip())
        return texts


def resolve_device(rc: RunConfig) -> torch.device:
    if rc.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def build_judge(rc: RunConfig, data: DataBundle, limits: TextLimits | None = None):
    """The ``eval.judge`` backend; the world judge needs the world, others take keyword args."""
    try:
        cls = JUDGES.get(rc.eval.judge)
    except KeyError as exc:
        from alignbench.errors import ConfigError

        raise ConfigError(f"config value 'eval.judge': {exc.args[0]}") from None
    if rc.eval.judge == "world":
        if data.world is None:
            from alignbench.errors import ConfigError

            raise ConfigError(f"eval.judge=world needs data=world (data is '{data.name}'); "
                              f"use eval.judge=refusal (or auto) for other data")
        return cls(world=data.world)
    if rc.eval.judge == "classifier":
        from dataclasses import asdict

        from alignbench.errors import ConfigError

        if not rc.eval.classifier.path:
            raise ConfigError("eval.judge=classifier needs eval.classifier.path=<model id or folder>")
        return cls(**asdict(rc.eval.classifier), device=resolve_device(rc), limits=limits)
    return cls()


def build_context(rc: RunConfig, sink: MetricsSink | None) -> RunContext:
    import alignbench.algorithms  # noqa: F401 - registers every algorithm
    import alignbench.eval.judges  # noqa: F401 - registers every judge

    data = build_data(rc.data, cache_dir=rc.cache_dir)
    base, tokenizer = load_base(rc.model, vocabulary=data.vocabulary, seed=rc.stages.seed)
    device = resolve_device(rc)
    limits = TextLimits.for_model(rc.model, base)
    return RunContext(rc=rc, tokenizer=tokenizer, base=base, data=data, judge=build_judge(rc, data, limits),
                      device=device, sink=sink, limits=limits)


def _trainer(rc: RunConfig, root: Path, max_steps_hint: int, callbacks: list | None = None) -> L.Trainer:
    from alignbench.training.callbacks import StageProgressBar

    return L.Trainer(
        accelerator=rc.trainer.accelerator, devices=rc.trainer.devices, num_nodes=rc.trainer.num_nodes,
        strategy=rc.trainer.strategy, precision=rc.trainer.precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(root), callbacks=[StageProgressBar(), *(callbacks or [])],
        deterministic=rc.trainer.deterministic, log_every_n_steps=1,
        # ComponentDataModule splits each global batch across DDP ranks itself (same prompts as one process)
        use_distributed_sampler=False,
    )


def fit_component(component: AlgorithmComponent, roles: RoleSet, ctx: RunContext, stage: str, seed: int) -> None:
    """Run ``component.num_iterations`` iterations of ``component`` under Lightning.

    Checkpoints go to ``training.checkpoint.checkpoint_dir(output_dir, stage)``: every
    ``trainer.checkpoint_every`` iterations, at the end of the RL fit, and on SIGTERM/SIGUSR1 (then
    ``Preempted`` is raised). With ``resume=true`` the fit continues from the newest checkpoint there
    (a finished one just restores the weights), starting the data at the first unconsumed batch.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from alignbench.training import checkpoint as ckpt
    from alignbench.training.callbacks import PREEMPTION, CheckpointCallback
    from alignbench.training.module import AlignmentModule

    total = component.num_iterations
    if total <= 0:
        return
    rc = ctx.rc
    L.seed_everything(seed, workers=True, verbose=False)
    directory = ckpt.checkpoint_dir(rc.output_dir, stage)
    fingerprint = ckpt.config_fingerprint(rc.raw)
    state, path = ckpt.find_resume_state(directory, resume=rc.resume, stage=stage, fingerprint=fingerprint,
                                         num_iterations=None)
    module = AlignmentModule(component, roles, ctx.sink, stage, max_nan_steps=rc.max_nan_steps, data_seed=seed)
    if state is not None:
        module.load_resume_state(state)
        # after the component's own state is back: its schedule length may depend on it
        ckpt.check_compatible(state, path, stage=stage, fingerprint=fingerprint,
                              num_iterations=component.num_iterations)
        module.restore_sink(state, str(Path(rc.output_dir) / "history.jsonl"))
        total = component.num_iterations
        module.last_checkpoint = str(path)
        print(f"alignbench: resuming stage '{stage}' from {path} (iteration {module.iteration}/{total})", flush=True)
        if module.iteration >= total:
            roles.to(ctx.device)
            return
    elif rc.resume and ctx.sink is not None:  # nothing to resume from: drop rows an earlier attempt logged
        ckpt.rewind_history(Path(rc.output_dir) / "history.jsonl", stage, -1)
    manager = ckpt.CheckpointManager(directory)
    manager.last_saved = path
    callback = CheckpointCallback(manager, rc.trainer.checkpoint_every, final=stage == "rl",
                                  extra={"fingerprint": fingerprint})
    trainer = _trainer(rc, Path(rc.output_dir), total, callbacks=[callback])
    with PREEMPTION.deferred():
        try:
            trainer.fit(module, datamodule=ComponentDataModule(component, seed, start_iteration=module.iteration))
        except SIGTERMException:
            # Lightning saw the signal at an iteration end after our callback had run: save here
            if not PREEMPTION.requested:
                raise
            if trainer.is_global_zero and not module.last_iteration_faulty and module.iteration > module.saved_iteration:
                callback.save(module)
            raise callback.preempted(module) from None
        if PREEMPTION.requested:  # the signal came after the last iteration (its checkpoint is written)
            raise callback.preempted(module)
    roles.to(ctx.device)


def _train_stage(stage: str, ctx: RunContext, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    settings = ctx.rc.stages.sft if stage == "sft" else getattr(ctx.rc.stages, stage)
    if stage == "sft":
        component = SFTStage(settings, ctx)
    else:
        component = PreferenceStage(settings, ctx, kind=stage)
    L.seed_everything(seed, workers=True, verbose=False)
    roles = RoleSet(ctx.base, component.role_specs(), ctx.model_cfg, full_finetune=component.full_finetune)
    component.attach(roles)
    started = time.perf_counter()
    fit_component(component, roles, ctx, stage, seed)
    metrics: dict[str, Any] = {f"stages/{stage}/wall_s": time.perf_counter() - started}
    if stage == "sft":
        weights = roles.merged_base_state_dict() if component.full_finetune else roles.role_state_dict("policy")
        if ctx.sink is not None and "sft/loss" in ctx.sink.last:
            metrics["stages/sft/final_loss"] = ctx.sink.last["sft/loss"]
    else:
        roles.eval()
        metrics.update(component.evaluate_heldout())
        weights = roles.role_state_dict(stage)
        if ctx.sink is not None:
            ctx.sink.log(metrics, stage=stage, iteration=component.num_iterations)
    _unwrap_roles(roles, ctx)
    return weights, metrics


def _unwrap_roles(roles: RoleSet, ctx: RunContext) -> None:
    """Remove a stage's LoRA layers from the shared base so the next stage starts from a clean base."""
    if roles.peft is not None:
        ctx.base = roles.peft.unload()


def apply_sft(ctx: RunContext, weights: dict[str, torch.Tensor]) -> None:
    """Make the SFT model the base of every later role (full weights, or a merged LoRA adapter)."""
    if any(k.startswith("adapter.") for k in weights):
        roles = RoleSet(ctx.base, [RoleSpec("policy")], ctx.model_cfg)
        roles.load_role_state_dict("policy", weights)
        ctx.base = roles.peft.merge_and_unload()
    else:
        ctx.base.load_state_dict(weights)
    ctx.base.requires_grad_(False)


def _drop_stage_checkpoints(ctx: RunContext, stage: str) -> None:
    """A shared stage's checkpoints are obsolete once the stage is in the cache (its durable copy)."""
    from alignbench.training.checkpoint import CheckpointManager, checkpoint_dir

    CheckpointManager(checkpoint_dir(ctx.rc.output_dir, stage)).remove_all()


def run_stages(ctx: RunContext, required: tuple[str, ...], until: str | None = None) -> StageOutputs:
    """Load or train the stages ``required`` needs (SFT first), in dependency order."""
    outputs = StageOutputs()
    needed = [s for s in STAGE_ORDER if s in required or (s == "sft" and required)]
    prior: list[str] = []
    fingerprint = ctx.data.fingerprint()
    for stage in needed:
        key = stage_key(stage, ctx.rc.raw, prior, fingerprint)
        weights, metrics, cached = cached_stage(ctx.rc.cache_dir, key,
                                                lambda s=stage: _train_stage(s, ctx, ctx.rc.stages.seed),
                                                reuse=ctx.rc.stages.reuse)
        _drop_stage_checkpoints(ctx, stage)
        metrics = {**metrics, f"stages/{stage}/cached": float(cached)}
        if stage == "sft":
            apply_sft(ctx, weights)
            prior.append(key)
        else:
            outputs.states[stage] = weights
        outputs.metrics.update(metrics)
        if until == stage:
            break
    return outputs


def run_warmup_stage(ctx: RunContext, component: AlgorithmComponent) -> dict[str, Any]:
    """Train (or load) ``component.warmup_stage()`` on the SFT base and make it the new base."""
    warmup = component.warmup_stage()
    if warmup is None:
        return {}
    settings = dict(asdict(warmup.settings) if is_dataclass(warmup.settings) else warmup.settings)
    # the stage's own examples are part of what determines its weights (as the data fingerprint is for SFT)
    settings["items_sha"] = hashlib.sha256(json.dumps(warmup.items, sort_keys=True, default=str).encode()).hexdigest()
    fingerprint = ctx.data.fingerprint()
    key = stage_key(warmup.name, ctx.rc.raw, [stage_key("sft", ctx.rc.raw, [], fingerprint)], fingerprint,
                    settings=settings)

    def train() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        stage = SFTStage(warmup.settings, ctx, items=warmup.items, metric_prefix=warmup.name)
        L.seed_everything(ctx.rc.stages.seed, workers=True, verbose=False)
        roles = RoleSet(ctx.base, stage.role_specs(), ctx.model_cfg, full_finetune=stage.full_finetune)
        stage.attach(roles)
        started = time.perf_counter()
        fit_component(stage, roles, ctx, warmup.name, ctx.rc.stages.seed)
        metrics: dict[str, Any] = {f"stages/{warmup.name}/wall_s": time.perf_counter() - started}
        if ctx.sink is not None and f"{warmup.name}/loss" in ctx.sink.last:
            metrics[f"stages/{warmup.name}/final_loss"] = ctx.sink.last[f"{warmup.name}/loss"]
        weights = roles.merged_base_state_dict() if stage.full_finetune else roles.role_state_dict("policy")
        _unwrap_roles(roles, ctx)
        return weights, metrics

    weights, metrics, cached = cached_stage(ctx.rc.cache_dir, key, train, reuse=ctx.rc.stages.reuse)
    _drop_stage_checkpoints(ctx, warmup.name)
    apply_sft(ctx, weights)
    return {**metrics, f"stages/{warmup.name}/cached": float(cached)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_job(rc: RunConfig, sink: MetricsSink | None) -> dict[str, Any]:
    """Run one job; returns ``{"metrics", "perf", "per_kind", "per_category", ...}`` for the summary."""
    started = time.perf_counter()
    if rc.trainer.num_threads:
        torch.set_num_threads(rc.trainer.num_threads)
    ctx = build_context(rc, sink)
    cls = ALGORITHMS.get(rc.algo.name)
    until = None if rc.stage in ("all", "rl") else rc.stage
    required = tuple(STAGE_ORDER[: STAGE_ORDER.index(until) + 1]) if until else cls.required_stages(rc.algo)
    external_cost = getattr(getattr(rc.algo, "cost_model", None), "path", None)  # algo.cost_model.path=
    if until is None and rc.eval.enabled and rc.eval.judge == "cost_model" and not external_cost:
        required = tuple(dict.fromkeys(required + ("sft", "cost_model")))  # the judge needs the cost model
    outputs = run_stages(ctx, required, until)
    result: dict[str, Any] = {"metrics": dict(outputs.metrics), "skipped_rows": ctx.data.skipped}
    if until is None:
        component = cls(rc.algo, ctx, outputs)
        result["metrics"].update(run_warmup_stage(ctx, component))
        # seed before the adapters are initialised: a job's result must not depend on what ran before
        # it in the same process (multirun jobs share one process)
        L.seed_everything(rc.seed, workers=True, verbose=False)
        specs = component.role_specs()
        judge_role = (rc.eval.enabled and rc.eval.judge == "cost_model" and not external_cost
                      and "cost_model" not in {r.name for r in specs})
        if judge_role:  # a frozen cost-model adapter for the judge beside the component's roles
            specs = specs + [RoleSpec("cost_model", "score", trainable=False)]
        roles = RoleSet(ctx.base, specs, rc.model, full_finetune=component.full_finetune)
        roles.to(ctx.device)
        component.attach(roles)
        if judge_role:
            roles.load_role_state_dict("cost_model", outputs.states["cost_model"])
        if hasattr(ctx.judge, "bind"):
            from alignbench.rl.experience import score_texts

            ctx.judge.bind(component.external_scorer("cost_model") or (lambda records, texts: score_texts(
                ctx, roles, "cost_model", [r.prompt for r in records], texts).tolist()))
        fit_component(component, roles, ctx, "rl", rc.seed)
        if sink is not None:
            result["metrics"].update({k: v for k, v in sink.last.items() if k.startswith(("train/", "losses/"))})
        if rc.eval.enabled and is_rank_zero():  # DDP: rank 0 evaluates, the other ranks are done
            roles.eval()
            evaluation = evaluate(component.responder(), ctx.data.eval_prompts, ctx.judge, rc.eval,
                                  seed=rc.seed + 1000, scorer=getattr(component, "eval_scorer", lambda: None)(),
                                  extra_metrics=getattr(component, "eval_extra_metrics", None))
            result["metrics"].update(evaluation.metrics)
            evaluation.write_samples(Path(rc.output_dir) / "eval_samples.jsonl")
            result["metrics"].update(component.eval_extras())
            result["per_kind"], result["per_category"] = evaluation.per_kind, evaluation.per_category
            result["prompt_cost_histogram"] = evaluation.prompt_cost_histogram
            result["eval_seconds"] = evaluation.seconds
            ctx.counters["gen_tokens"] += evaluation.generated_tokens
            result["eval_table"] = (evaluation.table_columns, evaluation.table_rows)
            if sink is not None:
                sink.log(evaluation.metrics, stage="eval", iteration=0)
                sink.log_table("eval/samples", evaluation.table_columns, evaluation.table_rows)
                sink.summary_update(evaluation.metrics)
    ctx.limits.warn_totals()
    result["truncations"] = ctx.limits.report()
    result["perf"] = {"wall_s": time.perf_counter() - started, "gen_tokens": int(ctx.counters["gen_tokens"]),
                      "train_tokens": int(ctx.counters["train_tokens"]), "peak_rss_mb": peak_rss_mb()}
    return result
