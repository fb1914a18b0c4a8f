"""Batched generation with the KV cache, and log-probs of sampled responses under any policy.

Layout of a rollout (``P`` prompt width, ``T`` response width)::

    sequences      = [ pad pad p p p | y y y EOS pad ]      [B, P + T]
    attention_mask = [  0   0  1 1 1 | 1 1 1  1   0  ]
    prompt_ids     = sequences[:, :P]      left-padded, so every prompt ends at column P - 1
    response_ids   = sequences[:, P:]      right-padded with pad id after the first EOS
    response_mask  = 1 up to and including the first EOS, 0 after   (no EOS: all T tokens count)

Left padding makes response token t sit in column P + t for every row, so the whole batch shares
``response_start = P``. Position ids are ``cumsum(attention_mask) - 1`` (clamped at 0), the same
rule transformers' ``generate`` applies, so padding never shifts a row's positions and a padded row
scores exactly like the same row alone. Masks are ``long`` 0/1 tensors (HF convention); the
``rl`` functions accept them as they are.

Works with any causal ``PreTrainedModel``, a peft model around one, or a DDP wrapper (``.module``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from transformers import GenerationConfig

from alignbench.rl.losses import entropy_from_logits

__all__ = [
    "Rollout",
    "left_pad_batch",
    "position_ids_from_mask",
    "truncate_after_eos",
    "generate_rollout",
    "sequence_logprobs",
]

# Generation options a checkpoint's generation_config.json may set that would reshape the sampling
# distribution away from softmax(logits / temperature). transformers 5.x fills every field we leave
# as None from model.generation_config, so we pin them to their neutral values.
_NEUTRAL_GENERATION = dict(
    num_beams=1,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    min_new_tokens=0,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    return_dict_in_generate=False,
)


@dataclass
class Rollout:
    """One batch of prompts and the policy's responses (see module docstring for the layout)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    sequences: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def response_start(self) -> int:
        """Column of the first response token in ``sequences`` (the prompt width P)."""
        return self.prompt_ids.shape[1]

    @property
    def num_generated_tokens(self) -> int:
        """Number of real response tokens in the batch (EOS included)."""
        return int(self.response_mask.sum().item())

    def to(self, device: torch.device | str) -> "Rollout":
        return Rollout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def left_pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token-id lists into left-padded ``ids`` and ``mask`` ``[B, max_len]`` (long)."""
    if len(sequences) == 0 or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad_batch: needs at least one sequence and no empty sequence.")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: ``cumsum(mask) - 1``, clamped at 0 on left padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def truncate_after_eos(
    response_ids: torch.Tensor, eos_token_id: int | Sequence[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each row up to and including its first EOS; later tokens become ``pad_token_id``.

    Returns ``(ids, mask)`` with mask 1 on kept tokens. Works when pad id == EOS id, too.
    """
    eos = torch.as_tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
        device=response_ids.device,
    )
    is_eos = torch.isin(response_ids, eos).long()
    # number of EOS strictly before t; > 0 means t comes after the first EOS
    eos_before = is_eos.cumsum(-1) - is_eos
    mask = (eos_before == 0).long()
    return torch.where(mask.bool(), response_ids, pad_token_id), mask


def _strip_ddp(model: torch.nn.Module) -> torch.nn.Module:
    ddp = torch.nn.parallel.DistributedDataParallel
    return model.module if isinstance(model, ddp) else model


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model (strips DDP ``.module`` and peft wrappers)."""
    model = _strip_ddp(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _model_device(model: torch.nn.Module) -> torch.device:
    device = getattr(_unwrap(model), "device", None)
    return device if device is not None else next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Switch to eval() for generation (no dropout; gradient checkpointing, active only in train
    mode, would veto the KV cache), then restore every submodule's own train/eval flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device):
    """Sample from a seed drawn from ``generator`` under a forked RNG (global RNG untouched)."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else None):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def generate_rollout(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample (or greedily decode) responses for a left-padded prompt batch with the KV cache.

    Sampling draws from ``softmax(logits / temperature)``, truncated only when ``top_k > 0`` or
    ``top_p < 1`` (then the samples are off-policy w.r.t. the untruncated log-probs the loss uses;
    keep the defaults for RL). Other warpers that the checkpoint's generation_config.json or
    transformers' own defaults would add (repetition penalty, top_k = 50, min_p, ...) are pinned
    to neutral values.

    Reproducibility: sampling uses torch's global RNG, so seed it (``torch.manual_seed``) before
    the call, or pass ``generator``: a seed is then drawn from it and sampling runs under a forked
    RNG (same generator state -> same samples; the global RNG is left as it was).

    The model is put in eval() mode for the call and restored to its previous mode afterwards.
    """
    if prompt_mask.shape != prompt_ids.shape or not bool(prompt_mask[:, -1].all()):
        raise ValueError(
            "generate_rollout: prompts must be left-padded (prompt_mask[:, -1] all 1) and "
            "prompt_mask must have prompt_ids' shape; build them with left_pad_batch."
        )
    device = _model_device(model)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, min_p=0.0)
        if do_sample
        else dict(do_sample=False)
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        **_NEUTRAL_GENERATION,
        **sampling,
    )
    with _eval_mode(model), _seeded(generator, device):
        # DDP has no .generate; a peft wrapper must keep its own (it switches the adapters on)
        out = _strip_ddp(model).generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config
        )

    width = prompt_ids.shape[1]
    response_ids, response_mask = truncate_after_eos(out[:, width:], eos_token_id, pad_token_id)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask.long(),
        response_ids=response_ids,
        response_mask=response_mask,
        sequences=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask.long(), response_mask], dim=1),
    )


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(_unwrap(model).forward).parameters


def sequence_logprobs(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Per-token log pi(y_t | x, y_<t) of the response tokens in one forward pass.

        logp[b, t] = log_softmax(z[b, P + t - 1] / temperature)[sequences[b, P + t]]

    where z are the logits and P = ``response_start``. Only the T + 1 last positions go through
    the LM head when the model supports ``logits_to_keep`` (all transformers causal LMs do);
    otherwise the full logits are sliced. logp is computed as ``z_y - logsumexp(z)`` in float32,
    never materialising a [B, T, V] log-softmax. Runs with grad if the caller's context allows it
    and in whatever train/eval mode the model is in (disable dropout for PPO ratios to be exact).

    Returns ``logp`` ``[B, T]`` (0 where ``response_mask`` is 0); with ``return_entropy`` and/or
    ``return_logits``, a tuple ``(logp, entropy?, logits?)`` holding the requested extras in that
    order: entropy ``[B, T]`` (masked to 0), logits ``[B, T, V]`` (float32, temperature-scaled).
    """
    if response_start < 1:
        raise ValueError("sequence_logprobs: response_start must be >= 1 (a prompt is needed).")
    num_response = sequences.shape[1] - response_start
    inputs = dict(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    if _accepts_logits_to_keep(model):
        inputs["logits_to_keep"] = num_response + 1
    logits = model(**inputs).logits
    # position P + t - 1 predicts response token t; the final position predicts nothing we score
    logits = logits[:, -(num_response + 1) : -1].float() / temperature
    targets = sequences[:, response_start:]
    mask_f = response_mask.to(logits.dtype)
    token_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    logp = (token_logits - torch.logsumexp(logits, dim=-1)) * mask_f

    extras: list[torch.Tensor] = []
    if return_entropy:
        extras.append(entropy_from_logits(logits) * mask_f)
    if return_logits:
        extras.append(logits)
    return (logp, *extras) if extras else logp
