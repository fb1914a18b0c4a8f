"""Batched generation with the KV cache (scoring the responses: ``alignbench.rl.logprobs``).

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

Decoding engines (``generate_rollout(engine=...)``):

* ``"fused"``: the same loop, with the prefill and every step computed by the CPU speed path
  (``alignbench.rl.speed``, the one seam in front of ``alignbench.rl.fused_llama.FusedLlama``:
  merged LoRA, fused q/k/v and gate/up weights, folded norm gains, products in the weight-streaming
  orientation) for Llama-family models; logits equal the model's forward to float rounding, so
  greedy tokens match ``lean`` and sampling draws the same ``torch.multinomial`` calls.
* ``"lean"``: a plain decode loop over the model's forward: one prefill, then one forward of one
  token per step into a KV cache whose buffers are allocated once for the whole rollout (no
  ``torch.cat`` per step and layer), no logits processors beyond temperature/top-k/top-p, no
  per-step stopping-criteria objects. Greedy decoding gives exactly HF ``generate``'s tokens, and
  sampling draws the same ``torch.multinomial`` calls in the same order, so a seeded rollout is
  the same as with ``generate`` (tested). Unlike ``generate`` it never applies processors a
  checkpoint's ``generation_config.json`` asks for (repetition penalty, suppressed tokens, ...):
  RL log-probs assume the plain tempered softmax.
* ``"hf"``: transformers' ``generate`` (warpers pinned to neutral values).
* ``"auto"`` (default): ``fused`` on the CPU when ``fused_support`` accepts the model; else ``lean``
  when the model's forward takes a KV cache and position ids (every transformers decoder-only LM
  does), else ``hf``. On a GPU ``auto`` keeps ``lean`` (the fused copy would hold a second set of
  weights in device memory; ask for ``fused`` explicitly, or ``vllm`` for large models).
* ``"vllm"`` or an engine object: see ``alignbench.rl.engines`` (only with vLLM installed and a GPU;
  otherwise ``auto`` is used and vLLM is never imported).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, fields

from typing import TYPE_CHECKING

import torch

from alignbench.models.compute import METER
from alignbench.models.text import left_pad_batch  # noqa: F401 - batches of token ids (re-exported)
from alignbench.utils.distributed import any_rank, is_sharded
from alignbench.utils.memory import return_freed_memory

if TYPE_CHECKING:  # transformers is imported where it is used: importing it takes seconds (start-up)
    from transformers import DynamicCache

__all__ = [
    "Rollout",
    "left_pad_batch",
    "position_ids_from_mask",
    "truncate_after_eos",
    "generate_rollout",
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
    engine: str | object = "auto",
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
    ``engine`` picks the decoder (module docstring): ``"auto"``, ``"lean"``, ``"hf"``, ``"vllm"``
    or an engine object with the same ``generate`` contract as ``alignbench.rl.engines``.
    """
    if prompt_mask.shape != prompt_ids.shape or not bool(prompt_mask[:, -1].all()):
        raise ValueError(
            "generate_rollout: prompts must be left-padded (prompt_mask[:, -1] all 1) and "
            "prompt_mask must have prompt_ids' shape; build them with left_pad_batch."
        )
    device = _model_device(model)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    options = dict(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                   temperature=temperature, top_k=top_k, top_p=top_p, do_sample=do_sample)
    runner = _resolve_engine(engine, model)
    with _eval_mode(model), _seeded(generator, device):
        if isinstance(runner, str):
            if runner == "hf":
                generated = _hf_decode(_strip_ddp(model), prompt_ids, prompt_mask, **options)
            else:  # "lean", or "fused": the same loop over the CPU speed path's stepper
                stepper = _stepper(runner, _strip_ddp(model), prompt_ids, prompt_mask, max_new_tokens)
                generated = _decode(stepper, prompt_ids, **options)
                del stepper  # its KV cache, and the heap pages it held back to the OS (utils.memory)
                return_freed_memory()
        else:  # an engine object (vLLM): same contract, returns the generated ids [B, T']
            generated = runner.generate(model, prompt_ids, prompt_mask, **options)

    response_ids, response_mask = truncate_after_eos(generated.to(device), eos_token_id, pad_token_id)
    METER.generated(model, prompt_mask, response_mask)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask.long(),
        response_ids=response_ids,
        response_mask=response_mask,
        sequences=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask.long(), response_mask], dim=1),
    )


ENGINES = ("auto", "fused", "lean", "hf", "vllm")


def _supports_lean(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward takes a KV cache and position ids (decoder-only transformers LM)."""
    core = _unwrap(model)
    config = getattr(core, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        accepted = set(inspect.signature(core.forward).parameters)
    except (TypeError, ValueError):
        return False
    if not {"input_ids", "attention_mask", "position_ids", "past_key_values", "use_cache"} <= accepted:
        return False
    peft_config = getattr(_strip_ddp(model), "active_peft_config", None)
    # prompt-learning adapters (prefix/prompt tuning) rewrite the inputs inside their own generate()
    return not getattr(peft_config, "is_prompt_learning", False)


def _resolve_engine(engine: str | object, model: torch.nn.Module) -> str | object:
    """``"lean"``, ``"hf"`` or an engine object for this call (see module docstring)."""
    if not isinstance(engine, str):
        return engine
    if engine not in ENGINES:
        raise ValueError(f"generate_rollout: engine must be one of {ENGINES} or an engine object, got {engine!r}")
    if engine == "vllm":
        from alignbench.rl.engines import vllm_engine_or_none

        resolved = vllm_engine_or_none()
        return resolved if resolved is not None else _resolve_engine("auto", model)
    if engine == "auto" and not _supports_lean(model):
        return "hf"
    if engine in ("auto", "fused"):
        from alignbench.rl.speed import decoding  # the CPU speed path (raises when engine=fused cannot run)

        return "fused" if decoding(engine, model) else "lean"
    return engine


def _hf_decode(model, prompt_ids, prompt_mask, *, max_new_tokens, eos_token_id, pad_token_id, temperature,
               top_k, top_p, do_sample) -> torch.Tensor:
    """transformers' ``generate`` with every warper we did not ask for pinned to neutral."""
    sampling = (
        dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, min_p=0.0)
        if do_sample
        else dict(do_sample=False)
    )
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        **_NEUTRAL_GENERATION,
        **sampling,
    )
    # DDP is stripped by the caller; a peft wrapper keeps its own .generate (it switches adapters on);
    # FSDP: synced_gpus keeps every rank stepping until all have finished
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                         synced_gpus=is_sharded(model))
    return out[:, prompt_ids.shape[1]:]


def _rollout_cache(model: torch.nn.Module, capacity: int) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose plain full-attention layers hold the whole rollout from the
    first write (``alignbench.rl.kv_cache``, imported here: transformers' cache module is slow to import)."""
    from alignbench.rl.kv_cache import preallocated_cache

    return preallocated_cache(_unwrap(model).config, capacity)


class _ModelStepper:
    """Prefill and one-token steps through the model's own forward and a preallocated KV cache."""

    def __init__(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int) -> None:
        batch, self.width = prompt_ids.shape
        self.model = model
        self.cache = _rollout_cache(model, self.width + max_new_tokens)
        self.attention = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1)
        self.positions = position_ids_from_mask(prompt_mask)
        self.keep = dict(logits_to_keep=1) if _accepts_logits_to_keep(model) else {}
        self.prompt_ids, self.steps = prompt_ids, 0
        self.synced = is_sharded(model)  # FSDP: every rank keeps stepping until all have finished

    def _scores(self, **inputs) -> torch.Tensor:
        logits = self.model(**inputs, past_key_values=self.cache, use_cache=True, **self.keep).logits
        return logits[:, -1].float()

    def prefill(self) -> torch.Tensor:
        return self._scores(input_ids=self.prompt_ids, attention_mask=self.attention[:, : self.width],
                            position_ids=self.positions)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self._scores(input_ids=tokens[:, None], attention_mask=self.attention[:, : self.width + self.steps],
                            position_ids=self.positions[:, -1:] + self.steps)


def _stepper(runner: str, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int):
    """The prefill / step object ``_decode`` drives: the model's own forward, or (``"fused"``) the CPU
    speed path's stepper with the same contract (``alignbench.rl.speed.fused_decoder``)."""
    if runner == "fused":
        from alignbench.rl.speed import fused_decoder

        return fused_decoder(model, prompt_ids, prompt_mask, max_new_tokens)
    return _ModelStepper(model, prompt_ids, prompt_mask, max_new_tokens)


def _decode(stepper, prompt_ids: torch.Tensor, *, max_new_tokens, eos_token_id, pad_token_id, temperature,
            top_k, top_p, do_sample) -> torch.Tensor:
    """Prefill + one-token steps with the KV cache; the same token choices as HF ``generate``.

    ``stepper``: ``prefill()`` then ``step(tokens)``, each returning float32 scores [B, V] for the next
    token. Per step: (sampling) temperature, top-k, top-p in HF's order, ``softmax`` and one
    ``torch.multinomial`` draw, or ``argmax`` (greedy); rows that have emitted EOS get
    ``pad_token_id``; the loop stops when every row has finished (on every rank when the stepper is
    ``synced``, i.e. the model is FSDP-sharded: each step's forward is a collective, so the ranks step
    together).
    """
    batch = prompt_ids.shape[0]
    device = prompt_ids.device
    eos = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=device)
    generated = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    scores = stepper.prefill()
    steps = 0
    synced = getattr(stepper, "synced", False)
    for step in range(max_new_tokens):
        tokens = sample_next(scores, temperature=temperature, top_k=top_k, top_p=top_p, do_sample=do_sample)
        tokens = torch.where(unfinished, tokens, pad_token_id)
        generated[:, step] = tokens
        steps = step + 1
        unfinished &= ~torch.isin(tokens, eos)
        if steps == max_new_tokens or not (any_rank(bool(unfinished.any())) if synced else bool(unfinished.any())):
            break
        scores = stepper.step(tokens)
    return generated[:, :steps]


def sample_next(scores: torch.Tensor, *, temperature: float, top_k: int, top_p: float, do_sample: bool
                ) -> torch.Tensor:
    """One token per row from float32 ``scores`` [B, V]: HF's order (temperature, top-k, top-p), then
    ``softmax`` and one ``torch.multinomial`` draw; ``argmax`` when not sampling."""
    if not do_sample:
        return torch.argmax(scores, dim=-1)
    if temperature != 1.0:
        scores = scores / temperature
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    if top_k:
        scores = TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1)(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(_unwrap(model).forward).parameters
