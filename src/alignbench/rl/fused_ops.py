"""RMSNorm and RoPE with hand-written backward passes, and LoRA adapters with fewer products, for the
packed training pass (``rl.packed``).

Autograd through the model's own ``LlamaRMSNorm`` and ``apply_rotary_pos_emb`` sweeps the activations
~13 and ~12 times (every product, square, mean, slice and concatenation keeps its own temporary and
its own backward); these two functions compute the same values in 5 and 6 sweeps. On SmolLM2's
``[1633, 576]`` training activations one norm's forward + backward takes 1.7 ms instead of 4.0, and
one layer's RoPE (9 query and 3 key heads) 1.4 ms instead of 5.2 (``benchmarks/README.md``), about
0.25 s of a 10 s training pass. Both equal the model's functions to float rounding
(``tests/test_fused_ops.py`` checks values and gradients against them).

RMSNorm, per row ``x`` of width ``d``, gain ``w``:

    r = 1 / sqrt(mean(x^2) + eps),   y = w * x * r
    dL/dx = r * (g w - x r * mean(g w * x r)),    dL/dw = sum_rows g * x r

RoPE (``apply_rotary_pos_emb``: ``q cos + rotate_half(q) sin``, ``rotate_half(q) = [-q2, q1]``) with
the sign folded into ``s = [-sin1, sin2]`` and ``roll`` by half the head width:

    y = q cos + roll(q) s,           dL/dq = g cos + roll(g s)

``rms_norm`` and ``rotary`` fall back to the model's own code for anything else (another norm class,
another dtype than float32), so the result never depends on which path ran.

Vanilla LoRA adapters on the linear layers that read one input (q/k/v, gate/up; ``shared_input_linears``).
peft's layer computes ``y_i = base_i(x) + (B_i (A_i x)) * s_i`` for each layer on its own; here

    u = x [A_1; ...; A_k]^T  (one product),     y_i = addmm(base_i(x), u_i, (s_i B_i)^T)

so ``x`` is read once for all the down-projections (and, in the backward pass, ``dL/dA`` and the adapters'
share of ``dL/dx`` are one product each), the scaling multiplies the ``[out, r]`` weight instead of the
``[N, out]`` output, and the sum runs inside the product. The rank-16 products of SmolLM2's LoRA training
pass ran at 0.3-0.6 of the GEMM peak and took 0.59 s of 7.3 (``benchmarks/README.md``). Anything else
(plain layers, several active adapters, DoRA or other variants, LoRA dropout, a dtype mismatch) runs the
layer's own forward.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["llama_mlp", "rms_norm", "rotary", "shared_input_linears", "RMSNormFunction", "RotaryFunction"]

#: the RMSNorm classes whose forward is ``weight * x / sqrt(mean(x^2) + variance_epsilon)``
_PLAIN_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
#: the MLP classes whose forward is ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``
_PLAIN_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP")


class RMSNormFunction(torch.autograd.Function):
    """``w * x / sqrt(mean(x^2, -1) + eps)`` over the last dimension (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, r)
        return torch.mul(x, r).mul_(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, r = ctx.saved_tensors
        normed = x * r
        grad_normed = grad * weight
        grad_weight = (grad * normed).sum(0) if ctx.needs_input_grad[1] else None
        dot = (grad_normed * normed).sum(-1, keepdim=True)
        grad_x = torch.addcmul(grad_normed, normed, dot, value=-1.0 / x.shape[-1]).mul_(r)
        return grad_x, grad_weight, None


class RotaryFunction(torch.autograd.Function):
    """``(q cos + roll(q) s, k cos + roll(k) s)`` for ``[N, heads, D]`` q/k and ``[N, D]`` cos / s."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor):
        ctx.save_for_backward(cos, signed_sin)
        cos, signed_sin, half = cos[:, None], signed_sin[:, None], query.shape[-1] // 2
        return (torch.addcmul(query * cos, query.roll(half, -1), signed_sin),
                torch.addcmul(key * cos, key.roll(half, -1), signed_sin))

    @staticmethod
    def backward(ctx, grad_query: torch.Tensor, grad_key: torch.Tensor):
        cos, signed_sin = ctx.saved_tensors
        cos, signed_sin, half = cos[:, None], signed_sin[:, None], grad_query.shape[-1] // 2
        return ((grad_query * signed_sin).roll(half, -1).addcmul_(grad_query, cos),
                (grad_key * signed_sin).roll(half, -1).addcmul_(grad_key, cos), None, None)


def rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, by ``RMSNormFunction`` when ``module`` is a plain float32 RMSNorm."""
    weight = getattr(module, "weight", None)
    if (type(module).__name__ in _PLAIN_NORMS and x.dtype == torch.float32 and weight is not None
            and weight.dtype == torch.float32 and weight.shape == x.shape[-1:]):
        return RMSNormFunction.apply(x, weight, module.variance_epsilon)
    return module(x)


def rotary(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=1)`` for ``[N, heads, D]`` q/k and
    ``[N, D]`` cos/sin, by ``RotaryFunction`` in float32."""
    if query.dtype == key.dtype == cos.dtype == sin.dtype == torch.float32 and query.shape[-1] % 2 == 0:
        half = query.shape[-1] // 2
        return RotaryFunction.apply(query, key, cos, torch.cat([-sin[:, :half], sin[:, half:]], dim=-1))
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=1)


def _vanilla_adapter(module: nn.Module, x: torch.Tensor) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, float] | None:
    """``(base layer, A, B, scaling)`` of a peft LoRA layer whose forward is ``base(x) + B A x * s`` right now
    (one active vanilla adapter, dropout a no-op, no LoRA bias, ``x``'s dtype throughout); else None."""
    from alignbench.rl.fused_llama import _active_lora, _linear_problem, _lora_layer_class

    if not isinstance(module, _lora_layer_class()) or _linear_problem(module) is not None:
        return None
    active = _active_lora(module)  # _linear_problem: no variant, no LoRA bias, no dropout active in train mode
    if len(active) != 1:
        return None
    base, a, b = module.get_base_layer(), module.lora_A[active[0]], module.lora_B[active[0]]
    if b.bias is not None or not x.dtype == base.weight.dtype == a.weight.dtype == b.weight.dtype:
        return None
    return base, a.weight, b.weight, float(module.scaling[active[0]])


def shared_input_linears(x: torch.Tensor, modules: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    """``[module(x) for module in modules]`` for linear layers that read the same ``[N, d]`` ``x``, their
    vanilla LoRA adapters' down-projections in one product (module docstring)."""
    outputs: list[torch.Tensor | None] = [None] * len(modules)
    adapters = []
    for index, module in enumerate(modules):
        vanilla = None if type(module) is nn.Linear or x.dim() != 2 else _vanilla_adapter(module, x)
        if vanilla is None:
            outputs[index] = module(x)
        else:
            adapters.append((index, *vanilla))
    if adapters:
        down = torch.cat([a for _, _, a, _, _ in adapters]) if len(adapters) > 1 else adapters[0][2]
        parts = torch.nn.functional.linear(x, down).split([a.shape[0] for _, _, a, _, _ in adapters], dim=1)
        for (index, base, _, b, scaling), part in zip(adapters, parts):
            outputs[index] = torch.addmm(base(x), part, (b * scaling).t())
    return outputs


def llama_mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a Llama-family MLP, gate and up through ``shared_input_linears``."""
    if type(module).__name__ not in _PLAIN_MLPS or not hasattr(module, "act_fn"):
        return module(x)
    gate, up = shared_input_linears(x, (module.gate_proj, module.up_proj))
    return shared_input_linears(module.act_fn(gate) * up, (module.down_proj,))[0]
