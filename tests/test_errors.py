"""Messages a user reads: shortened at a word, never mid-word."""

from __future__ import annotations

from sweep.errors import brief, first_line


def test_a_long_message_is_cut_at_a_word_and_says_so():
    text = "could not load the model because the connection was refused by the server " * 6
    short = brief(text, 100)
    assert len(short) <= 100 and short.endswith("…")
    assert text.startswith(short[:-1]) and text[len(short) - 1] == " ", "cut mid-word"


def test_a_short_message_is_left_whole_on_one_line():
    assert brief("a  b\nc", 100) == "a b c"
    assert first_line("ValueError: boom\n  detail", 100) == "ValueError: boom"


def test_one_long_word_is_cut_where_it_must_be():
    assert brief("x" * 50, 10) == "x" * 9 + "…"
