"""Rollouts on a tiny random Llama: padding invariance, greedy batching, EOS masks, seeding."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignbench.rl import rollout as rollout_mod
from alignbench.rl.logprobs import sequence_logprobs
from alignbench.rl.rollout import (
    generate_rollout,
    left_pad_batch,
    truncate_after_eos,
)

PAD, EOS = 0, 2
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [3, 4]]


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=EOS,
        initializer_range=0.2,  # peaked logits: greedy argmax is far from ties
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model():
    return _tiny_llama()


def _single(prompt):
    return torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long)


def test_left_pad_batch():
    ids, mask = left_pad_batch([[5, 6], [7], [1, 2, 3]], pad_id=0)
    assert ids.tolist() == [[0, 5, 6], [0, 0, 7], [1, 2, 3]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    with pytest.raises(ValueError):
        left_pad_batch([[1], []], pad_id=0)


def test_truncate_after_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    out, mask = truncate_after_eos(ids, eos_token_id=2, pad_token_id=0)
    assert out.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    # several EOS ids (e.g. <eos> and <|eot_id|>)
    out, mask = truncate_after_eos(ids, eos_token_id=[7, 9], pad_token_id=0)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]]


def test_logprobs_of_padded_row_equal_unpadded(model):
    torch.manual_seed(1)
    responses = torch.randint(3, 64, (3, 4))
    ids, mask = left_pad_batch(PROMPTS, PAD)
    sequences = torch.cat([ids, responses], dim=1)
    attention = torch.cat([mask, torch.ones_like(responses)], dim=1)
    resp_mask = torch.ones_like(responses)
    logp, entropy = sequence_logprobs(
        model, sequences, attention, ids.shape[1], resp_mask, return_entropy=True
    )
    assert logp.shape == entropy.shape == (3, 4)
    assert bool((entropy > 0).all()) and bool((entropy <= torch.log(torch.tensor(64.0))).all())

    for row, prompt in enumerate(PROMPTS):
        seq = torch.cat([torch.tensor(prompt), responses[row]]).unsqueeze(0)
        alone = sequence_logprobs(model, seq, torch.ones_like(seq), len(prompt), resp_mask[:1])
        torch.testing.assert_close(logp[row : row + 1], alone, atol=1e-5, rtol=0)
        # alignment: token t of the response is scored by the logits at position P + t - 1
        with torch.no_grad():
            full = torch.log_softmax(model(seq).logits[0], dim=-1)
        p = len(prompt)
        expected = torch.stack([full[p + t - 1, responses[row, t]] for t in range(4)])
        torch.testing.assert_close(alone[0], expected, atol=1e-5, rtol=0)


def test_logprobs_mask_temperature_and_fallback_path(model, monkeypatch):
    torch.manual_seed(2)
    ids, mask = left_pad_batch(PROMPTS, PAD)
    responses = torch.randint(3, 64, (3, 5))
    resp_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    sequences = torch.cat([ids, responses], dim=1)
    attention = torch.cat([mask, resp_mask], dim=1)
    args = (model, sequences, attention, ids.shape[1], resp_mask)
    logp, logits = sequence_logprobs(*args, temperature=2.0, return_logits=True)
    assert logits.shape == (3, 5, 64)
    assert bool((logp[resp_mask == 0] == 0).all()) and bool((logp[resp_mask == 1] < 0).all())
    # temperature divides the logits before the softmax
    cold = sequence_logprobs(*args, return_logits=True)[1]
    torch.testing.assert_close(logits, cold / 2.0)
    # a model without `logits_to_keep` gets the full logits, sliced afterwards: same numbers
    monkeypatch.setattr(rollout_mod, "_accepts_logits_to_keep", lambda m: False)
    torch.testing.assert_close(sequence_logprobs(*args, temperature=2.0), logp)


def test_greedy_batch_equals_per_row_greedy(model):
    ids, mask = left_pad_batch(PROMPTS, PAD)
    batch = generate_rollout(
        model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, do_sample=False
    )
    assert batch.sequences.shape == batch.attention_mask.shape
    assert torch.equal(batch.sequences[:, : ids.shape[1]], ids)
    for row, prompt in enumerate(PROMPTS):
        alone = generate_rollout(
            model, *_single(prompt), max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD,
            do_sample=False,
        )
        n = alone.num_generated_tokens
        assert batch.response_mask[row].sum().item() == n
        assert torch.equal(batch.response_ids[row, :n], alone.response_ids[0, :n])


def test_response_mask_stops_after_eos(model):
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=6, pad_token_id=PAD, do_sample=False)
    free = generate_rollout(model, ids, mask, eos_token_id=63, **kwargs)
    assert free.num_generated_tokens == 3 * 6  # precondition: 63 is never emitted here
    # declare the token row 2 emits third as EOS: greedy decoding is unchanged up to it
    eos = int(free.response_ids[2, 2])
    first = int((free.response_ids[2] == eos).nonzero()[0])
    stopped = generate_rollout(model, ids, mask, eos_token_id=eos, **kwargs)
    assert stopped.response_mask[2].tolist()[: first + 1] == [1] * (first + 1)
    assert stopped.response_mask[2, first + 1 :].sum().item() == 0
    assert bool((stopped.response_ids[2, first + 1 :] == PAD).all())
    assert torch.equal(stopped.response_ids[2, : first + 1], free.response_ids[2, : first + 1])
    assert torch.equal(stopped.attention_mask[:, ids.shape[1] :], stopped.response_mask)


def test_sampling_reproducible_with_seed(model):
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(123)
    a = generate_rollout(model, ids, mask, **kwargs)
    torch.manual_seed(123)
    b = generate_rollout(model, ids, mask, **kwargs)
    assert torch.equal(a.sequences, b.sequences)

    state = torch.get_rng_state()
    c = generate_rollout(model, ids, mask, generator=torch.Generator().manual_seed(7), **kwargs)
    d = generate_rollout(model, ids, mask, generator=torch.Generator().manual_seed(7), **kwargs)
    e = generate_rollout(model, ids, mask, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(c.sequences, d.sequences)
    assert not torch.equal(c.sequences, e.sequences)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not consumed


def test_train_mode_restored_and_right_padding_rejected(model):
    ids, mask = left_pad_batch(PROMPTS, PAD)
    model.train()
    try:
        generate_rollout(model, ids, mask, max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)
        assert model.training
    finally:
        model.eval()
    right_ids, right_mask = ids.flip(1), mask.flip(1)
    with pytest.raises(ValueError, match="left-padded"):
        generate_rollout(
            model, right_ids, right_mask, max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD
        )


def test_peft_model():
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        _tiny_llama(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    ids, mask = left_pad_batch(PROMPTS, PAD)
    roll = generate_rollout(
        lora, ids, mask, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD, do_sample=False
    )
    args = (roll.sequences, roll.attention_mask, roll.response_start, roll.response_mask)
    logp = sequence_logprobs(lora, *args)
    # LoRA B is zero-initialised: same log-probs as the bare model
    with lora.disable_adapter():
        base = sequence_logprobs(lora, *args)
    torch.testing.assert_close(logp, base)
    assert logp.requires_grad


def test_checkpoint_generation_config_does_not_reshape_sampling(model):
    # a checkpoint may ship repetition_penalty / no_repeat_ngram_size: they must not leak in
    ids, mask = left_pad_batch(PROMPTS, PAD)
    kwargs = dict(max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, do_sample=False)
    plain = generate_rollout(model, ids, mask, **kwargs)
    saved = model.generation_config
    model.generation_config = saved.__class__(repetition_penalty=10.0, no_repeat_ngram_size=1)
    try:
        shipped = generate_rollout(model, ids, mask, **kwargs)
    finally:
        model.generation_config = saved
    assert torch.equal(plain.sequences, shipped.sequences)
