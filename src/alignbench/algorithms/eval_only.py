"""``algo=eval_only``: evaluate a model as it is, no training.

Evaluates the base of ``model=`` (a hub model, a local ``model.path``, a GGUF file) on ``data=`` with
the configured judge. ``algo.with_sft=true`` first applies the cached SFT stage (so on the default
world it evaluates the same SFT model as ``algo=sft``).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignbench.algorithms.base import AlgorithmComponent
from alignbench.config import AlgoConfig
from alignbench.registry import register_algorithm


@dataclass
class EvalOnlyConfig(AlgoConfig):
    name: str = "eval_only"
    steps: int = 0
    batch_size: int = 1
    with_sft: bool = False


@register_algorithm("eval_only")
class EvalOnly(AlgorithmComponent):
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
