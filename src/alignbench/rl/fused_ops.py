"""RMSNorm and RoPE with hand-written backward passes, for the packed training pass (``rl.packed``).

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
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["rms_norm", "rotary", "RMSNormFunction", "RotaryFunction"]

#: the RMSNorm classes whose forward is ``weight * x / sqrt(mean(x^2) + variance_epsilon)``
_PLAIN_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")


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
