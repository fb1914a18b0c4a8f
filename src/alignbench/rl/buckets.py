"""Attention over rows of similar length: the padded layout of the packed passes, cut to fit.

The padding-free passes (``alignbench.rl.packed`` with grad, ``FusedLlama.forward(packed=...)``
without) run every token-wise product on the ``N`` real response tokens, but attention needs them
laid out per row: ``[B, H, S, D]`` queries against ``[B, H, P + S, D]`` keys, ``S`` the longest
response. In a GRPO batch the lengths spread widely (SmolLM2, 8 prompts x 4 samples x 128 new tokens:
1,640 real tokens in a 32 x 128 grid, 40% of it real), so one layout spends most of attention's time,
forward and backward, on pad cells: 2.07 s of a 12.3 s training pass in ``benchmarks/rl_step.py``.

``RowBuckets`` orders the rows by their extent (last real cell + 1), longest first, and cuts them into
consecutive groups, each attended in its own layout ``[R_b, H, S_b, D]`` with ``S_b`` its own longest
row. The cut minimises the query-key cells attention visits,

    cost = sum_b (R_b * S_b * (P + S_b) + BUCKET_OVERHEAD_CELLS),

by dynamic programming over the sorted extents (``BUCKET_OVERHEAD_CELLS`` prices one more attention
call and its copies, so near-equal lengths stay together; O(B^2): 0.1 ms for 32 rows, 16 ms for 512).
The packed tokens are taken in that row order (``flat``), so a bucket's tokens are one contiguous run:
``split`` hands them out as views, and nothing is gathered back (the logits' rows say which grid cell
they score). Each row keeps its own prompt keys and mask rows, so the result is the one-layout result
to float rounding: a query sees exactly the keys it saw before (``tests/test_logprobs.py`` compares
log-probs and gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BUCKET_OVERHEAD_CELLS", "Bucket", "RowBuckets"]

#: the cost of one more attention call (its scatter, copies and kernel start), in query-key cells.
#: SmolLM2's attention forward + backward over the benchmark's 32 response lengths, ms a layer: one
#: grid 67-83, 2 buckets 31-39, 4 (this value) 25.5-31, 6 (4,096) 25-31.5 (benchmarks/README.md)
BUCKET_OVERHEAD_CELLS = 16384


@dataclass(frozen=True)
class Bucket:
    """Sorted rows ``start:end`` attended together, ``width`` the longest's extent, ``count`` their
    real tokens and ``target`` where those sit in the flattened ``[end - start, width]`` layout."""

    start: int
    end: int
    width: int
    count: int
    target: torch.Tensor

    @property
    def size(self) -> int:
        return self.end - self.start


class RowBuckets:
    """The real cells of ``real`` ``[B, steps]`` (bool) in buckets of rows of similar extent;
    ``prefix``: the keys every query also sees (the prompt width).

    ``order`` ``[B]``: the rows, longest extent first. ``flat`` ``[N]``: the real cells in that order,
    as indices into the flattened ``[B, steps]`` grid (``tensor.flatten()[flat]`` packs a per-cell
    tensor). ``split(packed)`` cuts ``[N, ...]`` into the buckets' runs (views), ``scatter(bucket,
    run)`` lays a run out as ``[size, width, ...]`` (zeros in pad cells), ``pick(bucket, grid)`` takes
    its real cells back out, and ``rows(t)`` each bucket's rows of a per-row tensor in ``order``.
    """

    def __init__(self, real: torch.Tensor, prefix: int, *, overhead: int | None = None) -> None:
        batch, steps = real.shape
        columns = torch.arange(1, steps + 1, device=real.device)
        extent = (real * columns).amax(1) if steps else real.new_zeros(batch, dtype=torch.long)
        self.order = torch.argsort(extent, descending=True, stable=True)
        cells = real[self.order].flatten().nonzero().squeeze(1)  # in the sorted grid
        row, col = cells // steps, cells % steps
        self.flat = self.order[row] * steps + col
        sizes = extent[self.order].tolist()
        counts = real.sum(1)[self.order].tolist()
        overhead = BUCKET_OVERHEAD_CELLS if overhead is None else overhead
        self.buckets: list[Bucket] = []
        start, token = 0, 0
        for end in _cuts(sizes, prefix, overhead):
            width, count = sizes[start], int(sum(counts[start:end]))
            if width == 0:  # rows without a real cell (the last ones): nothing to attend
                break
            rows, cols = row[token:token + count], col[token:token + count]
            self.buckets.append(Bucket(start, end, width, count, (rows - start) * width + cols))
            start, token = end, token + count

    def split(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[N, ...]`` (in ``flat``'s order) -> each bucket's ``[count, ...]`` run (views)."""
        return packed.split([bucket.count for bucket in self.buckets])

    def scatter(self, bucket: Bucket, run: torch.Tensor) -> torch.Tensor:
        """A bucket's ``[count, ...]`` -> ``[size, width, ...]`` with zeros in the pad cells
        (``index_copy``, whose backward is one ``index_select``)."""
        grid = run.new_zeros(bucket.size * bucket.width, *run.shape[1:]).index_copy(0, bucket.target, run)
        return grid.view(bucket.size, bucket.width, *run.shape[1:])

    def pick(self, bucket: Bucket, grid: torch.Tensor) -> torch.Tensor:
        """``[size, width, ...]`` -> the bucket's real cells ``[count, ...]`` (``scatter``'s inverse)."""
        return grid.reshape(bucket.size * bucket.width, *grid.shape[2:]).index_select(0, bucket.target)

    def masks(self, mask: torch.Tensor, prefix: int) -> list[torch.Tensor]:
        """Each bucket's ``[size, 1, width, prefix + width]`` corner of an additive mask ``[B, 1, S, prefix + S]``
        whose rows are in ``order``."""
        return [rows[:, :, : b.width, : prefix + b.width] for b, rows in zip(self.buckets, self.rows(mask))]

    def attend(self, qkv: torch.Tensor, heads: int, kv_heads: int, past_keys: torch.Tensor,
               past_values: torch.Tensor, masks: list[torch.Tensor], scale: float) -> torch.Tensor:
        """Attention output ``[N, heads D]`` of packed ``qkv`` ``[N, heads + 2 kv_heads, D]`` (RoPE applied):
        each bucket's queries against its rows' ``past`` keys/values ``[B, kv_heads, P, D]`` (rows in
        ``order``) and its own, under its ``masks`` corner. Differentiable; one scatter per bucket."""
        parts = []
        for bucket, run, keys, values, mask in zip(self.buckets, self.split(qkv), self.rows(past_keys),
                                                   self.rows(past_values), masks):
            grid = self.scatter(bucket, run).transpose(1, 2)  # [size, heads + 2 kv_heads, width, D]
            query, key, value = grid.split([heads, kv_heads, kv_heads], dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(
                query, torch.cat([keys, key], dim=2), torch.cat([values, value], dim=2), attn_mask=mask,
                scale=scale, enable_gqa=kv_heads != heads)  # [size, heads, width, D]
            parts.append(self.pick(bucket, out.transpose(1, 2)).flatten(1))  # its real cells [count, heads D]
        return torch.cat(parts)

    def rows(self, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each bucket's rows of a per-row ``tensor`` whose dim 0 is in ``order`` (views; ``split``,
        whose backward is one ``cat``, where slices would each add a full-size zero gradient)."""
        sizes = [bucket.size for bucket in self.buckets]
        rest = tensor.shape[0] - sum(sizes)
        return tensor.split(sizes + [rest] if rest else sizes)[: len(sizes)]


def _cuts(sizes: list[int], prefix: int, overhead: int) -> list[int]:
    """End indices of the consecutive groups of ``sizes`` (sorted descending) that minimise
    ``sum (rows * size_first * (prefix + size_first) + overhead)`` over the groups."""
    n = len(sizes)
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest cut of sizes[:j]
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            width = sizes[i]
            cost = best[i] + (j - i) * width * (prefix + width) + overhead
            if cost < best[j]:
                best[j], back[j] = cost, i
    cuts, j = [], n
    while j > 0:
        cuts.append(j)
        j = back[j]
    return cuts[::-1]
