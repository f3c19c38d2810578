"""Secrets never reach a file, a log line or W&B: the values of the secret environment
variables, and values that look like tokens wherever they were typed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sweep.redaction import REDACTED, redact, redact_file

HF = "hf_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3h"  # the form of a Hugging Face token, in no environment variable
WANDB = "0123456789abcdef0123456789abcdef01234567"  # the form of a W&B API key
COMMIT = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"


@pytest.mark.parametrize(
    "typed",
    [f"+note={HF}", f"+note=token:{HF}", f"wandb_key={WANDB}", f"+key=local-{WANDB}", "+auth='Bearer abc.DEF-123_xyz'"],
)
def test_token_like_values_are_redacted_though_no_environment_variable_holds_them(monkeypatch, typed):
    for name in ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    clean = redact(typed)
    assert REDACTED in clean and HF not in clean and WANDB not in clean and "abc.DEF" not in clean


def test_environment_secrets_are_redacted_whatever_their_form(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "short-secret")
    assert redact("+note=x:short-secret") == f"+note=x:{REDACTED}"


def test_a_pinned_commit_is_not_taken_for_a_key():
    """A model pinned to a commit (`model.revision=<40 hex>`) keeps it: its files and the W&B
    config would otherwise lose what the cell measured."""
    for text in (
        f"model.revision={COMMIT}",
        f"revision: {COMMIT}",
        f"commit {COMMIT}",
        f"hub/models--google--vit/snapshots/{COMMIT}/config.json",
    ):
        assert redact(text) == text
    assert redact(COMMIT, "revision") == COMMIT
    assert redact(COMMIT, "note") == REDACTED
    assert redact("hf_transfer and hf_hub_download") == "hf_transfer and hf_hub_download"  # words, not tokens


def test_a_file_is_redacted_in_place(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text(f"- +note={HF}\n- model.revision={COMMIT}\n")
    redact_file(path)
    assert path.read_text() == f"- +note={REDACTED}\n- model.revision={COMMIT}\n"


def test_a_token_typed_on_a_sweeps_command_line_is_not_printed_in_its_plan(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k not in ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep.run",
            "-m",
            "model=toy_vit",
            "logger=none",
            "layer=3",
            f"+note={HF}",
            "sweep.dry_run=true",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert HF not in result.stdout + result.stderr and REDACTED in result.stdout
