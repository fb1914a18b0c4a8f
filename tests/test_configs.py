"""Every config composes: each conf/algo x conf/model pair, each experiment (over its sweep), each launcher,
each option of the other groups; and every config field is documented where it is declared.

The lists come from conf/ and the registry, never from a list written here: a new algorithm's YAML or a
new experiment is covered the day it is added.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import typing

import pytest

from alignbench.config import GROUP_DEFAULTS, validate_config
from alignbench.config_fields import Choice
from alignbench.registry import algorithm_class, load_algorithms
from conftest import CONF

ALGOS = sorted(p.stem for p in (CONF / "algo").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
LAUNCHERS = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))
#: options of the other groups, with what they need to validate (or the one-line refusal they must give)
OPTIONS = {("data", "preference_jsonl"): ["data.path=x.jsonl"], ("data", "prompts_jsonl"): ["data.path=x.jsonl"]}


def validated(cfg):
    return validate_config(cfg, algorithm_class(cfg.algo).config_class)


def test_every_registered_algorithm_has_a_conf_file_and_the_other_way_round():
    assert ALGOS == load_algorithms().names()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_and_model_pair_composes_and_validates(composed, algo, model):
    rc = validated(composed([f"algo={algo}", f"model={model}"]))
    assert (rc.algo.name, rc.model.name) == (algo, model)
    assert isinstance(rc.algo, algorithm_class(rc.raw.algo).config_class)


def _sweep(hydra_cfg) -> list[list[str]]:
    """The jobs of an experiment's sweep: every combination of its comma-separated sweeper params
    (interval/range searches of an optimising sweeper are left to it)."""
    params = hydra_cfg.sweeper.get("params") or {}
    axes = [[f"{key}={value.strip()}" for value in str(values).split(",")] for key, values in params.items()
            if "(" not in str(values)]
    return [list(job) for job in itertools.product(*axes)] or [[]]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates_each_of_its_jobs(tmp_path, stage_cache, experiment):
    from conftest import compose

    with_hydra = compose([f"experiment={experiment}"], tmp_path, stage_cache, keep_hydra=True)
    jobs = _sweep(with_hydra.hydra)
    for job in jobs:
        rc = validated(compose([f"experiment={experiment}", *job], tmp_path, stage_cache))
        assert rc.experiment == experiment
    assert len(jobs) >= 1


def test_the_hparams_search_composes_and_validates(composed):
    rc = validated(composed(["hparams_search=safe_rlhf_optuna"]))
    assert rc.algo.name == "safe_rlhf" and rc.raw.sweep_objective.metric == "eval/helpfulness"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_composes(tmp_path, stage_cache, launcher):
    from conftest import compose

    if launcher == "slurm" and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra/launcher=slurm needs hydra-submitit-launcher (pip install hydra-submitit-launcher)")
    cfg = compose([f"hydra/launcher={launcher}", "algo=ppo"], tmp_path, stage_cache, keep_hydra=True)
    assert cfg.hydra.launcher._target_.startswith("hydra")
    validated(compose([f"hydra/launcher={launcher}", "algo=ppo"], tmp_path, stage_cache))


@pytest.mark.parametrize("group, option", sorted((group, p.stem) for group in ("data", "trainer", "logger", "signals")
                                                 for p in (CONF / group).glob("*.yaml")))
def test_every_option_of_the_other_groups_composes(composed, group, option):
    validated(composed([f"{group}={option}", *OPTIONS.get((group, option), [])]))


def _config_classes() -> set[type]:
    """Every config dataclass reachable from the groups and the registered algorithms."""
    seen: set[type] = set()
    todo = [*GROUP_DEFAULTS.values(), *(load_algorithms().get(name).config_class for name in ALGOS)]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for hint in typing.get_type_hints(cls).values():
            for candidate in (hint, *typing.get_args(hint)):
                if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
                    todo.append(candidate)
    return seen


def test_every_config_field_is_documented_and_every_choice_is_spelt_as_in_yaml():
    classes = _config_classes()
    assert len(classes) > 20
    undocumented = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
                    if len(f.metadata.get("help", "")) < 8]
    assert undocumented == []
    for cls in classes:
        for hint in typing.get_type_hints(cls).values():
            for candidate in (hint, *typing.get_args(hint)):
                if isinstance(candidate, type) and issubclass(candidate, Choice):
                    assert all(member.name == member.value for member in candidate), candidate


def _leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_ppo_family_files_inherit_and_hold_only_what_differs_from_their_parent(composed):
    """safe_rlhf <- ppo, repo <- safe_rlhf, reward_shaping <- ppo: every key a family file sets differs from
    what its parent composes to (the rest of the values come from the parent and the config classes)."""
    import yaml
    from omegaconf import OmegaConf

    for child, parent in (("safe_rlhf", "ppo"), ("repo", "safe_rlhf"), ("reward_shaping", "ppo")):
        text = yaml.safe_load((CONF / "algo" / f"{child}.yaml").read_text()) or {}
        assert text.pop("defaults") == [parent, "_self_"], child
        parent_cfg = composed([f"algo={parent}"]).algo
        for key, value in _leaves(text):
            assert OmegaConf.select(parent_cfg, key) != value, (child, key, value)
    assert not (yaml.safe_load((CONF / "algo" / "ppo.yaml").read_text()) or {})  # PPOConfig holds it all
