"""Typed settings: every bad input fails when the cell is specified, before any work.

The battery below is what a demanding user tried: each case runs as a real `sweep-run`
of one cell and as a real sweep's dry-run plan, on an empty cache, and must end with
exit 2, a message naming the key and the value, no traceback, and nothing written.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import compose_cell, read_only

from sweep.cellspec import cell_spec
from sweep.errors import ConfigError
from sweep.rules import Integer, OneOf, Real, Url
from sweep.settings import cuda_visible

# (overrides, environment, a fragment the message must contain)
BATTERY: list[tuple[list[str], dict[str, str], str]] = [
    (["model=resnet"], {}, "Could not find 'model/resnet'"),
    (["intervention=dropout"], {}, "Could not find 'intervention/dropout'"),
    (["readout=bogus"], {}, "Could not find 'readout/bogus'"),
    (["data=imagefolder", "data.root=/no/such/imagenet"], {}, "/no/such/imagenet/train does not exist"),
    (["data=imagefolder"], {}, "data.root is not set"),
    (["intervention=shuffle", "intervention.group_size=-5"], {}, "intervention.group_size=-5 is invalid"),
    (["intervention=shuffle", "intervention.group_size=0"], {}, "intervention.group_size=0 is invalid"),
    (["intervention=shuffle", "intervention.group_size=1"], {}, "intervention.group_size=1 is invalid"),
    (["intervention=shuffle", "intervention.group_size=abc"], {}, "intervention.group_size=abc is invalid"),
    (["intervention=shuffle", "intervention.permutation=bogus"], {}, "intervention.permutation=bogus is invalid"),
    (["intervention=noise", "intervention.center=bogus"], {}, "intervention.center=bogus is invalid"),
    (["logger=wandb", "wandb.mode=bogus"], {}, "wandb.mode=bogus is invalid"),
    (["logger=wandb", "wandb.init_timeout_s=0"], {}, "wandb.init_timeout_s=0 is invalid"),
    (["logger=wandb"], {"WANDB_MODE": "bogus"}, "WANDB_MODE (environment)=bogus is invalid"),
    (
        ["logger=wandb", "wandb.base_url=notaurl"],
        {},
        "wandb.base_url=notaurl is invalid: it must be an http or https URL",
    ),
    (["+model.load_kwargs.trust_remote_code=true"], {}, "model.load_kwargs.trust_remote_code=True is invalid"),
    (["compute.dtype=float8"], {}, "compute.dtype=float8 is invalid"),
    (["compute.batch_size=0"], {}, "compute.batch_size=0 is invalid"),
    (["compute.batch_size=-1"], {}, "compute.batch_size=-1 is invalid"),
    (["compute.device=bogus"], {}, "compute.device=bogus is invalid"),
    (["compute.device=cuda"], {}, "compute.device=cuda is invalid here"),
    (["compute.attn_implementation=bogus"], {}, "compute.attn_implementation=bogus is invalid"),
    (["sweep.unit.max_cells=0"], {}, "sweep.unit.max_cells=0 is invalid"),
    (["sweep.unit.max_cost=abc"], {}, "sweep.unit.max_cost=abc is invalid"),
    (["sweep.unit.checkpoint_s=-1"], {}, "sweep.unit.checkpoint_s=-1 is invalid"),
    (["compute.flush_denormal=maybe"], {}, "compute.flush_denormal=maybe is invalid"),
    (["+compute.threads=4"], {}, "compute.threads is not a setting of compute"),
    (["layer=1.7"], {}, "layer=1.7 is invalid: it must be an integer"),
    (["layer=abc"], {}, "layer=abc is invalid: it must be an integer"),
    (["layer=9"], {}, "valid layers are 0..6"),
    (["seed=1.5"], {}, "seed=1.5 is invalid"),
    (["seed=-1"], {}, "seed=-1 is invalid"),
    (["probe.settings.alpha=-1"], {}, "probe.settings.alpha=-1 is invalid"),
    (["probe.settings.alpha=0"], {}, "probe.settings.alpha=0 is invalid"),
    (["probe.settings.standardize=maybe"], {}, "probe.settings.standardize=maybe is invalid"),
    (["probe=logistic", "probe.settings.C=0"], {}, "probe.settings.C=0 is invalid"),
    (["probe=logistic", "probe.settings.max_iter=0"], {}, "probe.settings.max_iter=0 is invalid"),
    (["probe=logistic", "probe.settings.tol=-1"], {}, "probe.settings.tol=-1 is invalid"),
    (["probe=logistic", "probe.settings.solver=bogus"], {}, "probe.settings.solver=bogus is invalid"),
    (["data.val_per_class=0"], {}, "data.val_per_class=0 is invalid"),
    (["data.train_per_class=0"], {}, "data.train_per_class=0 is invalid"),
    (["data.n_classes=11"], {}, "data.n_classes=11 is invalid"),
    (
        ["data=imagefolder", "data.root=.", "data.n_classes=1001"],
        {},
        "data.n_classes=1001 is invalid: it must be an integer >= 2 and <= 1000",
    ),
    (["data.seed=-1"], {}, "data.seed=-1 is invalid"),
    (["cache.dir=''"], {}, "cache.dir='' is invalid"),
    ([], {"SWEEP_CACHE_DIR": ""}, "cache.dir='' is invalid"),
    (["cache.verify=bogus"], {}, "cache.verify=bogus is invalid"),
    (["cache.enabled=maybe"], {}, "cache.enabled=maybe is invalid"),
    (["outcomes.save=maybe"], {}, "outcomes.save=maybe is invalid"),
    (["toy_training.epochs=0"], {}, "toy_training.epochs=0 is invalid"),
    (["toy_training.lr=-1"], {}, "toy_training.lr=-1 is invalid"),
    (["toy_training.batch_size=0"], {}, "toy_training.batch_size=0 is invalid"),
    (["toy_training.data.val_per_class=0"], {}, "toy_training.data.val_per_class=0 is invalid"),
    (["sweep.force=maybe"], {}, "sweep.force=maybe is invalid"),
    (["sweep.lease.stale_after_s=0"], {}, "sweep.lease.stale_after_s=0 is invalid"),
    (["sweep.lease.heartbeat_s=400"], {}, "sweep.lease.heartbeat_s=400.0 is invalid"),
    (["sweep.name=../../escaped"], {}, "sweep.name=../../escaped is invalid: it must be a name of 1 to 100"),
    (["sweep.name=" + "x" * 300], {}, "sweep.name=" + "x" * 300 + " is invalid"),
    (["+sweep.result_from=[elsewhere]"], {}, "sweep.result_from is not a setting of sweep; its settings are: name"),
    (["+model.revison=v2"], {}, "model.revison is not a setting of model"),
    (["data.train_per_class=150"], {}, "data.train_per_class=150 and data.val_per_class=70 ask for 220 images of each"),
    (
        ["toy_training.data.train_per_class=120"],
        {},
        "toy_training.data.train_per_class=120 and toy_training.data.val_per_class=70 ask for 190 images",
    ),
]
IDS = [" ".join(args) + "".join(f" {k}={v!r}" for k, v in env.items()) for args, env, _ in BATTERY]


def run_bad_input(
    mode: str, args: list[str], env: dict[str, str], tmp_path: Path
) -> tuple[subprocess.CompletedProcess, float]:
    """One case as a user meets it: `sweep-run` of one cell, or a sweep's dry-run plan."""
    cache = tmp_path / "cache"
    environment = {
        **os.environ,
        "SWEEP_CACHE_DIR": str(cache),
        "WANDB_MODE": "offline",
        "SWEEP_PROGRESS": "0",
        "HOME": str(tmp_path),
        **env,
    }
    base = ["model=toy_vit", "logger=none"] if not any(a.startswith("logger=") for a in args) else ["model=toy_vit"]
    command = [sys.executable, "-m", "sweep.run", *base, *args]
    if mode == "plan":
        command = [sys.executable, "-m", "sweep.run", "-m", *base, "layer=3,6", *args, "sweep.dry_run=true"]
    started = time.perf_counter()
    result = subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    return result, time.perf_counter() - started


def written_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("mode", ["cell", "plan"])
@pytest.mark.parametrize("args, env, message", BATTERY, ids=IDS)
def test_bad_input_fails_before_any_work_with_a_clear_message(mode, args, env, message, tmp_path):
    if "compute.device=cuda" in args and cuda_visible():
        pytest.skip("this machine has a GPU, so compute.device=cuda is valid here")
    if mode == "plan" and args == ["layer=9"]:
        args, message = ["layer=9,10"], "no cell of this sweep can run"  # a grid skips a layer a model lacks
    result, seconds = run_bad_input(mode, args, env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert message in result.stderr, output
    assert "Traceback" not in output
    assert written_files(tmp_path) == [], "bad input must leave nothing behind"


def test_a_grid_with_one_bad_point_launches_nothing(cli_env, tmp_path):
    command = [
        sys.executable,
        "-m",
        "sweep.run",
        "-m",
        "model=toy_vit",
        "logger=none",
        "layer=3",
        "intervention=shuffle",
        "intervention.group_size=64,1",
    ]
    result = subprocess.run(command, env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "intervention.group_size=1 is invalid" in result.stderr
    assert "grid point: " in result.stderr and "intervention.group_size=1" in result.stderr
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("mode", ["cell", "sweep"])
@pytest.mark.parametrize("kind", ["a file", "under /proc", "read-only"])
def test_a_cache_dir_that_cannot_be_written_is_a_configuration_error(mode, kind, tmp_path):
    """Exit 2 and one line before any work, no record and no lease: as a traceback, a `failed`
    record and exit 1 it looked like a failed measurement. A sweep on a local launcher is
    refused before its plan is written."""
    if kind == "a file":
        cache = tmp_path / "a-file"
        cache.write_text("not a folder")
        message = f"cache.dir={cache} is invalid: it must be a folder, and {cache} is a file"
    elif kind == "under /proc":
        cache, message = Path("/proc/sweep-cache"), "cache.dir=/proc/sweep-cache is invalid: it must be a folder"
    else:
        (tmp_path / "read-only").mkdir()
        cache = tmp_path / "read-only" / "cache"
        message = f"cache.dir={cache} is invalid: it must be a folder this process can create and write"
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "SWEEP_CACHE_DIR": str(cache),
        "WANDB_MODE": "offline",
        "SWEEP_PROGRESS": "0",
        "HOME": str(tmp_path),
    }
    command = [
        sys.executable,
        "-m",
        "sweep.run",
        *(["-m"] if mode == "sweep" else []),
        "model=toy_vit",
        "layer=3",
        "logger=none",
    ]
    with contextlib.ExitStack() as stack:
        if kind == "read-only":
            stack.enter_context(read_only(tmp_path / "read-only"))
        result = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert message in result.stderr and "Traceback" not in output, output
    assert written_files(work) == [], "no record, no lease, no plan"


# -------------------------------------------------------------------- the rules themselves


def test_rules_name_the_key_the_value_and_what_is_valid():
    with pytest.raises(ConfigError, match=r"^compute\.batch_size=0 is invalid: it must be an integer >= 1$"):
        Integer(1).check("compute.batch_size", 0)
    with pytest.raises(ConfigError, match=r"one of float32, bfloat16"):
        OneOf("float32", "bfloat16").check("compute.dtype", "float8")
    with pytest.raises(ConfigError, match=r"a number > 0"):
        Real(0, low_open=True).check("probe.settings.alpha", 0.0)


def test_a_server_address_must_be_an_http_url_with_a_host():
    for good in ("https://api.wandb.ai", "http://localhost:8080", "https://wandb.example.org/base"):
        assert Url().check("wandb.base_url", good) == good
    for bad in ("notaurl", "api.wandb.ai", "ftp://api.wandb.ai", "https://", "http://host:notaport", ""):
        with pytest.raises(ConfigError, match=r"^wandb\.base_url=.* is invalid: it must be an http or https URL"):
            Url().check("wandb.base_url", bad)


def test_rules_do_not_coerce_what_a_user_typed():
    for value in (1.7, True, "3"):
        with pytest.raises(ConfigError):
            Integer().check("layer", value)
    for value in (float("nan"), float("inf"), False):
        with pytest.raises(ConfigError):
            Real().check("lr", value)
    assert Real(0).check("x", 2) == 2.0 and isinstance(Real(0).check("x", 2), float)


def test_a_valid_cell_carries_its_checked_settings():
    spec = cell_spec(compose_cell("model=toy_vit", "layer=3", "intervention=shuffle"))
    settings = spec.settings
    assert settings.compute.batch_size == 128 and settings.compute.dtype == "float32"
    assert settings.intervention.choice == "shuffle" and settings.intervention["group_size"] == 128
    assert settings.probe.choice == "ridge" and settings.probe["alpha"] == 1.0
    assert settings.data.choice == "sklearn_digits" and settings.toy_training.epochs == 30


def test_settings_that_change_numbers_change_the_identity():
    base = cell_spec(compose_cell("model=toy_vit", "layer=3")).cell_id
    for change in ("compute.attn_implementation=eager", "compute.flush_denormal=false", "compute.dtype=bfloat16"):
        assert cell_spec(compose_cell("model=toy_vit", "layer=3", change)).cell_id != base, change


def test_docs_list_every_checked_setting_as_the_rules_say():
    from sweep.settings import settings_table

    docs = (Path(__file__).parents[1] / "docs" / "settings.md").read_text()
    assert settings_table() in docs, "regenerate the table in docs/settings.md from sweep.settings.settings_table()"


def test_the_image_folders_class_bound_is_the_number_of_imagenet_classes():
    """`data.n_classes` is refused above ImageNet-1k's classes when the cell is specified, not
    when the folder is read; the bound is the class list's length."""
    from sweep.data import imagenet_wnids
    from sweep.settings import DATA_SOURCES, IMAGENET_CLASSES

    assert IMAGENET_CLASSES == len(imagenet_wnids())
    assert DATA_SOURCES["imagefolder"]["n_classes"].high == DATA_SOURCES["hub"]["n_classes"].high == IMAGENET_CLASSES


@pytest.mark.parametrize("mode", ["cell", "plan"])
def test_an_image_folder_that_cannot_give_its_subset_is_refused_before_anything_runs(mode, tmp_path):
    """A zero-byte image among those the subset reads: found by the plan (or sweep-run's check)
    from the listing and the files' headers, before the toy trains; nothing is left behind."""
    from imagenet_folder import make_imagenet_folder

    from sweep.data import imagenet_wnids

    data = make_imagenet_folder(tmp_path.parent / f"{tmp_path.name}-data", n_classes=2, per_class=2)
    for image in (data / "val" / imagenet_wnids()[1]).iterdir():
        image.write_bytes(b"")
    result, _ = run_bad_input(
        mode,
        ["data=imagefolder", f"data.root={data}", "data.n_classes=2", "data.train_per_class=2", "data.val_per_class=2"],
        {},
        tmp_path,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{data / 'val' / imagenet_wnids()[1]}/" in result.stderr and "it is empty (0 bytes)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert written_files(tmp_path) == [], "bad input must leave nothing behind"
