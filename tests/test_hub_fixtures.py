"""The adapters and the loader on the hub checkpoints' own formats (tests/fixtures/hub/).

The toys are saved by the transformers that loads them, with HF's init; these fixtures
were saved by transformers 4.57 with the real checkpoints' classes and flags and every
parameter random (tests/fixtures/make_hub_fixtures.py), so a renamed key, a dropped bias
term or a head read from the wrong place shows here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers
from helpers import compose_cell
from safetensors.torch import load_file, save_file

import sweep.files
from sweep.adapters import Adapter, ClipAdapter, ReadoutUnavailable
from sweep.cache import ArtifactCache
from sweep.cell import measure
from sweep.cellspec import cell_spec
from sweep.errors import SweepError
from sweep.linear_heads import LinearHead
from sweep.models import IncompleteCheckpoint, LoadedModel, ModelUnavailable, folder_digest, load_model
from sweep.settings import Model

pytestmark = pytest.mark.slow  # loads hub-format checkpoints and measures cells on them

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
N_LAYERS = 3  # make_hub_fixtures.N_LAYERS
#: fixture folder -> the model config it is a small copy of
CONF = {
    "vit": "vit",
    "deit": "deit",
    "beit": "beit",
    "beit_shared": "beit",
    "dinov2": "dinov2",
    "clip": "clip",
    "dinov2_reg": "dinov2_reg",
}
ALL = tuple(CONF)
N_CLASSES = 1000


def model_cfg(fixture: str, *overrides: str, source: Path | None = None):
    cfg = compose_cell(
        f"model={CONF[fixture]}",
        f"model.source={source or FIXTURES / fixture}",
        f"model.n_layers={N_LAYERS}",
        *overrides,
    )
    return cfg["model"]


def load(fixture: str, *overrides: str, source: Path | None = None) -> LoadedModel:
    cfg = model_cfg(fixture, *overrides, source=source)
    return load_model(Model.of(cfg), cfg["source"], device=torch.device("cpu"), attn_implementation="eager")


def pixels(n: int = 3, size: int = 224, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def last_hidden(adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    *_, hidden = adapter.hidden_states(x)
    return hidden


def with_fitted_heads(fixture: str, x: torch.Tensor) -> Adapter:
    """The fixture's adapter with random heads installed where the model config fits them here,
    as a cell installs its fitted heads."""
    adapter = load(fixture).adapter
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        hidden = last_hidden(adapter, x)
        for readout, settings in model_cfg(fixture)["readouts"].items():
            if settings["head"] == "fitted":
                dim = adapter.readout_features(hidden, readout).shape[-1]
                adapter.install_head(
                    readout,
                    LinearHead(
                        torch.randn(N_CLASSES, dim, generator=generator), torch.randn(N_CLASSES, generator=generator)
                    ),
                )
    return adapter


def copy_fixture(fixture: str, to: Path, edit=None) -> Path:
    """A copy of a fixture whose weights `edit` changed (a dict of tensors, in place)."""
    folder = to / fixture
    shutil.copytree(FIXTURES / fixture, folder)
    if edit is not None:
        weights = load_file(folder / "model.safetensors")
        edit(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# -- formats and loading ----------------------------------------------------------------------
def test_the_fixtures_have_the_hub_checkpoints_structure():
    config = transformers.AutoConfig.from_pretrained(FIXTURES / "beit")
    assert (config.use_relative_position_bias, config.use_shared_relative_position_bias) == (True, False)
    assert config.use_mean_pooling and config.layer_scale_init_value == 0.1 and config.num_labels == 21841
    assert not config.use_absolute_position_embeddings
    assert transformers.AutoConfig.from_pretrained(FIXTURES / "beit_shared").use_shared_relative_position_bias
    dinov2 = transformers.AutoConfig.from_pretrained(FIXTURES / "dinov2")
    assert dinov2.architectures == ["Dinov2Model"] and (dinov2.image_size, dinov2.patch_size) == (518, 14)
    assert transformers.AutoConfig.from_pretrained(FIXTURES / "clip").architectures == ["CLIPModel"]
    registers = transformers.AutoConfig.from_pretrained(FIXTURES / "dinov2_reg")
    assert registers.architectures == ["Dinov2WithRegistersModel"] and registers.num_register_tokens == 4
    for fixture in ALL:
        assert transformers.AutoConfig.from_pretrained(FIXTURES / fixture).transformers_version.startswith("4.")
        for name, tensor in load_file(FIXTURES / fixture / "model.safetensors").items():
            if tensor.is_floating_point() and tensor.numel() > 1:  # every parameter random, none left at init
                assert tensor.std() > 0.01, (fixture, name)


@pytest.mark.parametrize("fixture", ALL)
def test_each_fixture_loads_with_its_conf_model_settings(fixture):
    adapter = load(fixture).adapter
    assert adapter.n_layers == N_LAYERS


def _rename_backbone_key(weights):
    weights["vit.encoder.layer.1.output.dense.weight_renamed"] = weights.pop("vit.encoder.layer.1.output.dense.weight")


def _drop_backbone_key(weights):
    del weights["vit.embeddings.cls_token"]


def _reshape_backbone_key(weights):
    weights["vit.encoder.layer.0.intermediate.dense.bias"] = torch.randn(65)


@pytest.mark.parametrize(
    "edit, named",
    [
        (_rename_backbone_key, "vit.layers.1.mlp.fc2.weight"),
        (_drop_backbone_key, "cls_token"),
        (_reshape_backbone_key, "(checkpoint (65,), model (64,))"),
    ],
)
def test_a_checkpoint_missing_part_of_the_backbone_is_refused_by_name(tmp_path, edit, named):
    folder = copy_fixture("vit", tmp_path, edit)
    with pytest.raises(IncompleteCheckpoint, match="did not load completely") as refused:
        load("vit", source=folder)
    assert named in str(refused.value)


def test_a_native_head_must_come_from_the_checkpoint(tmp_path):
    folder = copy_fixture("vit", tmp_path, lambda w: w.pop("classifier.weight"))
    with pytest.raises(IncompleteCheckpoint, match="classifier.weight"):
        load("vit", source=folder)


def test_a_head_fitted_here_may_be_missing_or_of_another_size():
    load("dinov2")  # Dinov2Model: no classifier at all
    load("beit", "+model.load_kwargs.num_labels=1000")  # 21841-way in the checkpoint


def test_clip_refuses_a_checkpoint_without_visual_projection(tmp_path):
    folder = copy_fixture("clip", tmp_path, lambda w: w.pop("visual_projection.weight"))
    with pytest.raises(ModelUnavailable, match="visual_projection.weight"):
        load("clip", source=folder)
    load("clip", "model.readouts.cls.visual_projection=false", source=folder)


# -- the adapters reproduce the HF forward -----------------------------------------------------
@pytest.mark.parametrize("fixture", ALL)
def test_native_readout_equals_the_hf_forward(fixture):
    x = pixels()
    adapter = with_fitted_heads(fixture, x)
    with torch.no_grad():
        ours = adapter.logits(last_hidden(adapter, x), "native")
        theirs = adapter.model(pixel_values=x).logits
    assert ours.shape == (len(x), N_CLASSES)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


#: (fixture, input size): 160 px where the model takes other sizes (BEiT's relative position
#: bias must then follow the input, not config.image_size)
SIZES = [(fixture, 224) for fixture in ALL] + [
    ("beit", 160),
    ("beit_shared", 160),
    ("dinov2", 160),
    ("dinov2_reg", 160),
]


@pytest.mark.parametrize("fixture, size", SIZES)
def test_hidden_states_equal_hf_output_hidden_states(fixture, size):
    adapter, x = load(fixture).adapter, pixels(size=size)
    with torch.no_grad():
        theirs = adapter.model(pixel_values=x, output_hidden_states=True).hidden_states
        ours = list(adapter.hidden_states(x))
    assert len(ours) == len(theirs) == N_LAYERS + 1
    for layer, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"hidden state {layer}")


def test_the_shared_relative_position_bias_is_applied():
    """A shared bias the adapter dropped would leave hidden state 1 unchanged when the
    table is zeroed; HF's forward changes."""
    adapter, x = load("beit_shared").adapter, pixels()
    table = adapter.model.beit.shared_position_bias.relative_position_bias_table
    with torch.no_grad():
        before = list(adapter.hidden_states(x))[1]
        table.zero_()
        after = list(adapter.hidden_states(x))[1]
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("fixture", ALL)
@pytest.mark.parametrize("layer", [0, 1, N_LAYERS])
def test_an_identity_cls_edit_is_bit_exact(fixture, layer):
    x = pixels()
    adapter = with_fitted_heads(fixture, x)
    with torch.no_grad():
        plain = adapter.model(pixel_values=x).logits
        states = list(adapter.hidden_states(x))
        with adapter.cls_edit(layer, lambda cls: cls[torch.arange(len(cls))]):
            edited = adapter.model(pixel_values=x).logits
        # The resume path of a cell: the cached hidden state L, CLS written back, blocks L+1..N.
        resumed = adapter.run_blocks(adapter.with_cls(states[layer], states[layer][:, 0]), layer, N_LAYERS)
    assert torch.equal(plain, edited)
    assert torch.equal(resumed, states[-1])


@pytest.mark.parametrize("fixture", ALL)
def test_projection_at_the_last_layer_equals_the_projection_readouts_logits(fixture):
    x = pixels()
    adapter = with_fitted_heads(fixture, x)
    readout = str(model_cfg(fixture)["projection_readout"])
    with torch.no_grad():
        hidden = last_hidden(adapter, x)
        projected = adapter.head(readout)(adapter.projection_features(hidden[:, adapter.cls_index]))
        torch.testing.assert_close(projected, adapter.logits(hidden, readout), rtol=0, atol=1e-5)
    if fixture == "clip":
        assert readout == "cls"


# -- the readouts beside native and cls -------------------------------------------------------
def test_deit_distillation_readout_is_hfs_own_distillation_logits():
    x = pixels()
    adapter = load("deit").adapter
    with torch.no_grad():
        ours = adapter.logits(last_hidden(adapter, x), "distillation")
        theirs = adapter.model(pixel_values=x).distillation_logits
    assert ours.shape == (len(x), N_CLASSES)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "fixture, base, first_patch", [("dinov2", "dinov2", 1), ("dinov2_reg", "dinov2_with_registers", 5)]
)
def test_dinov2_patch_mean_readout_is_the_mean_of_hfs_final_patch_tokens(fixture, base, first_patch):
    """The registers model's patches start after its CLS and 4 registers, as HF's own head reads them."""
    x = pixels()
    adapter = load(fixture).adapter
    with torch.no_grad():
        ours = adapter.readout_features(last_hidden(adapter, x), "patch_mean")
        final = getattr(adapter.model, base)(pixel_values=x).last_hidden_state  # after the final layernorm
    assert ours.shape == (len(x), adapter.model.config.hidden_size)
    torch.testing.assert_close(ours, final[:, first_patch:].mean(dim=1), rtol=0, atol=1e-5)


# -- where each token sits (intervention.token) -----------------------------------------------
@pytest.mark.parametrize(
    "fixture, token, parameter",
    [
        ("deit", "distillation", "deit.embeddings.distillation_token"),
        ("dinov2_reg", "registers", "dinov2_with_registers.embeddings.register_tokens"),
    ],
)
def test_a_special_tokens_slots_hold_its_own_learned_vectors_at_the_embedding(fixture, token, parameter):
    """DeiT's distillation token (plus its position) and DINOv2's registers (no position) at
    hidden state 0, read from HF's own output_hidden_states: the slots a shuffle of that token
    moves hold exactly those, the same for every image."""
    adapter, x = load(fixture).adapter, pixels()
    with torch.no_grad():
        state0 = adapter.model(pixel_values=x, output_hidden_states=True).hidden_states[0]
    learned = dict(adapter.model.named_parameters())[parameter]
    slots = adapter.token_slots(token)
    if token == "distillation":
        learned = learned + adapter.model.deit.embeddings.position_embeddings[:, 1:2]
    torch.testing.assert_close(state0[:, slots], learned.expand(len(x), -1, -1), rtol=0, atol=1e-6)
    assert state0.shape[1] - adapter.first_patch == (224 // int(adapter.model.config.patch_size)) ** 2
    assert adapter.token_slots("patches") == slice(adapter.first_patch, None)


def test_dinov2_patch_mean_needs_a_head_fitted_here():
    adapter = load("dinov2").adapter
    with pytest.raises(ReadoutUnavailable, match="readouts.patch_mean.head: fitted"):
        adapter.head("patch_mean")


# -- CLIP's CLS readout ----------------------------------------------------------------------
def test_clip_cls_readout_is_clips_own_image_embedding():
    x = pixels()
    adapter = load("clip").adapter
    clip = transformers.CLIPModel.from_pretrained(FIXTURES / "clip").eval()
    with torch.no_grad():
        ours = adapter.readout_features(last_hidden(adapter, x), "cls")
        theirs = clip.get_image_features(pixel_values=x)
        theirs = getattr(theirs, "pooler_output", theirs)
    assert ours.shape == (len(x), clip.config.projection_dim)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_clip_cls_readout_without_projection_is_post_layernorm_of_cls():
    x = pixels()
    adapter = load("clip", "model.readouts.cls.visual_projection=false").adapter
    with torch.no_grad():
        out = adapter.model.vision_model(pixel_values=x)
        ours = adapter.readout_features(last_hidden(adapter, x), "cls")
    torch.testing.assert_close(ours, out.pooler_output, rtol=0, atol=1e-6)


def test_clip_cls_needs_a_head_fitted_here():
    adapter = load("clip").adapter
    with pytest.raises(ReadoutUnavailable, match="readouts.cls.head: fitted"):
        adapter.head("cls")


def test_an_unknown_readout_setting_is_refused_with_the_valid_ones():
    with pytest.raises(
        SweepError, match=r"model.readouts.cls.visual_projektion .*valid settings: head, visual_projection"
    ):
        load("clip", "+model.readouts.cls.visual_projektion=true")


def test_a_model_without_a_cls_readout_refuses_it():
    class NoClsClip(ClipAdapter):
        supported_readouts = ("native",)

    adapter = NoClsClip(load("clip").adapter.model)
    with pytest.raises(ReadoutUnavailable, match="no 'cls' readout"):
        adapter.head("cls")


# -- a local folder's identity ---------------------------------------------------------------
def test_new_weights_in_a_local_folder_give_new_cache_keys_and_revision(tmp_path):
    folder = copy_fixture("dinov2", tmp_path)
    cache = ArtifactCache(tmp_path / "cache")

    def cell():
        cfg = small_cell("dinov2", "intervention=shuffle", "layer=2", source=folder)
        return measure(cell_spec(cfg), cache)

    first = cell()
    assert first.model_revision.startswith("sha256:")
    weights = load_file(folder / "model.safetensors")
    weights["encoder.layer.2.mlp.fc2.bias"][0] += 1.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    second = cell()
    assert second.model_revision != first.model_revision
    assert second.artifacts["features"] != first.artifacts["features"]
    assert len(list((cache.root / "head").iterdir())) == 2 * len(model_cfg("dinov2")["readouts"])


def test_a_folder_in_the_hub_cache_is_named_by_its_commit(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--facebook--dinov2-base" / "snapshots" / commit
    shutil.copytree(FIXTURES / "dinov2", snapshot)
    assert load("dinov2", source=snapshot).revision == commit


def test_a_folders_files_are_hashed_once_across_processes(tmp_path, monkeypatch):
    folder = copy_fixture("vit", tmp_path)
    monkeypatch.setattr(sweep.files, "_RACY_NS", 0)  # the copies are new; real weights are old
    memo = tmp_path / "hashes.json"
    first = folder_digest(folder, memo)
    monkeypatch.setattr(sweep.files, "_HASH_MEMO", {})  # as in a new process

    def no_hashing(path):
        raise AssertionError(f"hashed {path} again")

    monkeypatch.setattr(sweep.files, "sha256", no_hashing)
    assert folder_digest(folder, memo) == first


def small_cell(fixture: str, *overrides: str, source: Path | None = None):
    return compose_cell(
        f"model={CONF[fixture]}",
        f"model.source={source or FIXTURES / fixture}",
        f"model.n_layers={N_LAYERS}",
        "data.train_per_class=3",
        "data.val_per_class=2",
        "compute.device=cpu",
        *overrides,
    )


def test_a_clip_cell_projects_through_its_cls_readout(tmp_path):
    """At L = N the class-embedding projection is the cls readout: same predictions."""
    cfg = small_cell("clip", "intervention=none", "readout=cls", "layer=-1")
    result = measure(cell_spec(cfg), ArtifactCache(tmp_path))
    assert torch.equal(result.outcomes["projection_predicted"], result.outcomes["predicted"])


# -------------------------------------------------------------------- a cell on real files, end to end

E2E = ("vit", "deit", "beit", "dinov2", "clip", "dinov2_reg")
E2E_CLASSES, E2E_PER_CLASS = 4, 3


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    from imagenet_folder import make_imagenet_folder

    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"), n_classes=E2E_CLASSES, per_class=E2E_PER_CLASS)


def fitted_native_head(cache: Path) -> LinearHead | None:
    """The native readout's head that the cell fitted here (read from its cache entry)."""
    import json

    for manifest in cache.glob("head/*/MANIFEST.json"):
        if json.loads(manifest.read_text())["spec"]["readout"] == "native":
            return LinearHead.from_state_dict(load_file(manifest.parent / "head.safetensors"))
    return None


def independent_predictions(fixture: str, root: Path, head: LinearHead | None) -> list[tuple[int, int, int]]:
    """HF's image processor and HF's own forward on every validation file, no sweep code
    between the files and the logits (only a head fitted here, where the model has none)."""
    from hf_processors import hf_processor, model_preprocess
    from PIL import Image

    from sweep.data import imagenet_wnids

    processor = hf_processor(fixture, model_preprocess(fixture))
    hf_class = getattr(transformers, model_cfg(fixture)["hf_class"])
    model = hf_class.from_pretrained(FIXTURES / fixture, attn_implementation="eager").eval()
    if head is not None:
        model.classifier = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0])
        with torch.no_grad():
            model.classifier.weight.copy_(head.weight)
            model.classifier.bias.copy_(head.bias)
    pairs = []
    for path in sorted((root / "val").glob("*/*.JPEG")):
        with Image.open(path) as image:
            pixels = processor(image, return_tensors="pt")["pixel_values"]
        label = imagenet_wnids().index(path.parent.name)
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits[0]
        rank = int((logits > logits[label]).sum() + ((logits == logits[label])[:label]).sum())
        pairs.append((label, int(logits.argmax()), rank))
    return sorted(pairs)


@pytest.mark.parametrize("fixture", E2E)
def test_a_cell_on_an_imagenet_folder_scores_what_hf_scores_on_the_same_files(fixture, imagenet_folder, tmp_path):
    import json
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {**os.environ, "SWEEP_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "SWEEP_PROGRESS": "0"}
    args = [
        f"model={CONF[fixture]}",
        f"model.source={FIXTURES / fixture}",
        f"model.n_layers={N_LAYERS}",
        "data=imagefolder",
        f"data.root={imagenet_folder}",
        f"data.n_classes={E2E_CLASSES}",
        f"data.train_per_class={E2E_PER_CLASS}",
        f"data.val_per_class={E2E_PER_CLASS}",
        "intervention=none",
        "layer=-1",
        "logger=none",
        "compute.attn_implementation=eager",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "sweep.run", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob(f"runs/{CONF[fixture]}/*/result.json")
    record = json.loads(path.read_text())
    assert record["status"] == "complete"
    assert record["counts"]["n_val"] == E2E_CLASSES * E2E_PER_CLASS
    assert record["versions"]["model_revision"].startswith("sha256:")
    # every file once, so (label, prediction, rank of the label) compare as sets whatever the
    # subset's order; random weights predict much the same class everywhere, the ranks differ
    expected = independent_predictions(fixture, imagenet_folder, fitted_native_head(cache))
    rows = [line.split(",") for line in (path.parent / "outcomes.csv").read_text().splitlines()[1:]]
    assert sorted((int(r[1]), int(r[2]), int(r[3])) for r in rows) == expected
    assert len(set(expected)) > len(expected) // 3, "the comparison must not be vacuous"
    assert record["metrics"]["accuracy"] == sum(label == p for label, p, _ in expected) / len(expected)
