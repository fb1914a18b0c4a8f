"""The rollout's KV cache: transformers' ``DynamicCache`` with preallocated full-attention layers.

Its own module because importing transformers' cache classes takes a noticeable part of a second:
``alignbench.rl.rollout`` imports it on the first rollout, not at start-up.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A full-attention KV-cache layer whose buffers hold the whole rollout from the first write.

    ``update`` copies the new keys/values into place and returns views of the filled prefix, so a
    decode step costs no reallocation (``DynamicLayer`` concatenates, O(T^2) copies per rollout).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, _ = key_states.shape
        self._keys = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
        self._values = value_states.new_empty(batch, value_states.shape[1], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded ({end} positions)")
        self._keys[:, :, self.length:end].copy_(key_states)
        self._values[:, :, self.length:end].copy_(value_states)
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:  # not used by the decode loop
        raise NotImplementedError("PreallocatedLayer does not support crop")


def preallocated_cache(config, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for a model of ``config``; plain full-attention layers are swapped for
    ``PreallocatedLayer`` of ``capacity`` positions (sliding-window, linear-attention and other special
    layers keep transformers' own classes)."""
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache
