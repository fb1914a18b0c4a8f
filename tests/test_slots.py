"""Continuous batching (``alignbench.rl.slots``) against static batching's fused decoder.

A small random Llama decodes prompts of different lengths; the EOS id is one the model emits often, so
answers end at different steps and slots are refilled (and compacted once the prompts run out).
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from alignbench.rl.fused_llama import FusedLlama
from alignbench.rl.rollout import generate_rollout, left_pad_batch
from alignbench.rl.slots import SlotDecoder, generate_continuous, shared_prefix

NEW = 20


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 50, (int(torch.randint(2, 12, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(11)]
    ids, mask = left_pad_batch(rows, 0)
    first = generate_rollout(model, ids, mask, max_new_tokens=NEW, eos_token_id=49, pad_token_id=0,
                             do_sample=False, engine="fused")
    counts = torch.bincount(first.response_ids.flatten(), minlength=50)
    counts[0] = 0
    return model, rows, int(counts.argmax())  # the most frequent greedy token serves as EOS


def _answers(ids, mask):
    return [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]


def _continuous(model, rows, eos, slots, **sampling):
    sampling.setdefault("do_sample", False)
    return _answers(*generate_continuous(model, rows, slots=slots, max_new_tokens=NEW, eos_token_id=eos,
                                         pad_token_id=0, **sampling))


def test_greedy_answers_equal_static_batching_and_do_not_depend_on_their_slot_companions(setup):
    model, rows, eos = setup
    static = []
    for start in range(0, len(rows), 4):
        ids, mask = left_pad_batch(rows[start:start + 4], 0)
        rollout = generate_rollout(model, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0,
                                   do_sample=False, engine="fused")
        static += _answers(rollout.response_ids, rollout.response_mask)
    lengths = {len(answer) for answer in static}
    assert len(lengths) >= 3 and NEW in lengths and min(lengths) < NEW // 2  # answers end at different steps
    continuous = _continuous(model, rows, eos, slots=4)  # 11 prompts through 4 slots: 7 refills
    assert continuous == static
    assert _continuous(model, rows, eos, slots=3) == static
    assert [_continuous(model, [row], eos, slots=1)[0] for row in rows] == static  # each prompt alone


def test_a_prefix_every_prompt_shares_runs_once_and_changes_no_answer(setup):
    model, rows, eos = setup
    common = [7, 8, 9, 10, 11]
    prefixed = [common + row for row in rows] + [common + [12]]
    assert shared_prefix(prefixed) == common and shared_prefix([[1, 2], [1, 2, 3]]) == [1]  # the last token runs
    ids, mask = left_pad_batch(prefixed, 0)
    rollout = generate_rollout(model, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0,
                               do_sample=False, engine="fused")
    assert _continuous(model, prefixed, eos, slots=4) == _answers(rollout.response_ids, rollout.response_mask)
    decoder = SlotDecoder(FusedLlama.of(model), 2, 40, torch.device("cpu"), prefix=common)
    decoder.admit([0, 1], prefixed[:2])
    assert decoder.prefilled_tokens == len(common) + len(rows[0]) + len(rows[1])
    with pytest.raises(ValueError, match="must start with the decoder's prefix"):
        decoder.admit([0], [rows[0]])


def test_sampling_is_seeded_and_top_k_one_samples_the_greedy_answers(setup):
    model, rows, eos = setup

    def sampled(seed, **extra):
        return _continuous(model, rows, eos, slots=3, do_sample=True, generator=torch.Generator().manual_seed(seed),
                           **extra)

    assert sampled(5) == sampled(5)
    assert sampled(5) != sampled(6)
    assert sampled(5, top_k=1) == _continuous(model, rows, eos, slots=3)


def test_a_prompt_admitted_twice_at_once_is_prefilled_once(setup):
    model, rows, _ = setup
    decoder = SlotDecoder(FusedLlama.of(model), 3, 40, torch.device("cpu"))
    scores = decoder.admit([0, 1, 2], [rows[0], rows[1], rows[0]])
    assert decoder.prefilled_tokens == len(rows[0]) + len(rows[1])
    assert torch.equal(scores[0], scores[2]) and not torch.equal(scores[0], scores[1])
    assert decoder.length.tolist() == [len(rows[0]), len(rows[1]), len(rows[0])]
    for keys in decoder.cache.keys:
        assert torch.equal(keys[:len(rows[0]), 0], keys[:len(rows[0]), 2])


def test_the_harness_decodes_continuously_with_the_texts_of_static_batching():
    from types import SimpleNamespace

    from alignbench.config import GenerationConfig, ModelConfig
    from alignbench.data.world import SafetyWorld
    from alignbench.eval.harness import generate_texts
    from alignbench.models.loading import load_base
    from alignbench.models.text import TextLimits

    world = SafetyWorld()
    model_cfg = ModelConfig()
    model, tokenizer = load_base(model_cfg, vocabulary=world.vocabulary(), seed=0)

    def decode(ids, mask):
        return [tokenizer.decode([t for t, m in zip(row, keep) if m], skip_special_tokens=True)
                for row, keep in zip(ids.tolist(), mask.tolist())]

    ctx = SimpleNamespace(tokenizer=tokenizer, model_cfg=model_cfg, device=torch.device("cpu"),
                          limits=TextLimits.for_model(model_cfg), decode=decode)
    prompts = [record.prompt for record in world.prompts("eval")[:13]]
    generation = GenerationConfig(max_new_tokens=12, do_sample=False)
    texts = {batching: generate_texts(ctx, model, prompts, generation, batch_size=5, seed=0, batching=batching)
             for batching in ("static", "continuous")}
    assert texts["continuous"] == texts["static"]
    assert sum(bool(text.strip()) for text in texts["static"][0]) == len(prompts)
    with pytest.raises(ValueError, match="batching must be one of"):
        generate_texts(ctx, model, prompts, generation, batch_size=5, seed=0, batching="dynamic")
