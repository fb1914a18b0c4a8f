"""Name -> class registries for algorithm components and judge backends.

Config files refer to algorithms and judges by name (``algo.name: repo``, ``eval.judge: world``);
the decorators below are the only way a name becomes a class, so an unknown name fails at start-up
with the list of known ones instead of deep inside training.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


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
    """Class decorator: ``@register_algorithm("repo")`` makes ``algo.name=repo`` build this class."""
    return ALGORITHMS.register(name)


def register_judge(name: str):
    """Class decorator: ``@register_judge("world")`` makes ``eval.judge=world`` build this class."""
    return JUDGES.register(name)
