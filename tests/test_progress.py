"""Progress bars: on at a terminal, off in logs, and off wherever the user switched them off."""

from __future__ import annotations

import pytest

from sweep.progress import progress_bar


@pytest.mark.parametrize("value", ["1", "true", "True"])
def test_tqdms_own_switch_turns_the_bars_off_even_where_they_are_forced_on(monkeypatch, value):
    monkeypatch.setenv("SWEEP_PROGRESS", "1")
    monkeypatch.setenv("TQDM_DISABLE", value)
    with progress_bar(total=3) as bar:
        assert bar.disable


@pytest.mark.parametrize(
    "sweep_progress, tqdm_disable, disabled",
    [("1", None, False), ("0", None, True), ("1", "0", False), ("1", "", False)],
)
def test_sweep_progress_decides_when_tqdms_switch_is_off(monkeypatch, sweep_progress, tqdm_disable, disabled):
    monkeypatch.setenv("SWEEP_PROGRESS", sweep_progress)
    if tqdm_disable is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    with progress_bar(total=3) as bar:
        assert bar.disable is disabled
