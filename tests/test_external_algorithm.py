"""Bring your own algorithm: a method in the user's own package plugs in without touching alignbench.

The package below lives in a temporary folder: one module (``mypkg``, a cost-aware REINFORCE++ written
against the contract and the RL core) and one YAML in the user's own config folder, found through
``hydra.searchpath``. It is discovered through an entry point (``alignbench.algorithms``), or named by
``_target_`` alone; it runs head-to-head with ``sft`` and appears in the report (docs/ADDING_AN_ALGORITHM.md).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from alignbench.summary import read_history, read_summary
from conftest import CONF, ROOT, compose, run_cli

MODULE = '''
"""cost_aware: REINFORCE++ on the score R - w C (an algorithm outside alignbench)."""

from dataclasses import dataclass

import torch

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.config import AlgoConfig, GenerationConfig, OptimConfig
from alignbench.config_fields import at_least, param
from alignbench.models.roles import RoleSpec
from alignbench.rl.experience import collect
from alignbench.rl.update import ShapedRewardConfig, clipped_surrogate, policy_update, reinforce_pp_of_parts


@dataclass
class CostAwareConfig(ShapedRewardConfig, AlgoConfig):
    steps: int = param(20, "RL iterations", at_least(0))
    cost_weight: float = param(1.0, "w of the sequence score R - w C", at_least(0))
    rollout: GenerationConfig = param(GenerationConfig(), "the policy's sampling in rollouts")
    actor_optim: OptimConfig = param(OptimConfig(lr=5e-4), "the policy's optimiser")


class CostAware(AlgorithmComponent):
    """One policy, REINFORCE++ on R - w C from the run's training signals."""

    config_class = CostAwareConfig
    requires = ("sft",)

    @classmethod
    def signal_kinds(cls, cfg):
        return ("reward", "cost")

    def __init__(self, cfg, ctx, stage_outputs=None):
        super().__init__(cfg, ctx, stage_outputs)
        self.generator = torch.Generator().manual_seed(int(ctx.rc.seed))

    def role_specs(self):
        return [RoleSpec("policy", "lm", trainable=True)]

    def train_items(self):
        return self.ctx.data.train_prompts

    def optimizer_specs(self):
        return {"policy": OptimizerSpec(self.roles.parameters_of("policy"), self.cfg.actor_optim,
                                        self.num_iterations)}

    def training_step(self, batch, host):
        cfg = self.cfg
        exp = collect(self.ctx, self.roles, "policy", [r.prompt for r in batch], cfg.rollout,
                      generator=self.generator)
        rewards = self.ctx.signals.reward(batch, exp.texts).to(exp.mask.device)
        costs = self.ctx.signals.cost(batch, exp.texts).to(exp.mask.device)
        (advantages,), kl = reinforce_pp_of_parts([(exp, rewards - cfg.cost_weight * costs)], cfg)
        loss = clipped_surrogate(self.roles, "policy", [(exp, advantages)], cfg)
        metrics = policy_update(host, "policy", [exp.size], loss, epochs=cfg.epochs, minibatches=cfg.minibatches,
                                generator=self.generator)
        self.monitored_answers = (list(batch), list(exp.texts))
        return {**metrics, "train/reward": float(rewards.mean()), "train/episode_cost": float(costs.mean()),
                "train/kl": kl}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
'''

#: the smoke experiment's sizes, so the stages come from the test session's cache
SMALL = ["stages.sft.steps=40", "stages.sft.batch_size=16", "stages.reward_model.steps=10",
         "stages.reward_model.batch_size=16", "stages.cost_model.steps=10", "stages.cost_model.batch_size=16",
         "stages.label_model.steps=10", "stages.label_model.batch_size=16", "data.eval_prompts=24",
         "algo.steps=2", "algo.batch_size=4", "logger=none"]


def _user_project(root: Path, *, entry_point: bool) -> tuple[Path, Path]:
    """(site folder holding the package, config folder) of a user's project under ``root``."""
    site, conf = root / "site", root / "conf" / "algo"
    (site / "mypkg").mkdir(parents=True)
    conf.mkdir(parents=True)
    (site / "mypkg" / "__init__.py").write_text(MODULE)
    if entry_point:  # what `pip install` of a package declaring the entry point leaves behind
        info = site / "mypkg-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[alignbench.algorithms]\ncost_aware = mypkg:CostAware\n")
        (conf / "cost_aware.yaml").write_text("# only what differs from CostAwareConfig's defaults\ncost_weight: 2.0\n")
    else:  # no entry point: the YAML names the class, the config class fills in every other default
        (conf / "cost_aware.yaml").write_text("_target_: mypkg.CostAware\nname: cost_aware\ncost_weight: 2.0\n")
    return site, root / "conf"


def _digest(*folders: Path) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_an_algorithm_from_another_package_runs_head_to_head_and_appears_in_the_report(tmp_path, stage_cache):
    before = _digest(ROOT / "src", ROOT / "conf")
    site, conf = _user_project(tmp_path, entry_point=True)
    sweep = tmp_path / "sweep"
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = run_cli(["-m", "experiment=head_to_head", "algo=sft,cost_aware", "seed=1", *SMALL,
                      f"hydra.searchpath=[file://{conf}]", f"hydra.sweep.dir={sweep}"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = {read_summary(p.parent)["algo"]: p.parent for p in sweep.glob("*/summary.json")}
    assert set(summaries) == {"sft", "cost_aware"}
    job = summaries["cost_aware"]
    summary = read_summary(job)
    assert summary["status"] == "ok" and summary["seed"] == 1
    for key in ("eval/unsafe_rate", "eval/helpfulness", "train/reward", "losses/policy/policy_loss",
                "optim/policy/grad_norm", "optim/policy/lr"):
        assert key in summary["metrics"], key
    assert [row["iteration"] for row in read_history(job) if row["stage"] == "rl"] == [1, 2]
    # the user's YAML overrode one value; every other default came from CostAwareConfig via the entry point
    import yaml

    composed = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["algo"]
    assert composed["_target_"] == "mypkg.CostAware" and composed["cost_weight"] == 2.0
    assert composed["rollout"]["max_new_tokens"] == 24 and composed["kl_coef"] == 0.05
    report = (sweep / "report.md").read_text()
    assert "cost_aware" in report and "sft" in report
    assert _digest(ROOT / "src", ROOT / "conf") == before  # nothing under src/ or conf/ was touched
    assert not str(site).startswith(str(ROOT))


def test_a_target_alone_names_the_class_and_its_config_class_fills_the_defaults(tmp_path, stage_cache,
                                                                                 monkeypatch):
    from alignbench.config import validate_config
    from alignbench.registry import algorithm_class

    site, conf = _user_project(tmp_path, entry_point=False)
    monkeypatch.syspath_prepend(str(site))
    cfg = compose(["algo=cost_aware", f"hydra.searchpath=[file://{conf}]"], tmp_path / "out", stage_cache)
    assert "rollout" not in cfg.algo  # nothing registered it: the YAML alone was composed
    cls = algorithm_class(cfg.algo)
    rc = validate_config(cfg, cls.config_class)
    assert cls.__module__ == "mypkg" and rc.algo.name == "cost_aware" and rc.algo.cost_weight == 2.0
    assert rc.algo.rollout.max_new_tokens == 24 and rc.algo.epochs == 1  # the class's defaults


@pytest.mark.parametrize("target, needle", [
    ("nopkg.Nothing", "config value 'algo._target_' (nopkg.Nothing) does not name a class"),
    ("alignbench.config.ModelConfig", "is not an alignbench.algorithms.base.AlgorithmComponent subclass"),
])
def test_a_target_that_is_no_algorithm_is_one_line(target, needle):
    from omegaconf import OmegaConf

    from alignbench.errors import UserError
    from alignbench.registry import algorithm_class

    with pytest.raises(UserError) as info:
        algorithm_class(OmegaConf.create({"_target_": target, "name": "x"}))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_builtin_algorithms_are_found_without_a_list(composed):
    """Every module of alignbench.algorithms registers itself: the package's __init__ names none."""
    init = (ROOT / "src" / "alignbench" / "algorithms" / "__init__.py").read_text()
    assert "ppo" not in init and "triplay" not in init
    assert composed(["algo=repo"]).algo._target_ == "alignbench.algorithms.repo.RePO"
    assert (CONF / "algo" / "repo.yaml").exists()
