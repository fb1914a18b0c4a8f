"""The algorithm contract: everything the host (``training.pipeline``, ``training.module``) calls on a component.

A component is one algorithm (or a shared stage) run by the Lightning host. In the order the host
uses them:

1. **Set-up, before the component exists** (classmethods, from the validated config): which shared
   stages it needs (``required_stages``: ``sft``, ``reward_model``, ``cost_model``), which training
   signals it learns from (``signal_kinds``: ``reward``, ``cost``, ``verdict``; the pipeline trains or
   loads their models and hands them out as ``ctx.signals``) and which of those it replaces by a model
   it loads itself (``external_stages``).
2. **Construction and roles**: ``__init__(cfg, ctx, stage_outputs)``; its model roles
   (``role_specs``: LoRA adapters or score heads on the shared base), an optional supervised stage of
   its own run on the base first (``warmup_stage``), then ``attach(roles)`` with the roles built.
3. **Training**: ``num_iterations`` iterations of ``training_step(batch, host)`` over batches of
   ``batch_size`` items of ``train_items()`` (``collate``d); each calls ``host.optimize(name, loss)``
   for the optimisers of ``optimizer_specs()`` (manual optimisation; the host logs every optimiser's
   ``optim/<name>/grad_norm`` and ``optim/<name>/lr``). After each iteration the host calls ``monitor``
   in the oracle's monitor scope. ``state_dict`` / ``load_state_dict`` carry the component's own state
   (counters, multipliers, pools, generators) through checkpoints, so a resumed run continues exactly.
4. **Evaluation** (``eval.*``): the harness queries ``responder()`` (the policy alone, or an agent
   system), adds ``eval_scorer()``'s reward and model cost per answer and ``eval_metrics(...)``'s own
   metrics, and the summary gets ``summary_metrics()``.
5. **Hosting** (class attributes): ``export_role`` names the LM role a job exports
   (``alignbench.training.export``), ``fsdp_ready`` says whether it runs under ``trainer=fsdp``
   (``training.strategy.check_strategy``).

Every method below has a default that fits an algorithm that does not need it; an algorithm overrides
only what it changes (docs/ADDING_AN_ALGORITHM.md). Metric names follow docs/METRICS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence

import torch

from alignbench.config import AlgoConfig, OptimConfig
from alignbench.models.roles import RoleSet, RoleSpec

if TYPE_CHECKING:
    from alignbench.data.schema import PromptRecord
    from alignbench.eval.harness import Responder

#: ``scorer(records, texts) -> scores``: one number per (prompt record, response), e.g. a frozen cost model
Scorer = Callable[[Sequence["PromptRecord"], Sequence[str]], Sequence[float]]
#: ``scorer(records, texts) -> (rewards, model costs)`` of evaluated answers (``eval/reward_mean`` ...)
EvalScorer = Callable[[Sequence["PromptRecord"], Sequence[str]], tuple[Sequence[float], Sequence[float]]]


class Host(Protocol):
    """What a component may ask of the Lightning module that runs it (``training.module.AlignmentModule``)."""

    #: iterations finished so far in this fit
    iteration: int

    def optimize(self, name: str, loss: torch.Tensor) -> dict[str, float]:
        """One step of optimiser ``name`` on ``loss`` (zero-grad, backward, clip, step); returns ``grad_norm``."""
        ...


@dataclass
class OptimizerSpec:
    """One optimiser of a component: its parameters, settings and how many iterations its schedule spans."""

    params: list[torch.nn.Parameter]
    optim: OptimConfig
    total_steps: int


@dataclass
class WarmupStage:
    """A component's own supervised stage, run after the shared stages and before its roles are built.

    The pipeline trains it like the SFT stage (``settings``: ``steps``, ``batch_size``, ``optim``,
    ``full_finetune``) on ``items`` (``{"prompt", "response"}`` dicts), caches it keyed by ``settings``
    and the SFT stage it continues, and makes the result the base of every role (and so the
    reference). WaltzRL uses it to show the base its feedback and revision formats.
    """

    name: str
    settings: Any
    items: list[dict[str, Any]]


@dataclass
class StageOutputs:
    """Artifacts of earlier stages a component starts from: role states keyed by stage name."""

    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class AlgorithmComponent:
    """Base class of every algorithm; register a subclass with ``@register_algorithm(name)`` (module docstring)."""

    #: the typed config of ``algo`` (a subclass of ``AlgoConfig``): every default of the algorithm
    config_class: ClassVar[type[AlgoConfig]] = AlgoConfig
    #: shared stages the algorithm starts from, unless ``required_stages`` decides from the config
    requires: ClassVar[tuple[str, ...]] = ()
    #: train every base weight instead of adapters (only the SFT stage on tiny models does this)
    full_finetune: bool = False
    #: the LM role a job exports (``alignbench.training.export``): the one that answers users;
    #: ``reference`` = the SFT model itself, None = nothing trained to export
    export_role: ClassVar[str | None] = "policy"
    #: runs under trainer=fsdp: every rank makes the same sequence of model calls per iteration
    #: whatever its share of the batch holds (every FSDP forward is a collective)
    fsdp_ready: ClassVar[bool] = False
    #: reads ``ctx.data.labelled_samples`` (data=rlaif: the SFT model's own labelled answers, e.g. for a
    #: warm-up), so the pipeline labels or loads them even when no signal stage needs pairs
    uses_labelled_answers: ClassVar[bool] = False

    def __init__(self, cfg: Any, ctx: Any, stage_outputs: StageOutputs | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.stage_outputs = stage_outputs or StageOutputs()
        self.roles: RoleSet | None = None
        #: (records, answers) of the iteration's rollout that ``monitor`` measures against the evaluation
        #: judge after the iteration (``monitor/true_*``); set in ``training_step``, consumed by ``monitor``
        self.monitored_answers: tuple[list[Any], list[str]] | None = None

    # -- set-up, from the config ---------------------------------------------------------------
    @classmethod
    def required_stages(cls, cfg: AlgoConfig) -> tuple[str, ...]:
        """Stages to load or train before this component; ``requires`` unless the config decides."""
        return cls.requires

    @classmethod
    def signal_kinds(cls, cfg: AlgoConfig) -> tuple[str, ...]:
        """The kinds of training signal the component learns from: ``reward``, ``cost``, ``verdict``.

        The pipeline trains or loads the models they come from (``signals.signal_stages``) and hands them
        out as ``ctx.signals`` (``alignbench.signals.TrainingSignals``), the only source of training
        rewards, costs and labels: the evaluation judge (``ctx.judge``) is refused in a training step.
        """
        return ()

    @classmethod
    def external_stages(cls, cfg: AlgoConfig) -> tuple[str, ...]:
        """Signal stages the config replaces by a model given by path (loaded by the component itself,
        served by ``external_scorer``); the pipeline neither trains nor loads them."""
        return ()

    # -- roles ---------------------------------------------------------------------------------
    def role_specs(self) -> list[RoleSpec]:
        """The component's model roles on the shared base (``models.roles``); ``reference`` (the base,
        adapters off) always exists."""
        return []

    def warmup_stage(self) -> WarmupStage | None:
        """A component-specific supervised stage to run on the base before the roles are built."""
        return None

    def external_scorer(self, role: str) -> Scorer | None:
        """The frozen model the component loaded itself for ``role`` (``reward_model`` / ``cost_model``, see
        ``external_stages``), or ``None``: the pipeline then serves ``ctx.signals`` from the trained stage."""
        return None

    def attach(self, roles: RoleSet) -> None:
        """Receive the built roles; load initial role states (frozen RM/CM, critics from RM/CM)."""
        self.roles = roles

    # -- training ------------------------------------------------------------------------------
    @property
    def num_iterations(self) -> int:
        """Iterations of the fit (``algo.steps`` unless the algorithm plans its own schedule)."""
        return int(self.cfg.steps)

    @property
    def batch_size(self) -> int:
        """Items per iteration (``algo.batch_size``); under DDP each rank takes its share of them."""
        return int(self.cfg.batch_size)

    def train_items(self) -> Sequence[Any]:
        """The items the data loader samples batches from (prompts, SFT examples, pairs)."""
        return []

    def collate(self, items: list[Any]) -> Any:
        """A batch of ``train_items`` as ``training_step`` takes it (default: the list itself)."""
        return items

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        """Optimiser name -> its parameters and settings; ``host.optimize(name, loss)`` steps one."""
        return {}

    def training_step(self, batch: Any, host: Host) -> dict[str, float]:
        """One algorithm iteration on ``batch``; returns its metrics (docs/METRICS.md)."""
        raise NotImplementedError

    def progress_label(self) -> str:
        """Where the component's own schedule is, for the progress bar (``stage 1/2``); "" for none."""
        return ""

    def monitor(self) -> dict[str, float]:
        """After each iteration, measure what it trained on against the evaluation oracle (logged only).

        The host calls it in the oracle's ``monitor`` scope (``alignbench.utils.oracle``), the only place
        besides the final evaluation where ``ctx.judge`` may be consulted; nothing it computes may feed a
        loss. The base audits the iteration's training signals (``ctx.signals``) and scores
        ``monitored_answers`` with the judge (``monitor/true_*``); subclasses add their own ground-truth
        diagnostics (and call ``super().monitor()``).
        """
        signals = self.ctx.signals
        metrics = signals.flush_audit() if signals is not None else {}
        if self.monitored_answers and self.ctx.judge is not None:
            metrics.update(true_rates(self.ctx.judge, *self.monitored_answers))
            self.monitored_answers = None
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state beyond weights and optimisers (counters, multipliers, pools, generators)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a resumed run continues exactly)."""
        del state

    # -- evaluation ----------------------------------------------------------------------------
    def responder(self) -> Responder:
        """What the evaluation harness queries; default: the trained policy role, or the base."""
        from alignbench.eval.harness import PolicyResponder

        role = "policy" if self.roles is not None and "policy" in self.roles.specs else "reference"
        return PolicyResponder(self.ctx, self.roles, role=role)

    def eval_scorer(self) -> EvalScorer | None:
        """Rewards and model costs of the evaluated answers (``eval/reward_mean``, ``eval/model_cost_mean``),
        or ``None`` for an algorithm without frozen reward and cost models."""
        return None

    def eval_metrics(self, records: Sequence[Any], responses: Sequence[Sequence[str]],
                     infos: Sequence[Sequence[dict[str, Any]]]) -> dict[str, float]:
        """Metrics of the evaluated answers beyond the harness's own (an agent system's trigger rates), from
        the records, each record's answers and the responder's per-answer ``infos``."""
        return {}

    def summary_metrics(self) -> dict[str, float]:
        """Metrics to fold into the final summary (the stages' held-out accuracies by default)."""
        return dict(self.stage_outputs.metrics)


def true_rates(judge, records: Sequence[Any], texts: Sequence[str]) -> dict[str, float]:
    """``monitor/true_unsafe_rate`` (harmful + jailbreak) and ``monitor/true_over_refusal_rate`` (benign +
    borderline) of answers by the evaluation ``judge``: what the training signals are a proxy of."""
    verdicts = judge.judge_batch(list(records), list(texts))
    out = {}
    for name, kinds, field_name in (("true_unsafe_rate", ("harmful", "jailbreak"), "unsafe"),
                                    ("true_over_refusal_rate", ("benign", "borderline"), "overrefuse")):
        rows = [getattr(v, field_name) for r, v in zip(records, verdicts) if r.kind in kinds]
        if rows:
            out[f"monitor/{name}"] = sum(map(float, rows)) / len(rows)
    return out
