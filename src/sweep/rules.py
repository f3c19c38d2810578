"""What a setting accepts: one rule per key, checked with a message that names the key,
the value and what is valid (modelled on scikit-learn's declared parameter constraints).

`sweep.settings` builds a cell's groups from these tables; the registries
(`sweep.registry`) use them for the settings each implementation declares.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweep.errors import ConfigError

MISSING = "???"


class Rule:
    """What one key accepts. `check` returns the value as its type or raises ConfigError."""

    description = "a value"

    def check(self, key: str, value: Any) -> Any:
        if not self.accepts(value):
            raise invalid(key, value, self.description)
        return value

    def accepts(self, value: Any) -> bool:
        return True


def invalid(key: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"{key}={_shown(value)} is invalid: it must be {valid}")


def _shown(value: Any) -> str:
    return "''" if value == "" else repr(value) if isinstance(value, str) and not value.strip() else str(value)


class Integer(Rule):
    """A whole number (not a bool, not 1.7) within [low, high]."""

    def __init__(self, low: int | None = None, high: int | None = None) -> None:
        self.low, self.high = low, high
        bounds = [f">= {low}" if low is not None else "", f"<= {high}" if high is not None else ""]
        self.description = "an integer" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        )


class Real(Rule):
    """A finite number; `low_open` makes the lower bound strict (e.g. a regulariser > 0)."""

    def __init__(self, low: float | None = None, *, low_open: bool = False) -> None:
        self.low, self.low_open = low, low_open
        self.description = "a number" + ("" if low is None else f" {'>' if low_open else '>='} {low:g}")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return self.low is None or (value > self.low if self.low_open else value >= self.low)

    def check(self, key: str, value: Any) -> float:
        return float(super().check(key, value))


class OneOf(Rule):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.description = "one of " + ", ".join(choices)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices


class Flag(Rule):
    description = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Text(Rule):
    description = "a non-empty string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())


class Url(Rule):
    """An http(s) address with a host. Checked with the settings, not when it is first used:
    a server address that is no URL (`wandb.base_url=notaurl`) otherwise passes every check
    and then stops the W&B run from being created at all, offline included."""

    description = "an http or https URL with a host, e.g. https://api.wandb.ai"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            url = urlparse(value.strip())
            url.port  # noqa: B018 -- raises ValueError for a port that is no number or out of range
        except ValueError:
            return False
        return url.scheme in ("http", "https") and bool(url.hostname)


class Name(Rule):
    """One path component, safe on every file system and in a shell: a sweep's name becomes
    its folder (`<sweep.root>/<name>`), so `../x` or `a/b` would write outside `sweep.root`
    and a very long name fails in the file system, far from the setting."""

    MAX = 100
    description = f"a name of 1 to {MAX} letters, digits, '.', '_' or '-', starting with a letter or digit"
    _pattern = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and len(value) <= self.MAX and bool(self._pattern.match(value))


class Optional(Rule):
    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.description = f"null or {rule.description}"

    def check(self, key: str, value: Any) -> Any:
        return None if value is None else self.rule.check(key, value)


class TextList(Rule):
    description = "a list of strings"

    def check(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise invalid(key, value, self.description)
        return tuple(value)


class Device(Rule):
    """auto | cpu | cuda | cuda:N. Whether the device exists is checked where the cell runs
    (`check_device`): the machine that plans a SLURM sweep is rarely the one with the GPUs."""

    description = "auto, cpu, cuda or cuda:<index>"
    _pattern = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(self._pattern.match(value))


def checked(
    key: str, node: Any, rules: Mapping[str, Rule], *, hints: Mapping[str, str] = MappingProxyType({})
) -> dict[str, Any]:
    """`node` (a config group) checked against `rules`: every key present, none unknown,
    every value valid. Returns the values in their types."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"{key} must be a group of settings ({', '.join(rules)}), not {node!r}")
    unknown = sorted(set(node) - set(rules))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]} is not a setting of {key}; its settings are: {', '.join(rules)}")
    values = {}
    for name, rule in rules.items():
        value = node.get(name, MISSING)
        if value == MISSING:
            raise ConfigError(
                f"{key}.{name} is not set"
                + (f": {hints[name]}" if name in hints else f"; it must be {rule.description}")
            )
        try:
            values[name] = rule.check(f"{key}.{name}", value)
        except ConfigError as error:
            raise ConfigError(f"{error} ({hints[name]})" if name in hints else str(error)) from None
    return values


def plain(node: Any) -> Any:
    """A config node as plain containers, interpolations resolved, `???` kept as text so
    that `checked` can say which key is missing."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    return node


def frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))
