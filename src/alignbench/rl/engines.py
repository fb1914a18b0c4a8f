"""Optional rollout engines behind ``generate_rollout(engine=...)``: vLLM on a GPU.

The default engines (``lean``, ``hf``) live in ``alignbench.rl.rollout``. This module adds vLLM for
large models on a GPU. It is used only when the ``vllm`` package is installed **and** CUDA is
available; otherwise ``vllm_engine_or_none`` returns ``None`` (the caller falls back to ``auto``)
and ``vllm`` is never imported. Nothing else in alignbench imports vLLM.

Contract of an engine object (what ``generate_rollout`` calls)::

    engine.generate(model, prompt_ids, prompt_mask, *, max_new_tokens, eos_token_id, pad_token_id,
                    temperature, top_k, top_p, do_sample) -> LongTensor [B, T']  (generated ids only)

The vLLM engine keeps one ``vllm.LLM`` for the process, built from the first policy it sees (its
config and merged weights are written to a temporary folder), and before every rollout loads the
policy's current weights into it — LoRA adapters merged in (``merged_state_dict``), so the
adapter that ``RoleSet.use(role)`` switched on is the one that generates. Sampling is plain
softmax(z / T) (top-k/top-p only when asked), with a per-row seed drawn from torch's RNG, so a
seeded ``generate_rollout`` stays reproducible. The log-probs the losses use are always recomputed
by the training model (``sequence_logprobs``); vLLM only proposes the tokens.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence

import torch

__all__ = ["vllm_available", "vllm_engine_or_none", "VLLMEngine", "merged_state_dict"]

_ENGINE: "VLLMEngine | None" = None


def vllm_available() -> bool:
    """vLLM is installed (looked up without importing it) and a CUDA device is present."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_engine_or_none(**llm_kwargs) -> "VLLMEngine | None":
    """The process-wide vLLM engine, or ``None`` (with a warning) when vLLM cannot be used here."""
    global _ENGINE
    if not vllm_available():
        warnings.warn("rollout engine 'vllm' needs the vllm package and a CUDA GPU; using the default "
                      "engine instead", RuntimeWarning, stacklevel=3)
        return None
    if _ENGINE is None:
        _ENGINE = VLLMEngine(**llm_kwargs)
    return _ENGINE


def _strip(model: torch.nn.Module) -> torch.nn.Module:
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights ``model`` computes with right now, as a plain transformers state dict.

    peft LoRA layers contribute ``W + sum(delta W)`` of their *active* adapters (nothing when the
    adapters are disabled, e.g. inside ``RoleSet.use("reference")``); adapter tensors themselves
    and the ``base_layer`` level of the names are dropped, so the keys are those of the bare model.
    """
    from peft.tuners.lora import LoraLayer

    model = _strip(model)
    merged: dict[str, torch.Tensor] = {}
    lora_prefixes = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            lora_prefixes.append(name + ".")
            weight = module.get_base_layer().weight.detach().clone()
            if not module.disable_adapters:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight += module.get_delta_weight(adapter).to(weight.dtype)
            merged[f"{name}.weight"] = weight
            bias = getattr(module.get_base_layer(), "bias", None)
            if bias is not None:
                merged[f"{name}.bias"] = bias.detach().clone()
    for name, tensor in model.state_dict().items():
        if any(name.startswith(prefix) for prefix in lora_prefixes):
            continue  # base_layer / lora_A / lora_B entries: replaced by the merged weight above
        merged[name] = tensor.detach()
    return merged


class VLLMEngine:
    """Generation with a ``vllm.LLM`` whose weights follow the training policy (see module docstring)."""

    def __init__(self, gpu_memory_utilization: float = 0.3, dtype: str = "auto", max_model_len: int | None = None,
                 enforce_eager: bool = True) -> None:
        self.llm_kwargs = dict(gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                               enforce_eager=enforce_eager)
        if max_model_len:
            self.llm_kwargs["max_model_len"] = max_model_len
        self.llm = None
        self._folder: tempfile.TemporaryDirectory | None = None

    # ----------------------------------------------------------------- set-up and weight sync
    def _build(self, model: torch.nn.Module) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # keep the engine in this process
        from vllm import LLM  # noqa: PLC0415 - imported only here, only with a GPU

        core = _strip(model)
        self._folder = tempfile.TemporaryDirectory(prefix="alignbench-vllm-")
        core.config.save_pretrained(self._folder.name)
        from safetensors.torch import save_file

        weights = {k: v.contiguous().cpu() for k, v in merged_state_dict(model).items()}
        if getattr(core.config, "tie_word_embeddings", False):
            weights.pop("lm_head.weight", None)
        save_file(weights, os.path.join(self._folder.name, "model.safetensors"))
        self.llm = LLM(model=self._folder.name, skip_tokenizer_init=True, **self.llm_kwargs)

    def _runner_model(self):
        """The nn.Module vLLM runs (its location differs between vLLM versions)."""
        engine = self.llm.llm_engine
        for path in ("model_executor.driver_worker.worker.model_runner.model",
                     "model_executor.driver_worker.model_runner.model",
                     "engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model"):
            target = engine
            try:
                for attr in path.split("."):
                    target = getattr(target, attr)
                return target
            except AttributeError:
                continue
        raise RuntimeError("alignbench's vLLM engine cannot reach vLLM's model to load the policy weights "
                           "(unsupported vLLM version); use algo.rollout.engine=auto")

    def sync_weights(self, model: torch.nn.Module) -> None:
        if self.llm is None:
            self._build(model)
            return
        self._runner_model().load_weights(merged_state_dict(model).items())

    # ----------------------------------------------------------------- generation
    def generate(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
                 eos_token_id: int | Sequence[int], pad_token_id: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, do_sample: bool = True) -> torch.Tensor:
        from vllm import SamplingParams  # noqa: PLC0415

        self.sync_weights(model)
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        prompts = [{"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(prompt_ids, prompt_mask)]
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()  # from the (forked) torch RNG
        params = [SamplingParams(n=1, max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                 top_k=top_k if (do_sample and top_k) else -1, top_p=top_p if do_sample else 1.0,
                                 stop_token_ids=eos, ignore_eos=False, seed=seed, detokenize=False)
                  for seed in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows = [list(out.outputs[0].token_ids) for out in outputs]
        width = max(1, max(len(row) for row in rows))
        generated = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        for index, row in enumerate(rows):
            generated[index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        return generated.to(prompt_ids.device)
