"""The built-in verifiable safety world: a small template language whose every text can be judged exactly.

Entry point: ``SafetyWorld(WorldConfig(...))``. See ``generator`` for splits and data products,
``judge`` for the ground truth, ``annotators`` for preference/feedback/evaluator labels and
``templates`` for the vocabulary. The ground-truth function is ``alignbench.data.world.judge.judge``
(not re-exported here, where the name would hide the ``judge`` module).
"""

from alignbench.data.world.annotators import parse_feedback
from alignbench.data.world.generator import WORLD_VERSION, SafetyWorld, WorldConfig, world_text_embedding
from alignbench.data.world.judge import reference_verdict
from alignbench.data.world.templates import (
    CHAT_TEMPLATE,
    HARM_CATEGORIES,
    JAILBREAK_WRAPPERS,
    RESPONSE_KINDS,
    RESPONSE_KINDS_FOR,
    world_vocabulary,
)

__all__ = [
    "CHAT_TEMPLATE", "HARM_CATEGORIES", "JAILBREAK_WRAPPERS", "RESPONSE_KINDS", "RESPONSE_KINDS_FOR",
    "SafetyWorld", "WORLD_VERSION", "WorldConfig", "parse_feedback", "reference_verdict",
    "world_text_embedding", "world_vocabulary",
]
