"""Frozen models loaded by id or path beside the run's base: external reward/cost models and judges.

Safe RLHF's published score models (``PKU-Alignment/beaver-7b-v1.0-reward`` / ``-cost``) are a Llama
body with a linear ``score_head``; the score of a conversation is the head's output at its last
non-padding token (the "end score"):

    R(x, y) = w_R^T h_T(x, y) [+ b],     C(x, y) = w_C^T h_T(x, y) [+ b],     C > 0 means unsafe.

Their checkpoints (architecture ``LlamaForScore`` / ``LlamaModelForScore`` in the safe-rlhf package)
also carry a running ``normalizer`` (mean/var buffers) that is applied only when the config says
``do_normalize: true`` (affine (s - mu) / sigma for ``score_type: reward``, scale s / sigma for
``cost``). We read these checkpoints with plain ``transformers`` + ``safetensors`` — the safe-rlhf
package is not needed — and also accept any ``*ForSequenceClassification`` model with one label (the
TRL / OpenRLHF reward-model layout), whose logit is the score.

An external model has its own tokenizer and prompt template (beaver: ``BEGINNING OF CONVERSATION:
USER: {prompt} ASSISTANT:{response}``), so texts are re-tokenised for it; nothing is shared with the
policy's base, and it is never trained or checkpointed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignbench.errors import ModelUnavailableError
from alignbench.models.compute import METER

BEAVER_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"


def resolve_model_dir(id_or_path: str, key: str) -> Path:
    """A local directory holding ``id_or_path``: the path itself, or the hub cache's snapshot.

    ``key`` names the config value in the error (e.g. ``algo.reward_model.path``). Offline (the
    default, ``HF_HUB_OFFLINE=1``) a hub id that is not cached fails here with one sentence.
    """
    path = Path(os.path.expanduser(str(id_or_path)))
    if path.is_dir():
        return path
    if path.exists():
        raise ModelUnavailableError(f"{key}={id_or_path} is a file; point it at the model's folder")
    looks_like_path = str(id_or_path).startswith((".", "/", "~")) or str(id_or_path).count("/") > 1
    if looks_like_path:
        raise ModelUnavailableError(f"{key}={id_or_path} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(str(id_or_path), local_files_only=offline))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelUnavailableError(
            f"model '{id_or_path}' ({key}) is not on this machine and HF_HUB_OFFLINE=1: download it with "
            f"`HF_HUB_OFFLINE=0 huggingface-cli download {id_or_path}` or set {key}= to a local folder"
        ) from None


def _read_state(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose name starts with ``prefix`` from the folder's safetensors files (no pickles)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelUnavailableError(f"score model {folder} has no .safetensors weights (pickle files are not loaded)")
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name.startswith(prefix):
                    state[name[len(prefix):]] = handle.get_tensor(name)
    return state


class ExternalScoreModel(nn.Module):
    """A frozen sequence scorer: ``score(prompts, responses) -> (B,)`` end scores, fp32 on output.

    Args:
        id_or_path: hub id (must be cached when offline) or local folder.
        key: the config key it came from, for error messages.
        template: how a (prompt, response) pair becomes the scored text; ``None`` picks the beaver
            template for safe-rlhf checkpoints and ``"{prompt}\\n{response}"`` otherwise.
        dtype: weights dtype (``float32`` on CPU; ``bfloat16`` on GPU for 7B models).
        max_length: truncation of the scored text (left side kept: the response end is what counts).
        limits: the run's ``TextLimits``; every truncated text is counted there (``scored_texts``).
    """

    def __init__(self, id_or_path: str, *, key: str, template: str | None = None, dtype: torch.dtype = torch.float32,
                 max_length: int = 1024, batch_size: int = 16, limits: Any = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        folder = resolve_model_dir(id_or_path, key)
        config = AutoConfig.from_pretrained(folder)
        architectures = list(getattr(config, "architectures", None) or [])
        self.layout = "safe_rlhf" if any(a.endswith("ForScore") for a in architectures) else "sequence_classification"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"  # end index = last attended token, as safe-rlhf computes it
        self.tokenizer.truncation_side = "left"
        self.template = template or (BEAVER_TEMPLATE if self.layout == "safe_rlhf" else "{prompt}\n{response}")
        self.max_length, self.batch_size, self.limits = max_length, batch_size, limits
        self.key = key.rsplit(".", 1)[0] + ".max_length"
        if self.layout == "safe_rlhf":
            self.body = AutoModel.from_pretrained(folder, dtype=dtype, use_safetensors=True)
            head = _read_state(folder, "score_head.")
            if "weight" not in head:
                raise ModelUnavailableError(f"{key}={id_or_path}: a *ForScore checkpoint without score_head.weight")
            self.score_head = nn.Linear(head["weight"].shape[1], head["weight"].shape[0], bias="bias" in head)
            self.score_head.load_state_dict(head)
            self.score_head.to(dtype)
            normalizer = _read_state(folder, "normalizer.")
            self.normalize = bool(getattr(config, "do_normalize", False))
            self.normalize_function = "scale" if getattr(config, "score_type", "reward") == "cost" else "affine"
            mean = normalizer.get("mean", torch.as_tensor(getattr(config, "mean", None) or [0.0]))
            var = normalizer.get("var", torch.as_tensor(getattr(config, "var", None) or [1.0]))
            self.register_buffer("norm_mean", mean.float().reshape(-1)[:1], persistent=False)
            self.register_buffer("norm_std", var.float().reshape(-1)[:1].sqrt(), persistent=False)
        else:
            if getattr(config, "num_labels", 1) != 1:
                raise ModelUnavailableError(
                    f"{key}={id_or_path}: a sequence-classification score model needs one label "
                    f"(it has {config.num_labels}); use it as a judge (eval.judge=classifier) instead")
            self.body = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype, use_safetensors=True)
            if self.body.config.pad_token_id is None:
                self.body.config.pad_token_id = self.tokenizer.pad_token_id
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.body.parameters()).device

    def _end_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        METER.forward(self.body, attention_mask)
        if self.layout == "sequence_classification":
            return self.body(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        end = attention_mask.long().cumsum(dim=1).argmax(dim=1)  # last attended position of each row
        scores = self.score_head(hidden[torch.arange(hidden.shape[0], device=hidden.device), end]).float()[:, 0]
        if self.normalize:
            centred = scores - self.norm_mean if self.normalize_function == "affine" else scores
            scores = centred / (self.norm_std + 1e-8)
        return scores

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """End scores of ``template.format(prompt=, response=)`` for every pair, batched."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self.template.format(prompt=p, response=r)
                     for p, r in zip(prompts[start:start + self.batch_size], responses[start:start + self.batch_size])]
            count_cuts(self.limits, self.tokenizer, texts, self.max_length, self.key)
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_length)
            out.append(self._end_scores(batch["input_ids"].to(self.device),
                                        batch["attention_mask"].to(self.device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)



def count_cuts(limits: Any, tokenizer, texts: list[str], max_length: int, key: str, **encode_kwargs) -> None:
    """Count (in ``limits``, a ``TextLimits``) every text a scorer's tokenizer cuts to ``max_length``."""
    if limits is None:
        return
    lengths = [len(ids) for ids in tokenizer(texts, **encode_kwargs)["input_ids"]]
    for text, length in zip(texts, lengths):
        if length > max_length:
            limits.record_cut("scored_texts", hash(text), f"a {length}-token text lost its start to fit {key}="
                                                          f"{max_length} of a scorer with its own tokenizer")
