"""Named implementations of one kind — interventions, probe methods, model adapters — in
one small pattern.

Each implementation is a class that registers itself under the name a config chooses it by
(`@INTERVENTIONS.register("shuffle")`), next to the settings it declares. The registry is
then the only list of valid choices: the settings parser, the documentation table and every
lookup read it, so adding an implementation is one class (and its YAML), and a name that
is not there fails with one error naming the key, the value and the choices.

Torch-free: the planner reads the registries of thousands of cells in a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sweep.rules import invalid

T = TypeVar("T")


class Registry(Generic[T]):
    """`key`: the config key whose value picks an entry (e.g. `intervention.name`)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value from a config
            raise invalid(self.key, name, self.description) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    @property
    def description(self) -> str:
        return "one of " + ", ".join(self._entries)
