"""`sweep-prepare` on a login node, then cells on a compute node without internet.

The hub cannot be reached from the tests (nor from CI), so fetching itself is not tested
against the real hub. What runs offline is tested with real components: a Hugging Face
cache folder in the hub's own layout (`models--org--name/blobs/`, `snapshots/<commit>/`,
`refs/main`) filled from the hub-format fixtures (tests/fixtures/hub/), HF_HUB_OFFLINE=1,
the real `snapshot_download` (which then returns the cached snapshot) and `from_pretrained`,
and the real `sweep-prepare` and `sweep-run` commands in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_cell
from imagenet_folder import make_imagenet_folder
from omegaconf import OmegaConf

from sweep.cellspec import cell_spec
from sweep.errors import ConfigError
from sweep.plan import PlannedCell
from sweep.prepare import grid_needs

pytestmark = pytest.mark.slow  # runs sweep-prepare and sweep-run in subprocesses

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
REPO = "fixture-org/vit-tiny"  # the hub id the vit fixture is cached under
ABSENT = "fixture-org/absent"  # a hub id the cache does not have
N_LAYERS = 3  # make_hub_fixtures.N_LAYERS
N_CLASSES, PER_CLASS = 2, 2


def hub_cache(root: Path, repo_id: str, fixture: str) -> str:
    """Put a fixture into a Hugging Face cache folder as the hub client leaves a download:
    files in blobs/ (named by their sha256), linked from snapshots/<commit>/, and refs/main
    naming the commit. Returns the commit."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in (FIXTURES / fixture).iterdir():
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"), n_classes=N_CLASSES, per_class=PER_CLASS)


@pytest.fixture
def offline(tmp_path):
    """A compute node's environment: no hub (HF_HUB_OFFLINE=1), a Hugging Face cache holding
    the vit fixture as REPO, a fresh artifact cache, W&B off. Yields (env, commit)."""
    hub = tmp_path / "hf" / "hub"
    commit = hub_cache(hub, REPO, "vit")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(hub),
        "SWEEP_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_MODE": "disabled",
        "SWEEP_PROGRESS": "0",
    }
    return env, commit


def cell_args(imagenet_folder: Path, source: str = REPO) -> list[str]:
    """A small vit cell on the local image folder, its weights from the hub id `source`."""
    return [
        "model=vit",
        f"model.source={source}",
        f"model.n_layers={N_LAYERS}",
        "data=imagefolder",
        f"data.root={imagenet_folder}",
        f"data.n_classes={N_CLASSES}",
        f"data.train_per_class={PER_CLASS}",
        f"data.val_per_class={PER_CLASS}",
        "logger=none",
        "compute.device=cpu",
        "compute.attn_implementation=eager",
    ]


def command(name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    module = {"sweep-prepare": "sweep.prepare", "sweep-run": "sweep.run"}[name]
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


# -- what a grid needs ------------------------------------------------------------------------


def planned(*overrides: str) -> PlannedCell:
    cfg = compose_cell(*overrides)
    return PlannedCell(overrides=list(overrides), config=OmegaConf.to_container(cfg, resolve=True), spec=cell_spec(cfg))


def test_models_that_share_a_pixel_geometry_share_one_image_set():
    beit = ("model=beit", "model.preprocess.mean=[0.485,0.456,0.406]")  # other normalisation, same pixels as vit
    cells = [planned(*model, f"layer={layer}") for model in (("model=vit",), beit, ("model=deit",)) for layer in (1, 2)]
    needs = grid_needs(cells)
    assert [(m.names, m.source) for m in needs.models] == [
        (("vit",), "google/vit-base-patch16-224"),
        (("beit",), "microsoft/beit-base-patch16-224-pt22k-ft22k"),
        (("deit",), "facebook/deit-base-distilled-patch16-224"),
    ]
    # ViT and BEiT differ only in normalisation: one decode; DeiT resizes to 256, bicubic
    assert [(i.models, i.geometry) for i in needs.images] == [
        (("vit", "beit"), "224px crop, resize 224 square, bilinear"),
        (("deit",), "224px crop, resize 256 square, bicubic"),
    ]


def test_a_disabled_cache_is_refused_before_anything_is_fetched():
    with pytest.raises(ConfigError, match="cache.enabled=false is invalid for sweep-prepare"):
        grid_needs([planned("model=vit", "cache.enabled=false")])


# -- the commands -----------------------------------------------------------------------------


def test_prepare_then_the_cell_runs_offline_from_what_it_holds(offline, imagenet_folder, tmp_path):
    env, commit = offline
    grid = [*cell_args(imagenet_folder), "layer=1,2", "intervention=none,shuffle"]
    # the sweep's cells ask for a GPU; the login node that prepares them has none, and needs none
    prepared = command("sweep-prepare", [*grid, "compute.device=cuda"], {**env, "CUDA_VISIBLE_DEVICES": ""}, tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    out = prepared.stdout
    assert "sweep-prepare: sweep sweep-" in out and "4 cells: 1 model, 1 image set" in out
    assert f"vit: {REPO} at revision main = commit {commit}" in out  # what revision main named
    assert (
        f"imagefolder, 224px crop, resize 224 square, bilinear, for vit: train {N_CLASSES * PER_CLASS} + val "
        f"{N_CLASSES * PER_CLASS} images" in out
    )
    assert "in all" in out and "export HF_HUB_OFFLINE=1" in out
    (images,) = (tmp_path / "cache" / "images").iterdir()
    assert (images / "train.safetensors").is_file() and (images / "val.safetensors").is_file()
    assert not (tmp_path / "multirun").exists()  # nothing launched, no sweep folder

    cell = command("sweep-run", [*cell_args(imagenet_folder), "layer=2", "intervention=shuffle"], env, tmp_path)
    assert cell.returncode == 0, cell.stderr
    assert "computing images" not in cell.stdout + cell.stderr  # the prepared decode is read, not redone
    (record,) = tmp_path.glob("runs/vit/*/result.json")
    record = json.loads(record.read_text())
    assert record["status"] == "complete"
    assert record["versions"]["model_revision"] == commit  # the commit, not the branch name


def test_a_model_absent_from_the_cache_fails_fast_naming_sweep_prepare(offline, imagenet_folder, tmp_path):
    env, _ = offline
    result = command("sweep-run", [*cell_args(imagenet_folder, source=ABSENT), "layer=2"], env, tmp_path)
    assert result.returncode == 2
    assert f"model vit ({ABSENT} at revision main) is not in the Hugging Face cache" in result.stderr
    assert "HF_HUB_OFFLINE=1 forbids downloading it. Run `sweep-prepare`" in result.stderr
    assert "Traceback" not in result.stderr
    # refused before any data was read: the cache folder (checked to be writable) holds nothing
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert not list(tmp_path.glob("runs/**/result.json"))


def test_hub_data_that_was_not_prepared_is_refused_offline_naming_sweep_prepare(offline, tmp_path):
    env, _ = offline
    args = [
        "model=vit",
        f"model.source={REPO}",
        f"model.n_layers={N_LAYERS}",
        "data=imagenet",
        f"data.n_classes={N_CLASSES}",
        "logger=none",
        "compute.device=cpu",
        "layer=2",
    ]
    result = command("sweep-run", args, env, tmp_path)
    assert result.returncode == 2
    assert "data=imagenet streams ILSVRC/imagenet-1k from the hub, and HF_HUB_OFFLINE=1 forbids it" in result.stderr
    assert "Run `sweep-prepare`" in result.stderr


def test_prepare_offline_without_the_model_says_what_is_missing(offline, imagenet_folder, tmp_path):
    env, _ = offline
    result = command("sweep-prepare", [*cell_args(imagenet_folder, source=ABSENT), "layer=2"], env, tmp_path)
    assert result.returncode == 2
    assert f"MISSING model vit ({ABSENT} at revision main) is not in the Hugging Face cache" in result.stdout
    assert "HF_HUB_OFFLINE=1 forbids fetching it: run sweep-prepare on a machine with internet" in result.stderr
    assert "could not prepare 1 of 2 items" in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_plans_the_grid_the_sweep_would_run(offline, tmp_path):
    """The study's grid, dry: the planner's cells (skipped points and merged seeds as in
    `sweep-run -m`), five models to fetch and four pixel geometries to decode."""
    env, _ = offline
    grid = ["+experiment=main_result", "sweep.dry_run=true"]
    prepared = command("sweep-prepare", grid, env, tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    swept = command("sweep-run", ["-m", *grid], env, tmp_path)
    assert swept.returncode == 0, swept.stderr
    cells = swept.stdout.split(" cells, ")[0].rsplit("-> ", 1)[1]
    assert f"{cells} cells: 5 models, 4 image sets" in prepared.stdout
    assert "  vit: google/vit-base-patch16-224 at revision main: to fetch" in prepared.stdout
    assert "  imagenet, 224px crop, resize 224 square, bilinear, for vit, beit: to build" in prepared.stdout
    assert "dry run: nothing fetched or built" in prepared.stdout
    assert not (tmp_path / "cache").exists() and not (tmp_path / "multirun").exists()


def test_help_says_what_it_does():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("sweep-prepare")), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sweep-prepare: on a machine with internet")
    assert "model: beit, clip, deit" in result.stdout  # Hydra's groups: the grammar of sweep-run
