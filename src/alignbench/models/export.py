"""A job's trained policy as folders that transformers and peft load without alignbench.

``write_export`` fills ``<run dir>/export/``:

    adapter/        the policy's LoRA adapter (adapter_config.json, adapter_model.safetensors) + tokenizer
    base/           the model the adapter applies to: the pretrained model with the SFT stage merged in
                    (it exists nowhere else) + tokenizer; ``export.base=false`` leaves it out
    merged/         with ``export.merged=true``: base + adapter merged (W + (alpha / r) B A), one plain model
    README.md       the model card: algorithm, data, config, evaluation metrics, how to load it
    alignbench.json the same facts for programs, and greedy answers of the job to check a loaded copy

A policy that is whole weights rather than an adapter (``algo=sft``, whose policy is the SFT model;
``model.adapters=false``) is written as ``merged/`` only. Loading (README "On a cluster")::

    tokenizer = AutoTokenizer.from_pretrained("export/adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("export/base"), "export/adapter")
    model = AutoModelForCausalLM.from_pretrained("export/merged")          # export.merged=true

Prompts go in the job's format: the ``prompt_format`` of alignbench.json, which the exported
tokenizers also carry as their chat template (``apply_chat_template(..., add_generation_prompt=True)``).

Under FSDP every rank calls ``write_export`` (reading a sharded weight whole is a collective; one
tensor at a time, moved to the CPU) and rank 0 writes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignbench.utils.distributed import full_tensor, is_rank_zero

EXPORT_DIR = "export"
CARD_FILE = "README.md"
FACTS_FILE = "alignbench.json"


def _whole_on_rank_zero(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with whole CPU tensors on rank 0 (empty elsewhere); a collective.

    A whole CPU tensor is the module's own (no copy: a second set of weights was the SmolLM2 job's peak);
    nothing below writes into them (the merge is ``safe_merge``: new tensors)."""
    keep = is_rank_zero()
    out = {}
    for key, value in module.state_dict().items():
        whole = full_tensor(value.detach()).to("cpu")
        if keep:
            out[key] = whole
    return out


def _base_state(core_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state of a peft-wrapped model without its LoRA layers: what ``unload`` leaves."""
    return {key.replace(".base_layer.", "."): value for key, value in core_state.items() if ".lora_" not in key}


def _plain_model(reference: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A fresh transformers model of ``reference``'s config holding ``state`` (no copy of the tensors)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(reference.config))
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [name for name, param in model.named_parameters() if param.is_meta]
    if missing:
        raise RuntimeError(f"export: no weights for {missing[:3]}")
    model.generation_config = copy.deepcopy(reference.generation_config)
    return model.eval()


def prompt_chat_template(prompt_template: str) -> str | None:
    """A chat template that renders the last user message in ``prompt_template`` (None when the
    template holds characters Jinja would read)."""
    if any(mark in prompt_template.replace("{prompt}", "") for mark in ("{", "}", "%")):
        return None
    before, after = prompt_template.split("{prompt}", 1)
    return f"{before}{{{{ messages[-1]['content'] }}}}{after}"


def _save_tokenizer(tokenizer, directory: Path, chat_template: str | None) -> None:
    tokenizer = copy.deepcopy(tokenizer)
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(directory))


def write_export(directory: str | Path, *, roles, role: str, base_model: nn.Module | None, tokenizer,
                 prompt_template: str, base: bool, merged: bool, facts: dict[str, Any]) -> Path | None:
    """Write the export folder (module docstring) for ``role`` of ``roles``; ``base_model`` is the
    policy's whole model when it is not a LoRA adapter of ``roles``. Returns the folder on rank 0."""
    directory = Path(directory)
    adapter = roles.peft is not None and role in getattr(roles.peft, "peft_config", {})
    if adapter:
        state = _whole_on_rank_zero(roles.peft)
    else:
        state = _whole_on_rank_zero(base_model if base_model is not None else roles.models[role])
    if not is_rank_zero():
        return None
    directory.mkdir(parents=True, exist_ok=True)
    chat_template = prompt_chat_template(prompt_template)
    written = []
    if adapter:
        from peft import PeftModel
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        core = roles.peft.base_model.model
        plain = _plain_model(core, _base_state({k[len("base_model.model."):]: v for k, v in state.items()}))
        if base:
            plain.save_pretrained(str(directory / "base"))
            _save_tokenizer(tokenizer, directory / "base", chat_template)
            written.append("base")
        config = copy.deepcopy(roles.peft.peft_config[role])
        config.base_model_name_or_path = str((directory / "base").resolve()) if base else None
        config.inference_mode = True
        config.save_pretrained(str(directory / "adapter"))
        weights = get_peft_model_state_dict(roles.peft, state_dict=state, adapter_name=role)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "adapter" / "adapter_model.safetensors"))
        _save_tokenizer(tokenizer, directory / "adapter", chat_template)
        written.append("adapter")
        if merged:
            # safe_merge: W + s B A into new tensors; the plain merge adds in place, into the live weights
            model = PeftModel.from_pretrained(plain, str(directory / "adapter")).merge_and_unload(safe_merge=True)
            model.save_pretrained(str(directory / "merged"))
            _save_tokenizer(tokenizer, directory / "merged", chat_template)
            written.append("merged")
    else:
        reference = base_model if base_model is not None else roles.models[role]
        # the SFT model may carry other roles' LoRA layers (e.g. the cost-model judge's): left out
        _plain_model(reference, _base_state(state)).save_pretrained(str(directory / "merged"))
        _save_tokenizer(tokenizer, directory / "merged", chat_template)
        written.append("merged")
    facts = {**facts, "role": role, "folders": written, "prompt_format": prompt_template,
             "chat_template": chat_template}
    (directory / FACTS_FILE).write_text(json.dumps(facts, indent=2, default=str) + "\n")
    (directory / CARD_FILE).write_text(model_card(facts))
    return directory


def model_card(facts: dict[str, Any]) -> str:
    """The export's README.md: what was trained on what, how it scored, how to load it."""
    metrics = facts.get("metrics") or {}
    rows = "\n".join(f"| `{key}` | {value:.4f} |" for key, value in sorted(metrics.items())
                     if key.startswith("eval/") and key.count("/") == 1 and isinstance(value, (int, float)))
    folders = facts.get("folders", [])
    if "adapter" in folders:
        load = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"export/adapter\")\n"
                "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(\"export/base\"), "
                "\"export/adapter\")")
        if "merged" in folders:
            load += "\n# or, merged: AutoModelForCausalLM.from_pretrained(\"export/merged\")"
    else:
        load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"export/merged\")\n"
                "model = AutoModelForCausalLM.from_pretrained(\"export/merged\")")
    what = "SFT model" if facts.get("role") == "reference" else f"`{facts.get('role')}` policy"
    samples = "\n".join(f"- **{s['prompt']}** → {s['response']}" for s in facts.get("samples", []))
    tags = ["alignbench", "safety-alignment", str(facts.get("algo"))]
    front = "\n".join(["---", f"library_name: {'peft' if 'adapter' in folders else 'transformers'}",
                       "tags:", *[f"- {tag}" for tag in tags], "---"])
    config = json.dumps(facts.get("config", {}), indent=2, default=str)
    return f"""{front}

# alignbench: {facts.get('algo')} on {facts.get('model')} / {facts.get('data')} (seed {facts.get('seed')})

The {what} of an alignbench `{facts.get('algo')}` job on the `{facts.get('data')}` data, starting from
`{facts.get('model')}` with alignbench's SFT stage merged in. Folders here: {', '.join(folders)}.

## Use

```python
{load}
```

Prompts in the format the policy was trained on: `{facts.get('prompt_format')}`
(also the tokenizers' chat template). Greedy answers of the job itself, to check a loaded copy:

{samples or '(none recorded)'}

## Evaluation (alignbench's harness, judge `{facts.get('judge')}`)

| metric | value |
|---|---|
{rows or '| (evaluation disabled) | |'}

## Config

```json
{config}
```
"""
