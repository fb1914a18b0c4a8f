"""``sequence_logprobs`` with repeated prompts run once (GRPO groups) against the plain forward."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignbench.rl import logprobs
from alignbench.rl.logprobs import selected_logprobs, sequence_logprobs, shared_prompt_groups
from alignbench.rl.rollout import left_pad_batch

PAD = 0
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [3, 4]]


def _llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=PAD, initializer_range=0.2))


def _group_batch(group=3, response_len=5, seed=0):
    """Every prompt ``group`` times, each row with its own random response (some end early)."""
    ids, mask = left_pad_batch([p for p in PROMPTS for _ in range(group)], PAD)
    gen = torch.Generator().manual_seed(seed)
    responses = torch.randint(3, 64, (ids.shape[0], response_len), generator=gen)
    response_mask = torch.ones_like(responses)
    response_mask[1, -2:] = 0
    responses = torch.where(response_mask.bool(), responses, PAD)
    return torch.cat([ids, responses], 1), torch.cat([mask, response_mask], 1), ids.shape[1], response_mask


def test_shared_prompt_groups_finds_each_prompt_once():
    sequences, attention, start, _ = _group_batch(group=3)
    first, inverse = shared_prompt_groups(sequences, attention, start)
    assert len(first) == len(PROMPTS)
    assert torch.equal(sequences[first][inverse, :start], sequences[:, :start])
    assert torch.equal(attention[first][inverse, :start], attention[:, :start])
    assert all(first[inverse[row]] <= row for row in range(len(sequences)))  # the first row of each group
    unique, unique_mask, unique_start, _ = _group_batch(group=1)
    assert shared_prompt_groups(unique, unique_mask, unique_start) is None  # nothing repeats: plain pass


@pytest.mark.parametrize("response_len", [1, 6])
def test_shared_prompts_give_the_plain_logprobs_and_gradients(response_len):
    model = _llama()
    sequences, attention, start, response_mask = _group_batch(response_len=response_len)
    args = (sequences, attention, start, response_mask)

    def run(**kw):
        model.zero_grad(set_to_none=True)
        logp, entropy = sequence_logprobs(model, *args, return_entropy=True, fused=False, **kw)
        (logp.sum() + 0.1 * entropy.sum()).backward()
        return logp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]

    shared_logp, shared_entropy, shared_grads = run()
    plain_logp, plain_entropy, plain_grads = run(share_prompts=False)
    torch.testing.assert_close(shared_logp, plain_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_entropy, plain_entropy, atol=1e-5, rtol=0)
    for shared, plain in zip(shared_grads, plain_grads):
        torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    assert (plain_logp != 0).any()


def test_shared_prompts_through_lora_and_the_fused_pass():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_llama(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False)).eval()
    sequences, attention, start, response_mask = _group_batch()
    with torch.no_grad():
        plain = sequence_logprobs(model, sequences, attention, start, response_mask, fused=False, share_prompts=False)
        shared = sequence_logprobs(model, sequences, attention, start, response_mask, fused=False)
        fused_shared = sequence_logprobs(model, sequences, attention, start, response_mask, fused=True)
        fused_plain = sequence_logprobs(model, sequences, attention, start, response_mask, fused=True,
                                        share_prompts=False)
    for got in (shared, fused_shared, fused_plain):
        torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- padding-free scoring
def _model(kind):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD, initializer_range=0.2)
    if kind == "qwen2":  # q/k/v biases
        return Qwen2ForCausalLM(Qwen2Config(**common))
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    return LlamaForCausalLM(LlamaConfig(**common, rope_scaling={"rope_type": "linear", "factor": 2.0}))


def _ragged_batch(group, response_len=7):
    """Responses that end at different lengths: most rows carry right padding after their EOS."""
    sequences, attention, start, response_mask = _group_batch(group=group, response_len=response_len)
    lengths = torch.arange(len(sequences)) % response_len + 1
    response_mask = (torch.arange(response_len)[None] < lengths[:, None]).long()
    sequences[:, start:] = torch.where(response_mask.bool(), sequences[:, start:], PAD)
    attention[:, start:] = response_mask
    return sequences, attention, start, response_mask


@pytest.mark.parametrize("kind,group", [("llama", 3), ("llama", 1), ("qwen2", 3), ("mistral", 2)])
def test_packed_scoring_gives_the_padded_logprobs_and_gradients(kind, group):
    model = _model(kind).train()
    args = _ragged_batch(group)
    assert (args[3] == 0).float().mean() > 0.3  # a third of the response cells are padding

    def run(**kw):
        model.zero_grad(set_to_none=True)
        logp, entropy = sequence_logprobs(model, *args, return_entropy=True, **kw)
        (logp.sum() + 0.1 * entropy.sum()).backward()
        return logp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]

    packed = run(packed=True)
    padded = run(packed=False, share_prompts=False)
    for got, want in zip(packed[:2], padded[:2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for got, want in zip(packed[2], padded[2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (packed[0] != 0).any() and (packed[0][args[3] == 0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_packed_scoring_through_lora_adapters_and_its_auto_choice(monkeypatch, dtype):
    """float64: equal to 1e-10, so no rounding hides a wrong term; float32 (the hand-written norm and RoPE
    run only there): equal to float32 rounding at the gradients' scale (up to ~27 here)."""
    peft = pytest.importorskip("peft")
    import alignbench.rl.packed as packed_module

    model = peft.get_peft_model(_llama(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                           init_lora_weights=False, lora_dropout=0.0)).train().to(dtype)
    args = _ragged_batch(3)
    calls = []
    real = packed_module.packed_logits
    monkeypatch.setattr(packed_module, "packed_logits", lambda *a, **k: calls.append(1) or real(*a, **k))

    def grads(**kw):
        model.zero_grad(set_to_none=True)
        logp = sequence_logprobs(model, *args, **kw)
        logp.sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    auto = grads()  # grad on, a third of the cells padding: "auto" packs
    assert calls == [1]
    padded = grads(packed=False)
    assert calls == [1]
    # gradients: float32 rounding at their own scale; the log-probs keep the fixed 1e-5 they always had
    scale = max(float(want.abs().max()) for want in padded[1])
    atol = 1e-10 if dtype == torch.float64 else 2e-6 * scale
    torch.testing.assert_close(auto[0], padded[0], atol=1e-10 if dtype == torch.float64 else 1e-5, rtol=0)
    for got, want in zip(auto[1], padded[1]):
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
    full = _group_batch(response_len=5)  # (almost) no padding: "auto" keeps the padded pass
    sequence_logprobs(model, *full)
    assert calls == [1]


def test_packed_scoring_refuses_what_it_does_not_reproduce():
    model = _llama().train()
    model.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="packed=True cannot score this model: gradient checkpointing"):
        sequence_logprobs(model, *_ragged_batch(3), packed=True)
    sequence_logprobs(model, *_ragged_batch(3))  # "auto" falls back to the padded forward


def test_fused_scoring_packs_the_real_response_tokens():
    model = _llama().eval()
    args = _ragged_batch(3)
    with torch.no_grad():
        padded = sequence_logprobs(model, *args, fused=False, packed=False, share_prompts=False)
        fused_packed = sequence_logprobs(model, *args, fused=True)
        fused_padded = sequence_logprobs(model, *args, fused=True, packed=False)
    torch.testing.assert_close(fused_packed, padded, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused_padded, padded, atol=1e-5, rtol=0)
    assert (fused_packed[args[3] == 0] == 0).all() and (fused_packed != 0).any()


def test_packed_scoring_returns_the_logits_of_every_scored_token():
    model = _llama().eval()
    args = _ragged_batch(3)
    scored = args[3].bool()
    with torch.no_grad():
        _, packed_logits = sequence_logprobs(model, *args, fused=False, packed=True, return_logits=True,
                                             temperature=0.7)
        _, padded_logits = sequence_logprobs(model, *args, fused=False, packed=False, return_logits=True,
                                             temperature=0.7)
    assert packed_logits.shape == padded_logits.shape
    torch.testing.assert_close(packed_logits[scored], padded_logits[scored], atol=1e-5, rtol=0)


def test_the_plain_paths_reach_the_speed_paths_only_through_their_seam():
    """rollout.py and logprobs.py import neither fast backend; they ask rl/speed.py, which does."""
    import ast
    from pathlib import Path

    import alignbench.rl as rl

    def imported(name: str) -> set[str]:
        tree = ast.parse((Path(rl.__file__).parent / name).read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}

    backends = {"alignbench.rl.fused_llama", "alignbench.rl.packed"}
    for plain in ("rollout.py", "logprobs.py"):
        assert not imported(plain) & backends, plain
        assert "alignbench.rl.speed" in imported(plain), plain
    assert backends <= imported("speed.py")


@pytest.mark.parametrize("entropy_weight", [0.0, 0.7])
def test_blocked_logprob_selection_gives_the_plain_values_and_gradients(monkeypatch, entropy_weight):
    """log-probs, entropy and d/dlogits of the blocked selection = the plain gather/logsumexp/autograd
    expressions, over blocks that split rows unevenly and on a strided (sliced) logits view."""
    monkeypatch.setattr(logprobs, "SELECT_ROWS", 3)
    gen = torch.Generator().manual_seed(0)
    full = (3 * torch.randn(2, 9, 40, generator=gen, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 40, (2, 7), generator=gen)
    weights = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    logp, entropy = selected_logprobs(full[:, 1:-1], targets, with_entropy=True)
    ((logp * weights).sum() + entropy_weight * entropy.sum()).backward()
    grad, full.grad = full.grad, None
    z = full[:, 1:-1]
    lse = torch.logsumexp(z, -1)
    plain_logp = z.gather(-1, targets[..., None]).squeeze(-1) - lse
    plain_entropy = lse - (torch.exp(z - lse[..., None]) * z).sum(-1)
    ((plain_logp * weights).sum() + entropy_weight * plain_entropy.sum()).backward()
    torch.testing.assert_close(logp, plain_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, plain_entropy, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, full.grad, rtol=0, atol=1e-12)
    assert grad[:, 0].abs().max() == 0 and grad[:, -1].abs().max() == 0  # outside the view: untouched


def test_a_pass_with_grad_frees_the_stale_fused_copy_of_trained_weights():
    """The fused copy a no-grad pass built is dropped by the next pass with grad (the optimiser step
    will change those weights), and the next no-grad pass rebuilds it with the new weights."""
    from alignbench.rl.fused_llama import _CACHE

    model = _llama().eval()
    sequences, attention_mask, start, response_mask = _group_batch()
    with torch.no_grad():
        before = sequence_logprobs(model, sequences, attention_mask, start, response_mask)
    assert model in _CACHE
    sequence_logprobs(model, sequences, attention_mask, start, response_mask).sum().backward()
    assert model not in _CACHE
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
        after = sequence_logprobs(model, sequences, attention_mask, start, response_mask)
        plain = sequence_logprobs(model, sequences, attention_mask, start, response_mask, fused=False)
    assert model in _CACHE and not torch.allclose(before, after)
    torch.testing.assert_close(after, plain, rtol=1e-4, atol=1e-5)


def test_bucketed_attention_gives_the_padded_logprobs_and_gradients(monkeypatch):
    """With no price on a bucket every response length gets its own attention layout (rows reordered,
    longest first): the packed pass with grad and the fused packed pass still equal the padded pass."""
    from alignbench.rl import buckets

    monkeypatch.setattr(buckets, "BUCKET_OVERHEAD_CELLS", 0)
    args = _ragged_batch(3)
    start = args[2]
    cut = buckets.RowBuckets(args[1][:, start:-1].bool(), start)
    assert len(cut.buckets) >= 4 and cut.order.tolist() != sorted(cut.order.tolist())
    model = _llama().train()

    def run(**kw):
        model.zero_grad(set_to_none=True)
        logp, entropy = sequence_logprobs(model, *args, return_entropy=True, **kw)
        (logp.sum() + 0.1 * entropy.sum()).backward()
        return logp.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]

    packed, padded = run(packed=True), run(packed=False, share_prompts=False)
    for got, want in zip(packed[:2], padded[:2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for got, want in zip(packed[2], padded[2]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    model.eval()
    with torch.no_grad():
        fused_packed = sequence_logprobs(model, *args, fused=True)
        plain = sequence_logprobs(model, *args, fused=False, packed=False, share_prompts=False)
    torch.testing.assert_close(fused_packed, plain, atol=1e-5, rtol=0)
    assert (fused_packed[args[3] == 0] == 0).all() and (fused_packed != 0).any()


def test_the_selection_may_write_its_gradient_into_the_logits():
    """``reuse_logits``: the same gradient, written into the logits' memory; ``sequence_logprobs``
    asked for the logits keeps them intact through the backward."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 5, 30, generator=gen, requires_grad=True)
    targets = torch.randint(0, 30, (2, 5), generator=gen)
    grads = []
    for reuse in (False, True):
        logits = base * 2.0  # a non-leaf, as a model's logits are
        logp, entropy = selected_logprobs(logits, targets, with_entropy=True, reuse_logits=reuse)
        (logp.sum() + 0.3 * entropy.sum()).backward()
        grads.append(base.grad)
        base.grad = None
        assert torch.equal(logits.detach(), (base * 2.0).detach()) != reuse  # overwritten only when reused
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)

    model = _llama().train()
    args = _ragged_batch(3)
    logp, logits = sequence_logprobs(model, *args, return_logits=True)
    kept = logits.detach().clone()
    logp.sum().backward()
    assert torch.equal(logits.detach(), kept)
