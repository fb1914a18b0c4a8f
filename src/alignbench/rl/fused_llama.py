"""Fused no-grad passes of a Llama-family model: the ``fused`` decode engine and fused scoring.

A rollout and the no-grad scoring passes (reference / pi_old log-probs) run a model whose weights
do not change while they run, so they can use a copy of the weights rearranged for speed.
``FusedLlama`` builds that copy once from a transformers Llama-family model (through peft LoRA
layers too) and offers two passes over it:

* ``forward``: a wide pass over whole sequences (the prefill of a rollout, which fills a KV cache,
  and ``sequence_logprobs`` under ``torch.no_grad``);
* ``decoder(...).step``: one token per row against that cache (``generate_rollout(engine="fused")``,
  the default on CPU).

What the copy changes, each an exact rewrite up to float rounding:

* **Fused, merged weights.** q/k/v become one ``[(H + 2 H_kv) D, d]`` matrix and gate/up one
  ``[2 I, d]`` matrix, so a layer costs four products instead of seven; active LoRA adapters are
  merged in (``W + s B A``, peft's own ``get_delta_weight``). The model's weights are never touched.
* **Folded constants.** The layers' RMSNorm gains move into the next product, ``(g * n) W^T = n (W diag g)^T``
  (the final norm's gain multiplies the activations instead, so the plain LM head is the model's own weight);
  the attention scale ``1 / sqrt(D)`` into the query rows (RoPE is linear in q); and RoPE's
  ``rotate_half(x) sin`` becomes ``roll(x, D/2) * [-sin_1..D/2, sin_D/2..D]``.
* **Skinny products in the streaming orientation** (plain weights). A decode step multiplies every weight matrix
  by only B activation columns. The residual stream is kept transposed, ``h^T`` ``[d, B]``, and each
  layer computes ``W @ h^T`` (weight = the wide streamed operand, activations = the small packed
  one): on the 2-core AVX2 machine the benchmark's 32-row products run at ~66 GFLOP/s this way
  against ~53 GFLOP/s as ``h @ W^T`` (``benchmarks/README.md``).
* **Decode attention by two batched products** over a position-major cache (``KVBuffers``: one
  contiguous write per step and layer; grouped-query heads share K/V without ``repeat_kv``), and no
  per-step mask construction: the key mask is built once.
* **Padding-free wide pass** (``forward(packed=...)``): the products run on the real tokens only.
* **Weights in oneDNN's blocked layout** (float32 on the CPU when torch has oneDNN; ``ONEDNN = False``: plain
  weights). Every product's weight, the LM head included, is reordered once into oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU freezing uses) and multiplied by
  ``torch.ops.mkldnn._linear_pointwise``. On the 2-core AVX2 machine MKL's products of 2-15 activation
  rows ran at ~7 GB/s of weights; reordered, SmolLM2's decode step takes 53 ms instead of 72 ms at 16 rows
  and 34 ms instead of 55 ms at one (``benchmarks/README.md``). Its cost: the copy holds every weight
  (SmolLM2: ~0.57 GB instead of ~0.31 GB).

The arithmetic is the model's own (RMSNorm in float32 then cast back, SiLU gate, softmax attention in
float32, padding masked with the dtype's minimum so no row is ever all ``-inf``); only the summation
order differs, so logits agree with the transformers forward to float rounding (tests check
``atol`` 1e-4 on random models and identical greedy tokens), and sampled rollouts follow the same
distribution with the same ``torch.multinomial`` draws.

Supported: ``model_type`` llama, mistral (no sliding window) and qwen2 (q/k/v biases), plain
``nn.Linear`` or vanilla peft LoRA layers, ``hidden_act`` silu. ``fused_support`` names what it cannot
handle (DoRA or other LoRA variants, LoRA dropout active in train mode, other architectures), and the
callers then use the model's own forward. The copy costs one extra set of weights while it lives;
``FusedLlama.of`` keeps the latest one per model object and rebuilds it when any weight's version
or the adapter state changes (a trained policy once per update; roles that share one base through
LoRA adapters, a policy and its reference, once per switch), freeing the stale copy and returning the
heap's free pages to the OS (``utils.memory``) before building: at most one copy per model lives.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import nn

from alignbench.utils.distributed import is_sharded
from alignbench.utils.memory import return_freed_memory

if TYPE_CHECKING:
    from alignbench.rl.buckets import RowBuckets

__all__ = ["FusedLlama", "KVBuffers", "decode_step", "fused_support"]

_MODEL_TYPES = ("llama", "mistral", "qwen2")
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _lora_layer_class():
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def _core(model: nn.Module) -> nn.Module:
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _sub(module: nn.Module, dotted: str) -> nn.Module:
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def _active_lora(module: nn.Module) -> list[str]:
    """The adapters a peft LoRA layer's forward would add right now."""
    if module.disable_adapters or module.merged:
        return []
    return [name for name in module.active_adapters if name in module.lora_A.keys()]


def _linear_problem(module: nn.Module) -> str | None:
    """Why ``module`` is not a linear layer whose output ``_linear_parts`` reproduces, or None."""
    if isinstance(module, _lora_layer_class()):
        if not isinstance(module.get_base_layer(), nn.Linear):
            return f"LoRA over {type(module.get_base_layer()).__name__}"
        if module.merged and module.disable_adapters:
            return "LoRA adapters merged into the base weights, then disabled"
        for adapter in _active_lora(module):
            if adapter in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(adapter):
                return f"LoRA variant or LoRA bias in adapter '{adapter}'"
            dropout = module.lora_dropout[adapter]
            if module.training and isinstance(dropout, nn.Dropout) and dropout.p > 0:
                return f"LoRA dropout {dropout.p} in train mode"
        return None
    return None if type(module) is nn.Linear else f"{type(module).__name__} is not a plain linear layer"


def _linear_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` as the layer computes now: ``W + sum_a s_a B_a A_a`` over active LoRA adapters."""
    if isinstance(module, _lora_layer_class()):
        base = module.get_base_layer()
        weight = base.weight
        for adapter in _active_lora(module):
            weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
        return weight, base.bias
    return module.weight, module.bias


def fused_support(model: nn.Module) -> str | None:
    """``None`` when ``FusedLlama`` computes exactly what ``model``'s forward does; else the reason."""
    core = _core(model)
    if is_sharded(core):
        return "FSDP-sharded weights (a rank holds shards; the fused copy needs whole weights)"
    config = getattr(core, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        return f"model_type {model_type!r} (fused passes cover {', '.join(_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r}"
    if model_type != "llama" and getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    body = getattr(core, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(core, "lm_head"):
        return "no .model.layers / .lm_head"
    for layer in body.layers:
        for name in _LINEARS:
            problem = _linear_problem(_sub(layer, name))
            if problem:
                return problem
    return _linear_problem(core.lm_head)


def _signature(core: nn.Module) -> tuple:
    """What the fused copy depends on: every source tensor's identity and version, and each LoRA
    layer's active adapters (a weight update or an adapter switch changes it)."""
    LoraLayer = _lora_layer_class()
    parts = []
    for module in core.modules():
        if isinstance(module, LoraLayer):
            active = tuple(_active_lora(module))
            parts.append(active)
            for adapter in active:
                for weight in (module.lora_A[adapter].weight, module.lora_B[adapter].weight):
                    parts.append((id(weight), weight._version))
        for tensor in module.parameters(recurse=False):
            parts.append((id(tensor), tensor._version))
    return tuple(parts)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, FusedLlama]]" = weakref.WeakKeyDictionary()


class FusedLlama:
    """The fused weight copy of a Llama-family model's current state (module docstring).

    Build it with ``FusedLlama.of(model)`` (cached per model object); check ``fused_support`` first.
    """

    @classmethod
    def of(cls, model: nn.Module) -> "FusedLlama":
        """The fused copy of ``model`` as it is now, reused while no weight or adapter changed."""
        core = _core(model)
        signature = _signature(core)
        cached = _CACHE.get(core)
        if cached is not None and cached[0] == signature:
            return cached[1]
        # free the stale copy before building the new one: the cache's entry and this frame's reference
        # (``cached`` kept it alive through the build, two copies at once: +0.5 GB on SmolLM2)
        cached = None
        _CACHE.pop(core, None)
        # and the heap's free pages (this copy's, the last training pass's) back to the OS before the new
        # copy's weights are allocated (utils.memory: on the SmolLM2 job 300-460 MB each time)
        return_freed_memory()
        fused = cls(core)
        _CACHE[core] = (signature, fused)
        return fused

    @classmethod
    def release_all(cls) -> None:
        """Drop every cached fused copy (a job that decodes nothing more: its memory returns now)."""
        _CACHE.clear()
        return_freed_memory()

    @classmethod
    def release(cls, model: nn.Module) -> None:
        """Drop the cached fused copy of ``model`` (if any): its memory is free now, not at the next build.
        Its pages stay in the heap for what comes next (a pass with grad: handing them to the OS here would
        make its activations fault them in again)."""
        _CACHE.pop(_core(model), None)

    @torch.no_grad()
    def __init__(self, core: nn.Module) -> None:
        config, body = core.config, core.model
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.rotary = body.rotary_emb
        self.embed = body.embed_tokens.weight.detach()
        self.dtype = self.embed.dtype
        scale = getattr(body.layers[0].self_attn, "scaling", self.head_dim ** -0.5)
        q_rows = self.heads * self.head_dim

        def folded(modules, norm=None, q_scale=None):
            """``(cat(W_i) diag(gain), cat(b_i))`` of the linear layers ``modules`` (one new weight tensor)."""
            parts = [_linear_parts(module) for module in modules]
            weight = torch.cat([w.detach() for w, _ in parts])  # always a new tensor, scaled in place
            if norm is not None:
                weight.mul_(norm.weight.detach()[None, :])
            bias = torch.cat([b.detach() for _, b in parts]) if parts[0][1] is not None else None
            if q_scale is not None:
                weight[:q_rows] *= q_scale
                if bias is not None:
                    bias[:q_rows] *= q_scale
            return weight.contiguous(), bias

        def plain(module):
            weight, bias = _linear_parts(module)
            return weight.detach(), None if bias is None else bias.detach()

        layout = onednn_layout(self.embed)

        def blocked(parts):
            """``parts`` in oneDNN's blocked layout when it applies (a layer's plain copy is dropped at once)."""
            return _BlockedWeight(*parts) if layout else parts

        self.layers = []
        for layer in body.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.variance_epsilon,
                blocked(folded((attention.q_proj, attention.k_proj, attention.v_proj), layer.input_layernorm, scale)),
                blocked(plain(attention.o_proj)),
                layer.post_attention_layernorm.variance_epsilon,
                blocked(folded((mlp.gate_proj, mlp.up_proj), layer.post_attention_layernorm)),
                blocked(plain(mlp.down_proj)),
            ))
        # the LM head is the model's own weight (tied to the embeddings in SmolLM2: a folded copy would be
        # 113 MB more, 226 MB while built); the final norm's gain multiplies the activations instead
        self.final_eps, self.final_gain = body.norm.variance_epsilon, body.norm.weight.detach()
        self.lm_head = blocked(plain(core.lm_head))

    # ----------------------------------------------------------------- pieces shared by both passes
    def _rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin ``[B, T, D]`` from the model's own rotary module (any rope_scaling)."""
        cos, sin = self.rotary(self.embed[:1], positions)
        half = self.head_dim // 2
        return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

    def _key_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Additive ``[B, 1, 1, K]``: 0 on real keys, the dtype's minimum (finite) on padding."""
        mask = torch.zeros(attention_mask.shape, dtype=self.dtype, device=attention_mask.device)
        return mask.masked_fill_(attention_mask == 0, torch.finfo(self.dtype).min)[:, None, None, :]

    # ----------------------------------------------------------------- wide pass
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
                logits_to_keep: int = 0, cache: "KVBuffers | None" = None,
                packed: RowBuckets | None = None) -> torch.Tensor:
        """Logits ``[B, n, V]`` of the last ``logits_to_keep`` positions (0: all) of left-padded rows.

        With ``cache``, the keys/values of these positions are written at its current length (the
        prefill of a rollout; ``attention_mask`` then covers the cache up to the new length).

        ``packed`` (with a ``cache`` holding the prompts, its rows in ``packed.order``): the real cells of
        the ``[B, T]`` input (``alignbench.rl.buckets.RowBuckets``, as in ``alignbench.rl.packed``):
        every token-wise product runs on those ``N`` tokens only, attention per bucket of rows of similar
        length, each scattered into its own ``[rows, T_b]`` layout (zeros in the pad cells, which causal
        order puts after a row's real tokens), and the logits are ``[N, V]`` in ``packed.flat``'s order.
        """
        batch, width = input_ids.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        rope_heads = heads + kv_heads
        start = 0 if cache is None else cache.length
        cos, sin = self._rope_tables(position_ids)  # [B, T, D]
        keys_width = start + width
        causal = torch.ones(width, keys_width, dtype=torch.bool, device=input_ids.device).tril(start)
        mask = self._key_mask(attention_mask[:, :keys_width]).masked_fill(~causal, torch.finfo(self.dtype).min)
        hidden = self.embed[input_ids]  # [B, T, d]
        if packed is not None:
            hidden = hidden.flatten(0, 1)[packed.flat]  # [N, d]
            cos, sin = cos.flatten(0, 1)[packed.flat][:, None], sin.flatten(0, 1)[packed.flat][:, None]  # [N, 1, D]
            masks = packed.masks(mask[packed.order], start)
        else:
            cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, D]
        for index, (eps_in, qkv_w, o_w, eps_post, gate_up_w, down_w) in enumerate(self.layers):
            qkv = _linear_rows(qkv_w, _rms_normalised(hidden, eps_in))
            if packed is not None:  # RoPE on the N tokens, then attention per bucket of rows
                attended = self._bucket_attention(index, qkv, cos, sin, packed, masks, cache)
            else:
                qkv = qkv.view(batch, width, heads + 2 * kv_heads, dim).transpose(1, 2)  # [B, heads, T, D]
                qk = qkv[:, :rope_heads]
                qk = torch.addcmul(qk * cos, torch.roll(qk, dim // 2, -1), sin)
                query, key, value = qk[:, :heads], qk[:, heads:], qkv[:, rope_heads:]
                if cache is not None:
                    key, value = cache.write(index, start, keys_width, key, value)
                attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=1.0,
                                                                      enable_gqa=kv_heads != heads)
                attended = attended.transpose(1, 2).reshape(batch, width, heads * dim)
            hidden = hidden + _linear_rows(o_w, attended)
            gate_up = _linear_rows(gate_up_w, _rms_normalised(hidden, eps_post))
            inner = gate_up.shape[-1] // 2
            hidden = hidden + _linear_rows(down_w, nn.functional.silu(gate_up[..., :inner]) * gate_up[..., inner:])
        if cache is not None and packed is None:
            cache.length = keys_width
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return _linear_rows(self.lm_head, _rms_normalised(hidden, self.final_eps) * self.final_gain)

    def _bucket_attention(self, index: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          packed: RowBuckets, masks: list[torch.Tensor], cache: "KVBuffers") -> torch.Tensor:
        """Layer ``index``'s attention output ``[N, heads D]`` for packed ``qkv`` ``[N, (heads + 2 kv) D]``:
        RoPE on the N tokens, then each bucket's rows against their cached prompt keys and their own."""
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        qkv = qkv.view(-1, heads + 2 * kv_heads, dim)
        qk = qkv[:, : heads + kv_heads]
        qk.copy_(torch.addcmul(qk * cos, torch.roll(qk, dim // 2, -1), sin))
        return packed.attend(qkv, heads, kv_heads, *cache.stored(index), masks, scale=1.0)

    # ----------------------------------------------------------------- decoding
    def decoder(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int) -> "FusedDecoder":
        return FusedDecoder(self, prompt_ids, prompt_mask, max_new_tokens)


def _rms_normalised(x: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """``x / rms(x)`` along ``dim`` in float32 (as LlamaRMSNorm), cast back; the gain is folded away."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(dim, keepdim=True).add_(eps))).to(x.dtype)


def _linear_rows(parts, x: torch.Tensor) -> torch.Tensor:
    if isinstance(parts, _BlockedWeight):
        return parts.rows(x)
    weight, bias = parts
    return nn.functional.linear(x, weight, bias)


#: oneDNN lays a weight out for a number of activation rows (a hint: any number runs): an evaluation batch of 16
LAYOUT_ROWS = 16


def onednn_layout(weight: torch.Tensor) -> bool:
    """Whether the fused copy keeps its weights in oneDNN's blocked layout: float32 on the CPU with a torch built with
    oneDNN (``ONEDNN`` off turns it off)."""
    if not ONEDNN or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._reorder_linear_weight) and bool(torch.ops.mkldnn._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False


#: the fused copy's weights in oneDNN's blocked layout where ``onednn_layout`` allows it (tests run both)
ONEDNN = True


class _BlockedWeight:
    """A linear layer's weight in oneDNN's blocked layout (``torch.ops.mkldnn``, what inductor's CPU freezing
    uses): the same products, summed in another order, at ~2x MKL's speed on the skinny decode shapes here."""

    __slots__ = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), LAYOUT_ROWS)
        self.bias = bias

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T (+ b)``, ``[..., in] -> [..., out]``. Activations of another dtype (bf16 under CPU autocast,
        ``trainer.precision=bf16-mixed``) are multiplied in float32, the weights' dtype, and cast back."""
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat.float(), self.weight, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], out.shape[-1]).to(x.dtype)


class KVBuffers:
    """Per-layer key/value buffers allocated once for a whole rollout.

    ``position_major=False``: ``[B, H_kv, capacity, D]``, what SDPA reads in the wide pass (scoring).
    ``position_major=True``: ``[capacity, B, H_kv, D]``, the decoder's layout: a decode step writes one
    contiguous ``[B, H_kv, D]`` block per layer, where the batch-major layout scatters ``B * H_kv``
    runs of ``D`` floats over the whole buffer (the benchmark's rollout took ~7% longer that way),
    and attention reads every ``(row, head)`` matrix in place as a strided view (row stride
    ``B * H_kv * D``) that ``bmm`` takes without a copy.
    """

    def __init__(self, fused: FusedLlama, batch: int, capacity: int, device: torch.device, *,
                 position_major: bool = False) -> None:
        self.position_major = position_major
        shape = ((capacity, batch, fused.kv_heads, fused.head_dim) if position_major
                 else (batch, fused.kv_heads, capacity, fused.head_dim))
        self.keys = [torch.empty(shape, dtype=fused.dtype, device=device) for _ in fused.layers]
        self.values = [torch.empty(shape, dtype=fused.dtype, device=device) for _ in fused.layers]
        self.length = 0

    def write(self, layer: int, start: int, end: int, key: torch.Tensor, value: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``[B, H_kv, end - start, D]`` keys/values at positions ``start:end`` of ``layer``;
        return the layer's keys/values ``[B, H_kv, end, D]`` (views of the buffers)."""
        keys, values = self.keys[layer], self.values[layer]
        if self.position_major:
            keys[start:end].copy_(key.permute(2, 0, 1, 3))
            values[start:end].copy_(value.permute(2, 0, 1, 3))
            return keys[:end].permute(1, 2, 0, 3), values[:end].permute(1, 2, 0, 3)
        keys[:, :, start:end].copy_(key)
        values[:, :, start:end].copy_(value)
        return keys[:, :, :end], values[:, :, :end]

    def stored(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys/values up to ``length`` (views), batch-major ``[B, H_kv, length, D]``."""
        keys, values = self.keys[layer], self.values[layer]
        if self.position_major:
            return keys[: self.length].permute(1, 2, 0, 3), values[: self.length].permute(1, 2, 0, 3)
        return keys[:, :, : self.length], values[:, :, : self.length]

    def select(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (repeats allowed: one prompt's cache copied to every row of its group)."""
        dim = 1 if self.position_major else 0
        for buffers in (self.keys, self.values):  # layer by layer: one old buffer lives beside the new ones
            for layer, buffer in enumerate(buffers):
                buffers[layer] = buffer.index_select(dim, index)


class FusedDecoder:
    """``prefill()`` then ``step(tokens)``: next-token scores ``[B, V]`` (float32) of a left-padded batch."""

    def __init__(self, fused: FusedLlama, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 max_new_tokens: int) -> None:
        batch, width = prompt_ids.shape
        self.fused, self.prompt_ids = fused, prompt_ids
        self.cache = KVBuffers(fused, batch, width + max_new_tokens, prompt_ids.device, position_major=True)
        self.attention = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1)
        self.positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        # RoPE of every later position, transposed to [steps, 1, D, B] for the h^T layout
        later = self.positions[:, -1:] + 1 + torch.arange(max(max_new_tokens - 1, 1), device=prompt_ids.device)
        cos, sin = fused._rope_tables(later)
        self.cos = cos.permute(1, 2, 0)[:, None].contiguous()
        self.sin = sin.permute(1, 2, 0)[:, None].contiguous()
        self.key_mask = fused._key_mask(self.attention)
        self.steps = 0

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Scores after the prompts. Repeated prompts (a GRPO group) run once and their keys/values
        are copied to every row of the group (``shared_prompt_groups``)."""
        from alignbench.rl.logprobs import shared_prompt_groups

        width = self.prompt_ids.shape[1]
        prompt_mask = self.attention[:, :width]
        groups = shared_prompt_groups(self.prompt_ids, prompt_mask, width)
        if groups is None:
            logits = self.fused.forward(self.prompt_ids, prompt_mask, self.positions, logits_to_keep=1,
                                        cache=self.cache)
            return logits[:, -1].float()
        first, inverse = groups
        unique = KVBuffers(self.fused, first.shape[0], width, self.prompt_ids.device, position_major=True)
        logits = self.fused.forward(self.prompt_ids[first], prompt_mask[first], self.positions[first],
                                    logits_to_keep=1, cache=unique)
        for full, part in ((self.cache.keys, unique.keys), (self.cache.values, unique.values)):
            for layer, layer_part in zip(full, part):
                torch.index_select(layer_part, 1, inverse, out=layer[:width])
        self.cache.length = width
        return logits[inverse, -1].float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` ``[B]`` (the next position of every row) and return the scores after it."""
        cos, sin = self.cos[self.steps], self.sin[self.steps]
        self.steps += 1
        position = self.cache.length
        self.cache.length = end = position + 1
        return decode_step(self.fused, self.cache, tokens, cos, sin, position, self.key_mask[..., :end])


@torch.no_grad()
def decode_step(fused: FusedLlama, cache: KVBuffers, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                position: int | torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """One token per row through every layer against a position-major cache; float32 scores ``[B, V]``.

    ``cos`` / ``sin``: the rows' RoPE ``[1, D, B]`` (sign-folded sin). ``position``: where each row's new
    key/value goes: one cache position for all rows (``FusedDecoder``: left-padded rows share it), or a
    ``[B]`` tensor of per-row positions (``alignbench.rl.slots``: each slot at its own length).
    ``key_mask`` ``[B, 1, 1, K]`` (additive, 0 on visible keys): attention reads cache positions ``0 .. K-1``.
    """
    batch = tokens.shape[0]
    heads, kv_heads, dim = fused.heads, fused.kv_heads, fused.head_dim
    group, rope_heads = heads // kv_heads, heads + kv_heads
    end = key_mask.shape[-1]
    per_row = isinstance(position, torch.Tensor)
    slots = torch.arange(batch, device=tokens.device) if per_row else None
    hidden_t = fused.embed[tokens].t().contiguous()  # the residual stream, [d, B]
    for index, (eps_in, qkv_w, o_w, eps_post, gate_up_w, down_w) in enumerate(fused.layers):
        qkv = _linear_cols(qkv_w, _rms_normalised(hidden_t, eps_in, dim=0))  # [(H + 2 H_kv) D, B]
        qk = qkv[: rope_heads * dim].view(rope_heads, dim, batch)
        torch.addcmul(qk * cos, torch.roll(qk, dim // 2, 1), sin, out=qk)  # RoPE on q and k, in place
        rows = qkv.view(heads + 2 * kv_heads, dim, batch).permute(2, 0, 1)  # [B, heads, D], a strided view
        keys, values = cache.keys[index], cache.values[index]
        if per_row:
            keys.index_put_((position, slots), rows[:, heads:rope_heads])
            values.index_put_((position, slots), rows[:, rope_heads:])
        else:
            keys[position].copy_(rows[:, heads:rope_heads])  # one contiguous [B, H_kv, D] block
            values[position].copy_(rows[:, rope_heads:])
        # one query per row: [B H_kv, G, D] @ [B H_kv, D, T] -> softmax -> @ [B H_kv, T, D], every
        # (row, kv head) matrix read in place from the position-major buffer
        query = rows[:, :heads].reshape(batch * kv_heads, group, dim)
        keys_t = keys[:end].view(end, batch * kv_heads, dim).permute(1, 2, 0)
        scores = torch.bmm(query, keys_t).view(batch, kv_heads, group, end).add_(key_mask)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(fused.dtype)
        attended = torch.bmm(probs.view(batch * kv_heads, group, end),
                             values[:end].view(end, batch * kv_heads, dim).transpose(0, 1)).view(batch, heads * dim)
        hidden_t = _residual_cols(hidden_t, o_w, attended.t())
        gate_up = _linear_cols(gate_up_w, _rms_normalised(hidden_t, eps_post, dim=0))
        inner = gate_up.shape[0] // 2
        hidden_t = _residual_cols(hidden_t, down_w, nn.functional.silu(gate_up[:inner]).mul_(gate_up[inner:]))
    normalised = _rms_normalised(hidden_t, fused.final_eps, dim=0).mul_(fused.final_gain[:, None])
    if isinstance(fused.lm_head, _BlockedWeight):
        return fused.lm_head.rows(normalised.t()).float()
    return _linear_cols(fused.lm_head, normalised).t().float()


def _linear_cols(parts, x_t: torch.Tensor) -> torch.Tensor:
    """``W @ x^T (+ b)`` on transposed activations, ``[in, B] -> [out, B]``."""
    if isinstance(parts, _BlockedWeight):
        return parts.rows(x_t.t()).t().contiguous()
    weight, bias = parts
    return torch.mm(weight, x_t) if bias is None else torch.addmm(bias[:, None], weight, x_t)


def _residual_cols(hidden_t: torch.Tensor, parts, x_t: torch.Tensor) -> torch.Tensor:
    """``h^T + W @ x^T (+ b)`` in one ``addmm`` (a new tensor)."""
    if isinstance(parts, _BlockedWeight):
        return hidden_t + parts.rows(x_t.t()).t()
    weight, bias = parts
    out = torch.addmm(hidden_t, weight, x_t)
    return out if bias is None else out.add_(bias[:, None])
