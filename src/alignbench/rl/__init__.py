"""The RL core shared by every algorithm: rollouts, advantages, losses, reward shaping, lambda, the update.

Tensors are ``[B, T]`` over response tokens (right-padded) with a 0/1 ``mask``; costs follow the
Safe RLHF sign convention (C > 0 unsafe). See ``docs/ALGORITHMS.md`` section 1.

``rollout`` (decoding) and ``logprobs`` (scoring) are the plain paths, the model's own forward; the CPU
speed paths (``fused_llama``'s fused decode and no-grad scoring, ``packed``'s padding-free scoring) sit
behind one seam, ``speed``, which each plain path asks once.
"""

from alignbench.rl.advantages import (
    combine_lagrangian,
    discounted_returns,
    gae,
    grpo_advantages,
    reinforce_pp_advantages,
)
from alignbench.rl.lagrange import LagrangeMultiplier
from alignbench.rl.logprobs import sequence_logprobs
from alignbench.rl.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
)
from alignbench.rl.rollout import (
    Rollout,
    generate_rollout,
    left_pad_batch,
    position_ids_from_mask,
    truncate_after_eos,
)
from alignbench.rl.shaping import last_token_index, shape_token_rewards
from alignbench.rl.update import (
    PolicyUpdateConfig,
    ShapedRewardConfig,
    clipped_surrogate,
    policy_update,
    reinforce_pp_of_parts,
)

__all__ = [
    "LagrangeMultiplier",
    "PolicyUpdateConfig",
    "ShapedRewardConfig",
    "Rollout",
    "clipped_policy_loss",
    "clipped_surrogate",
    "clipped_value_loss",
    "combine_lagrangian",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "generate_rollout",
    "grpo_advantages",
    "kl_penalty",
    "last_token_index",
    "left_pad_batch",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_update",
    "position_ids_from_mask",
    "reinforce_pp_advantages",
    "reinforce_pp_of_parts",
    "sequence_logprobs",
    "shape_token_rewards",
    "truncate_after_eos",
]
