"""Padding-free scoring with grad: the policy term of the loss computed only on real response tokens.

A rollout's responses are right-padded after their first EOS (layout in ``alignbench.rl.rollout``),
and a plain forward over ``[B, P + T]`` spends the same FLOPs on those pad cells as on real tokens;
their log-probs are then masked to 0. In the benchmark's 32 x 64 rollout of a random model 5-13% of
the cells are padding; with a trained policy whose answers end at different lengths, far more.

``packed_logits`` runs a Llama-family transformers model (llama, mistral, qwen2, through peft LoRA
layers too) over the prompts first (once per unique prompt when a GRPO group repeats them, with the
model's own forward and KV cache: ``logprobs.unique_prompt_pass``), then over the **packed**
response tokens: every token-wise part of a decoder layer (norms, q/k/v/o projections, RoPE, MLP,
final norm, LM head) runs on the ``N`` real tokens as one ``[N, d]`` matrix, and only attention sees
a padded layout (queries, keys and values scattered into it and gathered back), per bucket of rows of
similar length (``alignbench.rl.buckets``), each as wide as its longest row:

    h_i  <- h_i + o_proj(attention(q, k, v)[i])        i in the N real response positions
    h_i  <- h_i + mlp(norm(h_i))

Pad cells hold zero queries/keys/values; causal order puts them after every real token of their row,
so no real query attends to them and the result equals the padded forward to float rounding
(``tests/test_logprobs.py`` checks log-probs and gradients). The submodules are the model's own
(``layer.self_attn.q_proj``, ``layer.mlp``, ...), so LoRA adapters, biases and RoPE scaling apply as in
its forward; vanilla LoRA adapters on layers that share an input (q/k/v, gate/up) compute their
down-projections as one product (``fused_ops.shared_input_linears``). ``packed_support`` names what this
path does not reproduce (attention dropout, sliding windows, gradient checkpointing, a DDP wrapper,
FSDP-sharded layers, other architectures); callers then use the padded forward.
"""

from __future__ import annotations

import torch
from torch import nn

from alignbench.rl.buckets import RowBuckets
from alignbench.rl.fused_llama import _MODEL_TYPES  # the same Llama-family layer layout
from alignbench.rl.fused_ops import llama_mlp, rms_norm, rotary, shared_input_linears
from alignbench.rl.rollout import _unwrap as _core

__all__ = ["packed_logits", "packed_support"]


def packed_support(model: nn.Module) -> str | None:
    """``None`` when ``packed_logits`` computes what ``model``'s forward does; else the reason."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return "a DDP wrapper (its forward prepares the gradient all-reduce)"
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return "a prompt-learning adapter"
    core = _core(model)
    names = (type(module).__name__ for module in core.modules())
    sharded = next((name for name in names if "FullyShard" in name or "FSDP" in name), None)
    if sharded:
        return f"FSDP-sharded modules ({sharded}: their parameters are gathered by the wrapper's forward)"
    config = getattr(core, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        return f"model_type {model_type!r} (packed scoring covers {', '.join(_MODEL_TYPES)})"
    if getattr(core, "is_gradient_checkpointing", False) and core.training:
        return "gradient checkpointing"
    if core.training and getattr(config, "attention_dropout", 0.0):
        return f"attention dropout {config.attention_dropout}"
    if model_type != "llama" and getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    body = getattr(core, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb") or not hasattr(core, "lm_head"):
        return "no .model.layers / .model.rotary_emb / .lm_head"
    return None


def packed_logits(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  response_start: int, groups: tuple[torch.Tensor, torch.Tensor] | None
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The logits of positions ``P - 1 .. P + T - 2`` (each predicts response token t) at the real
    positions only: ``(logits [M, V], cells [M])`` as ``speed.packed_rows`` lays them out, which
    ``sequence_logprobs`` scores without ever padding them (pad positions predict pad tokens, which
    the response mask drops). ``groups``: ``shared_prompt_groups``' ``(first, inverse)`` or None.
    """
    from alignbench.rl.logprobs import unique_prompt_pass
    from alignbench.rl.speed import packed_rows

    core = _core(model)
    body = core.model
    batch, width = sequences.shape
    prompt = response_start
    steps = width - prompt - 1  # response positions P .. W - 2 predict tokens P + 1 .. W - 1
    rows = torch.arange(batch, device=sequences.device)
    first, inverse = groups if groups is not None else (rows, rows)
    if steps <= 0:
        return unique_prompt_pass(model, sequences, attention_mask, position_ids, prompt, first, inverse)[0][:, None]

    # the rows longest response first, cut into buckets of similar length (attention below); the
    # packed tokens and every per-row tensor follow that order
    real = attention_mask[:, prompt:width - 1].bool()  # [B, S]
    buckets = RowBuckets(real, prompt)
    order, flat = buckets.order, buckets.flat  # flat: the N real cells of the flattened [B S], in that order

    # 1. the prompts, once per unique prompt, with the model's own forward; their cache serves every row
    prompt_logits, cache = unique_prompt_pass(model, sequences, attention_mask, position_ids, prompt, first,
                                              inverse[order])

    if flat.numel() == 0:  # no response token to score
        return packed_rows(prompt_logits, prompt_logits.new_zeros(0, prompt_logits.shape[-1]), flat, steps, rows=order)

    # 2. the real response tokens of those positions, packed into [N, d]
    tokens = sequences[:, prompt:width - 1].flatten()[flat]
    hidden = body.embed_tokens(tokens)  # [N, d]
    cos, sin = body.rotary_emb(hidden[None], position_ids[:, prompt:width - 1].flatten()[flat][None])
    cos, sin = cos[0], sin[0]  # [N, D]
    # additive mask [B, 1, S, P + S] (rows in order): a row's prompt padding, and causal order over the responses
    keys_mask = attention_mask[order, : width - 1].bool()[:, None, None, :]
    causal = torch.ones(steps, prompt + steps, dtype=torch.bool, device=sequences.device).tril(prompt)
    mask = torch.zeros(keys_mask.shape[0], 1, steps, prompt + steps, dtype=hidden.dtype, device=hidden.device)
    mask = mask.masked_fill(~(keys_mask & causal), torch.finfo(hidden.dtype).min)
    masks = buckets.masks(mask, prompt)

    for index, layer in enumerate(body.layers):
        attention = layer.self_attn
        x = rms_norm(layer.input_layernorm, hidden)
        query, key, value = (y.view(x.shape[0], -1, attention.head_dim) for y in
                             shared_input_linears(x, (attention.q_proj, attention.k_proj, attention.v_proj)))
        query, key = rotary(query, key, cos, sin)  # the model's RoPE
        qkv = torch.cat([query, key, value], dim=1)  # [N, heads + 2 kv_heads, D]: one scatter per bucket
        past = cache.layers[index]
        attended = buckets.attend(qkv, query.shape[1], key.shape[1], past.keys, past.values, masks, attention.scaling)
        hidden = hidden + shared_input_linears(attended, (attention.o_proj,))[0]
        hidden = hidden + llama_mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, hidden))
    return packed_rows(prompt_logits, core.lm_head(rms_norm(body.norm, hidden)), flat, steps, rows=order)
