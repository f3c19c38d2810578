"""Packing a sweep's cells into work units, and a unit's cells back into configs."""

from __future__ import annotations

import json

from helpers import compose_cell
from omegaconf import OmegaConf
from test_plan import compose, dims

from sweep.cellspec import cell_spec
from sweep.plan import GroupComposer, make_plan
from sweep.settings import UnitSize
from sweep.units import cell_config, cost_per_image, make_units, preparation_units, read_unit, write_unit

UNLIMITED = UnitSize(max_cells=None, max_cost=None, checkpoint_s=300)


def plan_of(tmp_path, **axes):
    return make_plan([dims(**axes)], GroupComposer(compose), "s", tmp_path, [])


def test_by_default_one_unit_per_model(tmp_path):
    plan = plan_of(tmp_path, model=["a", "b"], layer=[0, 1, 2], intervention=["none", "shuffle"], seed=[0, 1])
    units = make_units(plan.pending, UNLIMITED)
    assert [u.model for u in units] == ["a", "b"]
    assert sum(u.size for u in units) == len(plan.pending)
    assert preparation_units(units) == []  # each model's unit computes its own artifacts


def test_the_cost_is_the_prefix_to_the_deepest_layer_and_each_branch_once(tmp_path):
    """Model b has 3 blocks. Shuffles at L = 0 and 2 with seeds 0 and 1: the prefix runs
    2 blocks, the branches (3 - 0) + (3 - 2) per seed; `none` cells run none."""
    plan = plan_of(tmp_path, model=["b"], layer=[0, 2], intervention=["none", "shuffle"], seed=[0, 1])
    (unit,) = make_units(plan.pending, UNLIMITED)
    assert unit.cost == 2 + 2 * (3 + 1)
    assert cost_per_image([c.spec for c in unit.cells if c.spec.intervention == "none"]) == 0


def test_limits_split_a_model_into_units_and_add_a_preparing_unit(tmp_path):
    plan = plan_of(tmp_path, model=["b"], layer=[0, 1, 2, 3], intervention=["shuffle"], seed=[0, 1])
    by_cells = make_units(plan.pending, UnitSize(max_cells=3, max_cost=None, checkpoint_s=0))
    assert [u.size for u in by_cells] == [3, 3, 2]
    by_cost = make_units(plan.pending, UnitSize(max_cells=None, max_cost=6, checkpoint_s=0))
    assert all(u.cost <= 6 for u in by_cost) and sum(u.size for u in by_cost) == 8
    (prepare,) = preparation_units(by_cells)
    assert prepare.prepare and prepare.size == 0 and prepare.unit_id.startswith("prepare-")


def test_cells_that_differ_outside_what_they_measure_never_share_a_unit(tmp_path):
    plan = plan_of(tmp_path, model=["a"], layer=[0], intervention=["shuffle"], **{"probe.settings.alpha": [1.0, 2.0]})
    assert len(make_units(plan.pending, UNLIMITED)) == 2


def test_a_unit_file_gives_back_every_cells_config(tmp_path):
    """The job composes its first cell's config; the unit file lays each other cell's
    measured nodes over it, and the cell recomputes the very identity the plan gave it."""
    grid = [dims(model=["a"], layer=[0, 1], intervention=["none", "shuffle"], seed=[3])]
    plan = make_plan(grid, GroupComposer(compose), "s", tmp_path, [])
    (unit,) = make_units(plan.pending, UNLIMITED)
    write_unit(tmp_path, unit)
    saved = read_unit(tmp_path, unit.unit_id)
    assert [c["name"] for c in saved["cells"]] == [c.spec.name for c in unit.cells]
    job_cfg = OmegaConf.create(unit.cells[0].config)
    for entry, planned in zip(saved["cells"], unit.cells):
        assert cell_spec(cell_config(job_cfg, entry)).cell_id == planned.spec.cell_id


def test_unit_ids_are_stable_and_name_their_cells(tmp_path):
    first = make_units(plan_of(tmp_path, model=["a"], layer=[0, 1], intervention=["shuffle"]).pending, UNLIMITED)
    again = make_units(plan_of(tmp_path, model=["a"], layer=[1, 0], intervention=["shuffle"]).pending, UNLIMITED)
    assert first[0].unit_id == again[0].unit_id
    assert first[0].overrides("s")[-2:] == ["sweep.id=s", f"sweep.unit.id={first[0].unit_id}"]


def test_secrets_typed_on_the_command_line_stay_out_of_the_unit_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SeCrEt0123456789")
    plan = plan_of(tmp_path, model=["a"], layer=[0], intervention=["none"], **{"+note": ["hf_SeCrEt0123456789"]})
    (unit,) = make_units(plan.pending, UNLIMITED)
    assert "hf_SeCrEt" not in write_unit(tmp_path, unit).read_text()


def test_the_shipped_config_declares_the_unit_settings():
    cfg = compose_cell()
    assert set(cfg.sweep.unit) == {"max_cells", "max_cost", "checkpoint_s", "id"}
    assert json.loads(json.dumps(OmegaConf.to_container(cfg.sweep.unit)))["id"] is None
