"""One command-line grammar for the commands beside `sweep-run`: a few positional words,
then `key=value` settings as on a Hydra command line (`sweep-status multirun/toy
cells=true`, `sweep-cache prune older_than_days=30 dry_run=true`, `sweep-aggregate
multirun/toy figures=false`).

`sweep-run` and `sweep-prepare` are Hydra apps (they compose a config); these commands only
read folders, so they take plain settings, each declared with a rule from `sweep.rules`:
the declaration is the validation, the default and the `--help` text in one place, and a bad
value fails with the key, the value and what is valid, like any other setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sweep.errors import ConfigError, SweepError
from sweep.rules import Rule

HELP = ("-h", "--help")


class UsageError(SweepError):
    """The command line cannot be acted on: printed with the usage, exit status 2."""


@dataclass(frozen=True)
class Setting:
    rule: Rule
    default: Any
    help: str


@dataclass(frozen=True)
class Command:
    """`words`: the positional words, each (name, help); a word may be left out, and which
    ones a command needs is its own check."""

    prog: str
    summary: str
    words: tuple[tuple[str, str], ...] = ()
    settings: Mapping[str, Setting] = field(default_factory=dict)

    def usage(self) -> str:
        names = " ".join(f"[{name}]" for name, _ in self.words)
        lines = [f"usage: {self.prog} {names} [key=value ...]".replace("  ", " "), "", self.summary]
        if self.words:
            lines += ["", "positional:"] + [f"  {name:<22} {text}" for name, text in self.words]
        if self.settings:
            lines += ["", "settings (key=value; default in brackets):"]
            for key, setting in self.settings.items():
                lines.append(f"  {key:<22} {setting.help} ({setting.rule.description}) [{_shown(setting.default)}]")
        return "\n".join(lines)

    def parse(self, argv: Sequence[str]) -> tuple[list[str], dict[str, Any]] | None:
        """(positional words, every setting's checked value); None when help was asked for."""
        words: list[str] = []
        given: dict[str, Any] = {}
        for token in argv:
            if token in HELP:
                return None
            key, equals, text = token.partition("=")
            if token.startswith("-"):
                raise UsageError(f"unknown option {token!r}: settings are key=value ({', '.join(self.settings)})")
            if not equals:
                words.append(token)
                continue
            if key not in self.settings:
                raise UsageError(
                    f"{key} is not a setting of {self.prog}; its settings are: {', '.join(self.settings) or 'none'}"
                )
            if key in given:
                raise UsageError(f"{key} is given twice")
            try:
                given[key] = self.settings[key].rule.check(key, value_of(text, key))
            except ConfigError as error:
                raise UsageError(str(error)) from None
        if len(words) > len(self.words):
            raise UsageError(
                f"{self.prog} takes at most {len(self.words)} positional word(s) "
                f"({', '.join(n for n, _ in self.words) or 'none'}), got: {' '.join(words)}"
            )
        return words, {key: given.get(key, setting.default) for key, setting in self.settings.items()}


def value_of(text: str, key: str = "key") -> Any:
    """A command-line value as Hydra reads one, by Hydra's own override parser: true/false,
    null (only `null`: `none` and an empty value are text), numbers, quoted text, lists.
    A sweep (`a,b`, `range(...)`) is not one value and is refused, naming `key`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(f"{key}={text}")
    except HydraException as error:
        message = " ".join(str(error).split())
        raise ConfigError(
            f"{key}={text} cannot be read as a value ({message}); as text, quote it: {key}='{text}'"
        ) from None
    if override.is_sweep_override():
        raise ConfigError(f"{key}={text} is several values; give one")
    return override.value()


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
