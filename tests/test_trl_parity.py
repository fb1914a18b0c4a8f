"""alignbench's GRPO update and TRL's on one batch: the same loss and the same gradients.

``benchmarks/rl_step.py --compare trl`` times alignbench's GRPO iteration against TRL 1.16's GRPOTrainer;
the ratio means something only if both sides optimise the same objective. Here both get one batch built
by hand on the benchmark's workload (its tiny model, prompts and group; responses of mixed lengths, so
alignbench scores them padding-free over shared prompts, its fast path), the same advantages and the same
reference log-probs, and compute the loss and its gradient: alignbench by the benchmark's
``AlignbenchGRPO.loss`` (``rl.experience.actor_loss``), TRL by ``GRPOTrainer._compute_loss`` under the
benchmark's ``trl_grpo_config``, in full fine-tuning and with LoRA. TRL's own default,
``use_bias_correction_kl=True``, is checked against its closed form: alignbench's gradient plus
beta * mean(k3 * grad log pi).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT

pytest.importorskip("trl")
import torch  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import rl_step  # noqa: E402

LENGTHS = [8, 3, 6, 1, 8, 5, 2, 7]  # 4 prompts x 2 samples; 40 of 64 response cells real


def workload_args(mode: str) -> SimpleNamespace:
    return SimpleNamespace(model="tiny_llama", mode=mode, prompts=4, group=2, new_tokens=8, beta=0.04, lora_r=4,
                           hidden=64, intermediate=128, layers=2, heads=4, engine="auto", threads=1)


@pytest.fixture(scope="module")
def saved_workload(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity") / "model"
    tokenizer, prompts, _, _ = rl_step.build_workload(workload_args("full"), folder)
    return folder, tokenizer, prompts


def one_batch(ours, tokenizer):
    """A rollout of the benchmark's prompts x group with responses of ``LENGTHS`` tokens, advantages,
    reference log-probs (well away from the policy's, so the KL term's gradient is large)."""
    from alignbench.models.text import encode_prompts
    from alignbench.rl.experience import Experience
    from alignbench.rl.rollout import Rollout

    ids, mask = encode_prompts(tokenizer, ours.model_cfg, ours.prompts, limits=ours.ctx.limits)
    generator = torch.Generator().manual_seed(1)
    steps = max(LENGTHS)
    real = (torch.arange(steps)[None] < torch.tensor(LENGTHS)[:, None]).long()
    special = len(tokenizer.all_special_ids)
    response = torch.randint(special, len(tokenizer), (len(LENGTHS), steps), generator=generator)
    response = response.masked_fill(real == 0, tokenizer.pad_token_id)
    rollout = Rollout(prompt_ids=ids, prompt_mask=mask, response_ids=response, response_mask=real,
                      sequences=torch.cat([ids, response], 1), attention_mask=torch.cat([mask, real], 1))
    advantages = torch.randn(len(LENGTHS), generator=generator)
    reference = -5 * torch.rand(len(LENGTHS), steps, generator=generator) * real
    return Experience(rollout, [""] * len(LENGTHS), None, reference), advantages


def trl_trainer(args, folder, tokenizer, prompts, tmp_path, **overrides):
    """The benchmark's trainer (``rl_step.trl_trainer``), ready for one ``_compute_loss`` in train mode."""
    config = rl_step.trl_grpo_config(args, str(tmp_path / "trl"), gradient_checkpointing=False, **overrides)
    trainer = rl_step.trl_trainer(args, folder, tokenizer, prompts, config,
                                  reward=lambda completions, **kwargs: [0.0] * len(completions))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by its training loop: one micro-batch per step, as timed
    return trainer


def trl_loss_and_grads(trainer, exp, advantages):
    rollout = exp.rollout
    inputs = dict(prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask, completion_ids=rollout.response_ids,
                  completion_mask=rollout.response_mask, advantages=advantages, ref_per_token_logps=exp.ref_logp,
                  num_items_in_batch=rollout.response_mask.sum())
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.item(), {name.removeprefix("base_model.model.").replace(".default.", ".policy."): p.grad
                         for name, p in trainer.model.named_parameters() if p.requires_grad}


def alignbench_grads(ours) -> dict[str, torch.Tensor]:
    with ours.roles.use("policy") as model:
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def same_adapters(ours, trainer) -> None:
    """Both sides' LoRA weights set to the same random values (peft starts B at 0, which would leave
    A's gradient 0 on both sides and the check blind to it)."""
    generator = torch.Generator().manual_seed(2)
    with ours.roles.use("policy") as model:
        ours_params = dict(model.named_parameters())
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_" in name:
                value = 0.1 * torch.randn(param.shape, generator=generator)
                param.copy_(value)
                ours_params[name.removeprefix("base_model.model.").replace(".default.", ".policy.")].copy_(value)


def assert_same_grads(ours: dict, theirs: dict, tolerance: float = 1e-4) -> None:
    """Equal to float32 rounding: each tensor's largest difference within ``tolerance`` of its largest entry."""
    assert sorted(ours) == sorted(theirs)
    for name, grad in theirs.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert (ours[name] - grad).abs().max().item() <= tolerance * scale, name


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_alignbench_and_trl_compute_the_same_grpo_loss_and_gradients(saved_workload, tmp_path, mode):
    from alignbench.rl.speed import PACKED_MIN_PAD_SHARE
    from alignbench.rl.logprobs import shared_prompt_groups
    from alignbench.rl.packed import packed_support

    folder, tokenizer, prompts = saved_workload
    args = workload_args(mode)
    ours = rl_step.AlignbenchGRPO(args, folder, tokenizer, prompts)
    exp, advantages = one_batch(ours, tokenizer)
    trainer = trl_trainer(args, folder, tokenizer, prompts, tmp_path)
    if mode == "lora":
        same_adapters(ours, trainer)
    # alignbench's fast path runs: prompts shared within groups, responses packed (auto: pad share, a supported model)
    rollout = exp.rollout
    assert shared_prompt_groups(rollout.sequences, rollout.attention_mask, rollout.response_start) is not None
    assert 1 - sum(LENGTHS) / rollout.response_mask.numel() >= PACKED_MIN_PAD_SHARE
    with ours.roles.use("policy") as model:
        assert packed_support(model) is None

    loss = ours.loss(exp, advantages[:, None] * exp.mask)
    loss.backward()
    trl_loss, trl_grads = trl_loss_and_grads(trainer, exp, advantages)
    assert loss.item() == pytest.approx(trl_loss, rel=1e-5)
    assert_same_grads(alignbench_grads(ours), trl_grads)


def test_trls_default_kl_bias_correction_adds_beta_k3_times_the_score(saved_workload, tmp_path):
    """TRL's default multiplies k3 by the importance ratio rho = exp(log pi - sg(log pi)), 1 in value:
    its gradient is alignbench's plus beta * mean(k3 * grad log pi), which is why the benchmark turns it off."""
    from alignbench.rl.experience import policy_logprobs
    from alignbench.rl.losses import kl_penalty

    folder, tokenizer, prompts = saved_workload
    args = workload_args("full")
    ours = rl_step.AlignbenchGRPO(args, folder, tokenizer, prompts)
    exp, advantages = one_batch(ours, tokenizer)
    default = trl_trainer(args, folder, tokenizer, prompts, tmp_path, use_bias_correction_kl=True)

    loss = ours.loss(exp, advantages[:, None] * exp.mask)
    logp = policy_logprobs(ours.roles, "policy", exp.rollout)
    k3 = kl_penalty(logp.detach(), exp.ref_logp, "k3")
    score_term = args.beta * (k3 * (logp - logp.detach()) * exp.mask).sum() / exp.mask.sum()  # 0 in value
    (loss + score_term).backward()
    trl_loss, trl_grads = trl_loss_and_grads(default, exp, advantages)
    assert loss.item() == pytest.approx(trl_loss, rel=1e-5)
    assert_same_grads(alignbench_grads(ours), trl_grads)
