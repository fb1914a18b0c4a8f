"""The Lightning strategy behind ``trainer.strategy``.

``trainer.strategy=fsdp`` is FSDP2 (``torch.distributed.fsdp.fully_shard``), not Lightning's
``FSDPStrategy`` (FSDP1, whose flat parameters cannot hold frozen base weights and several
separately optimised adapters in one wrapper). Lightning's ``ModelParallelStrategy`` launches the
ranks (``_SubprocessScriptLauncher``, as for DDP, or an external launcher such as srun / torchrun),
builds the device mesh and leaves the module unwrapped; ``AlignmentModule.configure_model`` shards
the roles over the mesh's ``data_parallel`` dimension (``alignbench.models.sharding``). Every other
value goes to Lightning as is (``auto``, ``ddp``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from alignbench.config import TrainerConfig
from alignbench.errors import ConfigError
from alignbench.registry import ALGORITHMS, load_algorithms


class ShardedDataParallel(ModelParallelStrategy):
    """``ModelParallelStrategy`` with every rank in the data-parallel (sharding) dimension and no
    tensor parallelism; checkpoints are alignbench's own (``training.checkpoint``)."""

    def __init__(self) -> None:
        super().__init__(save_distributed_checkpoint=False)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def lightning_strategy(cfg: TrainerConfig) -> Any:
    """What ``L.Trainer(strategy=...)`` gets for ``trainer.strategy``."""
    return ShardedDataParallel() if cfg.fsdp else cfg.strategy


def check_strategy(cfg: TrainerConfig, algo: str, component: type) -> None:
    """``trainer=fsdp`` only with algorithms (``component``, the class ``algo`` runs) whose ranks make the
    same model calls every iteration (``AlgorithmComponent.fsdp_ready``): a rank that ran one forward more
    would wait for ever."""
    if cfg.fsdp and not component.fsdp_ready:
        load_algorithms()
        ready = ", ".join(name for name in ALGORITHMS.names() if ALGORITHMS.get(name).fsdp_ready)
        raise ConfigError(f"algo={algo} does not run under trainer=fsdp: its ranks may make different numbers of "
                          f"model calls per iteration (every FSDP forward is a collective); use trainer=ddp, or "
                          f"one of {ready}")
