"""RePO: rectified policy optimisation (ALGORITHMS.md §2).

Safe RLHF constrains the *average* cost E[C] <= d, which a policy can satisfy while some prompts stay
unsafe ("safety interference"). RePO constrains every prompt, C(x, y) <= d, through the rectified
penalty {C - d}+ = max(0, C - d):

    max_theta min_{lambda >= 0}  E[R(x, y) - lambda {C(x, y) - d}+] - beta KL

Rectified policy gradient: only responses that violate the constraint carry the cost advantage,

    u_i = 1[C(x_i, y_i) > d],   A = (A_R - lambda u A_C) / (1 + lambda)

(the 1 + lambda normalisation is PPO-Lag's; unverified for RePO: ``algo.normalize_by_lambda``).
The multiplier is driven by the rectified violation mean_i {C_i - d}+ (``algo.lagrange.mode=rectified``,
the documented default), loss_lambda = -(mean{C - d}+ - s) lambda. With slack s = 0 this is never
negative, so lambda can only grow while some response violates and stays put once none does; the
default s = 0.05 (``algo.lagrange.rectified_slack``) lets it fall once violations are rare
(unverified which the paper uses; both are offered). ``algo.lagrange.mode=average`` keeps Safe RLHF's
update and only rectifies the gradient. Critics, GAE, KL and PTX are Safe RLHF's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignbench.algorithms.ppo import LagrangeConfig, PPOConfig, SafeRLHF
from alignbench.registry import register_algorithm


@dataclass
class RePOConfig(PPOConfig):
    name: str = "repo"
    rectified: bool = True
    lagrange: LagrangeConfig = field(default_factory=lambda: LagrangeConfig(mode="rectified", rectified_slack=0.05))


@register_algorithm("repo")
class RePO(SafeRLHF):
    config_class = RePOConfig

    def violation_mask(self, costs: torch.Tensor) -> torch.Tensor | None:
        if not self.cfg.rectified:
            return None
        return (costs > self.cfg.lagrange.threshold).float()
