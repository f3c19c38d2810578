"""Errors a user can fix; the entry points print their message without a traceback."""


def brief(text: object, limit: int) -> str:
    """`text` on one line (whitespace collapsed), at most `limit` characters: cut at a word
    boundary and marked with an ellipsis, since a message cut mid-word (`... could not
    con`) reads as another message, or as the whole one."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + "…"


def first_line(text: object, limit: int) -> str:
    """The first line of `text` (an error's message: the rest is detail), `brief`."""
    return brief((str(text).strip().splitlines() or ["?"])[0], limit)


class SweepError(Exception):
    """Base class: something about the input that the user can fix, explained in the message."""


class ConfigError(SweepError, ValueError):
    """A setting is invalid. Raised before any expensive work: when the cell is specified
    (`cellspec.cell_spec`: by `sweep-run` before Hydra makes the run's folder, by a sweep's
    plan before anything is launched), or, for what the planner cannot check, as the cell's
    work unit starts and before it reads any data or loads a model: a CUDA device of the
    machine that runs it, and the classes of transformers a model config names
    (`model.hf_class`, `model.toy.config_class`; the planner does not import transformers)."""


class DataUnavailable(SweepError):
    """The configured data cannot be read; the message says how to get it."""


# Whether a command's own code has started (a cell, or the cell sweeper): an error Hydra
# reports before that point (an unknown group or option, an unparsable override) is bad
# input too, and `sweep-run` exits 2 for it like for any other. Kept here, not in
# `sweep.run`, because `python -m sweep.run` runs that module as a second copy.
_entered: list[bool] = []


def mark_entered() -> None:
    _entered.append(True)


def entered() -> bool:
    return bool(_entered)
