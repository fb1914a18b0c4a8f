"""The algorithm component interface the Lightning host runs, and the pieces all components share.

A component declares (1) the pipeline stages it needs before it starts (``requires``: ``sft``,
``reward_model``, ``cost_model``), (2) its model roles (``role_specs``), (3) its optimisers
(``optimizer_specs``: name -> parameters + ``OptimConfig``) and (4) one ``training_step`` per algorithm
iteration that calls ``host.optimize(name, loss)`` as often as it needs (manual optimisation). It owns
its own counters and state (``state_dict``) so a checkpoint resumes it exactly, and it says how it is
evaluated (``responder``: the policy alone, or an agent system).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence

import torch

from alignbench.config import AlgoConfig, OptimConfig
from alignbench.models.roles import RoleSet, RoleSpec


class Host(Protocol):
    """What a component may ask of the Lightning module that runs it."""

    iteration: int

    def optimize(self, name: str, loss: torch.Tensor) -> dict[str, float]: ...


@dataclass
class OptimizerSpec:
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
    """Base class; subclasses are registered with ``@register_algorithm(name)``."""

    config_class: ClassVar[type[AlgoConfig]] = AlgoConfig
    requires: ClassVar[tuple[str, ...]] = ()
    #: train every base weight instead of adapters (only the SFT stage on tiny models does this)
    full_finetune: bool = False
    #: the LM role a job exports (``alignbench.training.export``): the one that answers users;
    #: ``reference`` = the SFT model itself, None = nothing trained to export
    export_role: ClassVar[str | None] = "policy"
    #: runs under trainer=fsdp: every rank makes the same sequence of model calls per iteration
    #: whatever its share of the batch holds (every FSDP forward is a collective)
    fsdp_ready: ClassVar[bool] = False

    def __init__(self, cfg: Any, ctx: Any, stage_outputs: StageOutputs | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.stage_outputs = stage_outputs or StageOutputs()
        self.roles: RoleSet | None = None

    # -- set-up ------------------------------------------------------------------------------
    @classmethod
    def required_stages(cls, cfg) -> tuple[str, ...]:
        """Stages to load or train before this component; ``requires`` unless the config decides."""
        return cls.requires

    @classmethod
    def signal_kinds(cls, cfg) -> tuple[str, ...]:
        """The kinds of training signal the component learns from: ``reward``, ``cost``, ``verdict``.

        The pipeline trains or loads the models they come from (``signals.signal_stages``) and hands them
        out as ``ctx.signals`` (``alignbench.signals.TrainingSignals``), the only source of training
        rewards, costs and labels: the evaluation judge (``ctx.judge``) is refused in a training step.
        """
        return ()

    @classmethod
    def external_stages(cls, cfg) -> tuple[str, ...]:
        """Signal stages the config replaces by a model given by path (loaded by the component itself)."""
        return ()

    def role_specs(self) -> list[RoleSpec]:
        return []

    def warmup_stage(self) -> WarmupStage | None:
        """A component-specific supervised stage to run on the base before the roles are built."""
        return None

    def external_scorer(self, role: str):
        """``scorer(records, texts) -> scores`` of a frozen model the component loaded itself, or ``None``."""
        return None

    def attach(self, roles: RoleSet) -> None:
        """Receive the built roles; load initial role states (frozen RM/CM, critics from RM/CM)."""
        self.roles = roles

    @property
    def num_iterations(self) -> int:
        return int(self.cfg.steps)

    @property
    def batch_size(self) -> int:
        return int(self.cfg.batch_size)

    def train_items(self) -> Sequence[Any]:
        """The items the data loader samples batches from (prompts, SFT examples, pairs)."""
        return []

    def collate(self, items: list[Any]) -> Any:
        return items

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {}

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: Any, host: Host) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state beyond weights and optimisers (counters, multipliers, pools)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    # -- evaluation ----------------------------------------------------------------------------
    def responder(self):
        """What the evaluation harness queries; default: the trained policy role, or the base."""
        from alignbench.eval.harness import PolicyResponder

        role = "policy" if self.roles is not None and "policy" in self.roles.specs else "reference"
        return PolicyResponder(self.ctx, self.roles, role=role)

    def monitor(self) -> dict[str, float]:
        """After each iteration, measure what it trained on against the evaluation oracle (logged only).

        The host calls it in the oracle's ``monitor`` scope (``alignbench.utils.oracle``), the only place
        besides the final evaluation where ``ctx.judge`` may be consulted; nothing it computes may feed a
        loss. The base audits the iteration's training signals (``ctx.signals``); subclasses add their
        own ground-truth diagnostics (and call ``super().monitor()``).
        """
        signals = getattr(self.ctx, "signals", None)
        metrics = signals.flush_audit() if signals is not None else {}
        answered = getattr(self, "monitored_answers", None)  # (records, texts) a subclass kept from its step
        if answered and self.ctx.judge is not None:
            metrics.update(true_rates(self.ctx.judge, *answered))
            self.monitored_answers = None
        return metrics

    def eval_extras(self) -> dict[str, float]:
        """Extra metrics to fold into the final summary (e.g. reward-model accuracy)."""
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
