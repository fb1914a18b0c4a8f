"""<run dir>/export/: the trained policy as a PEFT adapter + the model it applies to (+ merged), loaded with
transformers and peft alone, reproduces the job's own greedy answers; the model card names what it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignbench.models.export import prompt_chat_template
from alignbench.utils.memory import _malloc_trim
from conftest import run_cli


def _greedy(model, tokenizer, facts: dict) -> list[str]:
    answers = []
    for sample in facts["samples"]:
        ids = tokenizer(sample["input"], add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=facts["generation"]["max_new_tokens"], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def check_export(export: Path) -> dict:
    """Load every folder of an export with transformers / peft; each gives the job's greedy answers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    facts = json.loads((export / "alignbench.json").read_text())
    wanted = [sample["response"] for sample in facts["samples"]]
    assert len(wanted) == 4 and len(set(s["prompt"] for s in facts["samples"])) == 4
    if "adapter" in facts["folders"]:
        tokenizer = AutoTokenizer.from_pretrained(export / "adapter")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(export / "base"), export / "adapter")
        assert _greedy(model.eval(), tokenizer, facts) == wanted
    if "merged" in facts["folders"]:
        tokenizer = AutoTokenizer.from_pretrained(export / "merged")
        assert _greedy(AutoModelForCausalLM.from_pretrained(export / "merged").eval(), tokenizer, facts) == wanted
    first = facts["samples"][0]  # the tokenizers carry the job's prompt format as their chat template
    assert tokenizer.apply_chat_template([{"role": "user", "content": first["prompt"]}], tokenize=False,
                                         add_generation_prompt=True) == first["input"]
    return facts


def test_chat_template_of_a_prompt_format():
    assert prompt_chat_template("USER: {prompt} ASSISTANT:") == "USER: {{ messages[-1]['content'] }} ASSISTANT:"
    assert prompt_chat_template("{% raw %}{prompt}") is None


@pytest.mark.slow
def test_rl_and_sft_jobs_export_what_transformers_and_peft_load(tmp_path, stage_cache):
    ppo = tmp_path / "ppo"
    result = run_cli(["algo=ppo", "experiment=smoke", "logger=none", "export.merged=true", "trainer.num_threads=1",
                      f"hydra.run.dir={ppo}"])
    assert result.returncode == 0, result.stderr[-2000:]
    facts = check_export(ppo / "export")
    assert facts["folders"] == ["base", "adapter", "merged"] and facts["role"] == "policy"
    assert json.loads((ppo / "export" / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    card = (ppo / "export" / "README.md").read_text()
    summary = json.loads((ppo / "summary.json").read_text())
    # run.py started itself again under glibc's settings for tensor memory (utils.memory), where glibc is
    assert summary["perf"]["heap_tuned"] == float(_malloc_trim() is not None)
    unsafe = summary["metrics"]["eval/unsafe_rate"]
    assert "`ppo` job on the `world` data" in card and f"| `eval/unsafe_rate` | {unsafe:.4f} |" in card
    assert '"name": "ppo"' in card and "PeftModel.from_pretrained" in card  # the config, how to load it

    sft = tmp_path / "sft"  # algo=sft: the policy is the SFT model itself (whole weights: merged/ only)
    result = run_cli(["algo=sft", "experiment=smoke", "logger=none", "trainer.num_threads=1", f"hydra.run.dir={sft}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert check_export(sft / "export")["folders"] == ["merged"]


def test_an_export_with_a_merged_model_leaves_the_live_weights_alone(tmp_path):
    """The export reads the live weights without a copy (memory), so the merge must not add into them."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from types import SimpleNamespace
    from transformers import AutoModelForCausalLM

    from alignbench.config import TinyArchConfig
    from alignbench.models.export import write_export
    from alignbench.models.tiny import build_tiny_llama, build_word_tokenizer

    tokenizer = build_word_tokenizer(["how", "do", "i", "bake", "bread"], "USER: {prompt} ASSISTANT:")
    base = build_tiny_llama(tokenizer, TinyArchConfig(hidden_size=16, intermediate_size=32), seed=0)
    peft = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False), adapter_name="policy")
    before = {key: value.clone() for key, value in peft.state_dict().items()}
    folder = write_export(tmp_path / "export", roles=SimpleNamespace(peft=peft), role="policy", base_model=None,
                          tokenizer=tokenizer, prompt_template="USER: {prompt} ASSISTANT:", base=True, merged=True,
                          facts={})
    after = peft.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base"), folder / "adapter")
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():  # and the merged model is the adapter applied to the base
        assert torch.allclose(merged(ids).logits, adapted.eval()(ids).logits, atol=1e-5)
        plain = AutoModelForCausalLM.from_pretrained(folder / "base").eval()
        assert not torch.allclose(merged(ids).logits, plain(ids).logits, atol=1e-3)
