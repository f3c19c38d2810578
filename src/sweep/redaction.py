"""Secrets never reach a file, a log line or W&B.

A user may type a secret on the command line (`+note=$HF_TOKEN`, or the token itself), and
Hydra, wandb and the sweep's own plan all keep the command line: every place that writes it
passes through here. Two kinds are replaced, wherever they appear, also inside longer strings:
the values of the secret environment variables (`SECRET_ENV`), and values that look like a
token whatever holds them (`TOKEN_PATTERNS`: a token typed on the command line is in no
environment variable, and a SLURM job sees neither the user's shell nor its `sys.argv`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "<redacted>"

#: what a token looks like: a Hugging Face token (`hf_` and 34 letters and digits), an HTTP
#: bearer credential, and a W&B API key (40 hex digits, also after a `local-` prefix)
_HEX40 = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{40}(?![0-9A-Za-z])")
TOKEN_PATTERNS = (
    re.compile(r"(?<![0-9A-Za-z])hf_[A-Za-z0-9]{30,}"),
    re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    _HEX40,
)
#: 40 hex digits right after one of these words are a git commit (a pinned `model.revision`, a
#: hub snapshot's folder, the record's commit), not a W&B key: they stay
_COMMIT_BEFORE = re.compile(r"(revision|commit|sha|snapshots)\W{0,4}$", re.IGNORECASE)
_COMMIT_KEY = re.compile(r"(revision|commit|sha)$", re.IGNORECASE)


def _secrets() -> list[str]:
    return [os.environ[name] for name in SECRET_ENV if os.environ.get(name)]


def _token(match: re.Match[str]) -> str:
    if match.re is _HEX40 and _COMMIT_BEFORE.search(match.string[max(0, match.start() - 12) : match.start()]):
        return match.group(0)
    return REDACTED


def redact(text: str, key: str | None = None) -> str:
    """`text` with every secret from the environment and every token-like value replaced,
    also inside longer strings (`+note=token:<HF_TOKEN>`). `key`: the config key that holds
    `text`, where known; a commit's key (`model.revision`) keeps its 40 hex digits."""
    for secret in _secrets():
        text = text.replace(secret, REDACTED)
    for pattern in TOKEN_PATTERNS:
        if pattern is _HEX40 and key is not None and _COMMIT_KEY.search(key):
            continue
        text = pattern.sub(_token, text)
    return text


def redact_tree(node: Any, key: str | None = None) -> Any:
    """`node` (plain containers) with every string redacted, each knowing the key that holds
    it (see `redact`): a config as a record, a W&B run or a dump keeps it."""
    if isinstance(node, Mapping):
        return {k: redact_tree(v, str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_tree(v, key) for v in node]
    return redact(node, key) if isinstance(node, str) else node


def redact_files(folder: Path) -> None:
    """Redact secrets in the files Hydra wrote for a cell: `.hydra/overrides.yaml` keeps
    the command line verbatim."""
    for path in folder.rglob("*") if folder.is_dir() else ():
        if path.is_file():
            redact_file(path)


def redact_file(path: Path) -> None:
    """A text file redacted in place (bytes that are not UTF-8 pass through unchanged)."""
    data = path.read_bytes()
    clean = redact(data.decode("utf-8", errors="surrogateescape")).encode("utf-8", errors="surrogateescape")
    if clean != data:
        path.write_bytes(clean)


def redact_logs() -> None:
    """Redact secrets in every log record of this process, whatever handler writes it:
    Hydra's launchers log each job's overrides, and Hydra reconfigures the handlers for
    every job, so this wraps the record factory rather than filtering handlers."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    redacting_factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
