"""The lean decode loop against transformers' generate, engine choice, and the optional vLLM engine's guards
(the fused engine's own checks are in tests/test_fused_llama.py)."""

import subprocess
import sys

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from alignbench.rl import rollout as rollout_mod
from alignbench.rl.rollout import generate_rollout, left_pad_batch

PAD, EOS = 0, 2
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [3, 4], [14, 15, 16, 17]]


def _llama(seed=0, initializer_range=0.2, kv_heads=2):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                         pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS,
                         initializer_range=initializer_range)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model():
    return _llama()


def _both(model, ids, mask, **kwargs):
    out = {}
    for engine in ("hf", "lean"):
        out[engine] = generate_rollout(model, ids, mask, engine=engine, **kwargs)
    return out["hf"], out["lean"]


def test_auto_picks_fused_for_llama_on_cpu_and_lean_for_other_lms(model):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert rollout_mod._resolve_engine("auto", model) == "fused"
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)).eval()
    assert rollout_mod._resolve_engine("auto", gpt2) == "lean"
    with pytest.raises(ValueError, match="engine 'fused' cannot decode this model: model_type 'gpt2'"):
        rollout_mod._resolve_engine("fused", gpt2)
    with pytest.raises(ValueError, match="engine"):
        rollout_mod._resolve_engine("fast", model)


@pytest.mark.parametrize("eos", [EOS, 63, [7, 9]])
def test_lean_greedy_equals_hf_greedy_exactly(model, eos):
    ids, mask = left_pad_batch(PROMPTS, PAD)
    hf, lean = _both(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, do_sample=False)
    assert torch.equal(hf.sequences, lean.sequences)
    assert torch.equal(hf.response_mask, lean.response_mask)


def test_lean_stops_when_every_row_has_finished(model):
    ids, mask = left_pad_batch(PROMPTS, PAD)
    free = generate_rollout(model, ids, mask, max_new_tokens=8, eos_token_id=63, pad_token_id=PAD,
                            do_sample=False)
    # make every row's first token its EOS: both engines stop after one step
    eos = sorted(set(free.response_ids[:, 0].tolist()))
    hf, lean = _both(model, ids, mask, max_new_tokens=8, eos_token_id=eos, pad_token_id=PAD, do_sample=False)
    assert lean.response_ids.shape == hf.response_ids.shape == (len(PROMPTS), 1)
    assert torch.equal(hf.sequences, lean.sequences)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8),
                                      dict(temperature=1.3, top_k=10, top_p=0.9)])
def test_lean_sampling_draws_what_hf_draws_under_the_same_seed(sampling):
    model = _llama(initializer_range=0.05)  # flat logits: samples differ from greedy
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, **sampling)
    hf = generate_rollout(model, ids, mask, engine="hf", generator=torch.Generator().manual_seed(3), **kwargs)
    lean = generate_rollout(model, ids, mask, engine="lean", generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(hf.sequences, lean.sequences)


def test_lean_on_a_peft_model_and_with_adapters_switched():
    peft = pytest.importorskip("peft")
    base = _llama()
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, do_sample=False)
    hf, lean = _both(lora, ids, mask, **kwargs)
    assert torch.equal(hf.sequences, lean.sequences)
    with lora.disable_adapter():
        hf_off, lean_off = _both(lora, ids, mask, **kwargs)
    assert torch.equal(hf_off.sequences, lean_off.sequences)
    assert not torch.equal(lean.sequences, lean_off.sequences)  # the adapter does change the answers


def test_preallocated_cache_matches_dynamic_cache(model):
    # the same loop with transformers' concatenating cache gives the same tokens
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, do_sample=False)
    lean = generate_rollout(model, ids, mask, engine="lean", **kwargs)
    original = rollout_mod._rollout_cache
    try:
        rollout_mod._rollout_cache = lambda m, capacity: DynamicCache(config=m.config)
        dynamic = generate_rollout(model, ids, mask, engine="lean", **kwargs)
    finally:
        rollout_mod._rollout_cache = original
    assert torch.equal(lean.sequences, dynamic.sequences)


def test_vllm_is_never_imported_without_a_gpu():
    # a fresh interpreter: asking for vllm on a machine without vLLM or a GPU falls back to the lean loop
    code = (
        "import sys, torch, warnings\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "from alignbench.rl.rollout import generate_rollout, left_pad_batch\n"
        "m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,"
        " num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)).eval()\n"
        "ids, mask = left_pad_batch([[3, 4, 5]], 0)\n"
        "with warnings.catch_warnings(record=True):\n"
        "    warnings.simplefilter('always')\n"
        "    r = generate_rollout(m, ids, mask, max_new_tokens=3, eos_token_id=2, pad_token_id=0, engine='vllm')\n"
        "assert r.response_ids.shape[0] == 1\n"
        "print('vllm' in sys.modules)\n"
    )
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the vLLM engine may legitimately be used")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_merged_state_dict_is_what_the_adapted_model_computes():
    # the weights the vLLM engine would load: a bare model with them gives the adapted model's logits
    peft = pytest.importorskip("peft")
    from alignbench.rl.engines import merged_state_dict

    lora = peft.get_peft_model(_llama(), peft.LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                                          target_modules=["q_proj", "v_proj", "down_proj"]))
    ids = torch.tensor([[5, 6, 7, 8]])
    bare = _llama(seed=1)
    for adapters_on in (True, False):
        if adapters_on:
            expected = lora(input_ids=ids).logits
            weights = merged_state_dict(lora)
        else:
            with lora.disable_adapter():
                expected = lora(input_ids=ids).logits
                weights = merged_state_dict(lora)
        missing, unexpected = bare.load_state_dict(weights, strict=False)
        assert not unexpected and not [k for k in missing if k != "lm_head.weight"]
        torch.testing.assert_close(bare(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_sequence_logprobs_entropy_is_entropy_from_logits(model):
    from alignbench.rl.losses import entropy_from_logits
    from alignbench.rl.logprobs import sequence_logprobs

    ids, mask = left_pad_batch(PROMPTS, PAD)
    responses = torch.randint(3, 64, (len(PROMPTS), 5), generator=torch.Generator().manual_seed(0))
    sequences, attention = torch.cat([ids, responses], 1), torch.cat([mask, torch.ones_like(responses)], 1)
    for temperature in (1.0, 0.7):
        _, entropy, logits = sequence_logprobs(model, sequences, attention, ids.shape[1], torch.ones_like(responses),
                                               temperature=temperature, return_entropy=True, return_logits=True)
        torch.testing.assert_close(entropy, entropy_from_logits(logits))
