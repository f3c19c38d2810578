"""Files a reader never sees half-written."""

from __future__ import annotations

import errno
import json
import pickle

import pytest
from helpers import read_only

from sweep.files import WriteFailed, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_writes_replace_whole_files(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"accuracy": 0.8})
    atomic_write_json(target, {"accuracy": 0.9})
    assert json.loads(target.read_text()) == {"accuracy": 0.9}
    atomic_write_text(tmp_path / "note.txt", "héllo")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(tmp_path / "blob", b"\x00\x01")
    assert (tmp_path / "blob").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "note.txt", "result.json"]  # no temp files left


def test_atomic_write_errors_are_clear_and_leave_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(tmp_path / "x.json", {"loss": float("nan")}, allow_nan=True)  # an explicit choice
    assert (tmp_path / "x.json").read_text().strip().endswith('"loss": NaN\n}')


def test_a_write_that_fails_names_the_file_meant_and_travels_between_processes(tmp_path):
    """A real read-only folder: the OSError underneath names the temporary file; WriteFailed
    names the file meant. A unit's error comes back from its job pickled."""
    with read_only(tmp_path), pytest.raises(WriteFailed) as failed:
        atomic_write_text(tmp_path / "result.json", "{}")
    assert str(failed.value) == f"could not write {tmp_path}/result.json: Read-only file system"
    assert isinstance(failed.value, OSError) and failed.value.errno == errno.EROFS
    again = pickle.loads(pickle.dumps(failed.value))
    assert type(again) is WriteFailed and str(again) == str(failed.value)
    assert list(tmp_path.iterdir()) == []
