"""Which policy a job exports, with what facts: the job side of ``alignbench.models.export``.

After evaluation every SFT and RL job (``export.enabled``) writes ``<run dir>/export/``: the LM role
that answers users (``AlgorithmComponent.export_role``: ``policy``; TriPlay's ``defender``, WaltzRL's
``conversation`` agent; ``reference`` for ``algo=sft``, whose policy is the SFT model itself; none for
jobs that train nothing), its greedy answers to ``export.samples`` evaluation prompts spread over the set (so a
loaded copy can be checked against the job), and the card's facts: algorithm, model, data, seed,
judge, evaluation metrics and the resolved config (secrets redacted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from alignbench.models.export import EXPORT_DIR, write_export
from alignbench.models.text import encode_prompts, format_prompt
from alignbench.rl.fused_llama import FusedLlama
from alignbench.rl.rollout import generate_rollout
from alignbench.secret_keys import redact
from alignbench.utils.distributed import is_rank_zero, is_sharded


def greedy_answers(ctx, roles, role: str, prompts: list[str]) -> list[dict[str, str]]:
    """``role``'s greedy answer to each prompt, with the exact text the model was given."""
    if not prompts:
        return []
    settings = ctx.rc.eval.generation
    ids, mask = encode_prompts(ctx.tokenizer, ctx.model_cfg, prompts, limits=ctx.limits)
    with torch.inference_mode(), roles.generation_model(role) as model:
        rollout = generate_rollout(model, ids.to(ctx.device), mask.to(ctx.device), max_new_tokens=settings.max_new_tokens,
                                   eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
                                   do_sample=False, engine=settings.engine)
    answers = ctx.decode(rollout.response_ids, rollout.response_mask)
    return [{"prompt": prompt, "input": format_prompt(ctx.tokenizer, ctx.model_cfg, prompt), "response": answer}
            for prompt, answer in zip(prompts, answers)]


def export_job(ctx, component, roles, metrics: dict[str, Any]) -> Path | None:
    """Write ``<run dir>/export/`` for this job (module docstring); the folder on rank 0, else None.

    Under DDP rank 0 exports alone (every rank holds whole weights); under FSDP every rank takes part.
    """
    rc = ctx.rc
    role = getattr(component, "export_role", None)
    if not rc.export.enabled or role is None or (role != "reference" and role not in roles.specs):
        return None
    if not (is_rank_zero() or is_sharded(roles)):
        return None
    records = ctx.data.eval_prompts  # spread over the set (it is ordered by kind)
    prompts = [r.prompt for r in records[::max(1, len(records) // max(1, rc.export.samples))][:rc.export.samples]]
    samples = greedy_answers(ctx, roles, role, prompts)
    FusedLlama.release_all()  # nothing decodes after this: the fused weight copy goes before the export's writes
    model = rc.model
    facts = {
        "algo": rc.algo.name, "model": model.name, "data": rc.data.name, "seed": rc.seed, "judge": rc.eval.judge,
        "source": {"kind": model.source, "id": model.id, "path": model.path, "gguf_package": model.gguf_package},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "generation": {"max_new_tokens": rc.eval.generation.max_new_tokens, "do_sample": False},
        "samples": samples,
        "config": redact(OmegaConf.to_container(rc.raw, resolve=True)),
    }
    base_model = ctx.base if role == "reference" else None
    return write_export(Path(rc.output_dir) / EXPORT_DIR, roles=roles, role=role, base_model=base_model,
                        tokenizer=ctx.tokenizer, prompt_template=_prompt_format(ctx), base=rc.export.base,
                        merged=rc.export.merged, facts=facts)


def _prompt_format(ctx) -> str:
    """The prompt text around ``{prompt}`` the policy was trained with."""
    marker = "\x00PROMPT\x00"
    return format_prompt(ctx.tokenizer, ctx.model_cfg, marker).replace(marker, "{prompt}")
