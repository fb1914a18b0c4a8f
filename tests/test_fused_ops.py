"""RMSNorm and RoPE with hand-written backward passes against the model's own modules."""

import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from alignbench.rl.fused_ops import RMSNormFunction, RotaryFunction, rms_norm, rotary


def test_rms_norm_gives_llama_values_and_gradients():
    torch.manual_seed(0)
    norm = LlamaRMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (3 * torch.randn(7, 24)).requires_grad_()  # float32: LlamaRMSNorm computes in float32 anyway
    grad = torch.randn(7, 24)
    want = norm(x)
    want.backward(grad)
    want_x, want_w = x.grad, norm.weight.grad
    x.grad, norm.weight.grad = None, None
    got = RMSNormFunction.apply(x, norm.weight, norm.variance_epsilon)
    got.backward(grad)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad, want_x, rtol=0, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad, want_w, rtol=0, atol=1e-5)
    # the backward is the exact derivative of the forward (float64 finite differences)
    inputs = (x[:3, :5].detach().double().requires_grad_(), norm.weight[:5].detach().double().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, w: RMSNormFunction.apply(a, w, 1e-5), inputs)


def test_rotary_gives_apply_rotary_pos_emb_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(6, 4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    key = torch.randn(6, 2, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(6, 4, generator=gen, dtype=torch.float64) * 6
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    signed = torch.cat([-sin[:, :4], sin[:, 4:]], -1)
    grads = torch.randn(6, 4, 8, generator=gen, dtype=torch.float64), torch.randn(6, 2, 8, generator=gen, dtype=torch.float64)
    want = apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=1)
    torch.autograd.backward(want, grads)
    want_grads, query.grad, key.grad = (query.grad, key.grad), None, None
    got = RotaryFunction.apply(query, key, cos, signed)
    torch.autograd.backward(got, grads)
    for a, b in zip(got + (query.grad, key.grad), want + want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_the_wrappers_use_the_functions_in_float32_and_the_model_otherwise():
    torch.manual_seed(0)
    norm = LlamaRMSNorm(16)
    x = torch.randn(5, 16, requires_grad=True)
    assert type(rms_norm(norm, x).grad_fn).__name__ == "RMSNormFunctionBackward"
    half = rms_norm(norm.bfloat16(), x.detach().bfloat16())
    assert type(half.grad_fn).__name__ != "RMSNormFunctionBackward" and half.dtype == torch.bfloat16
    query, key = torch.randn(5, 2, 8, requires_grad=True), torch.randn(5, 1, 8)
    cos, sin = torch.randn(5, 8), torch.randn(5, 8)
    assert type(rotary(query, key, cos, sin)[0].grad_fn).__name__ == "RotaryFunctionBackward"
    bf = [t.detach().bfloat16() for t in (query, key, cos, sin)]
    torch.testing.assert_close(rotary(*bf)[0], apply_rotary_pos_emb(*bf, unsqueeze_dim=1)[0])
