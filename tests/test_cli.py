"""The command-line grammar of the commands beside sweep-run: words, then key=value."""

from __future__ import annotations

import pytest

from sweep.cli import Command, Setting, UsageError, value_of
from sweep.rules import Flag, Integer, Optional, Text

COMMAND = Command(
    prog="sweep-example",
    summary="An example.",
    words=(("<folder>", "where"),),
    settings={
        "count": Setting(Integer(0), 3, "how many"),
        "out": Setting(Optional(Text()), None, "to"),
        "loud": Setting(Flag(), False, "say more"),
    },
)


def test_values_are_read_as_on_a_hydra_command_line():
    """By Hydra's own parser: only `null` is null; `none` and an empty value are text."""
    assert [value_of(v) for v in ("true", "False", "null", "", "none", "None", "7", "0.5", "1e-3", "a/b", "'x y'")] == [
        True,
        False,
        None,
        "",
        "none",
        "None",
        7,
        0.5,
        0.001,
        "a/b",
        "x y",
    ]


def test_words_then_checked_settings_with_their_defaults():
    assert COMMAND.parse(["multirun/x", "loud=true"]) == (["multirun/x"], {"count": 3, "out": None, "loud": True})
    assert COMMAND.parse(["count=0", "--help"]) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["count=-1"], "count=-1 is invalid: it must be an integer >= 0"),
        (["count=2", "count=3"], "count is given twice"),
        (["colour=red"], "colour is not a setting of sweep-example; its settings are: count, out, loud"),
        (["--loud"], "unknown option '--loud': settings are key=value"),
        (["a", "b"], "takes at most 1 positional word"),
        (["count=1,2"], "count=1,2 is several values; give one"),
        (["out=[a"], r"out=\[a cannot be read as a value"),
    ],
)
def test_what_cannot_be_acted_on_is_refused_by_name(argv, message):
    with pytest.raises(UsageError, match=message):
        COMMAND.parse(argv)


def test_the_usage_lists_each_setting_with_its_rule_and_default():
    assert "  count                  how many (an integer >= 0) [3]" in COMMAND.usage()
    assert "  loud                   say more (true or false) [false]" in COMMAND.usage()
