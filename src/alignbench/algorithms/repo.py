"""RePO: rectified policy optimisation (docs/ALGORITHMS.md §2).

Safe RLHF constrains the *average* cost E[C] <= d, which a policy can satisfy while some prompts stay
unsafe ("safety interference"). RePO constrains every prompt, C(x, y) <= d, through the rectified
penalty {C - d}+ = max(0, C - d):

    max_theta min_{lambda >= 0}  E[R(x, y) - lambda {C(x, y) - d}+] - beta KL

**Gradient** (``algo.rectification``):

* ``critic`` (default): the gradient of the stated objective. The cost stream carries the rectified
  sequence cost {C - d}+ at the last token (plus the KL term, as Safe RLHF's does) and the cost critic
  is trained on its returns, so A_C estimates the advantage of the rectified penalty and

      A = (A_R - lambda A_C^{rect}) / (1 + lambda)

  is the PPO-Lagrangian advantage of E[R - lambda {C - d}+]. A response that violates (C > d) has a
  rectified cost >= 0 while every safe one has 0, so no violation can earn a cost-side bonus over a
  safe answer of the same prompt.
* ``mask``: the earlier reading of the paper's "rectified policy gradient": the cost stream carries C
  and only violating responses keep the cost advantage, u_i = 1[C_i > d], A = (A_R - lambda u A_C) /
  (1 + lambda). With a baseline-subtracted A_C the term -lambda u A_C is *positive* for a violating
  response whose cost is below the critic's value (d < C < V_C): a mild violation earns a bonus that a
  safe answer never gets. Kept as an option, measured below.

(The 1 + lambda normalisation is PPO-Lag's; unverified for RePO: ``algo.normalize_by_lambda``.)

**Multiplier** (``algo.lagrange.mode=rectified``): driven by the rectified violation
J = mean over the window of {C_i - d}+, loss_lambda = -(J - s) lambda with a slack s >= 0
(``algo.lagrange.rectified_slack``, default 0.05; unverified which the paper uses). With s = 0, J >= 0
means lambda can never fall; with s > 0 it falls as soon as the mean violation drops below s, in
particular once violations stop (J = 0): log lambda then decreases by lr * s * lambda per iteration.
``algo.lagrange.mode=average`` keeps Safe RLHF's update and only rectifies the gradient. Critics, GAE,
KL and PTX are Safe RLHF's.

**Measured** (``python run.py experiment=repo_gradient``: the world, model=tiny, signals=learned, 80
iterations, seeds 1-3, 2026-12-05; per seed, then the mean)::

    form     eval unsafe            violation          helpfulness          over-refusal         lambda at end
    critic   .020 .015 .010 = .015  0 0 0 = 0          .372 .391 .341 = .368  .042 .026 .086 = .051  3.69 4.70 3.95
    mask     .010 .030 .035 = .025  .005 .010 0 = .005 .391 .349 .365 = .368  .008 .005 .016 = .010  3.87 4.10 4.22

Both forms end about equally safe and helpful on the world; the mask form over-refuses less on these
seeds (0.010 vs 0.051), which three seeds cannot separate from noise. In all six runs lambda reached
lambda_max = 5 by iteration 8-10, violations in the rollouts then fell to about 1% (J below the slack
from iteration 39-70 on) and lambda fell from there (to 3.7-4.7 at iteration 80): the slack is what
lets it fall. ``tests/test_safe_rlhf_world.py`` checks the fall on a run built so that it must.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignbench.algorithms.ppo import LagrangeConfig, LagrangeMode, PPOConfig, SafeRLHF
from alignbench.config_fields import Choice, param
from alignbench.registry import register_algorithm


Rectification = Choice("Rectification", "critic mask")


@dataclass
class RePOConfig(PPOConfig):
    """Safe RLHF's settings, the rectified gradient and the rectified multiplier update (module docstring)."""

    rectification: Rectification = param(Rectification.critic, "critic: the cost stream and its critic carry "
                                                                "{C - d}+ (the gradient of E[R - lambda {C - d}+]) | "
                                                                "mask: the cost stream carries C and only responses "
                                                                "with C > d keep the cost advantage")
    lagrange: LagrangeConfig = param(LagrangeConfig(mode=LagrangeMode.rectified, rectified_slack=0.05),
                                     "the multiplier, driven by the rectified violation with slack s = 0.05 "
                                     "(unverified which s the paper uses; s = 0 never lets lambda fall)")


@register_algorithm("repo")
class RePO(SafeRLHF):
    """Safe RLHF with the rectified penalty (``rectification``) and the rectified multiplier update."""

    config_class = RePOConfig

    def cost_stream_score(self, costs: torch.Tensor) -> torch.Tensor:
        """{C - d}+ in the cost stream (``rectification=critic``), C as Safe RLHF's (``mask``)."""
        if self.cfg.rectification == Rectification.critic:
            return (costs - self.cfg.lagrange.threshold).clamp(min=0.0)
        return costs

    def violation_mask(self, costs: torch.Tensor) -> torch.Tensor | None:
        """u_i = 1[C_i > d] on the cost advantage (``rectification=mask``); none for ``critic``."""
        if self.cfg.rectification == Rectification.mask:
            return (costs > self.cfg.lagrange.threshold).float()
        return None
