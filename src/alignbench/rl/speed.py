"""The CPU speed paths behind one seam: exact, faster rewrites of the plain rollout and scoring passes.

The plain paths read on their own: ``rl.rollout`` decodes with the model's forward and a KV cache,
``rl.logprobs`` scores with one forward (or the prompts once per group, then the responses on their
cache). Each asks this module one question and runs its own code when the answer is no:

    decoding(engine, model)   -> True: decode with FusedLlama's stepper (``fused_decoder``), same
                                 ``prefill`` / ``step`` contract as the rollout's own stepper
    scoring_logits(model, sequences, attention_mask, response_start, groups, fused=, packed=)
                              -> the logits of the scored positions, or None: the plain pass

Behind it, two rewrites, each equal to the plain pass to float rounding (tested against it, log-probs,
gradients and greedy tokens):

* **fused** (``rl.fused_llama.FusedLlama``): a copy of a Llama-family model's weights rearranged for
  the CPU (merged LoRA, fused q/k/v and gate/up, folded norm gains, weights in oneDNN's blocked layout). No
  grad: the rollout's decode steps and the reference / pi_old scoring passes, on the CPU when
  ``fused_support`` accepts the model (``engine=fused`` / ``fused=True`` insist on it).
* **packed** (``rl.packed``, with grad; ``FusedLlama.forward(packed=...)`` without): the responses'
  token-wise products run on the real tokens only, attention alone sees the padded layout; used when
  at least ``PACKED_MIN_PAD_SHARE`` of the scored response cells are padding.

A new backend (another architecture's fused copy, a compiled kernel) answers the same two questions here,
and neither the rollout nor the scoring code changes.
"""

from __future__ import annotations

import torch

from alignbench.rl.rollout import _model_device, _supports_lean, position_ids_from_mask

__all__ = ["PACKED_MIN_PAD_SHARE", "decoding", "fused_decoder", "packed_rows", "scoring_logits"]

#: the share of padding among the scored response cells from which scoring runs padding-free
PACKED_MIN_PAD_SHARE = 0.03


# ---------------------------------------------------------------------------------------- rollout
def decoding(engine: str, model: torch.nn.Module) -> bool:
    """Whether ``generate_rollout(engine=...)`` decodes with the fused copy: ``auto`` on the CPU when
    ``fused_support`` accepts the model; ``fused`` always (``ValueError`` naming why it cannot)."""
    from alignbench.rl.fused_llama import fused_support

    if engine == "auto":
        return _model_device(model).type == "cpu" and fused_support(model) is None
    if engine == "fused":
        reason = fused_support(model) if _supports_lean(model) else "no KV-cache forward"
        if reason is not None:
            raise ValueError(f"generate_rollout: engine 'fused' cannot decode this model: {reason}")
        return True
    return False


def fused_decoder(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
    """FusedLlama's stepper over ``model``: ``prefill()`` then ``step(tokens)``, float32 scores [B, V]."""
    from alignbench.rl.fused_llama import FusedLlama

    return FusedLlama.of(model).decoder(prompt_ids, prompt_mask, max_new_tokens)


# ---------------------------------------------------------------------------------------- scoring
def scoring_logits(model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor,
                   response_start: int, groups: tuple[torch.Tensor, torch.Tensor] | None, *,
                   fused: str | bool = "auto", packed: str | bool = "auto"
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
    """The logits ``sequence_logprobs`` scores, by a faster exact rewrite, or None (the plain pass).

    ``[B, T, V]`` (position P + t - 1 predicts response token t) or, padding-free, ``(logits [M, V],
    cells [M])``: the rows of the M real cells of the flattened ``[B T]`` grid (``packed_rows``).
    ``groups``: ``shared_prompt_groups``' ``(first, inverse)`` or None. ``fused`` / ``packed``: as in
    ``sequence_logprobs``.
    """
    if torch.is_grad_enabled():
        # a pass with grad trains these weights: the fused copy (built by a rollout or a no-grad
        # pass) is stale after the optimiser step, so it is freed now instead of held through the
        # backward (its q/k/v, gate/up and LM head: ~0.7x the model's weights); the next no-grad use rebuilds it
        _release_fused(model)
    if _fused_scoring(model, fused):
        return _fused_logits(model, sequences, attention_mask, response_start, groups, packed is not False)
    if _packed_scoring(model, packed, attention_mask, response_start):
        from alignbench.rl.packed import packed_logits

        return packed_logits(model, sequences, attention_mask, position_ids_from_mask(attention_mask),
                             response_start, groups)
    return None


def _release_fused(model: torch.nn.Module) -> None:
    """Free ``model``'s cached fused copy when one of its weights is trainable (``scoring_logits``)."""
    if any(p.requires_grad for p in model.parameters()):
        from alignbench.rl.fused_llama import FusedLlama

        FusedLlama.release(model)


def _fused_scoring(model: torch.nn.Module, fused: str | bool) -> bool:
    """Whether scoring uses ``FusedLlama.forward`` (see ``sequence_logprobs``' ``fused`` argument)."""
    if fused is False:
        return False
    from alignbench.rl.fused_llama import fused_support

    if fused is True:
        reason = "grad is enabled (the fused passes are no-grad)" if torch.is_grad_enabled() else fused_support(model)
        if reason is not None:
            raise ValueError(f"sequence_logprobs: fused=True cannot score this model: {reason}")
        return True
    if fused != "auto":
        raise ValueError(f"sequence_logprobs: fused must be 'auto', True or False, got {fused!r}")
    return not torch.is_grad_enabled() and _model_device(model).type == "cpu" and fused_support(model) is None


def _packed_scoring(model: torch.nn.Module, packed: str | bool, attention_mask: torch.Tensor,
                    response_start: int) -> bool:
    """Whether scoring runs the responses padding-free with grad (``sequence_logprobs``' ``packed``)."""
    if packed is False:
        return False
    from alignbench.rl.packed import packed_support

    if packed is True:
        reason = packed_support(model)
        if reason is not None:
            raise ValueError(f"sequence_logprobs: packed=True cannot score this model: {reason}")
        return True
    if packed != "auto":
        raise ValueError(f"sequence_logprobs: packed must be 'auto', True or False, got {packed!r}")
    return _pad_share(attention_mask[:, response_start:-1]) >= PACKED_MIN_PAD_SHARE and packed_support(model) is None


def _pad_share(cells: torch.Tensor) -> float:
    """Share of pad cells among the scored response positions (0 for none)."""
    return 1.0 - float(cells.float().mean()) if cells.numel() else 0.0


def _fused_logits(model, sequences, attention_mask, response_start, groups, packed: bool = True):
    """``FusedLlama.forward`` over the sequences, or over the unique prompts then every row's response
    on their copied cache (padding-free when ``packed`` and enough cells are padding)."""
    from alignbench.rl.buckets import RowBuckets
    from alignbench.rl.fused_llama import FusedLlama, KVBuffers

    fused = FusedLlama.of(model)
    positions = position_ids_from_mask(attention_mask)
    num_response = sequences.shape[1] - response_start
    if groups is None:
        return fused.forward(sequences, attention_mask, positions, logits_to_keep=num_response + 1)[:, :-1]
    first, inverse = groups
    cells = attention_mask[:, response_start:-1]
    packed = packed and num_response > 1 and PACKED_MIN_PAD_SHARE <= _pad_share(cells) < 1.0  # < 1: a real cell
    # padding-free: the rows longest response first, in buckets of similar length (alignbench.rl.buckets)
    buckets = RowBuckets(cells.bool(), response_start) if packed else None
    rows = inverse[buckets.order] if packed else inverse  # the cache's rows, in the order the pass takes them
    cache = KVBuffers(fused, first.shape[0], sequences.shape[1], sequences.device)
    prompt_logits = fused.forward(sequences[first, :response_start], attention_mask[first, :response_start],
                                  positions[first, :response_start], logits_to_keep=1, cache=cache)
    parts = [prompt_logits[rows]]
    if num_response > 1:
        cache.select(rows)
        if not packed:
            parts.append(fused.forward(sequences[:, response_start:-1], attention_mask[:, :-1],
                                       positions[:, response_start:-1], cache=cache))
        else:  # the products run on the real response tokens only
            real = fused.forward(sequences[:, response_start:-1], attention_mask[:, :-1],
                                 positions[:, response_start:-1], cache=cache, packed=buckets)
            return packed_rows(parts[0][:, -1], real, buckets.flat, cells.shape[1], rows=buckets.order)
    return torch.cat(parts, dim=1)


def packed_rows(first_rows: torch.Tensor, response_rows: torch.Tensor, flat: torch.Tensor, steps: int,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [M, V], cells [M])`` for ``sequence_logprobs``: the prompt-end logits of ``rows``
    (default: every row in order; row b's sits at grid cell ``b T``) then the real response positions
    (``flat`` indexes the ``[B, steps]`` response positions ``P .. P + steps - 1``, which sit at grid
    column ``1 + s`` with ``T = steps + 1``)."""
    if rows is None:
        rows = torch.arange(first_rows.shape[0], device=flat.device)
    cells = torch.cat([rows * (steps + 1), flat // steps * (steps + 1) + flat % steps + 1])
    return torch.cat([first_rows, response_rows]), cells
