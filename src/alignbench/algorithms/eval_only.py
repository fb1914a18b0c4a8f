"""``algo=eval_only``: evaluate a model as it is, no training.

Evaluates the base of ``model=`` (a hub model, a local ``model.path``, a GGUF file) on ``data=`` with
the configured judge. ``algo.with_sft=true`` first applies the cached SFT stage (so on the default
world it evaluates the same SFT model as ``algo=sft``).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignbench.algorithms.base import AlgorithmComponent
from alignbench.config import AlgoConfig
from alignbench.config_fields import at_least, param
from alignbench.registry import register_algorithm


@dataclass
class EvalOnlyConfig(AlgoConfig):
    """Evaluate ``model=`` as it is (module docstring)."""

    steps: int = param(0, "none: nothing is trained", at_least(0))
    batch_size: int = param(1, "unused (nothing is trained)", at_least(1))
    with_sft: bool = param(False, "first apply the cached SFT stage (the model algo=sft evaluates)")


@register_algorithm("eval_only")
class EvalOnly(AlgorithmComponent):
    """No training: the harness evaluates the base (or the SFT model)."""

    config_class = EvalOnlyConfig
    requires = ()
    export_role = None  # trains nothing
    fsdp_ready = True  # (evaluation only, in one process)

    @classmethod
    def required_stages(cls, cfg) -> tuple[str, ...]:
        return ("sft",) if cfg.with_sft else ()

    @property
    def num_iterations(self) -> int:
        return 0
