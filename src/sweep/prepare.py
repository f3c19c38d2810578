"""`sweep-prepare`: fetch what a sweep's cells would read from the network, where there is one.

Compute nodes of most clusters have no internet. `sweep-prepare` takes a sweep's overrides
(`sweep-prepare +experiment=main_result data=imagenet`), plans the very grid `sweep-run -m`
would (the cell sweeper's planner, through its `hydra/sweeper=prepare` subclass in
hydra_plugins/sweep_cells/), and for the grid's cells

* fetches every hub model into the Hugging Face cache: `snapshot_download` at the model's
  `model.revision`, its configuration and one format of its weights (`models.HUB_FILES`);
  the commit that revision named is printed, and each cell records it in its result.json;
* builds every data subset's preprocessed images in `cache.dir` (`artifacts.cached_images`),
  once per pixel geometry: models that differ only in normalisation share one decode;

then prints what it holds and the size of each. It loads no model and needs no GPU. The
cells then run with HF_HUB_OFFLINE=1 and no network: the model loader and the hub data
source refuse, by name and with this command, whatever was not prepared.

Toy models need nothing fetched (their first cell trains them from scikit-learn's digits),
and a model whose `model.source` is a local folder is only measured.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.cache_cli import human_size
from sweep.errors import ConfigError, SweepError, first_line
from sweep.redaction import redact
from sweep.settings import Cache

HELP_HEADER = (
    "sweep-prepare: on a machine with internet (a login node), fetch every model of a sweep's grid into "
    "the Hugging Face cache and build its data subsets' images in cache.dir, so that its cells run with "
    "HF_HUB_OFFLINE=1. It takes the overrides of `sweep-run -m` (e.g. sweep-prepare +experiment="
    "main_result data=imagenet) and prints what it holds; sweep.dry_run=true lists it without fetching."
)


@dataclass(frozen=True)
class ModelNeed:
    """One model of the grid, by where its weights come from."""

    names: tuple[str, ...]  # the model config names that load it
    source: str
    revision: str | None
    toy: bool


@dataclass(frozen=True)
class ImageNeed:
    """One data subset at one pixel geometry, and the models that read it."""

    cache: Cache
    data: Mapping[str, Any]
    preprocess: Mapping[str, Any]
    models: tuple[str, ...]

    @property
    def geometry(self) -> str:
        p = self.preprocess
        resize = f"resize {p['resize']}" + (" square" if p["resize_exact"] else " short edge")
        return f"{p['crop']}px crop, {resize}, {p['interpolation']}"


@dataclass(frozen=True)
class Needs:
    models: list[ModelNeed]
    images: list[ImageNeed]


def grid_needs(cells: Iterable[Any]) -> Needs:
    """What the planned cells (`plan.PlannedCell`: a resolved `config` and its `spec`) read:
    each model once, each (cache, data, pixel geometry) once, in the grid's order."""
    from sweep.data import pixel_settings

    models: dict[tuple[str, Any, bool], list[str]] = {}  # (source, revision, toy) -> names
    images: dict[str, tuple[Cache, Mapping[str, Any], Mapping[str, Any], list[str]]] = {}
    for cell in cells:
        model, data, cache = cell.config["model"], cell.config["data"], cell.spec.settings.cache
        if not cache.enabled:
            raise ConfigError(
                "cache.enabled=false is invalid for sweep-prepare: it builds the images into cache.dir "
                "for the cells to read, and with the cache off they would decode them again (from the "
                "network, for hub data); drop cache.enabled=false"
            )
        names = models.setdefault((str(model["source"]), model.get("revision"), model.get("toy") is not None), [])
        image_key = json.dumps([cache.dir, data, pixel_settings(model["preprocess"])], sort_keys=True, default=str)
        for users in (names, images.setdefault(image_key, (cache, data, model["preprocess"], []))[3]):
            if model["name"] not in users:
                users.append(model["name"])
    return Needs(
        [ModelNeed(tuple(names), *key) for key, names in models.items()],
        [ImageNeed(cache, data, preprocess, tuple(names)) for cache, data, preprocess, names in images.values()],
    )


# -- models -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """One thing prepared: a line for the report, and its size on disk."""

    line: str
    bytes: int = 0


def fetch_model(need: ModelNeed) -> Held:
    """The model in the Hugging Face cache (fetched unless it is there already), or
    ModelUnavailable saying why not."""
    from sweep.models import ModelUnavailable, is_hub_id, snapshot_commit

    names = ", ".join(need.names)
    if need.toy:
        return Held(f"{names}: a toy, trained from digits by its first cell; nothing to fetch")
    if not is_hub_id(need.source):
        folder = Path(need.source).expanduser()
        if not folder.is_dir():
            raise ModelUnavailable(
                f"model {names}: model.source={need.source} is neither a folder nor a hub id (org/name)"
            )
        size = files_size(folder)
        return Held(f"{names}: local folder {folder}  {human_size(size)}", size)
    snapshot = _snapshot(need)
    size, commit = files_size(snapshot), snapshot_commit(snapshot)
    named = "" if commit == need.revision else f" = commit {commit}"
    return Held(
        f"{names}: {need.source} at revision {need.revision or 'main'}{named}  {human_size(size)}  ({snapshot})", size
    )


def _snapshot(need: ModelNeed) -> Path:
    """`snapshot_download` of the model's configuration and weights: safetensors where the
    repository has them, else torch's (`HUB_FILES`, in that order). With HF_HUB_OFFLINE=1 it
    returns the cached snapshot, or fails."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from sweep.models import HUB_FILES, ModelUnavailable

    where = f"model {', '.join(need.names)} ({need.source} at revision {need.revision or 'main'})"
    try:
        for patterns in HUB_FILES:
            snapshot = Path(snapshot_download(need.source, revision=need.revision, allow_patterns=list(patterns)))
            if any(any(snapshot.glob(pattern)) for pattern in patterns if pattern != "config.json"):
                return snapshot
    except LocalEntryNotFoundError as error:
        if constants.HF_HUB_OFFLINE:
            raise ModelUnavailable(
                f"{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 forbids "
                "fetching it: run sweep-prepare on a machine with internet, without HF_HUB_OFFLINE"
            ) from error
        raise ModelUnavailable(
            f"{where}: the hub could not be reached and the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) does not have it ({_first_line(error)})"
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:  # not found, gated, a revision that does not exist
        raise ModelUnavailable(
            f"could not fetch {where} ({type(error).__name__}: {_first_line(error)}); check model.source and "
            "model.revision, and for a gated model accept its terms on the hub and log in (`hf auth login`) or "
            "export HF_TOKEN"
        ) from error
    raise ModelUnavailable(
        f"{where} has config.json but no weights in the Hugging Face cache ({snapshot}): "
        f"none of {', '.join(p for files in HUB_FILES for p in files if p != 'config.json')}"
    )


# -- images -------------------------------------------------------------------------------


def build_images(need: ImageNeed) -> Held:
    """The subset's images in cache.dir (decoded now unless they are there already)."""
    from sweep.artifacts import cached_images
    from sweep.cache import ArtifactCache

    _, splits = cached_images(ArtifactCache(need.cache.dir, verify=need.cache.verify), need.data, need.preprocess)
    folder = images_folder(need)
    size = files_size(folder)
    counts = " + ".join(f"{split} {len(images)}" for split, images in splits.items())
    return Held(
        f"{need.data['name']}, {need.geometry}, for {', '.join(need.models)}: {counts} images  "
        f"{human_size(size)}  ({folder})",
        size,
    )


def files_size(folder: Path) -> int:
    """Bytes of the files under `folder`, links followed (a hub snapshot links into blobs/)."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _first_line(error: BaseException) -> str:
    return first_line(error, 300)


# -- the report ---------------------------------------------------------------------------


def prepare_grid(sweep_id: str, cells: Sequence[Any], *, dry_run: bool) -> None:
    """Fetch and build everything `cells` read, printing each holding as it is ready; every
    item is tried, and what could not be prepared is raised together at the end."""
    from huggingface_hub import constants

    needs = grid_needs(cells)
    say(
        f"sweep-prepare: sweep {sweep_id}, {_count(len(cells), 'cell')}: {_count(len(needs.models), 'model')}, "
        f"{_count(len(needs.images), 'image set')}"
    )
    caches = sorted({need.cache.dir for need in needs.images})
    if dry_run:
        say(f"models, for the Hugging Face cache {constants.HF_HUB_CACHE}:")
        for model in needs.models:
            say(f"  {', '.join(model.names)}: {describe_model(model)}")
        say(f"images, for cache.dir {', '.join(caches)}:")
        for image in needs.images:
            say(
                f"  {image.data['name']}, {image.geometry}, for {', '.join(image.models)}: "
                f"{'built' if images_folder(image).is_dir() else 'to build'}"
            )
        say("dry run: nothing fetched or built (drop sweep.dry_run=true to prepare)")
        return
    failures: list[str] = []
    totals = {}
    for title, items, make in (
        (f"models, in the Hugging Face cache {constants.HF_HUB_CACHE}", needs.models, fetch_model),
        (f"images, in cache.dir {', '.join(caches)}", needs.images, build_images),
    ):
        say(title + ":")
        held = 0
        for item in items:
            try:
                holding = make(item)
            except SweepError as error:
                failures.append(str(error))
                say(f"  MISSING {error}")
                continue
            held += holding.bytes
            say(f"  {holding.line}")
        totals[title.split(",")[0]] = held
    say(
        "holding: "
        + ", ".join(f"{kind} {human_size(size)}" for kind, size in totals.items())
        + f", {human_size(sum(totals.values()))} in all"
    )
    if failures:
        raise SweepError(
            f"sweep-prepare could not prepare {len(failures)} of "
            f"{len(needs.models) + len(needs.images)} items:\n  " + "\n  ".join(failures)
        )
    from sweep.models import is_hub_id

    moving = sorted(
        {m.revision or "main" for m in needs.models if not m.toy and is_hub_id(m.source) and not _is_commit(m.revision)}
    )
    if moving:
        say(
            f"revision {', '.join(moving)} names a branch or tag, which can move: to keep these weights, set "
            "model.revision to the commit shown above (in model/<name>.yaml of the config or on the command line)"
        )
    say(
        "on the compute nodes: export HF_HUB_OFFLINE=1 with the same HF_HOME (or HF_HUB_CACHE) and cache.dir, then "
        "sweep-run -m with the same overrides"
    )


def describe_model(need: ModelNeed) -> str:
    """Where the model comes from and whether it is held already (the cache is read, not the hub)."""
    from sweep.models import hub_snapshot, is_hub_id

    if need.toy:
        return "a toy, trained from digits by its first cell"
    if not is_hub_id(need.source):
        return f"local folder {need.source}"
    held = hub_snapshot(need.source, need.revision) is not None
    return f"{need.source} at revision {need.revision or 'main'}: {'in the cache' if held else 'to fetch'}"


def images_folder(need: ImageNeed) -> Path:
    """Where the subset's images entry lives in cache.dir (it may not exist yet)."""
    from sweep.artifacts import images_spec
    from sweep.cache import ArtifactCache

    return ArtifactCache(need.cache.dir).entry_dir("images", images_spec(need.data, need.preprocess))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _is_commit(revision: str | None) -> bool:
    return revision is not None and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def say(line: str) -> None:
    print(redact(line), flush=True)


def main() -> None:
    """`sweep-prepare [overrides]`: `sweep-run -m`'s grammar and planner, with the sweeper
    that prepares the grid's cells instead of launching them."""
    from sweep import run

    sys.argv[1:1] = [
        "--multirun",
        "hydra/sweeper=prepare",
        "hydra.help.app_name=sweep-prepare",
        f'hydra.help.header="{HELP_HEADER}"',
    ]
    run.main()


if __name__ == "__main__":
    main()
