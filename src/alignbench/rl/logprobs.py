"""Log-probs of sampled responses under any policy, in one pass over the batch's unique prompts.

``sequence_logprobs`` scores a rollout (layout in ``alignbench.rl.rollout``) under a causal LM, with
or without grad: the reference and pi_old passes, and the policy term of every clipped loss.

The plain pass is the model's own forward over ``[B, P + T]``, with one rewrite that keeps it the
model's forward:

* **Shared prompts.** GRPO-style batches repeat every prompt k times (a group), and rows with the
  same prompt have the same left padding, so their prompt columns give the same hidden states and
  KV cache. When at least half of the rows repeat another row's prompt, the prompts run once per
  unique prompt, their cache is copied to every row of the group (``index_select``; under autograd
  the gradient of a shared prompt is the sum over its group, exactly as in the unshared pass) and
  the responses run on top of it. Prompt FLOPs fall by a factor ``k``: 10% of the pass for the
  benchmark's 10-token prompts and 64-token answers, most of it for long chat-template prompts.

The CPU speed paths (the fused no-grad pass of Llama-family models, padding-free responses) sit
behind one seam, ``alignbench.rl.speed.scoring_logits``: asked first, they return the same logits by
a faster route or ``None``, and the plain pass runs. All are exact rewrites (same values to float
rounding; tested against the plain pass, log-probs and gradients). ``share_prompts=False`` /
``fused=False`` / ``packed=False`` force the plain model forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from alignbench.models.compute import METER
from alignbench.rl.rollout import _accepts_logits_to_keep, _supports_lean, _unwrap, position_ids_from_mask
from alignbench.rl.speed import scoring_logits
from alignbench.utils.distributed import is_sharded

if TYPE_CHECKING:
    from transformers import DynamicCache

__all__ = ["selected_logprobs", "sequence_logprobs", "shared_prompt_groups"]

#: logit rows per block of ``selected_logprobs``: 64 x 49k-token rows (12.6 MB fp32) stay in a 32 MB L3
SELECT_ROWS = 64


def sequence_logprobs(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_logits: bool = False,
    fused: str | bool = "auto",
    share_prompts: bool = True,
    packed: str | bool = "auto",
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Per-token log pi(y_t | x, y_<t) of the response tokens.

        logp[b, t] = log_softmax(z[b, P + t - 1] / temperature)[sequences[b, P + t]]

    where z are the logits and P = ``response_start``. Only the positions that predict a response
    token go through the LM head; logp is ``z_y - logsumexp(z)`` in float32, never materialising a
    ``[B, T, V]`` log-softmax. Runs with grad if the caller's context allows it and in whatever
    train/eval mode the model is in (disable dropout for PPO ratios to be exact).

    ``fused``: ``"auto"`` (default) computes the logits with ``FusedLlama.forward`` when grad is off,
    the model is on the CPU and ``fused_support`` accepts it; ``True`` insists on it, ``False``
    always calls the model's forward. ``share_prompts``: run repeated prompts once (module docstring).
    ``packed``: ``"auto"`` (default) runs the responses padding-free when at least
    ``rl.speed.PACKED_MIN_PAD_SHARE`` of the response cells are padding: with grad by ``alignbench.rl.packed``
    (when ``packed_support`` accepts the model), in the fused pass over shared prompts by
    ``FusedLlama.forward(packed=...)``; ``True`` insists on the former, ``False`` never packs.

    Returns ``logp`` ``[B, T]`` (0 where ``response_mask`` is 0); with ``return_entropy`` and/or
    ``return_logits``, a tuple ``(logp, entropy?, logits?)`` holding the requested extras in that
    order: entropy ``[B, T]`` (masked to 0), logits ``[B, T, V]`` (float32, temperature-scaled).
    """
    if response_start < 1:
        raise ValueError("sequence_logprobs: response_start must be >= 1 (a prompt is needed).")
    METER.forward(model, attention_mask, logit_positions=response_mask.sum())
    # FSDP: whether prompts are shared depends on the local batch, and every rank must run the same forwards
    share_prompts = share_prompts and not is_sharded(model)
    groups = shared_prompt_groups(sequences, attention_mask, response_start) if share_prompts else None
    # a faster exact rewrite when one applies (rl.speed: fused, padding-free); else the model's own forward
    logits = scoring_logits(model, sequences, attention_mask, response_start, groups, fused=fused, packed=packed)
    if logits is None:
        shared = groups is not None and _supports_lean(model) and _full_attention_cache(model) is not None
        logits = (_shared_prompt_logits(model, sequences, attention_mask, response_start, groups) if shared
                  else _plain_logits(model, sequences, attention_mask, response_start))
    # [B, T, V] (position P + t - 1 predicts response token t), or padding-free ([M, V], cells): the
    # rows of the M real cells of the flattened [B T] grid
    logits, cells = logits if isinstance(logits, tuple) else (logits, None)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = sequences[:, response_start:]
    shape = targets.shape
    if cells is not None:
        targets = targets.flatten()[cells]

    def grid(values: torch.Tensor) -> torch.Tensor:
        """Per-row values back on the [B, T] grid (0 in the pad cells, which the mask drops)."""
        if cells is None:
            return values
        return values.new_zeros(shape.numel(), *values.shape[1:]).index_copy(0, cells, values).view(*shape, *values.shape[1:])

    mask_f = response_mask.to(logits.dtype)
    # nothing but the backward reads these logits again unless they are returned: its gradient may take their memory
    selected, entropy = selected_logprobs(logits, targets, with_entropy=return_entropy, reuse_logits=not return_logits)
    logp = grid(selected) * mask_f

    extras: list[torch.Tensor] = []
    if return_entropy:
        extras.append(grid(entropy) * mask_f)
    if return_logits:
        extras.append(grid(logits))
    return (logp, *extras) if extras else logp


def selected_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, with_entropy: bool = False,
                      reuse_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z_y - logsumexp(z), H)`` per row of ``logits`` ``[..., V]`` (H = logsumexp(z) - sum_v p_v z_v
    the entropy, None unless ``with_entropy``), in blocks of ``SELECT_ROWS`` rows.

    The plain expressions (gather, ``torch.logsumexp``, ``exp``, products, and autograd through
    them) sweep the whole ``[M, V]`` logits ~10 times and keep several ``[M, V]`` temporaries; here
    each block is read once forward and once backward while it sits in cache, and nothing of size
    ``[M, V]`` is kept but the logits themselves and, in the backward, their gradient:

        d logp / dz = onehot(y) - p,        d H / dz = -p (z - E_p[z]),   E_p[z] = logsumexp(z) - H

    ``reuse_logits``: the backward writes the gradient into the logits' own memory (block by block,
    each block's logits copied aside first), for a caller that never reads them again: no second
    ``[M, V]`` tensor (SmolLM2's training pass: 321 MB, and ~75 ms of fresh pages, saved).
    """
    logits3 = logits if logits.dim() == 3 else logits.reshape(-1, *logits.shape[-2:])  # views, never copies
    logp, entropy = _SelectedLogprobs.apply(logits3, targets.reshape(logits3.shape[:2]), with_entropy, reuse_logits)
    return logp.view(targets.shape), (entropy.view(targets.shape) if with_entropy else None)


def _blocks(logits: torch.Tensor):
    """``(b, rows)`` index pairs covering ``[B, T, V]`` logits in blocks of ``SELECT_ROWS`` rows."""
    for b in range(logits.shape[0]):
        for start in range(0, logits.shape[1], SELECT_ROWS):
            yield b, slice(start, start + SELECT_ROWS)


class _SelectedLogprobs(torch.autograd.Function):
    """``selected_logprobs``' blocked forward and backward over ``[B, T, V]`` logits (any strides)."""

    @staticmethod
    def forward(ctx, logits, targets, with_entropy, reuse_logits):
        lse = logits.new_empty(logits.shape[:2])
        logp = logits.new_empty(logits.shape[:2])
        entropy = logits.new_zeros(logits.shape[:2])
        for b, rows in _blocks(logits):
            block = logits[b, rows]
            block_lse = torch.logsumexp(block, dim=-1)
            lse[b, rows] = block_lse
            logp[b, rows] = block.gather(-1, targets[b, rows, None]).squeeze(-1) - block_lse
            if with_entropy:
                probs = torch.exp(block - block_lse[:, None])
                entropy[b, rows] = block_lse - (probs * block).sum(-1)
        ctx.save_for_backward(logits, targets, lse, entropy)
        ctx.reuse_logits = reuse_logits
        ctx.mark_non_differentiable(targets)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, targets, lse, entropy = ctx.saved_tensors
        reuse = ctx.reuse_logits
        grad = logits if reuse else torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        scratch = logits.new_empty(min(SELECT_ROWS, logits.shape[1]), logits.shape[2]) if reuse else None
        for b, rows in _blocks(logits):
            out = grad[b, rows]
            block = scratch[: out.shape[0]].copy_(out) if reuse else logits[b, rows]  # z, before out overwrites it
            probs = torch.exp(block - lse[b, rows, None])
            if grad_entropy is not None and bool(grad_entropy[b, rows].any()):
                # -g_H p (z - E[z]) - g_logp p
                torch.mul(probs, block - (lse[b, rows] - entropy[b, rows])[:, None], out=out)
                out.mul_(-grad_entropy[b, rows, None])
                if grad_logp is not None:
                    out.addcmul_(probs, grad_logp[b, rows, None], value=-1.0)
            elif grad_logp is not None:
                torch.mul(probs, -grad_logp[b, rows, None], out=out)
            else:
                out.zero_()
            if grad_logp is not None:
                out.scatter_add_(-1, targets[b, rows, None], grad_logp[b, rows, None])
        return grad, None, None, None


def shared_prompt_groups(sequences: torch.Tensor, attention_mask: torch.Tensor, response_start: int
                         ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(first, inverse)`` when at least half of the rows repeat another row's prompt, else None.

    ``first[u]`` is the first row holding unique prompt u (ids and mask of columns ``< P``) and
    ``inverse[b]`` the unique prompt of row b, so ``rows[first][inverse]`` rebuilds every prompt.
    """
    batch = sequences.shape[0]
    prompts = torch.cat([sequences[:, :response_start], attention_mask[:, :response_start].to(sequences.dtype)], 1)
    unique, inverse = torch.unique(prompts, dim=0, return_inverse=True)
    if 2 * unique.shape[0] > batch:
        return None
    rows = torch.arange(batch, device=sequences.device)
    first = torch.full((unique.shape[0],), batch, dtype=torch.long, device=sequences.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


def _plain_logits(model, sequences, attention_mask, response_start) -> torch.Tensor:
    num_response = sequences.shape[1] - response_start
    inputs = dict(input_ids=sequences, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    if _accepts_logits_to_keep(model):
        inputs["logits_to_keep"] = num_response + 1
    # the final position predicts nothing we score
    return model(**inputs).logits[:, -(num_response + 1) : -1]


def _full_attention_cache(model) -> DynamicCache | None:
    """An empty ``DynamicCache`` for ``model`` when every layer is plain full attention, else None."""
    from transformers import DynamicCache  # here: slow to import (start-up)
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=_unwrap(model).config)
    return cache if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers) else None


def unique_prompt_pass(model, sequences, attention_mask, positions, response_start, first, inverse
                       ) -> tuple[torch.Tensor, DynamicCache]:
    """The model's own forward over the unique prompts ``first``: every row's prompt-end logits
    ``[B, V]`` and a ``DynamicCache`` of the prompts, already copied to every row (``inverse``)."""
    from transformers import DynamicCache  # here: slow to import (start-up)

    cache = DynamicCache(config=_unwrap(model).config)
    keep = _accepts_logits_to_keep(model)
    prompt_logits = model(input_ids=sequences[first, :response_start],
                          attention_mask=attention_mask[first, :response_start],
                          position_ids=positions[first, :response_start], past_key_values=cache, use_cache=True,
                          **(dict(logits_to_keep=1) if keep else {})).logits[:, -1]
    for layer in cache.layers:  # DynamicCache.batch_select_indices, by index_select: its backward is an index_add
        if layer.get_seq_length() > 0:
            layer.keys, layer.values = layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse)
    return prompt_logits.index_select(0, inverse), cache


def _shared_prompt_logits(model, sequences, attention_mask, response_start, groups) -> torch.Tensor:
    """The model's forward over the unique prompts, then over every row's response on their cache."""
    positions = position_ids_from_mask(attention_mask)
    prompt_logits, cache = unique_prompt_pass(model, sequences, attention_mask, positions, response_start, *groups)
    parts = [prompt_logits[:, None]]
    if sequences.shape[1] - response_start > 1:  # the last response token predicts nothing we score
        parts.append(model(input_ids=sequences[:, response_start:-1], attention_mask=attention_mask[:, :-1],
                           position_ids=positions[:, response_start:-1], past_key_values=cache,
                           use_cache=True).logits)
    return torch.cat(parts, dim=1)
