"""Every command line in README.md and docs/*.md at least parses, with the real commands.

* `sweep-run` without `-m`: `--cfg job` (Hydra composes the cell's config and runs nothing),
* `sweep-run -m`: its plan, `sweep.dry_run=true` (the cell sweeper checks every cell and
  launches nothing); a line that picks a SLURM launcher (which CI may lack) only composes its
  first grid point with `--cfg job`,
* `sweep-prepare`: `--help`, and its overrides composed as `sweep-run --cfg job` would,
* the other commands: `--help` (with the documented subcommand, if any).

A transcript line (`$ sweep-run ...` followed by `error: ...`) must end with exit 2 and that
error. Config files the docs write with `cat > ~/... <<'YAML'` are written into a temporary
home first, so the lines that use them (`--config-dir ~/sweep-configs`) compose against them.
Everything runs in one subprocess (this file run as a script), each command in-process
through its console-script entry point: a subprocess per line would cost ~3 s each.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = ("sweep-run", "sweep-prepare", "sweep-status", "sweep-aggregate", "sweep-cache")
MODULES = {"sweep.data": "sweep.data:main"}  # `python -m <module>` lines
LOCAL_LAUNCHERS = ("basic", "local", "submitit_local")
HEREDOC = re.compile(r"cat > (\S+) <<'(\w+)'\n(.*?)\n\2\n", re.S)


@dataclass(frozen=True)
class DocLine:
    """One documented command: where it is, its words (after the shell's parsing), and the
    error a transcript shows after it (None: it must succeed)."""

    where: str
    words: tuple[str, ...]
    error: str | None = None


def code_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """The fenced code blocks of a markdown file: (line number of the first line, lines)."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            if current is None:
                current, start = [], number + 1
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def command_words(line: str) -> tuple[str, ...] | None:
    """The words of a command line of ours, without environment assignments and comments."""
    try:
        words = shlex.split(line.strip().removeprefix("$ "), comments=True)
    except ValueError:  # not shell (e.g. a line of YAML or JSON)
        return None
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    if words[:2] == ["python", "-m"] and len(words) > 2 and words[2] in MODULES:
        return tuple(words[2:])
    return tuple(words) if words and words[0] in COMMANDS else None


def doc_lines() -> list[DocLine]:
    lines = []
    for path in DOCS:
        for start, block in code_blocks(path):
            for offset, line in enumerate(block):
                words = command_words(line)
                if words is None:
                    continue
                following = block[offset + 1] if offset + 1 < len(block) else ""
                error = following if line.lstrip().startswith("$ ") and following.startswith("error:") else None
                lines.append(DocLine(f"{path.relative_to(ROOT)}:{start + offset}", words, error))
    return lines


def doc_files(home: Path) -> list[Path]:
    """Write the config files the docs create with a here-document into `home`."""
    written = []
    for path in DOCS:
        for target, _, text in HEREDOC.findall(path.read_text()):
            file = Path(target.replace("~", str(home), 1))
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text + "\n")
            written.append(file)
    return written


# --------------------------------------------------------------------------- what each line runs


def _split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (`--config-dir X`, ...) and the overrides, apart; `-m` and `--cfg job` dropped."""
    flags, overrides, rest = [], [], list(args)
    while rest:
        word = rest.pop(0)
        if word in ("-m", "--multirun"):
            continue
        if word in ("--cfg", "-c"):
            rest.pop(0)
        elif word in ("--config-dir", "-cd", "--config-name", "-cn"):
            flags += [word, rest.pop(0)]
        else:
            overrides.append(word)
    return flags, overrides


def _first_point(overrides: list[str]) -> list[str]:
    """The first grid point of a sweep's overrides (`model=vit,deit` -> `model=vit`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    point = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            point.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        else:
            point.append(override.input_line)
    return point


def _launcher(overrides: list[str]) -> str:
    chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == "hydra/launcher"]
    return chosen[-1] if chosen else "basic"


def invocations(line: DocLine, home: Path) -> list[list[str]]:
    """The command(s) that check `line`: [entry point, *arguments] each."""
    words = [w.replace("~", str(home), 1) if w.startswith("~/") else w for w in line.words]
    command, args = words[0], words[1:]
    dry_run = [] if "sweep.dry_run=true" in args else ["sweep.dry_run=true"]
    if command == "sweep-run" and line.error is not None:
        return [[command, *args, *(dry_run if "-m" in args else [])]]  # as the transcript ran it
    if command == "sweep-run" and "-m" in args:
        if _launcher(args) in LOCAL_LAUNCHERS:
            return [[command, *args, *dry_run]]
        flags, overrides = _split_flags(args)
        return [[command, "--cfg", "job", *flags, *_first_point(overrides)]]
    if command == "sweep-run":
        flags, overrides = _split_flags(args)
        return [[command, "--cfg", "job", *flags, *overrides]]
    if command == "sweep-prepare":
        flags, overrides = _split_flags(args)
        return [[command, "--help"], ["sweep-run", "--cfg", "job", *flags, *_first_point(overrides)]]
    subcommand = args[:1] if args and re.fullmatch(r"[a-z][a-z-]*", args[0]) else []
    return [[command, *subcommand, "--help"]]


# --------------------------------------------------------------------------- the checks


#: lines that name what does not exist: the check must refuse each (it is not a check otherwise)
WRONG = [
    DocLine("(wrong group option)", ("sweep-run", "model=resnet", "layer=3")),
    DocLine("(wrong key in a sweep)", ("sweep-run", "-m", "+experiment=toy", "sweep.unit.max_cellz=50")),
    DocLine(
        "(wrong key on a SLURM line)",
        ("sweep-run", "-m", "model=vit,deit", "hydra/launcher=slurm", "hydra.launcher.partitions=gpu"),
    ),
    DocLine("(wrong subcommand)", ("sweep-cache", "inventory")),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, list[dict]]:
    """Every documented line (and each of WRONG) checked, in one subprocess: where -> results."""
    home = tmp_path_factory.mktemp("home")
    doc_files(home)
    lines = [*doc_lines(), *WRONG]
    calls = [(line.where, argv) for line in lines for argv in invocations(line, home)]
    env = {
        **os.environ,
        "HOME": str(home),
        "SWEEP_CACHE_DIR": str(home / "cache"),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, __file__],
        input=json.dumps([argv for _, argv in calls]),
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, list[dict]] = {}
    for (where, _), result in zip(calls, json.loads(done.stdout.splitlines()[-1]), strict=True):
        results.setdefault(where, []).append(result)
    return results


def test_the_docs_have_command_lines_to_check():
    lines = doc_lines()
    assert {line.words[0] for line in lines} >= {*COMMANDS, "sweep.data"}
    assert any(line.error for line in lines) and any("--config-dir" in line.words for line in lines)


@pytest.mark.parametrize("line", doc_lines(), ids=lambda line: line.where)
def test_each_documented_command_line_parses(line, outcomes):
    for result in outcomes[line.where]:
        shown = f"{line.where}: {' '.join(result['argv'])}\n{result['stderr']}"
        if line.error is None:
            assert result["code"] == 0, shown
        else:
            assert result["code"] == 2 and line.error in result["stderr"], shown


@pytest.mark.parametrize("line", WRONG, ids=lambda line: line.where)
def test_a_line_naming_what_does_not_exist_is_refused(line, outcomes):
    assert all(result["code"] not in (0, None) for result in outcomes[line.where]), outcomes[line.where]


# --------------------------------------------------------------------------- the subprocess


def _run_all(calls: list[list[str]]) -> list[dict]:
    """Each [entry point, *args] in this process, as its console script would run it."""
    import contextlib
    import io
    from importlib import import_module
    from importlib.metadata import entry_points

    from hydra.core.global_hydra import GlobalHydra

    import sweep.errors

    targets = {e.name: e.value for e in entry_points(group="console_scripts") if e.name in COMMANDS}
    targets.update(MODULES)
    results = []
    for command, *args in calls:
        GlobalHydra.instance().clear()
        sweep.errors._entered.clear()  # `sweep-run` tells Hydra's errors (exit 2) by whether it began
        module, _, function = targets[command].partition(":")
        sys.argv = [command, *args]
        stderr, code = io.StringIO(), 0
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                returned = getattr(import_module(module), function)()
                code = returned if isinstance(returned, int) else 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            except Exception as error:  # noqa: BLE001 - reported as the line's failure
                stderr.write(f"{type(error).__name__}: {error}")
                code = 1
        results.append({"argv": [command, *args], "code": code, "stderr": stderr.getvalue()[-3000:]})
    return results


if __name__ == "__main__":
    print(json.dumps(_run_all(json.load(sys.stdin))))
