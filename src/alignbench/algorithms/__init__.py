"""Algorithm components; importing this package registers every one of them by name."""

from alignbench.algorithms import ppo, repo, sft  # noqa: F401
