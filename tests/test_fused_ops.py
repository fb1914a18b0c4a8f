"""RMSNorm and RoPE with hand-written backward passes against the model's own modules."""

import pytest
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


def _adapted_block(dropout=0.0, second_adapter=False):
    """q/k/v/gate linears of one input, LoRA on q, v and gate (k plain), float64 and trainable as in training."""
    import peft

    torch.manual_seed(1)
    block = torch.nn.ModuleDict({"q": torch.nn.Linear(12, 12), "k": torch.nn.Linear(12, 4), "v": torch.nn.Linear(12, 4),
                                 "gate": torch.nn.Linear(12, 20, bias=False)}).double()
    config = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["q", "v", "gate"], init_lora_weights=False,
                             lora_dropout=dropout)
    block = peft.inject_adapter_in_model(config, block)
    if second_adapter:
        block = peft.inject_adapter_in_model(config, block, adapter_name="other")
        for module in block.modules():
            if hasattr(module, "set_adapter") and hasattr(module, "lora_A"):
                module.set_adapter(["default", "other"])
    for parameter in block.parameters():
        parameter.requires_grad_(True)
    return block.double().train()


def test_shared_input_linears_gives_each_layers_own_output_and_gradients():
    pytest.importorskip("peft")
    from alignbench.rl.fused_ops import _vanilla_adapter, shared_input_linears

    block = _adapted_block()
    modules = tuple(block[name] for name in ("q", "k", "v", "gate"))
    x = torch.randn(9, 12, dtype=torch.float64, requires_grad=True)
    # the fast path is taken for the adapted layers only
    assert [_vanilla_adapter(m, x) is not None for m in modules] == [True, False, True, True]
    grads = [torch.randn(9, m.out_features if hasattr(m, "out_features") else m.get_base_layer().out_features,
                         dtype=torch.float64) for m in modules]

    def run(fn):
        for p in [x, *block.parameters()]:
            p.grad = None
        outs = fn()
        torch.autograd.backward(outs, grads)
        return [o.detach() for o in outs], [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]

    got = run(lambda: shared_input_linears(x, modules))
    want = run(lambda: [m(x) for m in modules])
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert all(g.abs().sum() > 0 for g in want[1])  # every adapter weight got a gradient to compare


def test_shared_input_linears_leaves_what_it_does_not_reproduce_to_the_layer():
    pytest.importorskip("peft")
    from alignbench.rl.fused_ops import _vanilla_adapter

    x = torch.randn(5, 12, dtype=torch.float64)
    dropped = _adapted_block(dropout=0.1)
    assert _vanilla_adapter(dropped["q"], x) is None  # dropout active in train mode
    assert _vanilla_adapter(dropped.eval()["q"], x) is not None  # in eval mode it is the identity
    assert _vanilla_adapter(_adapted_block(second_adapter=True)["q"], x) is None  # two active adapters
    assert _vanilla_adapter(_adapted_block()["q"], x.float()) is None  # another dtype than the weights'
    assert _vanilla_adapter(_adapted_block()["k"], x) is None  # a plain layer
