"""Row micro-batches of one forward pass: a wide batch's memory bounded by ``model.micro_batch_rows``.

A pass over ``B`` rows runs as ``ceil(B / m)`` passes of at most ``m`` rows each, every one at the
batch's full (padded) width, and their outputs are concatenated along the rows into the ``[B, ...]``
the whole pass returns:

* **without grad** (scoring: held-out accuracy, reward and cost scores, critic values at collection):
  each row's output is the whole pass's, to the bit. A decoder computes every row on its own
  (attention stays within a row, a linear layer's product is row-wise in MKL), and the width, so every
  row's padding and positions, is unchanged (tests: ``tests/test_micro_batches.py`` on a SmolLM2-shaped
  model, 1 and 2 threads).
* **with grad** (SFT, reward and cost model stages, critics, PTX): the forward runs without grad chunk by
  chunk, so its output, the loss computed from it and the loss's gradient ``g = dL/dh`` are the whole
  pass's to the bit. Backward runs each chunk again with grad and backpropagates that chunk's rows of
  ``g`` (reentrant activation checkpointing, per row chunk instead of per layer). Every activation
  gradient is the whole pass's; a weight's gradient is the same sum over the same rows in another order::

      dL/dW = sum_k sum_{r in chunk k} x_r^T g_r      (whole pass: sum_r x_r^T g_r, one product)

  so it equals the whole pass's up to float rounding, not bit for bit, and the optimiser steps that
  follow drift apart at that rounding. The parameters' ``.grad`` receive it in ``backward()``; like
  reentrant checkpointing this does not reach ``torch.autograd.grad(loss, params)``.

Cost: one more forward per pass with grad. Memory: the activations of ``m`` rows, not of ``B``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch

Forward = Callable[..., torch.Tensor]


def row_micro_batches(forward: Forward, tensors: tuple[torch.Tensor, ...], rows: int,
                      pass_context: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """``forward(*tensors)`` over row chunks of at most ``rows`` rows (module docstring).

    ``tensors`` share their first (row) dimension; ``forward`` maps row slices of them to a tensor whose
    first dimension is those rows. ``pass_context()`` is entered around every forward with grad: the
    whole pass, or each chunk's forward again in backward (the caller's adapter switches and layer
    checkpointing of this pass). ``rows`` <= 0, or a batch of at most ``rows`` rows: one plain pass."""
    total = tensors[0].shape[0]
    if rows <= 0 or total <= rows:
        with pass_context() if torch.is_grad_enabled() else nullcontext():
            return forward(*tensors)
    if not torch.is_grad_enabled():
        return torch.cat([forward(*(t[start:start + rows] for t in tensors)) for start in range(0, total, rows)])
    anchor = torch.zeros((), requires_grad=True)  # makes the output part of the graph (no input needs grad)
    return _RowMicroBatches.apply(forward, rows, pass_context, anchor, *tensors)


class _RowMicroBatches(torch.autograd.Function):
    """Forward without grad in chunks; backward re-runs each chunk with grad and backpropagates its rows."""

    @staticmethod
    def forward(ctx, forward: Forward, rows: int, pass_context, anchor: torch.Tensor,
                *tensors: torch.Tensor) -> torch.Tensor:
        device = tensors[0].device.type
        ctx.forward, ctx.rows, ctx.pass_context, ctx.device = forward, rows, pass_context, device
        # a recompute draws what its forward drew (dropout) and runs under the same autocast
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(*tensors)
        ctx.rng, outputs = [], []
        for start in range(0, tensors[0].shape[0], rows):
            ctx.rng.append(_rng_state(device))
            outputs.append(forward(*(t[start:start + rows] for t in tensors)))
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        tensors = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        for chunk, start in enumerate(range(0, tensors[0].shape[0], ctx.rows)):
            with torch.random.fork_rng(devices=[] if ctx.device == "cpu" else None, device_type=ctx.device):
                _set_rng_state(ctx.device, ctx.rng[chunk])
                with torch.enable_grad(), torch.autocast(ctx.device, dtype=dtype, enabled=enabled), \
                        ctx.pass_context():
                    output = ctx.forward(*(t[start:start + ctx.rows] for t in tensors))
            if output.requires_grad:  # a pass of frozen weights only has nothing to backpropagate into
                torch.autograd.backward(output, grad_output[start:start + ctx.rows])
        return (None, None, None, None) + (None,) * len(tensors)


def _rng_state(device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    accelerator = torch.get_device_module(device).get_rng_state() if device != "cpu" else None
    return torch.get_rng_state(), accelerator


def _set_rng_state(device: str, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.get_device_module(device).set_rng_state(state[1])
