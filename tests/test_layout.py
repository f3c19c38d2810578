"""Every path of a sweep and of a cell comes from one place."""

from __future__ import annotations

from sweep.layout import CellPaths, SweepPaths, records_under


def test_a_sweep_folder_knows_its_cells_units_and_plan(tmp_path):
    sweep = SweepPaths(tmp_path / "toy")
    done, started = sweep.cell("toy_vit/toy_vit-L03-none-native-aaaa1111"), sweep.cell("toy_vit/b-bbbb2222")
    for cell in (done, started):
        cell.folder.mkdir(parents=True)
    done.record.write_text("{}")
    started.lease.write_text("{}")
    sweep.unit_file("cells-1234").parent.mkdir(parents=True)
    sweep.unit_file("cells-1234").write_text("{}")
    assert sweep.record_files() == [done.record]
    assert sweep.cell_folders() == sorted([done.folder, started.folder])
    assert sweep.unit_files() == [tmp_path / "toy" / "units" / "cells-1234" / "unit.json"]
    assert sweep.unit_summary("cells-1234").name == "summary.json"
    assert records_under(tmp_path) == [done.record]  # results_from may name a folder of sweeps
    assert CellPaths(done.folder).progress.name == "progress.safetensors"


def test_a_folder_that_is_not_a_sweep_says_which_folder_was_meant(tmp_path):
    sweep = SweepPaths(tmp_path / "multirun" / "toy")
    cell = sweep.cell("toy_vit/c-1")
    cell.folder.mkdir(parents=True)
    cell.record.write_text("{}")
    assert sweep.why_not_a_sweep() is None
    assert "is one cell's folder" in SweepPaths(cell.folder).why_not_a_sweep()
    assert "holds one model's cells" in SweepPaths(cell.folder.parent).why_not_a_sweep()
    assert f"holds several sweeps; give one of: {sweep.root}" in SweepPaths(tmp_path / "multirun").why_not_a_sweep()
    assert "sweeps live in multirun/<sweep id>" in SweepPaths(tmp_path / "elsewhere").why_not_a_sweep()
