"""Secrets from the environment never reach a file, a log line or W&B.

A user may type a secret on the command line (`+note=$HF_TOKEN`), and Hydra, wandb and the
sweep's own plan all keep the command line: every place that writes it passes through here.
Plain substring replacement: a secret is replaced wherever it appears, also inside longer
strings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "<redacted>"


def _secrets() -> list[str]:
    return [os.environ[name] for name in SECRET_ENV if os.environ.get(name)]


def redact(text: str) -> str:
    """`text` with every secret from the environment replaced, also inside longer strings
    (`+note=token:<HF_TOKEN>`)."""
    for secret in _secrets():
        text = text.replace(secret, REDACTED)
    return text


def redact_tree(node: Any) -> Any:
    """`node` (plain containers) with every string redacted: a config as a record or a W&B
    run keeps it."""
    if isinstance(node, Mapping):
        return {k: redact_tree(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_tree(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def redact_files(folder: Path) -> None:
    """Redact secrets in the files Hydra wrote for a cell: `.hydra/overrides.yaml` keeps
    the command line verbatim."""
    for path in folder.rglob("*") if _secrets() and folder.is_dir() else ():
        if path.is_file():
            redact_file(path)


def redact_file(path: Path) -> None:
    data = path.read_bytes()
    clean = data
    for secret in _secrets():
        clean = clean.replace(secret.encode(), REDACTED.encode())
    if clean != data:
        path.write_bytes(clean)


def redact_logs() -> None:
    """Redact secrets in every log record of this process, whatever handler writes it:
    Hydra's launchers log each job's overrides, and Hydra reconfigures the handlers for
    every job, so this wraps the record factory rather than filtering handlers."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False) or not _secrets():
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
