"""Algorithm components; importing this package registers every one of them by name."""

from alignbench.algorithms import eval_only, ppo, repo, sft  # noqa: F401
from alignbench.algorithms import triplay  # noqa: F401
from alignbench.algorithms import safeguard, waltzrl  # noqa: F401
