"""Row micro-batches (``model.micro_batch_rows``, ``alignbench.models.row_chunks``) on a SmolLM2-shaped model
(its hidden, MLP and head sizes, 2 layers): scoring without grad gives the whole pass's values to the bit,
passes with grad the same losses to the bit and LoRA gradients equal up to float rounding, and no pass
holds more rows than asked."""

from __future__ import annotations

import pytest
import torch

from alignbench.algorithms.preference import reward_model_loss
from alignbench.algorithms.sft import response_cross_entropy
from alignbench.config import LoraConfig, ModelConfig
from alignbench.models.heads import last_token_scores
from alignbench.models.roles import RoleSet, RoleSpec

VOCAB = 512
ROWS, WIDTH = 12, 48
# gradients: sums over the same rows in another order, float rounding of sums of ~10^3 products (fp32 eps
# 1.2e-7); a wrong adapter or a missing chunk is off by O(1)
TOLERANCE = 1e-5


def _roles(micro_batch_rows: int, checkpointing: bool = False) -> RoleSet:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=VOCAB, max_position_embeddings=256,
                         tie_word_embeddings=True)
    base = LlamaForCausalLM(config).eval()  # a pretrained model loads in eval mode
    if checkpointing:
        base.gradient_checkpointing_enable()
    cfg = ModelConfig(lora=LoraConfig(r=4, alpha=8), micro_batch_rows=micro_batch_rows,
                      gradient_checkpointing=checkpointing)
    roles = RoleSet(base, [RoleSpec("policy"), RoleSpec("reward_model", "score"), RoleSpec("cost_model", "score")],
                    cfg)
    with torch.no_grad():  # adapters and heads away from their zero init, the same in every RoleSet
        for name, param in roles.named_parameters():
            if param.requires_grad:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return roles


def _batch() -> dict[str, torch.Tensor]:
    """Left-padded rows of different lengths (most of the width padding, as the world's batches), the
    second half of each row the response."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, VOCAB, (ROWS, WIDTH), generator=generator)
    lengths = torch.randint(6, WIDTH + 1, (ROWS,), generator=generator)
    lengths[0] = WIDTH
    positions = torch.arange(WIDTH)
    attention = (positions >= WIDTH - lengths[:, None]).long()
    response = (positions >= WIDTH - lengths[:, None] // 2).long()
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def _rows_per_pass(roles: RoleSet) -> list[int]:
    """Rows of every batch decoder layer 0's q projection sees (forwards and recomputes)."""
    seen: list[int] = []
    q_proj = roles.peft.base_model.model.model.layers[0].self_attn.q_proj
    q_proj.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    return seen


def _gradients(roles: RoleSet, role: str) -> list[torch.Tensor]:
    return [p.grad.clone() for p in roles.parameters_of(role)]


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Every gradient within ``TOLERANCE`` of the whole pass's, relative to its norm."""
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert w.abs().sum() > 0
        assert float((g - w).norm() / w.norm()) <= TOLERANCE, float((g - w).norm() / w.norm())


@pytest.mark.parametrize("rows", [1, 5])
def test_scoring_without_grad_in_row_chunks_is_the_whole_pass_to_the_bit(rows):
    batch = _batch()
    whole, chunked = _roles(0), _roles(rows)
    seen = _rows_per_pass(chunked)
    with torch.no_grad():
        expected = whole.scores("reward_model", batch["input_ids"], batch["attention_mask"])
        got = chunked.scores("reward_model", batch["input_ids"], batch["attention_mask"])
        logits = whole.lm_logits("policy", batch["input_ids"], batch["attention_mask"])
        chunked_logits = chunked.lm_logits("policy", batch["input_ids"], batch["attention_mask"])
    assert max(seen) == rows and len(seen) == 2 * -(-ROWS // rows)
    assert torch.equal(got, expected)  # padding positions too: every row is computed on its own
    assert torch.equal(chunked_logits, logits)


def test_reward_model_step_in_micro_batches_same_loss_gradients_up_to_rounding():
    batch = _batch()
    half = ROWS // 2

    def step(roles: RoleSet) -> torch.Tensor:
        scores = last_token_scores(roles.scores("reward_model", batch["input_ids"], batch["attention_mask"]),
                                   batch["attention_mask"])
        loss = reward_model_loss(scores[:half], scores[half:])
        loss.backward()
        return loss.detach()

    whole, chunked = _roles(0), _roles(4)
    seen = _rows_per_pass(chunked)
    expected, loss = step(whole), step(chunked)
    assert seen == [4] * 6  # 3 chunks without grad, each again with grad in backward
    assert torch.equal(loss, expected)
    grads = _gradients(chunked, "reward_model")
    assert len(grads) == 2 * 4 * 2 + 2  # LoRA A and B of q/k/v/o in 2 layers, the head's weight and bias
    _assert_close(grads, _gradients(whole, "reward_model"))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sft_loss_in_micro_batches_same_loss_gradients_up_to_rounding(checkpointing):
    batch = _batch()
    whole, chunked = _roles(0, checkpointing), _roles(5, checkpointing)
    seen = _rows_per_pass(chunked)
    expected = response_cross_entropy(whole, "policy", batch)
    loss = response_cross_entropy(chunked, "policy", batch)
    assert torch.equal(loss, expected)
    expected.backward()
    loss.backward()
    # without grad 5 + 5 + 2 rows; backward runs each chunk again (and, checkpointed, each layer a third time)
    assert seen == [5, 5, 2] + ([5, 5, 5, 5, 2, 2] if checkpointing else [5, 5, 2])
    _assert_close(_gradients(chunked, "policy"), _gradients(whole, "policy"))


def test_backward_after_another_roles_pass_recomputes_with_the_passs_own_adapter():
    # one backward over two roles' passes (critics after a policy pass): each chunk is run again under
    # the adapter that made it, not the one switched on last
    batch = _batch()

    def losses(roles: RoleSet) -> None:
        reward = roles.scores("reward_model", batch["input_ids"], batch["attention_mask"])
        cost = roles.scores("cost_model", batch["input_ids"], batch["attention_mask"])
        ((reward * batch["attention_mask"]).sum() - (cost * batch["attention_mask"]).pow(2).mean()).backward()

    whole, chunked = _roles(0), _roles(7)
    losses(whole)
    losses(chunked)
    for role in ("reward_model", "cost_model"):
        _assert_close(_gradients(chunked, role), _gradients(whole, role))


def test_a_batch_within_the_micro_batch_is_one_plain_pass():
    batch = _batch()
    roles = _roles(ROWS)
    seen = _rows_per_pass(roles)
    roles.scores("reward_model", batch["input_ids"], batch["attention_mask"]).sum().backward()
    assert seen == [ROWS]  # no chunks, no second forward
