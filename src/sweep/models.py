"""Loading the five HF architectures: from the hub, a local folder, or a toy trained here.

All three go through the same `from_pretrained` call (`trust_remote_code` off); a toy is
just a local folder that `toy.train_toy` wrote with `save_pretrained` into the cache.

A hub model comes from the Hugging Face cache when the hub cannot be reached: compute nodes
without internet run with HF_HUB_OFFLINE=1 after `sweep-prepare` (sweep.prepare) filled the
cache on a login node, and a model it did not fetch is refused by name before any other work.

What loaded is checked, not assumed: transformers fills any weight a checkpoint lacks (or
has in another shape) with a fresh random one and only logs it, so a renamed key in an old
checkpoint would silently give a random backbone. Only the head may be missing or differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from sweep.adapters import ADAPTERS, Adapter
from sweep.errors import ConfigError, SweepError, brief
from sweep.files import file_sha256
from sweep.settings import Model

transformers.utils.logging.disable_progress_bar()  # our own bars report progress
logger = logging.getLogger(__name__)

#: files that make up a local model's identity (configuration and weights)
IDENTITY_PATTERNS = ("config.json", "*.safetensors", "*.bin")
#: weight files searched, in this order, for tensors the HF class does not load
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
#: what `sweep-prepare` fetches of a hub model: its configuration and one format of its
#: weights (sharded or not), safetensors where the repository has them, else torch's
HUB_FILES = (
    ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"),
    ("config.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
)
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(/|$)")
_LISTED = 8  # keys named in a refusal before "and N more"


class ModelUnavailable(SweepError):
    """The model's weights cannot be read; the message says how to provide them."""


class IncompleteCheckpoint(ModelUnavailable):
    """The checkpoint loaded, but not all of the backbone came from it."""


@dataclass(frozen=True)
class LoadedModel:
    adapter: Adapter
    revision: str


def transformers_class(key: str, name: Any) -> type:
    """The class of transformers that the setting `key` names (`model.hf_class`,
    `model.toy.config_class`)."""
    try:
        return getattr(transformers, str(name))
    except AttributeError:
        raise ConfigError(
            f"{key}={name} is invalid: transformers {transformers.__version__} has no class of that name"
        ) from None


def hf_class(model: Model) -> type:
    return transformers_class("model.hf_class", model.hf_class)


def check_classes(model: Model) -> None:
    """Resolve the classes a model config names. The planner cannot (it does not import
    transformers), so a cell's unit does it first, before any data is read or a toy trains."""
    hf_class(model)
    if model.toy is not None:
        transformers_class("model.toy.config_class", model.toy["config_class"])


def load_model(
    model: Model, weights: str | Path, *, device: torch.device, attn_implementation: str, hash_memo: Path | None = None
) -> LoadedModel:
    """Load `weights` (hub id or folder) as `model.hf_class`, check that everything but the
    head came from the checkpoint, and wrap it in its adapter. `hash_memo`: where file
    hashes of local folders are remembered (see `model_revision`)."""
    cls = hf_class(model)
    kind = ADAPTERS[model.adapter]
    readouts = model.readouts
    kwargs = dict(model.load_kwargs)
    # Shape mismatches are reported in the loading info instead of raised, so that the check
    # below can name them; anything outside the head is refused there.
    kwargs["ignore_mismatched_sizes"] = True
    revision = model.revision
    require_offline_copy(model, weights)
    try:
        loaded, info = cls.from_pretrained(
            str(weights),
            revision=revision,
            trust_remote_code=False,
            attn_implementation=attn_implementation,
            output_loading_info=True,
            **kwargs,
        )
    except OSError as error:
        raise ModelUnavailable(
            f"could not load {model.name} from '{weights}' ({brief(error, 120)}). "
            "Without hub access, fetch it on a machine with internet with `sweep-prepare` and the same overrides "
            "(into the Hugging Face cache this machine reads), or download it elsewhere "
            "(`hf download <id> --local-dir DIR`) and set model.source=DIR"
        ) from error
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:  # transformers 5 raises for weights it failed to convert or copy
        raise IncompleteCheckpoint(
            f"{model.name} from '{weights}' did not load: {brief(error, 300)} "
            "(transformers' LOAD REPORT above names the keys)"
        ) from error
    check_loading_info(info, allowed_heads(kind, readouts), where=f"{model.name} from '{weights}'")
    tensors = {
        name: checkpoint_tensor(weights, revision, name, why=f"{model.name} ({why})")
        for name, why in kind.checkpoint_tensors(readouts).items()
    }
    loaded = loaded.to(device).eval()
    adapter = kind(loaded, readouts=readouts, tensors=tensors)
    expected = model.n_layers
    if adapter.n_layers != expected:
        raise ValueError(
            f"{model.name} has {adapter.n_layers} blocks but its model config "
            f"(model/{model.name}.yaml) says n_layers: {expected}; fix the YAML"
        )
    return LoadedModel(adapter, model_revision(weights, revision, hash_memo))


def is_hub_id(weights: str | Path) -> bool:
    """Whether `weights` (model.source) names a hub repository (`org/name`), not a local folder."""
    if Path(str(weights)).expanduser().is_dir():
        return False
    try:
        validate_repo_id(str(weights))
    except HFValidationError:  # a path that does not exist: from_pretrained's own error names it
        return False
    return True


def hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The Hugging Face cache's snapshot folder of `repo_id` at `revision` (a branch, tag or
    commit; None is the default branch), or None where the cache has no config.json for it.
    Reads the cache only, never the network."""
    config = try_to_load_from_cache(repo_id, "config.json", revision=revision or "main")
    return Path(config).parent if isinstance(config, str) else None


def require_offline_copy(model: Model, weights: str | Path) -> None:
    """With HF_HUB_OFFLINE=1 (a compute node without internet) a hub model must already be
    in the Hugging Face cache: refuse one that is not, by name, revision and the command that
    fetches it, before the cell reads any data or computes anything."""
    if not hub_constants.HF_HUB_OFFLINE or not is_hub_id(weights):
        return
    revision = model.revision or "main"
    if hub_snapshot(str(weights), revision) is None:
        raise ModelUnavailable(
            f"model {model.name} ({weights} at revision {revision}) is not in the Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 forbids downloading it. Run `sweep-prepare` with "
            "this sweep's overrides on a machine with internet (a login node) that shares this cache (the same "
            "HF_HOME or HF_HUB_CACHE), then run again (docs/sweeps.md, 'A cluster without internet'); or download "
            "it (`hf download <id> --local-dir DIR`) and set model.source=DIR"
        )


# -- what loaded ---------------------------------------------------------------------------
def allowed_heads(kind: type[Adapter], readouts: Mapping[str, Any]) -> tuple[str, ...]:
    """Head modules the checkpoint may lack or have in another shape: the adapter's, and
    only when every readout's head is fitted here (a native head must be the checkpoint's)."""
    fitted = all(str(settings.get("head")) == "fitted" for settings in readouts.values())
    return kind.head_modules if fitted and readouts else ()


def check_loading_info(info: Mapping[str, Any], heads: Iterable[str], *, where: str) -> None:
    """Refuse a load in which any weight outside `heads` was missing from the checkpoint,
    had another shape there, or failed to load. Keys the model does not use (CLIP's text
    tower, old buffers) are fine."""
    heads = tuple(heads)

    def outside_heads(key: str) -> bool:
        return key.split(".", 1)[0] not in heads

    missing = sorted(k for k in info.get("missing_keys") or () if outside_heads(k))
    mismatched = sorted(
        _describe_mismatch(item) for item in info.get("mismatched_keys") or () if outside_heads(_mismatch_key(item))
    )
    errors = [str(e) for e in info.get("error_msgs") or ()]
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        logger.info("%s: %d checkpoint keys unused (%s)", where, len(unexpected), _listing(unexpected))
    problems = [
        f"missing from the checkpoint: {_listing(missing)}" if missing else "",
        f"another shape in the checkpoint: {_listing(mismatched)}" if mismatched else "",
        f"errors: {_listing(errors)}" if errors else "",
    ]
    problems = [p for p in problems if p]
    if problems:
        may = f"only the head ({', '.join(heads)}) may be" if heads else "no weight may be (its heads are native)"
        raise IncompleteCheckpoint(
            f"{where} did not load completely; {'; '.join(problems)}. Those weights would be random: "
            f"{may} missing or differ. Check model.source and model.hf_class, and that the checkpoint "
            "is the architecture its model config (model/<name>.yaml) describes"
        )


def _mismatch_key(item: Any) -> str:
    return str(item[0]) if isinstance(item, (tuple, list)) else str(item)


def _describe_mismatch(item: Any) -> str:
    if isinstance(item, (tuple, list)) and len(item) == 3:
        return f"{item[0]} (checkpoint {tuple(item[1])}, model {tuple(item[2])})"
    return _mismatch_key(item)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


# -- tensors the HF class does not load ------------------------------------------------------
def checkpoint_tensor(weights: str | Path, revision: str | None, name: str, *, why: str) -> torch.Tensor:
    """Tensor `name` read straight from the checkpoint's weight files (e.g. CLIP's
    `visual_projection.weight`, which `CLIPForImageClassification` has no place for)."""
    for filename in WEIGHT_FILES:
        try:
            path = transformers.utils.cached_file(
                str(weights), filename, revision=revision, _raise_exceptions_for_missing_entries=False
            )
        except OSError:  # not in the hub cache and no hub access
            path = None
        if path is None:
            continue
        if filename.endswith(".index.json"):
            shard = json.loads(Path(path).read_text())["weight_map"].get(name)
            if shard is None:
                break
            path = transformers.utils.cached_file(str(weights), shard, revision=revision)
        tensor = _read_tensor(Path(path), name)
        if tensor is None:
            break
        return tensor
    raise ModelUnavailable(
        f"{why} needs '{name}' from the checkpoint, but '{weights}' has no such tensor in {' or '.join(WEIGHT_FILES)}"
    )


def _read_tensor(path: Path, name: str) -> torch.Tensor | None:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name) if name in f.keys() else None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state.get(name)


# -- identity --------------------------------------------------------------------------------
def model_revision(weights: str | Path, configured: str | None, hash_memo: Path | None) -> str:
    """What names the weights: the hub commit where there is one (a hub load, read from the
    snapshot folder the load filled in the Hugging Face cache, or a folder in the cache's
    `snapshots/<commit>/`), else a content hash of a local folder's config and weight files,
    so that new weights in the same folder give new cache keys. (transformers 5 no longer
    keeps the commit on the config.)"""
    folder = Path(weights)
    if folder.is_dir():
        return snapshot_commit(folder) or folder_digest(folder, hash_memo)
    snapshot = hub_snapshot(str(weights), configured)
    return (snapshot_commit(snapshot) if snapshot else None) or str(configured or "unknown")


def snapshot_commit(folder: Path) -> str | None:
    """The commit of a Hugging Face cache snapshot folder (`.../snapshots/<commit>/...`)."""
    snapshot = _SNAPSHOT.search(Path(folder).absolute().as_posix())
    return snapshot.group(1) if snapshot else None


def folder_digest(folder: Path, hash_memo: Path | None = None) -> str:
    """sha256 over the names and hashes of the folder's IDENTITY_PATTERNS files; each file
    is hashed once per (path, size, mtime), remembered in `hash_memo`."""
    files = sorted({p for pattern in IDENTITY_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise ModelUnavailable(f"'{folder}' has none of {', '.join(IDENTITY_PATTERNS)}; is it a model folder?")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{file_sha256(path, hash_memo)}\n".encode())
    return "sha256:" + digest.hexdigest()[:24]
