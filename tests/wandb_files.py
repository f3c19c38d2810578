"""Reading an offline W&B run back from its folder, as `wandb sync` would upload it.

wandb (>= 0.19) has no public reader for its `.wandb` log, so this decodes it: the file is
a LevelDB-style log (a 7-byte `:W&B` header, 32 KiB blocks, records split into chunks with
a 7-byte header each: crc32, length, type) of `wandb_internal_pb2.Record` protobufs, which
are wandb's own message classes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every record of a `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run log")
    chunks, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            chunks.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            chunks.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(chunk) for chunk in chunks]


def _items(items: Any) -> dict[str, Any]:
    """Config, history or summary items as a dict: wandb-core sends nested values as one
    item per leaf, keyed by its path (`nested_key`), so the nesting is rebuilt."""
    found: dict[str, Any] = {}
    for item in items:
        path = list(item.nested_key) or [item.key]
        node = found
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return found


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@dataclass
class OfflineRun:
    """What one offline run sends: its run record, config, history steps and summary."""

    folder: Path
    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> OfflineRun:
        (log,) = folder.glob("run-*.wandb")
        run = cls(folder)
        for record in read_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.run = record.run
                _merge(run.config, _items(record.run.config.update))
            elif kind == "config":
                _merge(run.config, _items(record.config.update))
            elif kind == "history":
                run.history.append(_items(record.history.item))
            elif kind == "summary":
                _merge(run.summary, _items(record.summary.update))
                for item in record.summary.remove:
                    path = list(item.nested_key) or [item.key]
                    node = run.summary
                    for part in path[:-1]:
                        node = node.get(part, {})
                    node.pop(path[-1], None)
        return run

    @property
    def media(self) -> list[Path]:
        return sorted(p for p in (self.folder / "files" / "media").rglob("*") if p.is_file())

    def table(self, key: str) -> dict[str, Any]:
        """A logged table's JSON (columns, data), from the media file the summary names."""
        return json.loads((self.folder / "files" / self.summary[key]["path"]).read_text())


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every run folder under `root` (not the `latest-run` links)."""
    return [
        OfflineRun.read(log.parent)
        for log in sorted(root.rglob("run-*.wandb"))
        if not any(part.startswith("latest-run") for part in log.parts)
    ]
