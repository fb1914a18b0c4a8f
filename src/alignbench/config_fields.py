"""Documented config fields: one declaration holds a setting's default, its meaning and its valid range.

Every typed config class (``alignbench.config`` and each algorithm's own, e.g. ``PPOConfig``) declares
its fields with ``param``::

    clip_eps: float = param(0.2, "PPO clip range eps of the ratio (Schulman et al. 2017)", at_least(0))

* the default lives here only: the YAML files in ``conf/`` override it, never repeat it
  (``schema_defaults`` hands these defaults to Hydra, see ``alignbench.registry``);
* ``help`` is the field's documentation (``help_of``, and what ``docs/`` cites);
* a ``Bound`` is checked by ``check_config``, which walks nested configs and lists of them and then
  calls the class's own ``check(key)`` for rules that span fields; a value out of range stops the run
  with one sentence naming the key: ``config value 'algo.clip_eps' must be >= 0 (got -1.0)``;
* a choice is a ``Choice`` (a ``StrEnum`` whose members are their own names): OmegaConf refuses any
  other value when the config is merged, ``check_config`` refuses it in a config built in code, both
  with the same words (``Choice.rule``); a validated config holds the plain strings (``plain_choices``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from alignbench.errors import ConfigError


class Choice(StrEnum):
    """A closed set of string values. Members compare equal to their strings (``Engine.auto == "auto"``)
    and are named as they are spelt in YAML, so ``Choice`` fields read and print as plain strings."""

    @classmethod
    def rule(cls) -> str:
        """``"k1, k2, k3 or abs"``: the allowed values, as an error message lists them."""
        values = [member.value for member in cls]
        return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


@dataclass(frozen=True)
class Bound:
    """The interval a number must lie in: ``low``/``high`` (None: unbounded), ends open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: Any) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    @property
    def rule(self) -> str:
        """``>= 0``, ``> 0``, ``<= 1``, ``in (0, 1]``: what an error message says the value must be."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


def _number(value: float | None) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def at_least(low: float) -> Bound:
    return Bound(low=low)


def above(low: float) -> Bound:
    return Bound(low=low, low_open=True)


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Bound:
    return Bound(low, high, low_open, high_open)


def param(default: Any, help: str, bound: Bound | None = None) -> Any:
    """A config field with its ``default``, its documentation ``help`` and an optional range ``bound``.

    Mutable defaults (lists, dicts, nested configs such as ``OptimConfig(lr=5e-4)``) are copied for
    every instance.
    """
    metadata = {"help": help, **({"bound": bound} if bound is not None else {})}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(config: Any, name: str) -> str:
    """The documentation of field ``name`` of a config class or instance ("" when it has none)."""
    for f in dataclasses.fields(config):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(f"{getattr(config, '__name__', type(config).__name__)} has no field '{name}'")


def check_config(config: Any, key: str) -> None:
    """Check every bound of ``config`` (a typed config instance) and of the configs nested in it, then the
    classes' own ``check(key)``; raises ``ConfigError`` naming the first bad key (``key`` is its prefix)."""
    hints = _type_hints(type(config))
    for f in dataclasses.fields(config):
        value, where = getattr(config, f.name), f"{key}.{f.name}"
        _check_choice(hints.get(f.name), value, where)
        bound = f.metadata.get("bound")
        if bound is not None and value is not None and not bound.holds(value):
            raise ConfigError(f"config value '{where}' must be {bound.rule} (got {value!r})")
        if dataclasses.is_dataclass(value):
            check_config(value, where)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_config(item, f"{where}[{index}]")
    own_check = getattr(config, "check", None)
    if callable(own_check):
        own_check(key)


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _check_choice(declared: Any, value: Any, where: str) -> None:
    """A ``Choice`` field (or a list of them) holds only its values (configs built in code skip OmegaConf)."""
    import typing

    if typing.get_origin(declared) is list and isinstance(value, list):
        for index, item in enumerate(value):
            _check_choice(typing.get_args(declared)[0], item, f"{where}[{index}]")
    elif isinstance(declared, type) and issubclass(declared, Choice):
        try:
            declared(value)
        except ValueError:
            raise ConfigError(f"config value '{where}' must be {declared.rule()} (got {value!r})") from None


def plain_choices(config: Any) -> Any:
    """``config`` with every ``Choice`` member replaced by its plain string, in place (nested configs, lists and
    dicts too): a validated config pickles, checkpoints (``torch.load(weights_only=True)``) and prints as
    plain values, and still compares equal to the members."""
    if dataclasses.is_dataclass(config):
        for f in dataclasses.fields(config):
            setattr(config, f.name, plain_choices(getattr(config, f.name)))
        return config
    if isinstance(config, Choice):
        return str(config.value)
    if isinstance(config, list):
        return [plain_choices(item) for item in config]
    if isinstance(config, dict):
        return {plain_choices(k): plain_choices(v) for k, v in config.items()}
    return config


def require(condition: bool, key: str, message: str) -> None:
    """A rule of ``check(key)`` that spans fields: ``config value '<key>' <message>`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"config value '{key}' {message}")


def schema_defaults(config_class: type) -> dict[str, Any]:
    """Every default of ``config_class`` as plain YAML values (choices as strings): what Hydra composes
    under a config group before the group's YAML files override it (``alignbench.registry``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(config_class), enum_to_str=True)


def field_type(config_class: type, dotted: str) -> Any:
    """The declared type of ``dotted`` (``lagrange.mode``, ``judges[0].base``) in ``config_class``, or None."""
    import typing

    current: Any = config_class
    for part in dotted.split("."):
        name = part.split("[")[0]
        if not (isinstance(current, type) and dataclasses.is_dataclass(current)):
            return None
        hints = typing.get_type_hints(current)
        if name not in hints:
            return None
        current = hints[name]
        if "[" in part:  # an item of a list field
            args = typing.get_args(current)
            current = args[0] if args else None
    return current
