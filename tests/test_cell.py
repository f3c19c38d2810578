"""One cell on trained toy models: the controls that make the numbers trustworthy."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import compose_cell

from sweep.cache import ArtifactCache
from sweep.cell import measure
from sweep.cellspec import cell_spec
from sweep.errors import ConfigError

pytestmark = pytest.mark.slow  # trains the toys and measures cells


def run(cache, *overrides):
    """Measure the cell the overrides name, with `cache` (an ArtifactCache or its folder)."""
    cfg = compose_cell(*overrides)
    return measure(cell_spec(cfg), cache if isinstance(cache, ArtifactCache) else ArtifactCache(cache))


@pytest.fixture(scope="module")
def plain_vit(cache_dir):
    return run(cache_dir, "model=toy_vit", "intervention=none", "layer=-1")


def test_no_intervention_reproduces_the_plain_models_accuracy(cache_dir, plain_vit):
    """The cached-features path gives the accuracy of a bare HF forward on the same images."""
    from sweep.artifacts import Artifacts, ComputeLedger, Runtime

    spec = cell_spec(compose_cell("model=toy_vit", "compute.device=cpu"))
    artifacts = Artifacts(spec, ArtifactCache(cache_dir), Runtime.of(spec.settings.compute), ComputeLedger())
    _, splits = artifacts.images()
    _, loaded = artifacts.model()
    with torch.no_grad():
        logits = loaded.adapter.model(pixel_values=artifacts.pixels(splits["val"].images)).logits
    bare = float((logits.argmax(1) == splits["val"].labels).double().mean())
    assert plain_vit.metrics["accuracy"] == pytest.approx(bare, abs=1e-9)
    assert plain_vit.metrics["accuracy"] > 0.8, "the toy must be trained for the controls to mean anything"


def test_shuffling_at_the_last_layer_with_the_cls_readout_gives_chance(cache_dir, plain_vit):
    result = run(cache_dir, "model=toy_vit", "intervention=shuffle", "readout=cls", "layer=-1")
    n = result.counts["n_val"]
    sampling_error = 3 * (0.1 * 0.9 / n) ** 0.5
    assert result.metrics["chance"] == 0.1
    assert abs(result.metrics["accuracy"] - 0.1) < sampling_error


def test_an_identity_permutation_changes_nothing_bit_for_bit(cache_dir, plain_vit):
    for layer in (0, 2, -1):  # the branch replaces the CLS by itself, then runs blocks L+1..N
        result = run(
            cache_dir, "model=toy_vit", "intervention=shuffle", "intervention.permutation=identity", f"layer={layer}"
        )
        for key in ("predicted", "rank"):
            assert torch.equal(result.outcomes[key], plain_vit.outcomes[key])
        assert result.metrics["accuracy"] == plain_vit.metrics["accuracy"]


def test_beit_mean_readout_ignores_a_last_layer_cls_shuffle(cache_dir):
    plain = run(cache_dir, "model=toy_beit", "intervention=none", "layer=-1")
    shuffled = run(cache_dir, "model=toy_beit", "intervention=shuffle", "readout=native", "layer=-1")
    assert torch.equal(plain.outcomes["predicted"], shuffled.outcomes["predicted"])
    cls_only = run(cache_dir, "model=toy_beit", "intervention=shuffle", "readout=cls", "layer=-1")
    assert cls_only.metrics["accuracy"] < plain.metrics["accuracy"] - 0.3


@pytest.mark.parametrize("model", ["toy_deit", "toy_dinov2", "toy_clip"])
def test_every_architecture_runs_every_intervention(cache_dir, model):
    for intervention in ("zero", "mean", "noise", "reset"):
        result = run(cache_dir, f"model={model}", f"intervention={intervention}", "layer=1")
        assert 0.0 <= result.metrics["accuracy"] <= 1.0
        assert result.counts["n_val"] == 400


def test_none_cells_score_the_probe_and_the_class_embedding_projection(cache_dir, plain_vit):
    first = run(cache_dir, "model=toy_vit", "intervention=none", "layer=0")
    # Layer 0's CLS is the same for every image: nothing can be decoded from it.
    assert first.metrics["probe_accuracy"] == pytest.approx(0.1)
    assert first.metrics["projection_accuracy"] == pytest.approx(0.1)
    last = plain_vit.metrics
    # At the last layer, the projection *is* the model's own head on its own CLS.
    assert last["projection_accuracy"] == last["accuracy"]
    assert last["last_probe_accuracy"] == last["probe_accuracy"]
    assert 0.9 < last["identifiability"] <= 1.0 and last["identifiability_exact"] <= last["identifiability"]


def test_a_second_cell_does_not_rerun_the_unmodified_pass(cache_dir, plain_vit):
    again = run(cache_dir, "model=toy_vit", "intervention=none", "layer=4")
    assert again.compute["block_calls"] == 0
    assert again.artifacts["features"] == plain_vit.artifacts["features"]


def test_cached_artifacts_give_bit_identical_metrics_to_recomputation(cache_dir, tmp_path, plain_vit):
    """With the cache off, everything (toy training included) is recomputed in a temporary
    folder; the measurement must not change by a single bit."""
    cfg = compose_cell("model=toy_vit", "intervention=none", "layer=-1", "cache.enabled=false")
    recomputed = measure(cell_spec(cfg), ArtifactCache(tmp_path, enabled=False))
    assert recomputed.metrics == plain_vit.metrics
    for key, values in plain_vit.outcomes.items():
        assert torch.equal(recomputed.outcomes[key], values), key


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last value; the size is unchanged
    path.write_bytes(data)


def test_a_corrupt_features_file_is_recomputed_not_used(cache_dir, tmp_path):
    """A bad file in the features entry costs a recomputation of the unmodified pass and
    gives the same measurement as an intact cache."""
    intact = run(cache_dir, "model=toy_vit", "intervention=shuffle", "layer=3")
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    _flip_last_byte(copy / "features" / intact.artifacts["features"] / "val.safetensors")

    cache = ArtifactCache(copy)
    again = run(cache, "model=toy_vit", "intervention=shuffle", "layer=3")

    assert cache.stats.corrupt == 1
    assert again.compute["unit"]["block_calls_by_purpose"]["features"] > 0  # the unmodified pass ran again
    assert again.metrics == intact.metrics
    assert torch.equal(again.outcomes["rank"], intact.outcomes["rank"])


def test_cells_read_pixels_only_when_they_need_them(cache_dir, tmp_path):
    """A `none` cell reads cached features and never opens the validation images; an
    intervention runs blocks on them, and so finds (and recomputes) a corrupt image file."""
    intact = run(cache_dir, "model=toy_vit", "intervention=shuffle", "layer=3")
    plain = run(cache_dir, "model=toy_vit", "intervention=none", "layer=3")
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    _flip_last_byte(copy / "images" / intact.artifacts["images"] / "val.safetensors")

    none_cache = ArtifactCache(copy)
    assert run(none_cache, "model=toy_vit", "intervention=none", "layer=3").metrics == plain.metrics
    assert none_cache.stats.corrupt == 0

    shuffle_cache = ArtifactCache(copy)
    assert run(shuffle_cache, "model=toy_vit", "intervention=shuffle", "layer=3").metrics == intact.metrics
    assert shuffle_cache.stats.corrupt == 1


def test_a_cell_whose_logits_are_not_finite_fails_naming_the_layer_and_the_rows(cli_env, tmp_path):
    """NaN logits must not score: the cell writes a failed record that says where and how many."""
    import json
    import subprocess
    import sys

    import transformers
    from helpers import FAST

    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=10,
    )
    model = transformers.ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight[3, 0] = float("nan")  # every example's class-3 logit is NaN
    model.save_pretrained(tmp_path / "broken")
    args = [
        *FAST,
        "model=vit",
        f"model.source={tmp_path / 'broken'}",
        "model.revision=null",
        "model.n_layers=2",
        "model.preprocess.resize=16",
        "model.preprocess.crop=16",
        "layer=1",
        "intervention=zero",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "sweep.run", *args],
        env=cli_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    (path,) = tmp_path.glob("runs/vit/*/result.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "metrics" not in record
    assert "NonFiniteLogits" in record["error"] and "at layer 1" in record["error"]
    assert "400 of 400 rows of logits are not finite" in record["error"]


def test_flushing_denormals_is_part_of_the_features_identity(cache_dir, plain_vit):
    """It changes the numbers (subnormal activations become zero), so features computed
    either way must not be shared."""
    flushed = run(cache_dir, "model=toy_vit", "intervention=none", "layer=-1")
    kept = run(cache_dir, "model=toy_vit", "intervention=none", "layer=-1", "compute.flush_denormal=false")
    assert flushed.artifacts["features"] == plain_vit.artifacts["features"] != kept.artifacts["features"]


def test_a_class_transformers_does_not_have_is_refused_before_any_data_is_read(tmp_path):
    """`model.toy.config_class` and `model.hf_class` name classes of transformers, which the
    planner does not import; the cell resolves them first, before it decodes images or
    trains the toy."""
    for override, key in (
        ("model.toy.config_class=ViTConfg", "model.toy.config_class=ViTConfg"),
        ("model.hf_class=ViTForImageClassificashun", "model.hf_class=ViTForImageClassificashun"),
    ):
        with pytest.raises(ConfigError, match=rf"{key} is invalid: transformers \S+ has no class of that name"):
            run(tmp_path / "cache", "model=toy_vit", "layer=3", override)
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]  # nothing decoded or trained
