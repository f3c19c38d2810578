"""The reference check: a sweep on ImageNet-1k that scores far below what a hub model
should reach is flagged in one line (a wrong resize or a head that did not load)."""

from __future__ import annotations

from sweep.aggregate import _frame
from sweep.record import record_row
from sweep.reference import load_reference, reference_warnings


def plain_cell(model: str, readout: str, accuracy: float, *, data: str = "imagenet", n_classes: int = 1000,
               layer: int = 12) -> dict:
    return {"cell_id": f"{model}{readout}{data}{layer}", "name": f"{model}-L{layer}-none-{readout}-s0",
            "status": "complete", "model": model, "layer": layer, "intervention": "none", "readout": readout,
            "seed": 0, "config": {"data": {"name": data}}, "metrics": {"accuracy": accuracy},
            "counts": {"n_classes": n_classes}}


def table(*records):
    frame = _frame(record_row(r) for r in records)
    return frame[frame["status"] == "complete"]


def test_the_shipped_reference_names_the_studys_values():
    reference = load_reference()
    assert reference["models"]["deit"] == {"native": 0.834, "cls": 0.829}
    assert 0 < reference["tolerance"] < 0.1


def test_a_model_far_below_its_reference_on_imagenet_is_flagged_once_per_readout():
    cells = [plain_cell("vit", "native", 0.70, layer=layer) for layer in (3, 12)]
    (line,) = reference_warnings(table(*cells, plain_cell("deit", "native", 0.83)))
    assert line.startswith("warning: vit (readout=native) scores 0.700")
    assert "below its reference 0.803" in line and "2 cells" in line


def test_other_data_and_models_without_a_reference_are_not_compared():
    cells = [plain_cell("vit", "native", 0.1, data="digits", n_classes=10),
             plain_cell("vit", "native", 0.1, data="imagefolder", n_classes=100),
             plain_cell("clip", "native", 0.1), plain_cell("my_model", "native", 0.1)]
    assert reference_warnings(table(*cells)) == []
    assert len(reference_warnings(table(plain_cell("vit", "native", 0.1, data="imagefolder")))) == 1
