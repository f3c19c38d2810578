"""The reference check: a sweep on ImageNet-1k that scores far below what a hub model
should reach is flagged in one line (a wrong resize or a head that did not load); only
cells at the settings the reference was measured with are compared, and a (model,
readout) without a reference is named rather than passed over."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from sweep.aggregate import _frame
from sweep.conf_path import CONF_DIR
from sweep.record import record_row
from sweep.reference import load_reference, reference_warnings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
DEFAULT_PROBE = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "probe" / "ridge.yaml"))
DEFAULT_TRAIN_PER_CLASS = OmegaConf.load(CONF_DIR / "data" / "imagenet.yaml")["train_per_class"]


def plain_cell(
    model: str,
    readout: str,
    accuracy: float,
    *,
    data: str = "imagenet",
    n_classes: int = 1000,
    layer: int = 12,
    train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
    probe: dict | None = None,
) -> dict:
    probe = DEFAULT_PROBE if probe is None else probe
    return {
        "cell_id": f"{model}{readout}{data}{layer}{train_per_class}{probe}",
        "name": f"{model}-L{layer}-none-{readout}-s0",
        "status": "complete",
        "model": model,
        "layer": layer,
        "intervention": "none",
        "readout": readout,
        "seed": 0,
        "config": {"data": {"name": data, "train_per_class": train_per_class}, "probe": probe},
        "metrics": {"accuracy": accuracy},
        "counts": {"n_classes": n_classes},
    }


def table(*records):
    frame = _frame(record_row(r) for r in records)
    return frame[frame["status"] == "complete"]


def hub_readouts() -> dict[tuple[str, str], str]:
    """(model, readout) -> head (native | fitted) of every hub model the project ships."""
    pairs = {}
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        model = OmegaConf.load(path)
        if not path.stem.startswith("toy_"):
            pairs.update({(path.stem, readout): str(settings["head"]) for readout, settings in model.readouts.items()})
    return pairs


def test_the_shipped_reference_names_the_studys_values():
    reference = load_reference()
    assert reference["models"]["deit"] == {"native": {"accuracy": 0.834}, "cls": {"accuracy": 0.829}}
    assert 0 < reference["tolerance"] < 0.1


def test_each_reference_states_the_settings_its_head_depends_on():
    # a fitted head moves with the training images and the probe: its reference names the
    # defaults it was measured at; a native head's depends on neither and names none
    heads = hub_readouts()
    for model, readouts in load_reference()["models"].items():
        for readout, entry in readouts.items():
            if heads[model, readout] == "fitted":
                assert entry["train_per_class"] == DEFAULT_TRAIN_PER_CLASS, (model, readout)
                assert entry["probe"] == DEFAULT_PROBE, (model, readout)
            else:
                assert set(entry) == {"accuracy"}, (model, readout)


def test_the_docs_list_every_pair_without_a_reference():
    reference = load_reference()["models"]
    missing = sorted(pair for pair in hub_readouts() if pair[1] not in (reference.get(pair[0]) or {}))
    assert ("clip", "native") in missing and ("deit", "distillation") in missing
    docs = DOCS.read_text()
    for model, readout in missing:
        assert f"| {model} | {readout} | none |" in docs, (model, readout)


def test_a_model_far_below_its_reference_on_imagenet_is_flagged_once_per_readout():
    cells = [plain_cell("vit", "native", 0.70, layer=layer) for layer in (3, 12)]
    (line,) = reference_warnings(table(*cells, plain_cell("deit", "native", 0.83)))
    assert line.startswith("warning: vit (readout=native) scores 0.700")
    assert "below its reference 0.803" in line and "2 cells" in line


def test_a_fitted_head_is_compared_only_at_the_settings_of_its_reference():
    # 0.70 at the reference's settings is far below 0.763; a head fitted on 100 images per
    # class at 0.85 must not average it up to 0.775, nor 2 per class at 0.40 pull a good
    # head down into a warning
    far_below = plain_cell("dinov2", "native", 0.70)
    more_images = plain_cell("dinov2", "native", 0.85, train_per_class=100)
    note, warning = reference_warnings(table(far_below, more_images))
    assert note.startswith("note: 1 plain cells of dinov2 (readout=native)") and "train_per_class=100" in note
    assert warning.startswith("warning: dinov2 (readout=native) scores 0.700") and "1 cells" in warning

    good = plain_cell("beit", "native", 0.70)
    few_images = plain_cell("beit", "native", 0.40, train_per_class=2)
    other_probe = plain_cell("beit", "native", 0.40, probe={**DEFAULT_PROBE, "settings": {"alpha": 100.0}})
    (note,) = reference_warnings(table(good, few_images, other_probe))
    assert note.startswith("note: 2 plain cells of beit (readout=native)")
    assert "train_per_class=2" in note and '"alpha":100.0' in note


def test_a_native_head_is_compared_whatever_the_training_images_and_probe():
    logistic = {"method": "logistic", "settings": {"C": 1.0}}
    cells = [plain_cell("vit", "native", 0.70, train_per_class=2), plain_cell("vit", "native", 0.70, probe=logistic)]
    (line,) = reference_warnings(table(*cells))
    assert line.startswith("warning: vit (readout=native) scores 0.700") and "2 cells" in line


def test_pairs_without_a_reference_are_named_not_checked():
    pairs = [
        ("clip", "native"),
        ("dinov2_reg", "native"),
        ("dinov2", "cls"),
        ("dinov2", "patch_mean"),
        ("deit", "distillation"),
        ("beit", "cls"),
    ]
    lines = reference_warnings(table(*[plain_cell(model, readout, 0.1) for model, readout in pairs]))
    assert sorted(lines) == sorted(
        f"note: {model} (readout={readout}) has no reference accuracy on ImageNet-1k "
        f"(docs/reference.md): its 1 plain cells are not checked"
        for model, readout in pairs
    )


def test_other_data_are_not_compared():
    cells = [
        plain_cell("vit", "native", 0.1, data="digits", n_classes=10),
        plain_cell("vit", "native", 0.1, data="imagefolder", n_classes=100),
    ]
    assert reference_warnings(table(*cells)) == []
    assert len(reference_warnings(table(plain_cell("vit", "native", 0.1, data="imagefolder")))) == 1
