"""Compute accounting: tokens and estimated FLOPs of every model pass of a job, by phase.

One process-wide meter (``METER``) is fed from the few places every model pass goes through:
``RoleSet.lm_logits`` and ``RoleSet.scores`` (SFT, preference and warm-up losses, critics, reward and
cost models), ``rl.logprobs.sequence_logprobs`` (policy, pi_old and reference log-probs, with or
without grad), ``rl.rollout.generate_rollout`` (every sampled answer, attack, feedback or revision)
and the external score models. No algorithm keeps its own books, so every role (trained or
forward-only) of every algorithm is counted the same way.

Counts are *logical*: the real tokens of each pass (attention-mask ones), whatever the fast paths do
underneath (shared prompts, padding-free responses, the fused decoder skip work but count the same
as the plain pass), so the figures compare algorithms, not implementations. Per pass over a batch of
rows with ``L_b`` real tokens each (prompt + response for decoding: the KV cache makes a decode cost
what one forward over the whole sequence costs), ``T = sum_b L_b`` tokens and ``T_out`` positions
whose logits are computed (Kaplan et al. 2020, Table 1; Hoffmann et al. 2022, App. F)::

    F_fwd   = 2 N T  +  2 n_layer d_attn sum_b L_b (L_b + 1)  +  2 d_model V T_out
    F_train = F_fwd (2 + s)          (a pass run with grad: its backward is followed)

``N``: parameters of the transformer layers (embeddings, LM head and LoRA adapters excluded; the LM
head is the last term); the attention term is QK^T and AV over a causal prefix (4 d_attn i FLOPs at
position i); the backward costs one F_fwd for the activation gradients plus ``s`` F_fwd for the
weight gradients, ``s`` the share of N that requires grad (1 for full fine-tuning, about 0 for LoRA,
whose adapters are a rounding error). ``T_out`` is every position for ``lm_logits``, the response
positions for ``sequence_logprobs``, the generated tokens for decoding and 0 for score heads.

Phases: the pipeline runs each stage under its name (``sft``, ``reward_model``, ``cost_model``,
``label_model``, a component's warm-up stage), RL under ``rl`` and evaluation under ``eval``; a component may open a
nested phase (TriPlay: ``triplay_warmup``, ``monitor`` for its held-out metrics); the export's
sample answers run under ``export``. *Training compute* is every phase but ``eval``, ``monitor`` and
``export``. A stage loaded from a cache adds the cost recorded when
it was trained (``recorded``/``add``), so a job's total is the same whether or not it trained the
stage itself. Under DDP each rank counts its own shard and ``world_size`` scales the totals (not the
final evaluation's and the export's, which run once per job).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch

COUNT_FIELDS = ("gen_tokens", "fwd_tokens", "train_tokens", "flops")
#: phases that are not training: evaluation, held-out monitoring during training and the export's
#: sample answers (``training.export``)
NOT_TRAINING = ("eval", "monitor", "export")
#: phases run once per job, not per rank: the final evaluation and the export (rank 0 alone under DDP;
#: under FSDP every rank runs the same forwards over the same prompts), so ``world_size`` never scales them
ONCE_PER_JOB = ("eval", "export")
DEFAULT_PHASE = "other"


@dataclass
class Counts:
    """What one phase spent: ``gen_tokens`` sampled, ``fwd_tokens`` through no-grad passes,
    ``train_tokens`` through passes with grad (forward + backward), ``flops`` in all of them."""

    gen_tokens: float = 0.0
    fwd_tokens: float = 0.0
    train_tokens: float = 0.0
    flops: float = 0.0

    def add(self, other: "Counts | dict[str, Any]") -> None:
        values = other if isinstance(other, dict) else asdict(other)
        for key in COUNT_FIELDS:
            setattr(self, key, getattr(self, key) + float(values.get(key, 0.0) or 0.0))

    def scaled(self, factor: float) -> "Counts":
        return Counts(**{key: getattr(self, key) * factor for key in COUNT_FIELDS})


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formula needs of a model (module docstring)."""

    layer_params: int
    n_layer: int
    d_attn: int
    d_model: int
    vocab: int


_EXCLUDED = ("lora_", "embed", "lm_head", "wte", "wpe", "score_head")
_SHAPES: "weakref.WeakKeyDictionary[torch.nn.Module, ModelShape]" = weakref.WeakKeyDictionary()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _layer_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if not any(part in name for part in _EXCLUDED)]


def model_shape(model: torch.nn.Module) -> ModelShape:
    """Layer parameter count and attention/LM-head sizes of a transformers model (cached per model)."""
    core = _unwrap(model)
    shape = _SHAPES.get(core)
    if shape is None:
        config = getattr(core, "config", None)
        d_model = int(getattr(config, "hidden_size", 0) or 0)
        heads = int(getattr(config, "num_attention_heads", 0) or 0)
        head_dim = int(getattr(config, "head_dim", 0) or (d_model // heads if heads else 0))
        shape = ModelShape(layer_params=sum(p.numel() for p in _layer_parameters(core)),
                           n_layer=int(getattr(config, "num_hidden_layers", 0) or 0),
                           d_attn=heads * head_dim or d_model, d_model=d_model,
                           vocab=int(getattr(config, "vocab_size", 0) or 0))
        _SHAPES[core] = shape
    return shape


def trainable_share(model: torch.nn.Module) -> float:
    """Share of the layer parameters that require grad (``s`` in the module docstring)."""
    params = _layer_parameters(_unwrap(model))
    total = sum(p.numel() for p in params)
    return sum(p.numel() for p in params if p.requires_grad) / total if total else 0.0


def forward_flops(shape: ModelShape, lengths: torch.Tensor, logit_positions: float) -> float:
    """``F_fwd`` of one pass over rows with ``lengths`` real tokens (module docstring)."""
    lengths = lengths.detach().double()
    tokens = float(lengths.sum())
    attention = float((lengths * (lengths + 1)).sum())
    return (2.0 * shape.layer_params * tokens + 2.0 * shape.n_layer * shape.d_attn * attention
            + 2.0 * shape.d_model * shape.vocab * float(logit_positions))


class ComputeMeter:
    """Per-phase ``Counts`` of one job (module docstring); ``METER`` is the process's meter."""

    def __init__(self) -> None:
        self.phases: dict[str, Counts] = {}
        self.recorded_phases: set[str] = set()  # phases whose counts came from a cache's record
        self._stack: list[str] = []

    # ----------------------------------------------------------------- phases
    def reset(self) -> None:
        """Forget everything: a new job starts (multirun jobs share one process)."""
        self.phases, self.recorded_phases, self._stack = {}, set(), []

    @property
    def phase_name(self) -> str:
        return self._stack[-1] if self._stack else DEFAULT_PHASE

    @contextmanager
    def phase(self, name: str) -> Iterator[Counts]:
        """Count every pass inside the block under ``name``; yields what the block spent."""
        before = Counts(**asdict(self.phases.get(name, Counts())))
        self._stack.append(name)
        spent = Counts()
        try:
            yield spent
        finally:
            self._stack.pop()
            after = self.phases.get(name, Counts())
            spent.add({key: getattr(after, key) - getattr(before, key) for key in COUNT_FIELDS})

    def _counts(self) -> Counts:
        return self.phases.setdefault(self.phase_name, Counts())

    def record(self, spent: Counts, world_size: int = 1) -> dict[str, float]:
        """What a cache stores of a phase this rank spent ``spent`` on: the job's total over all ranks."""
        return asdict(spent.scaled(world_size))

    def add(self, phase: str, record: "Counts | dict[str, Any] | None", world_size: int = 1) -> None:
        """Add a cost recorded when a cached stage was trained (a ``record``) to ``phase``; under DDP this
        rank takes its share, as if it had trained its shard itself (``total`` scales back)."""
        if record:
            counts = Counts()
            counts.add(record)
            self.phases.setdefault(phase, Counts()).add(counts.scaled(1.0 / world_size))
            self.recorded_phases.add(phase)

    # ----------------------------------------------------------------- passes
    def forward(self, model: torch.nn.Module, attention_mask: torch.Tensor, logit_positions: Any = 0,
                grad: bool | None = None) -> None:
        """One pass of ``model`` over ``attention_mask``'s real tokens; grad: backward follows."""
        grad = torch.is_grad_enabled() if grad is None else grad
        shape = model_shape(model)
        lengths = attention_mask.detach().sum(dim=-1)
        flops = forward_flops(shape, lengths, float(logit_positions))
        counts = self._counts()
        tokens = float(lengths.sum())
        if grad:
            counts.train_tokens += tokens
            counts.flops += flops * (2.0 + trainable_share(model))
        else:
            counts.fwd_tokens += tokens
            counts.flops += flops

    def generated(self, model: torch.nn.Module, prompt_mask: torch.Tensor, response_mask: torch.Tensor) -> None:
        """A KV-cache decode: prefill of the prompts, then one step per generated token."""
        generated = float(response_mask.detach().sum())
        shape = model_shape(model)
        lengths = prompt_mask.detach().sum(dim=-1) + response_mask.detach().sum(dim=-1)
        counts = self._counts()
        counts.gen_tokens += generated
        counts.fwd_tokens += float(lengths.sum())
        counts.flops += forward_flops(shape, lengths, generated)

    # ----------------------------------------------------------------- totals and state
    def total(self, training: bool = True, world_size: int = 1) -> Counts:
        """Sum over the training phases (``training=True``) or over the rest (eval, monitoring)."""
        total = Counts()
        for name, counts in self.phases.items():
            if (name not in NOT_TRAINING) == training:
                total.add(counts)
        return total.scaled(world_size)

    def report(self, world_size: int = 1) -> dict[str, Any]:
        """Per phase counts (scaled by ``world_size``, but ``ONCE_PER_JOB`` phases) and which phases came
        from a cache record."""
        return {name: {**asdict(counts.scaled(1 if name in ONCE_PER_JOB else world_size)),
                       "recorded": name in self.recorded_phases}
                for name, counts in self.phases.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"phases": {name: asdict(counts) for name, counts in self.phases.items()},
                "recorded": sorted(self.recorded_phases)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phases = {name: Counts(**values) for name, values in state.get("phases", {}).items()}
        self.recorded_phases = set(state.get("recorded", []))


METER = ComputeMeter()
