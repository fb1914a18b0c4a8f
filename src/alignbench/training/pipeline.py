"""One job from a validated config to its summary: data, base model, stages, training, evaluation.

    build_context -> stages (cached) -> component + roles -> Lightning fit -> evaluation -> summary

``run_job`` never writes the summary itself (``alignbench.cli`` does, also for failed jobs); it
returns the metrics and perf figures that go into it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from alignbench.algorithms.base import AlgorithmComponent, StageOutputs
from alignbench.algorithms.label_model import LabelModelStage
from alignbench.algorithms.preference import PreferenceStage
from alignbench.algorithms.sft import SFTStage
from alignbench.models.text import TextLimits
from alignbench.config import RunConfig
from alignbench.data.datamodule import ComponentDataModule, DataBundle, build_data
from alignbench.eval.harness import evaluate
from alignbench.models.compute import METER, Counts
from alignbench.models.loading import load_base
from alignbench.models.roles import RoleSet, RoleSpec
from alignbench.registry import JUDGES, algorithm_class
from alignbench.training.sink import MetricsSink
from alignbench.training.stages import STAGE_ORDER, cached_stage, stage_key
from alignbench.training.strategy import check_strategy, lightning_strategy
from alignbench.utils.distributed import is_rank_zero, is_sharded, rank, world_size
from alignbench.utils.memory import heap_tuned, peak_rss_mb, return_freed_memory, set_release
from alignbench.signals import TrainingSignals, attach_signal_roles, has_rater_labels, signal_stages
from alignbench.utils.oracle import (
    GuardedJudge, oracle_allowed_in_training, oracle_calls, oracle_scope, reset_oracle_calls,
)


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
    #: where training rewards, costs and labels come from (``alignbench.signals``); set before the RL fit
    signals: Any = None

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


def build_context(rc: RunConfig, sink: MetricsSink | None, keep_model: bool = True) -> RunContext:
    """The job's shared context; ``keep_model``: as in ``load_base`` (False: the only job in this process)."""
    import alignbench.eval.judges  # noqa: F401 - registers every judge

    data = build_data(rc.data, cache_dir=rc.cache_dir)
    base, tokenizer = load_base(rc.model, vocabulary=data.vocabulary, seed=rc.stages.seed, keep_model=keep_model)
    device = resolve_device(rc)
    limits = TextLimits.for_model(rc.model, base)
    # the evaluation judge behind the fairness guard: a training step that consults it fails (utils.oracle)
    return RunContext(rc=rc, tokenizer=tokenizer, base=base, data=data,
                      judge=GuardedJudge(build_judge(rc, data, limits)), device=device, sink=sink, limits=limits)


def _trainer(rc: RunConfig, root: Path, max_steps_hint: int, callbacks: list | None = None) -> L.Trainer:
    from alignbench.training.callbacks import StageProgressBar

    return L.Trainer(
        accelerator=rc.trainer.accelerator, devices=rc.trainer.devices, num_nodes=rc.trainer.num_nodes,
        strategy=lightning_strategy(rc.trainer), precision=rc.trainer.precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(root), callbacks=[StageProgressBar(), *(callbacks or [])],
        deterministic=rc.trainer.deterministic, log_every_n_steps=1,
        # ComponentDataModule splits each global batch across DDP ranks itself (same prompts as one process)
        use_distributed_sampler=False,
    )


def fit_component(component: AlgorithmComponent, roles: RoleSet, ctx: RunContext, stage: str, seed: int) -> None:
    """Run ``component.num_iterations`` iterations of ``component`` under Lightning.

    Checkpoints go to ``training.checkpoint.checkpoint_dir(output_dir, stage)``: every
    ``trainer.checkpoint_every`` iterations, at the end of the RL fit, and on a preemption signal or
    Ctrl-C (then ``Preempted`` / ``Interrupted`` is raised on every rank). With ``resume=auto`` the fit
    continues from the newest intact checkpoint there (a finished one just restores the weights),
    starting the data at the first unconsumed batch; each DDP rank takes its own part of the state.
    """
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
    data_fingerprint = ctx.data.fingerprint() if ctx.data is not None else None
    manager = ckpt.CheckpointManager(directory)
    callback = CheckpointCallback(manager, rc.trainer.checkpoint_every, final=stage == "rl",
                                  extra={"fingerprint": fingerprint, "data_fingerprint": data_fingerprint})
    trainer = _trainer(rc, Path(rc.output_dir), total, callbacks=[callback])
    state, path = ckpt.find_resume_state(directory, resume=rc.resume, stage=stage, fingerprint=fingerprint,
                                         num_iterations=None, data_fingerprint=data_fingerprint)
    module = AlignmentModule(component, roles, ctx.sink, stage, max_nan_steps=rc.max_nan_steps, data_seed=seed)
    if state is not None:
        ckpt.check_world_size(state, path, trainer.world_size)
        module.load_resume_state(state, rank=rank())  # before the fit: the launcher's environment says
        # after the component's own state is back: its schedule length may depend on it
        ckpt.check_compatible(state, path, stage=stage, fingerprint=fingerprint,
                              num_iterations=component.num_iterations)
        module.restore_sink(state, str(Path(rc.output_dir) / "history.jsonl"))
        total = component.num_iterations
        module.last_checkpoint = str(path)
        if is_rank_zero():
            print(f"alignbench: resuming stage '{stage}' from {path} (iteration {module.iteration}/{total})",
                  flush=True)
        if module.iteration >= total:
            roles.to(ctx.device)
            return
    elif rc.resume and ctx.sink is not None:  # nothing to resume from: drop rows an earlier attempt logged
        ckpt.rewind_history(Path(rc.output_dir) / "history.jsonl", stage, -1)
    manager.last_saved = path
    with PREEMPTION.deferred():
        trainer.fit(module, datamodule=ComponentDataModule(component, seed, start_iteration=module.iteration))
        if callback.agree_on_stop():  # a signal after the last iteration (its checkpoint is written)
            raise callback.preempted(module)
    roles.to(ctx.device)
    roles.zero_grad(set_to_none=True)  # the last update's gradients: nothing reads them after the fit


def _train_stage(stage: str, ctx: RunContext, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    settings = ctx.rc.stages.sft if stage == "sft" else getattr(ctx.rc.stages, stage)
    if stage == "sft":
        component = SFTStage(settings, ctx)
    elif stage == "label_model":
        component = LabelModelStage(settings, ctx, template=ctx.rc.signals.label_template)
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
    """Remove a stage's LoRA layers (and FSDP sharding) from the shared base so the next stage starts
    from a clean base."""
    from alignbench.models.sharding import unshard_roles

    unshard_roles(roles)
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


def run_stages(ctx: RunContext, required: tuple[str, ...], until: str | None = None, *,
               labelled_answers: bool = False) -> StageOutputs:
    """Load or train the stages ``required`` needs (SFT first), in dependency order.

    Under data=rlaif the SFT model's labelled answers are attached right after SFT when a later stage
    trains on their pairs, or when ``labelled_answers`` (the component reads them itself).
    """
    outputs = StageOutputs()
    needed = [s for s in STAGE_ORDER if s in required or (s == "sft" and required)]
    prior: list[str] = []
    fingerprint = ctx.data.fingerprint()
    for stage in needed:
        settings = None
        if stage == "label_model":  # its template decides what it learns as much as its own settings
            settings = {**OmegaConf.to_container(ctx.rc.raw.stages.label_model, resolve=True),
                        "template": ctx.rc.signals.label_template}
        key = stage_key(stage, ctx.rc.raw, prior, fingerprint, settings=settings)
        weights, metrics, cached = cached_stage(ctx.rc.cache_dir, key,
                                                lambda s=stage: _train_stage(s, ctx, ctx.rc.stages.seed),
                                                reuse=ctx.rc.stages.reuse)
        _drop_stage_checkpoints(ctx, stage)
        # the stage's model, optimiser and trainer are gone (gc: the trainer holds reference cycles): their
        # pages go back to the OS here, before the next stage or the RL loop (utils.memory)
        gc.collect()
        return_freed_memory()
        metrics = {**metrics, f"stages/{stage}/cached": float(cached)}
        if stage == "sft":
            apply_sft(ctx, weights)
            prior.append(key)
            if ctx.data.rlaif is not None and until != "sft" and (len(needed) > 1 or labelled_answers):
                from alignbench.training.rlaif import attach_rlaif_pairs

                rlaif_key, rlaif_metrics = attach_rlaif_pairs(ctx, key)
                prior.append(rlaif_key)  # the later stages train on these pairs
                outputs.metrics.update(rlaif_metrics)
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


def signal_models_for(rc: RunConfig, cls, data: DataBundle) -> tuple[str, ...]:
    """The stages the algorithm's training signals are learned from (none under ``signals=oracle``)."""
    return tuple(s for s in signal_stages(cls.signal_kinds(rc.algo), rc.signals.source,
                                          rater_labels=has_rater_labels(data.preference_train)
                                          or data.rlaif is not None)  # data=rlaif: labelled after SFT
                 if s not in cls.external_stages(rc.algo))


def _judge_needs_cost_stage(rc: RunConfig, cls) -> bool:
    """``eval.judge=cost_model`` scores with the trained cost-model stage (unless the algorithm loads its own)."""
    return rc.eval.enabled and rc.eval.judge == "cost_model" and "cost_model" not in cls.external_stages(rc.algo)


def stages_for_job(rc: RunConfig, cls, data: DataBundle) -> tuple[str, ...]:
    """Every stage a whole job needs: the algorithm's, its training signals' and the judge's."""
    required = cls.required_stages(rc.algo)
    if _judge_needs_cost_stage(rc, cls):
        required += ("sft", "cost_model")  # the judge needs the cost model
    signal_models = signal_models_for(rc, cls, data)
    if signal_models:
        required += ("sft",) + signal_models
    return tuple(dict.fromkeys(required))


def prepare_component(ctx: RunContext, cls, outputs: StageOutputs) -> tuple[AlgorithmComponent, RoleSet, dict]:
    """The component on its roles, ready to fit: warm-up stage run, signal models and judge bound.

    Sets ``ctx.signals``. Returns ``(component, roles, warm-up metrics)``.
    """
    rc = ctx.rc
    signal_models = signal_models_for(rc, cls, ctx.data)
    component = cls(rc.algo, ctx, outputs)
    # signal models are adapters of the SFT base: a warm-up that changes the base gives them their own
    signal_specs, own_signal_roles = attach_signal_roles(signal_models, component.role_specs(), ctx.base, rc.model,
                                                         own_base=component.warmup_stage() is not None)
    warmup_metrics = run_warmup_stage(ctx, component)
    # seed before the adapters are initialised: a job's result must not depend on what ran before
    # it in the same process (multirun jobs share one process)
    L.seed_everything(rc.seed, workers=True, verbose=False)
    specs = component.role_specs() + signal_specs
    judge_role = _judge_needs_cost_stage(rc, cls) and "cost_model" not in {r.name for r in specs}
    if judge_role:  # a frozen cost-model adapter for the judge beside the component's roles
        specs = specs + [RoleSpec("cost_model", "score", trainable=False)]
    roles = RoleSet(ctx.base, specs, rc.model, full_finetune=component.full_finetune)
    if not rc.trainer.fsdp:  # FSDP moves each rank's shards to its device when it shards them (signal roles too)
        roles.to(ctx.device)
    component.attach(roles)
    if judge_role:
        roles.load_role_state_dict("cost_model", outputs.states["cost_model"])
    ctx.signals = build_training_signals(ctx, component, roles, outputs, signal_specs, own_signal_roles,
                                         signal_models)
    if rc.eval.judge == "cost_model":  # the judge scores with the run's cost model (eval.judges.CostModelJudge)
        from alignbench.rl.experience import score_texts

        ctx.judge.bind(component.external_scorer("cost_model") or (lambda records, texts: score_texts(
            ctx, roles, "cost_model", [r.prompt for r in records], texts).tolist()))
    return component, roles, warmup_metrics


def build_training_signals(ctx: RunContext, component: AlgorithmComponent, roles: RoleSet, outputs: StageOutputs,
                           signal_specs: list[RoleSpec], own_signal_roles, signal_models: tuple[str, ...]
                           ) -> TrainingSignals:
    """``ctx.signals``: the signal models loaded onto the job's roles (or their own), see ``alignbench.signals``."""
    rc = ctx.rc
    signal_roles = roles
    if own_signal_roles is not None:
        signal_roles = own_signal_roles()
        signal_roles.to(ctx.device)
        signal_roles.eval()
        for stage in signal_models:
            signal_roles.load_role_state_dict(stage, outputs.states[stage])
    for spec in signal_specs:  # frozen signal roles added beside the component's own
        roles.load_role_state_dict(spec.name, outputs.states[spec.name])
    signals = TrainingSignals(source=rc.signals.source, ctx=ctx, roles=signal_roles, oracle=ctx.judge,
                              template=rc.signals.label_template,
                              audit_per_iteration=rc.signals.audit_per_iteration,
                              label_model="label_model" in signal_models)
    for role in ("reward_model", "cost_model"):  # algo.<role>.path: the component's external models
        scorer = component.external_scorer(role)
        if scorer is not None:
            signals.external[role] = scorer
    return signals


def run_job(rc: RunConfig, sink: MetricsSink | None, keep_model: bool = True) -> dict[str, Any]:
    """Run one job; returns ``{"metrics", "perf", "per_kind", "per_category", ...}`` for the summary.

    ``keep_model``: keep the loaded base model for the next job in this process (``load_base``); the
    command line passes False outside a multirun, so a single job holds one copy of it."""
    started, cpu_started = time.perf_counter(), time.process_time()
    METER.reset()  # multirun jobs share the process: count this job's passes only
    if rc.trainer.num_threads:
        torch.set_num_threads(rc.trainer.num_threads)
    set_release(rc.trainer.release_memory, rc.trainer.release_memory_in_steps)  # utils.memory's heap trims, this job's
    reset_oracle_calls()  # this job's consultations of the evaluation oracle, per scope (utils.oracle)
    cls = algorithm_class(rc.raw.algo)
    check_strategy(rc.trainer, rc.algo.name, cls)  # before anything loads: trainer=fsdp refuses some algorithms
    ctx = build_context(rc, sink, keep_model)
    from alignbench.training.checkpoint import config_fingerprint, preflight_resume

    preflight_resume(rc.output_dir, resume=rc.resume, fingerprint=config_fingerprint(rc.raw),
                     data_fingerprint=ctx.data.fingerprint())  # refuse a wrong resume before stages train
    until = None if rc.stage in ("all", "rl") else rc.stage
    required = tuple(STAGE_ORDER[: STAGE_ORDER.index(until) + 1]) if until else stages_for_job(rc, cls, ctx.data)
    outputs = run_stages(ctx, required, until, labelled_answers=until is None and cls.uses_labelled_answers)
    result: dict[str, Any] = {"metrics": dict(outputs.metrics), "skipped_rows": ctx.data.skipped,
                              "split": ctx.data.split}
    if until is None:
        component, roles, warmup_metrics = prepare_component(ctx, cls, outputs)
        result["metrics"].update(warmup_metrics)
        with oracle_allowed_in_training(rc.signals.source == "oracle"), METER.phase("rl"):
            fit_component(component, roles, ctx, "rl", rc.seed)
        # the fit's Trainer and optimiser states are garbage now (the Trainer holds reference cycles): their
        # pages go back to the OS before evaluation allocates, as after each warm-up stage (utils.memory)
        gc.collect()
        return_freed_memory()
        if sink is not None:
            result["metrics"].update({k: v for k, v in sink.last.items()
                                      if k.startswith(("train/", "losses/", "optim/", "signals/"))})
        held_out: dict[str, Any] = {}
        # DDP: rank 0 evaluates, the other ranks are done; FSDP: every rank takes part in every forward
        if rc.eval.enabled and (is_rank_zero() or is_sharded(roles)):
            roles.eval()
            with oracle_scope("eval"), METER.phase("eval"):
                evaluation = evaluate(component.responder(), ctx.data.eval_prompts, ctx.judge, rc.eval,
                                      seed=rc.seed + 1000, scorer=component.eval_scorer(),
                                      extra_metrics=component.eval_metrics)
            with METER.phase("eval"):  # the signal models score the evaluation's answers: not training compute
                held_out = ctx.signals.held_out_agreement(*evaluation.judged)
            result["metrics"].update(evaluation.metrics)
            if is_rank_zero():
                evaluation.write_samples(Path(rc.output_dir) / "eval_samples.jsonl")
            result["metrics"].update(component.summary_metrics())
            result["per_kind"], result["per_category"] = evaluation.per_kind, evaluation.per_category
            result["prompt_cost_histogram"] = evaluation.prompt_cost_histogram
            result["eval_seconds"] = evaluation.seconds
            result["eval_table"] = (evaluation.table_columns, evaluation.table_rows)
            if sink is not None:
                sink.log(evaluation.metrics, stage="eval", iteration=0)
                sink.log_table("eval/samples", evaluation.table_columns, evaluation.table_rows)
                sink.summary_update(evaluation.metrics)
        from alignbench.training.export import export_job

        with METER.phase("export"):  # not training compute (models.compute)
            export_job(ctx, component, roles, result["metrics"])  # <run dir>/export/ (models/export.py)
        result["training_signals"] = {**ctx.signals.summary(held_out), "oracle_calls": oracle_calls()}
        if sink is not None:
            sink.summary_update({"training_signals/source": rc.signals.source,
                                 "training_signals/upper_bound": float(rc.signals.source == "oracle")})
    ctx.limits.warn_totals()
    result["truncations"] = ctx.limits.report()
    result["perf"] = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started,
                      "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
                      "heap_tuned": float(heap_tuned()),
                      **compute_perf(world_size())}
    from alignbench.training.module import startup_seconds

    if startup_seconds() is not None:  # nothing trained (e.g. every stage cached, algo=sft): no figure
        result["perf"]["startup_s"] = startup_seconds()
    result["compute"] = METER.report(world_size())
    if sink is not None:  # the W&B run summary: its training compute next to its evaluation
        sink.summary_update({"perf/flops": result["perf"]["flops"]})
    return result


def compute_perf(ranks: int = 1) -> dict[str, float]:
    """summary.json's compute figures from the meter (``alignbench.models.compute``): training totals
    over every stage, warm-up and role (cached stages at their recorded cost), and the evaluation's."""
    training = METER.total(training=True, world_size=ranks)
    evaluation = METER.phases.get("eval", Counts())  # run once per job, never per rank (ONCE_PER_JOB)
    return {"gen_tokens": int(training.gen_tokens), "train_tokens": int(training.train_tokens),
            "fwd_tokens": int(training.fwd_tokens), "flops": training.flops,
            "eval_gen_tokens": int(evaluation.gen_tokens), "eval_flops": evaluation.flops}
