"""Continuous batching: a fixed number of decode slots, each refilled with the next prompt the step its
answer ends (the in-flight batching of vLLM and TGI), for the evaluation harness.

Static batching decodes the prompts in chunks of ``batch_size`` and every chunk runs until its longest
answer ends. A decode step costs about the same for 1 row as for 16 (it streams every weight once), so
with answers of 5 to 128 tokens most of a chunk's steps carry rows that have already finished. Here a
slot whose row emits EOS (or reaches ``max_new_tokens``) takes the next prompt at once, so the steps
keep ``slots`` rows busy until the prompts run out; then the cache is compacted to the rows still
decoding whenever half the slots are idle.

Layout (``FusedLlama``'s position-major ``KVBuffers``, ``[capacity, S, H_kv, D]`` per layer): slot ``s``
holds its row at cache positions ``0 .. length[s] - 1``, no padding, so its next token goes to position
``length[s]``, RoPE takes that position, and attention sees positions ``<= length[s]`` (an additive mask,
0 or the dtype's minimum). A new prompt is prefilled by ``FusedLlama.forward`` (the prompts admitted in
one step together, left-padded among themselves; repeated prompts, a prompt's k samples, once) and each
row's keys/values are copied into its slot's positions ``0 .. n - 1``. The prefix every prompt shares
(a chat template's system turn: 24 of SmolLM2's ~38 prompt tokens on the world's prompts) runs once per
call and is copied into each slot (prefix caching, as vLLM's and SGLang's): a prompt's prefill runs only
its own tokens, attending to the shared prefix's keys/values. The buffers start zeroed, so a
position that is masked never holds a non-finite value (``0 x nan`` would poison the softmax product).

Every answer is computed as the fused decoder computes it for that prompt alone, up to float rounding
(keys past a row's length are masked out instead of absent, a different padding width in the prefill):
greedy answers equal static batching's, and each answer is independent of the prompts it shares the
slots with (``tests/test_slots.py``). Sampling draws one ``torch.multinomial`` per step over the active
rows (``rl.rollout.sample_next``: the same distribution, softmax(z / T) after top-k / top-p), so a
seeded run is reproducible but its samples are not static batching's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

from alignbench.models.compute import METER
from alignbench.models.text import left_pad_batch
from alignbench.rl.fused_llama import FusedLlama, KVBuffers, decode_step
from alignbench.rl.rollout import _eval_mode, _model_device, _seeded, position_ids_from_mask, sample_next
from alignbench.utils.memory import return_freed_memory

__all__ = ["SlotDecoder", "generate_continuous", "shared_prefix"]


class SlotDecoder:
    """``S`` decode slots over one position-major cache; ``admit`` prompts into slots, ``step`` all slots."""

    def __init__(self, fused: FusedLlama, slots: int, capacity: int, device: torch.device,
                 prefix: Sequence[int] = ()) -> None:
        self.fused, self.device = fused, device
        self.cache = KVBuffers(fused, slots, capacity, device, position_major=True)
        for buffer in self.cache.keys + self.cache.values:
            buffer.zero_()
        self.length = torch.zeros(slots, dtype=torch.long, device=device)
        cos, sin = fused._rope_tables(torch.arange(capacity, device=device)[None])  # [1, capacity, D]
        self.cos, self.sin = cos[0], sin[0]
        self.minimum = torch.finfo(fused.dtype).min
        self.prefilled_tokens = 0  # prompt tokens run through the prefill (repeated prompts and the prefix once)
        self.prefix = list(prefix)
        self.shared = None  # the prefix's keys/values, [p, 1, H_kv, D] per layer (keys then values)
        if self.prefix:
            ids = torch.tensor([self.prefix], device=device)
            staged = KVBuffers(fused, 1, len(self.prefix), device, position_major=True)
            fused.forward(ids, torch.ones_like(ids), position_ids_from_mask(torch.ones_like(ids)), logits_to_keep=1,
                          cache=staged)
            self.shared = staged.keys + staged.values
            self.prefilled_tokens += len(self.prefix)

    @property
    def slots(self) -> int:
        return self.length.shape[0]

    @torch.no_grad()
    def admit(self, slots: Sequence[int], rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill ``rows`` (token ids, no padding, each starting with ``prefix``) into ``slots``; float32
        next-token scores ``[n, V]``. The prefix's keys/values are copied, only the rest of each row runs."""
        shared = len(self.prefix)
        unique: dict[tuple[int, ...], int] = {}
        for row in rows:
            if list(row[:shared]) != self.prefix or len(row) <= shared:
                raise ValueError("SlotDecoder.admit: every row must start with the decoder's prefix and go past it")
            unique.setdefault(tuple(row), len(unique))
        ids, mask = left_pad_batch([list(row[shared:]) for row in unique], 0)
        ids, mask = ids.to(self.device), mask.to(self.device)
        width = ids.shape[1]
        staged = KVBuffers(self.fused, len(unique), shared + width, self.device, position_major=True)
        if shared:  # [prefix | left padding | rest]: the rest's positions continue the prefix's
            for full, part in zip(staged.keys + staged.values, self.shared):
                full[:shared].copy_(part.expand(-1, len(unique), -1, -1))
            staged.length = shared
            mask = torch.cat([mask.new_ones(len(unique), shared), mask], dim=1)
        positions = position_ids_from_mask(mask)[:, shared:]
        logits = self.fused.forward(ids, mask, positions, logits_to_keep=1, cache=staged)
        self.prefilled_tokens += int(mask[:, shared:].sum())
        end = shared + width
        for slot, row in zip(slots, rows):
            source, rest = unique[tuple(row)], len(row) - shared
            for full, part in zip(self.cache.keys + self.cache.values, staged.keys + staged.values):
                full[:shared, slot].copy_(part[:shared, source])
                full[shared:len(row), slot].copy_(part[end - rest:end, source])
            self.length[slot] = len(row)
        return logits[[unique[tuple(row)] for row in rows], -1].float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` ``[S]`` at each slot's next position; scores ``[S, V]``. Slots with ``active``
        False run too (their scores are ignored) but keep their length, so they never run out of cache."""
        position = self.length
        end = int(position.max()) + 1
        visible = torch.arange(end, device=self.device)[None, :] <= position[:, None]
        key_mask = torch.zeros(visible.shape, dtype=self.fused.dtype, device=self.device)
        key_mask.masked_fill_(~visible, self.minimum)
        cos, sin = self.cos[position].t()[None], self.sin[position].t()[None]  # [1, D, S]
        scores = decode_step(self.fused, self.cache, tokens, cos, sin, position, key_mask[:, None, None, :])
        self.length = position + active.long()
        return scores

    def keep(self, slots: torch.Tensor) -> None:
        """Compact the cache to ``slots`` (in that order)."""
        self.cache.select(slots)
        self.length = self.length[slots]


def shared_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix every row starts with, short of each row's last token (which has to run:
    its logits are the first answer token's)."""
    prefix = list(os.path.commonprefix([list(row) for row in rows]))
    return prefix[:min(len(row) for row in rows) - 1]


@torch.no_grad()
def generate_continuous(model: torch.nn.Module, rows: Sequence[Sequence[int]], *, slots: int, max_new_tokens: int,
                        eos_token_id: int | Sequence[int], pad_token_id: int, temperature: float = 1.0,
                        top_k: int = 0, top_p: float = 1.0, do_sample: bool = True,
                        generator: torch.Generator | None = None,
                        progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One answer per prompt (``rows``: token ids, no padding) through ``slots`` continuously refilled slots.

    Returns ``(response_ids, response_mask)`` ``[N, T]`` in the order of ``rows``: each answer up to and
    including its first EOS, right-padded with ``pad_token_id`` (mask 0), as ``generate_rollout``'s.
    Sampling options and ``generator`` as in ``generate_rollout`` (a seed drawn from ``generator``, sampling
    under a forked RNG). ``progress(1)`` is called as each answer ends. The model must be one the fused
    engine accepts (``alignbench.rl.speed.decoding``).
    """
    count = len(rows)
    if count == 0:
        return torch.empty(0, 0, dtype=torch.long), torch.empty(0, 0, dtype=torch.long)
    if min(len(row) for row in rows) == 0:
        raise ValueError("generate_continuous: every prompt needs at least one token")
    device = _model_device(model)
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    answers: list[list[int]] = [[] for _ in range(count)]
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, do_sample=do_sample)
    with _eval_mode(model), _seeded(generator, device):
        fused = FusedLlama.of(model)
        decoder = SlotDecoder(fused, min(slots, count), max(len(row) for row in rows) + max_new_tokens, device,
                              prefix=shared_prefix(rows))
        owner = list(range(decoder.slots))  # the prompt each slot decodes; -1: idle
        scores = decoder.admit(owner, [rows[index] for index in owner])
        waiting = decoder.slots
        while True:
            live = [slot for slot, prompt in enumerate(owner) if prompt >= 0]
            tokens = torch.full((decoder.slots,), pad_token_id, dtype=torch.long, device=device)
            tokens[live] = sample_next(scores[live], **sampling)
            ended = []
            for slot, token in zip(live, tokens[live].tolist()):
                answer = answers[owner[slot]]
                answer.append(token)
                if token in eos or len(answer) == max_new_tokens:
                    ended.append(slot)
                    owner[slot] = -1
                    if progress is not None:
                        progress(1)
            active = torch.tensor([prompt >= 0 for prompt in owner], device=device)
            if not bool(active.any()) and waiting == count:
                break
            if bool(active.any()):
                scores = decoder.step(tokens, active)
            refill = ended[:count - waiting]
            if refill:
                scores[refill] = decoder.admit(refill, rows[waiting:waiting + len(refill)])
                for slot in refill:
                    owner[slot], waiting = waiting, waiting + 1
            busy = [slot for slot, prompt in enumerate(owner) if prompt >= 0]
            if waiting == count and len(busy) <= decoder.slots // 2:  # no prompt left: drop idle slots
                index = torch.tensor(busy, dtype=torch.long, device=device)
                decoder.keep(index)
                scores, owner = scores[index], [owner[slot] for slot in busy]
    del decoder  # the slots' KV cache, and the heap pages it held back to the OS (utils.memory)
    return_freed_memory()
    width = max(len(answer) for answer in answers)
    response_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros(count, width, dtype=torch.long)
    for index, answer in enumerate(answers):
        response_ids[index, :len(answer)] = torch.tensor(answer)
        response_mask[index, :len(answer)] = 1
    prompt_mask = left_pad_batch([list(row) for row in rows], 0)[1]
    METER.generated(model, prompt_mask, response_mask)
    return response_ids.to(device), response_mask.to(device)
