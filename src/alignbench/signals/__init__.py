"""Where every algorithm's training signals come from (``conf/signals/``): learned models, or the oracle.

The fair-comparison rule: the evaluation oracle scores evaluation only; every algorithm learns from
the same information (the annotator data and models learned from it). ``signals=learned`` (default)
builds those models as pipeline stages (reward, cost and label models, cached and shared by every
job) and hands them to the algorithms as ``ctx.signals`` (``sources.TrainingSignals``). ``signals=oracle``
hands out the oracle's verdicts instead: a labelled upper bound. The guard in ``utils.oracle`` makes
any training-time consultation of the oracle under ``learned`` an error, and every job reports its
signals' source, use and agreement with the oracle in ``summary.json["training_signals"]``.

An algorithm says which kinds of signal it learns from with ``AlgorithmComponent.signal_kinds``
(``reward``, ``cost``, ``verdict``); ``signal_stages`` maps them to the stages to train or load, and
``attach_signal_roles`` puts those models on the job's roles.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from alignbench.signals.sources import (
    SIGNAL_ROLE_KIND, SOURCES, STAGES_FOR, SignalJudge, TrainingSignals, label_verdict, learned_verdict,
    oracle_reward,
)

__all__ = ["SOURCES", "SignalJudge", "TrainingSignals", "attach_signal_roles", "label_verdict", "learned_verdict",
           "oracle_reward", "signal_stages", "has_rater_labels"]


def has_rater_labels(preference_rows: Iterable[dict[str, Any]]) -> bool:
    """Whether the pairs carry per-response rater labels (a label model can be trained)."""
    return any(row.get("response_0_label") is not None for row in preference_rows)


def signal_stages(kinds: Iterable[str], source: str, *, rater_labels: bool) -> tuple[str, ...]:
    """The stages ``kinds`` of signal are learned from (none under ``oracle``)."""
    if source == "oracle":
        return ()
    stages: list[str] = []
    for kind in kinds:
        stages += [s for s in STAGES_FOR[kind] if s != "label_model" or rater_labels]
    return tuple(dict.fromkeys(stages))


def attach_signal_roles(stages: tuple[str, ...], component_specs, base, model_cfg, *, own_base: bool):
    """``(extra specs for the component's roles, build_own)`` for the signal ``stages``.

    Signal models are LoRA adapters trained on the SFT base. When the component's base stays the SFT
    model they become frozen roles beside the component's own (``extra specs``; a component that already
    declares one, as PPO does its reward and cost models, keeps it). When a component's warm-up turns
    the base into another model (WaltzRL), they get a ``RoleSet`` of their own on a copy of the SFT base
    taken before the warm-up (``build_own()``), since an adapter only means what it learned on its base.
    """
    from alignbench.models.roles import RoleSet, RoleSpec

    declared = {spec.name for spec in component_specs}
    specs = [RoleSpec(stage, SIGNAL_ROLE_KIND[stage], trainable=False) for stage in stages if stage not in declared]
    if not own_base or not stages:
        return specs, None
    sft_base = copy.deepcopy(base)
    own = [RoleSpec(stage, SIGNAL_ROLE_KIND[stage], trainable=False) for stage in stages]
    return [], lambda: RoleSet(sft_base, own, model_cfg)
