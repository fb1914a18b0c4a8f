"""Process-wide defaults that must be set before transformers, datasets or wandb are imported.

* ``HF_HUB_OFFLINE=1``: a model or data set missing from this machine fails at once with our message
  instead of a long hub timeout. Set ``HF_HUB_OFFLINE=0`` to allow downloads.
* ``WANDB_MODE=offline``: runs are written locally; ``wandb sync`` uploads them later. Nothing here
  reads a W&B API key except wandb itself, from the environment.
* ``TOKENIZERS_PARALLELISM=false``: no fork warnings from the Rust tokenizers in data loaders.
"""

from __future__ import annotations

import os
import warnings

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_defaults() -> None:
    """Apply ``DEFAULTS`` without overriding anything the user exported, and quiet known noise."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("HF_HUB_OFFLINE") in ("0", "false"):
        os.environ["HF_DATASETS_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "0"
    import logging

    # Lightning's start-up banners (GPU available, tips) drown the run's own output
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*srun.*", ".*LeafSpec.*", ".*PossibleUserWarning.*",
                    ".*`isinstance\\(treespec, LeafSpec\\)`.*", ".*Checkpoint directory.*exists.*",
                    # a score head's output is a view (squeeze) that nothing modifies in place
                    ".*FSDP2-wrapped module \\(FSDPScoreHead\\) returned a view.*"):
        warnings.filterwarnings("ignore", message=pattern)
