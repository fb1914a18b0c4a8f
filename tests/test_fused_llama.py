"""The fused no-grad passes (``alignbench.rl.fused_llama``) against the transformers forward.

Each check builds a small random model of a supported family, runs the model's own forward and the
fused pass on the same left-padded batch, and compares logits (fp32: to 1e-4 absolute, while the
logits themselves are O(1)); decoding compares greedy tokens with the lean loop exactly and every
step's logits with a teacher-forced forward.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from alignbench.rl import fused_llama as fused_mod
from alignbench.rl.fused_llama import FusedLlama, fused_support
from alignbench.rl import speed as speed_mod
from alignbench.rl.logprobs import sequence_logprobs
from alignbench.rl.rollout import generate_rollout, left_pad_batch, position_ids_from_mask

PAD, EOS = 0, 2
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [3, 4], [14, 15, 16, 17]]
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS)


@pytest.fixture(autouse=True, params=["onednn", "mkl"])
def layout(request, monkeypatch):
    """Every test on both weight layouts of the fused copy: oneDNN's blocked layout (the CPU default) and plain."""
    if request.param == "onednn" and not fused_mod.onednn_layout(torch.zeros(1)):
        pytest.skip("this torch has no oneDNN linear ops")
    monkeypatch.setattr(fused_mod, "ONEDNN", request.param == "onednn")
    return request.param


def _model(kind="llama", seed=0, **extra):
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=extra.pop("kv_heads", 2),
                                             initializer_range=0.2, **extra))
    elif kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None,
                                                 initializer_range=0.2))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**COMMON, num_key_value_heads=2, initializer_range=0.2))
    return model.eval()


def _batch(extra_tokens=6, seed=1):
    """Left-padded prompts followed by ``extra_tokens`` random tokens (some rows end in padding)."""
    ids, mask = left_pad_batch(PROMPTS, PAD)
    gen = torch.Generator().manual_seed(seed)
    tail = torch.randint(3, 64, (len(PROMPTS), extra_tokens), generator=gen)
    tail_mask = torch.ones_like(tail)
    tail_mask[0, -2:] = 0  # a row that stopped early: padding after its EOS
    return torch.cat([ids, tail], 1), torch.cat([mask, tail_mask], 1)


def _hf_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits


@pytest.mark.parametrize("kind,extra", [
    ("llama", {}),
    ("llama", {"kv_heads": 4}),  # no grouped-query attention
    ("llama", {"attention_bias": True, "mlp_bias": True}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
    ("mistral", {}),
    ("qwen2", {}),  # q/k/v biases
])
def test_fused_forward_matches_the_model_forward(kind, extra):
    model = _model(kind, **extra)
    assert fused_support(model) is None
    ids, mask = _batch()
    expected = _hf_logits(model, ids, mask)
    got = FusedLlama.of(model).forward(ids, mask, position_ids_from_mask(mask))
    real = mask.bool()  # padded positions' outputs are never used
    assert got.shape == expected.shape
    assert torch.allclose(got[real], expected[real], atol=1e-4), (got[real] - expected[real]).abs().max()


def test_fused_forward_through_lora_adapters_on_and_off():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model(), peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                           target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"]))
    ids, mask = _batch()
    real = mask.bool()
    on = FusedLlama.of(model).forward(ids, mask, position_ids_from_mask(mask))
    assert torch.allclose(on[real], _hf_logits(model, ids, mask)[real], atol=1e-4)
    with model.disable_adapter():
        off = FusedLlama.of(model).forward(ids, mask, position_ids_from_mask(mask))
        assert torch.allclose(off[real], _hf_logits(model, ids, mask)[real], atol=1e-4)
    assert (on[real] - off[real]).abs().max() > 1e-2  # the adapter changes the logits


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_every_decode_step_matches_a_teacher_forced_forward(kind):
    model = _model(kind)
    ids, mask = left_pad_batch(PROMPTS, PAD)
    tokens = torch.randint(3, 64, (len(PROMPTS), 7), generator=torch.Generator().manual_seed(0))
    decoder = FusedLlama.of(model).decoder(ids, mask, max_new_tokens=8)
    steps = [decoder.prefill()] + [decoder.step(tokens[:, t]) for t in range(tokens.shape[1])]
    full_ids = torch.cat([ids, tokens], 1)
    full_mask = torch.cat([mask, torch.ones_like(tokens)], 1)
    expected = _hf_logits(model, full_ids, full_mask)[:, ids.shape[1] - 1:]
    got = torch.stack(steps, 1)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("eos", [EOS, 63, [7, 9]])
def test_fused_greedy_tokens_equal_the_lean_loop(eos):
    model = _model()
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, do_sample=False)
    lean = generate_rollout(model, ids, mask, engine="lean", **kwargs)
    fused = generate_rollout(model, ids, mask, engine="fused", **kwargs)
    assert torch.equal(lean.sequences, fused.sequences)
    assert torch.equal(lean.response_mask, fused.response_mask)


def test_fused_sampling_draws_what_the_lean_loop_draws_under_the_same_seed():
    model = _model()
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, temperature=1.3, top_k=20)
    lean = generate_rollout(model, ids, mask, engine="lean", generator=torch.Generator().manual_seed(3), **kwargs)
    fused = generate_rollout(model, ids, mask, engine="fused", generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(lean.sequences, fused.sequences)


def test_the_fused_copy_is_reused_until_a_weight_or_the_adapter_state_changes():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                           init_lora_weights=False))
    first = FusedLlama.of(model)
    assert FusedLlama.of(model) is first
    with model.disable_adapter():
        assert FusedLlama.of(model) is not first  # the reference (adapters off) is another copy
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids, mask = _batch()
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    rebuilt = FusedLlama.of(model)
    optimizer.step()  # an in-place update bumps the weights' versions
    after = FusedLlama.of(model)
    assert after is not rebuilt and FusedLlama.of(model) is after
    real = mask.bool()
    assert torch.allclose(after.forward(ids, mask, position_ids_from_mask(mask))[real],
                          _hf_logits(model, ids, mask)[real], atol=1e-4)


def test_a_rebuild_frees_the_stale_copy_first(monkeypatch, layout):
    """Memory: at most one fused copy per model lives at a time (the stale one is gone before the next is
    built); unpacked, the LM head is the model's own weight, not a copy."""
    onednn = layout == "onednn"
    import gc
    import weakref

    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                           init_lora_weights=False))
    policy = FusedLlama.of(model)
    if onednn:
        assert isinstance(policy.lm_head, fused_mod._BlockedWeight) and isinstance(policy.layers[0][1], fused_mod._BlockedWeight)
    else:
        assert policy.lm_head[0].data_ptr() == model.get_base_model().lm_head.weight.data_ptr()
    stale = weakref.ref(policy)
    del policy
    alive_at_build = []
    build = FusedLlama.__init__

    def watched(self, core):
        gc.collect()
        alive_at_build.append(stale() is not None)
        build(self, core)

    monkeypatch.setattr(FusedLlama, "__init__", watched)
    with model.disable_adapter():
        reference = weakref.ref(FusedLlama.of(model))  # the reference: adapters off, another copy
    assert alive_at_build == [False]
    FusedLlama.release_all()  # what the export does once nothing decodes any more
    gc.collect()
    assert reference() is None


def test_sequence_logprobs_uses_the_fused_pass_only_without_grad():
    model = _model()
    ids, mask = _batch()
    response_start = len(max(PROMPTS, key=len))
    response_mask = mask[:, response_start:]
    with torch.no_grad():
        fused = sequence_logprobs(model, ids, mask, response_start, response_mask)
        plain = sequence_logprobs(model, ids, mask, response_start, response_mask, fused=False)
    assert torch.allclose(fused, plain, atol=1e-5)
    with torch.no_grad():
        assert speed_mod._fused_scoring(model, "auto") is True
    assert speed_mod._fused_scoring(model, "auto") is False  # grad is on here: the model's forward runs
    with_grad = sequence_logprobs(model, ids, mask, response_start, response_mask)
    assert with_grad.requires_grad and torch.allclose(with_grad.detach(), plain, atol=1e-6)
    with pytest.raises(ValueError, match="fused=True cannot score this model: grad is enabled"):
        sequence_logprobs(model, ids, mask, response_start, response_mask, fused=True)


def test_unsupported_models_and_adapters_are_named():
    peft = pytest.importorskip("peft")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    assert "model_type 'gpt2'" in fused_support(gpt2)
    dora = peft.get_peft_model(_model(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], use_dora=True))
    assert "LoRA variant" in fused_support(dora)
    dropout = peft.get_peft_model(_model(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                             lora_dropout=0.1))
    assert fused_support(dropout.eval()) is None  # dropout is off in eval mode
    assert "LoRA dropout 0.1 in train mode" in fused_support(dropout.train())
    with torch.no_grad():  # auto falls back to the model's forward for all of them
        assert speed_mod._fused_scoring(dropout, "auto") is False


def test_a_grouped_batch_decodes_as_the_lean_loop_does():
    # every prompt twice (a GRPO group of 2): the prefill runs each prompt once and shares its cache
    model = _model()
    ids, mask = left_pad_batch([p for p in PROMPTS for _ in range(2)], PAD)
    kwargs = dict(max_new_tokens=9, eos_token_id=EOS, pad_token_id=PAD)
    for sampling in (dict(do_sample=False), dict(temperature=1.2)):
        lean = generate_rollout(model, ids, mask, engine="lean", generator=torch.Generator().manual_seed(5),
                                **kwargs, **sampling)
        fused = generate_rollout(model, ids, mask, engine="fused", generator=torch.Generator().manual_seed(5),
                                 **kwargs, **sampling)
        assert torch.equal(lean.sequences, fused.sequences)
    assert not torch.equal(fused.response_ids[0], fused.response_ids[1])  # a group's samples differ
