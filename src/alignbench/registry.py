"""Name -> class registries for algorithm components and judge backends, and how Hydra learns their defaults.

Config files refer to algorithms and judges by name (``algo=repo``, ``eval.judge=world``); the
decorators below are the only way a name becomes a class, so an unknown name fails at start-up with
the list of known ones instead of deep inside training.

Algorithms are found without a list to edit (``load_algorithms``): every module of the package
``alignbench.algorithms`` is imported (its ``@register_algorithm`` classes register themselves), and
so is every entry point of the group ``alignbench.algorithms`` of the installed packages
(``my_algo = "mypkg.algo:MyAlgo"`` in the package's ``pyproject.toml``; the entry point's name is the
algorithm's name). ``register_config_schemas`` then gives Hydra every algorithm's defaults, its config
class as plain values under ``algo_schema/<name>``, which ``conf/config.yaml`` composes before the
algorithm's YAML file (``optional algo_schema@algo: ${algo}``), and the other groups' defaults
(``alignbench_defaults``). A config may also name its class itself, ``_target_: mypkg.algo.MyAlgo``
(``algorithm_class``): then nothing needs registering. docs/ADDING_AN_ALGORITHM.md walks through both.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

T = TypeVar("T")

#: the entry-point group through which installed packages add algorithms
ENTRY_POINT_GROUP = "alignbench.algorithms"
#: the config group (in Hydra's ConfigStore) that holds every registered algorithm's defaults
SCHEMA_GROUP = "algo_schema"


class Registry:
    """A named mapping with a decorator to fill it and a lookup that explains misses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(cls: T) -> T:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = cls  # type: ignore[assignment]
            return cls

        return decorator

    def get(self, name: str) -> type:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none registered)"
            raise KeyError(f"unknown {self.kind} '{name}'; available: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


ALGORITHMS = Registry("algorithm")
JUDGES = Registry("judge")


def register_algorithm(name: str):
    """Class decorator: ``@register_algorithm("repo")`` makes ``algo=repo`` (and ``algo.name: repo``) this class."""
    return ALGORITHMS.register(name)


def register_judge(name: str):
    """Class decorator: ``@register_judge("world")`` makes ``eval.judge=world`` build this class."""
    return JUDGES.register(name)


_loaded = False


def load_algorithms() -> Registry:
    """Register every algorithm: each module of ``alignbench.algorithms`` and each installed entry point of
    ``ENTRY_POINT_GROUP``. Idempotent; a broken entry point raises ``UserError`` naming it."""
    global _loaded
    if not _loaded:
        import alignbench.algorithms  # noqa: F401 - imports (so registers) every module of the package
        from alignbench.errors import UserError

        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = point.load()
            except Exception as exc:  # noqa: BLE001 - whatever the package raises, name the entry point
                raise UserError(f"entry point '{point.name} = {point.value}' (group {ENTRY_POINT_GROUP}) does not "
                                f"load: {type(exc).__name__}: {exc}") from None
            _check_component(cls, f"entry point '{point.name} = {point.value}'")
            ALGORITHMS.register(point.name)(cls)
        _loaded = True
    return ALGORITHMS


def target_of(cls: type) -> str:
    """The ``_target_`` that names ``cls``: ``module.Class``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def algorithm_class(algo: Any) -> type:
    """The component class an ``algo`` config runs: its ``_target_`` when it names one, else the class
    registered under its ``name``; ``UserError`` in one line when neither resolves."""
    from alignbench.errors import UserError

    target = algo.get("_target_") if hasattr(algo, "get") else None
    if target:
        from hydra.utils import get_class

        try:
            cls = get_class(str(target))
        except Exception as exc:  # noqa: BLE001 - Hydra wraps the import error; keep its first line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"config value 'algo._target_' ({target}) does not name a class: {reason}") from None
        _check_component(cls, f"config value 'algo._target_' ({target})")
        return cls
    load_algorithms()
    name = algo.get("name") if hasattr(algo, "get") else None
    try:
        return ALGORITHMS.get(str(name))
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None


def _check_component(cls: Any, where: str) -> None:
    from alignbench.algorithms.base import AlgorithmComponent
    from alignbench.errors import UserError

    if not (isinstance(cls, type) and issubclass(cls, AlgorithmComponent)):
        raise UserError(f"{where} is not an alignbench.algorithms.base.AlgorithmComponent subclass")


_REGISTERED: dict[str, Any] = {}  # what the ConfigStore holds: name -> component class


def register_config_schemas() -> None:
    """Give Hydra every default before it composes (module docstring): call before ``hydra.main`` runs.

    Idempotent and cheap on repeat: an algorithm already stored with the same class is not rebuilt (a
    process that composes many configs, a test session or a sweep, pays for the schemas once).
    """
    from hydra.core.config_store import ConfigStore

    from alignbench.config import group_defaults
    from alignbench.config_fields import schema_defaults

    store = ConfigStore.instance()
    if "" not in _REGISTERED:
        store.store(name="alignbench_defaults", node=group_defaults())
        _REGISTERED[""] = None
    for name, cls in load_algorithms()._entries.items():
        if _REGISTERED.get(name) is cls:
            continue
        node = {"_target_": target_of(cls), **schema_defaults(cls.config_class), "name": name}
        store.store(group=SCHEMA_GROUP, name=name, node=node)
        _REGISTERED[name] = cls
