"""Collecting experience and running clipped updates: the loop pieces every RL algorithm shares.

``collect`` samples responses with an LM role (KV cache, left padding) and computes, without grad,
the old log-probs pi_old(y_t) and the reference log-probs pi_ref(y_t) in one place.

The policy is the distribution the rollout sampled from: at temperature T every log-prob (old,
reference, current) is of softmax(z / T), so the first minibatch's ratio is exactly 1 and the KL to an
identical reference exactly 0 at any T. ``collect`` records T on the ``Experience`` and ``actor_loss``
reads it from there. ``top_k`` / ``top_p`` truncate the sampling only (the log-probs stay those of the
full tempered softmax), as TRL's GRPOTrainer and verl's actor do (``config.GenerationConfig``). ``actor_loss`` and
``critic_loss`` are the clipped PPO objectives on a minibatch of that experience, used by PPO, Safe
RLHF, RePO (GAE advantages), WaltzRL (REINFORCE++) and TriPlay-RL (GRPO) alike, through the one
update loop of ``rl.update``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch

from alignbench.errors import ConfigError
from alignbench.models.text import encode_prompt_response, encode_prompts
from alignbench.rl.losses import clipped_policy_loss, clipped_value_loss, kl_penalty, masked_mean
from alignbench.rl.logprobs import sequence_logprobs
from alignbench.rl.rollout import Rollout, generate_rollout


@dataclass
class Experience:
    """One batch of sampled responses with everything the losses need (all detached)."""

    rollout: Rollout
    texts: list[str]
    old_logp: torch.Tensor | None  # None: on-policy single update, actor_loss uses logp.detach()
    ref_logp: torch.Tensor
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    temperature: float = 1.0  # T of the sampling distribution softmax(z / T) the log-probs are of

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.response_mask

    @property
    def size(self) -> int:
        return self.rollout.sequences.shape[0]

    def select(self, index: torch.Tensor) -> "Experience":
        """Rows ``index`` of the batch (for minibatches)."""
        r = self.rollout
        rollout = Rollout(prompt_ids=r.prompt_ids[index], prompt_mask=r.prompt_mask[index],
                          response_ids=r.response_ids[index], response_mask=r.response_mask[index],
                          sequences=r.sequences[index], attention_mask=r.attention_mask[index])
        old_logp = None if self.old_logp is None else self.old_logp[index]
        return Experience(rollout, [self.texts[i] for i in index.tolist()], old_logp,
                          self.ref_logp[index], {k: v[index] for k, v in self.values.items()}, self.temperature)


def policy_logprobs(roles, role: str, rollout: Rollout, *, with_entropy: bool = False, temperature: float = 1.0):
    """log pi_role(y_t | ...) over the response tokens (and the per-token entropy if asked).

    ``temperature`` != 1 scores the tempered policy softmax(z / T) (a policy that samples at T).
    """
    with roles.use(role) as model:
        return sequence_logprobs(model, rollout.sequences, rollout.attention_mask, rollout.response_start,
                                 rollout.response_mask, return_entropy=with_entropy, temperature=temperature)


def critic_values(roles, critic: str, rollout: Rollout) -> torch.Tensor:
    """V_t for every response token: the critic head at the position that predicts token t."""
    per_position = roles.scores(critic, rollout.sequences, rollout.attention_mask)
    start = rollout.response_start
    values = per_position[:, start - 1:-1]
    return values * rollout.response_mask.to(values.dtype)


@torch.no_grad()
def collect(ctx, roles, role: str, prompts: list[str], generation, *, generator: torch.Generator | None = None,
            reference_role: str = "reference", critics: tuple[str, ...] = (),
            logprob_temperature: float | None = None, old_logprobs: bool = True) -> Experience:
    """Sample one response per prompt with ``role`` and compute old/reference log-probs and values.

    Log-probs are of softmax(z / T) with T = ``logprob_temperature``, by default the sampling
    temperature ``generation.temperature`` (the module docstring); ``Experience.temperature`` carries
    it to ``actor_loss``. Rollouts must sample (``generation.do_sample``).
    ``old_logprobs=False`` skips the pi_old forward pass (``old_logp`` is None): right when the batch
    gets exactly one update before the next rollout and nothing needs pi_old before the loss, since
    pi_old = pi_theta then and ``actor_loss`` uses ``logp.detach()`` (ratio exactly 1, as TRL does).
    The generation engine is ``generation.engine`` when the config has one (``auto`` otherwise).
    """
    if not getattr(generation, "do_sample", True):
        raise ConfigError("an RL rollout must sample (its GenerationConfig has do_sample=false); greedy "
                          "decoding is for evaluation (eval.generation)")
    temperature = generation.temperature if logprob_temperature is None else logprob_temperature
    ids, mask = encode_prompts(ctx.tokenizer, ctx.model_cfg, prompts, limits=ctx.limits)
    with roles.generation_model(role) as model:
        rollout = generate_rollout(model, ids.to(ctx.device), mask.to(ctx.device),
                                   max_new_tokens=generation.max_new_tokens,
                                   eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
                                   temperature=generation.temperature, top_k=generation.top_k,
                                   top_p=generation.top_p, generator=generator,
                                   engine=getattr(generation, "engine", "auto"))
    texts = ctx.decode(rollout.response_ids, rollout.response_mask)
    old_logp = policy_logprobs(roles, role, rollout, temperature=temperature) if old_logprobs else None
    ref_logp = policy_logprobs(roles, reference_role, rollout, temperature=temperature)
    values = {critic: critic_values(roles, critic, rollout) for critic in critics}
    return Experience(rollout, texts, old_logp, ref_logp, values, temperature)


def actor_loss(roles, role: str, exp: Experience, advantages: torch.Tensor, *, clip_eps: float,
               kl_loss_coef: float = 0.0, kl_estimator: str = "k3", entropy_coef: float = 0.0,
               per_sequence: bool = True, temperature: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate on ``exp`` (+ optional in-loss KL to the reference, GRPO-style).

        L = -masked_mean(min(rho A, clip(rho, 1-eps, 1+eps) A)) + kl_loss_coef * masked_mean(KL(pi || pi_ref))
            - entropy_coef * masked_mean(H)

    log pi is of softmax(z / T), T = ``temperature`` or, by default, the rollout's ``exp.temperature``.
    Diagnostics (docs/METRICS.md, logged as ``losses/<role>/<name>`` by ``rl.update``): ``policy_loss`` (the
    clipped term alone), ``approx_kl``, ``clipfrac``, ``ratio_mean``, ``entropy`` and ``kl_loss`` (with a KL term).
    """
    temperature = exp.temperature if temperature is None else temperature
    logp, entropy = policy_logprobs(roles, role, exp.rollout, with_entropy=True, temperature=temperature)
    old_logp = logp.detach() if exp.old_logp is None else exp.old_logp
    loss, stats = clipped_policy_loss(logp, old_logp, advantages, exp.mask, clip_eps=clip_eps,
                                      per_sequence=per_sequence)
    metrics = {k: float(v) for k, v in stats.items()}
    metrics["policy_loss"] = float(loss.detach())
    if kl_loss_coef:
        kl = masked_mean(kl_penalty(logp, exp.ref_logp, kl_estimator), exp.mask, per_sequence)
        loss = loss + kl_loss_coef * kl
        metrics["kl_loss"] = float(kl.detach())
    entropy_mean = masked_mean(entropy, exp.mask, per_sequence)
    if entropy_coef:
        loss = loss - entropy_coef * entropy_mean
    metrics["entropy"] = float(entropy_mean.detach())
    return loss, metrics


def critic_loss(roles, critic: str, exp: Experience, returns: torch.Tensor, *, value_clip: float
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss of ``critic`` against ``returns`` (old values from collection time); diagnostics
    ``value_loss`` and ``clipfrac`` (the share of tokens whose clipped error is the larger)."""
    values = critic_values(roles, critic, exp.rollout)
    loss, stats = clipped_value_loss(values, exp.values[critic], returns, exp.mask, clip_range=value_clip)
    return loss, {"value_loss": float(loss.detach()), "clipfrac": float(stats["vf_clipfrac"])}


def score_texts(ctx, roles, role: str, prompts: list[str], responses: list[str], batch_size: int = 64
                ) -> torch.Tensor:
    """Sequence scores of a score role (reward or cost model) for prompt/response pairs, no grad."""
    from alignbench.models.heads import last_token_scores

    scores = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = encode_prompt_response(ctx.tokenizer, ctx.model_cfg, prompts[start:start + batch_size],
                                           responses[start:start + batch_size], limits=ctx.limits)
            ids, mask = batch["input_ids"].to(ctx.device), batch["attention_mask"].to(ctx.device)
            scores.append(last_token_scores(roles.scores(role, ids, mask), mask))
    return torch.cat(scores) if scores else torch.zeros(0)
