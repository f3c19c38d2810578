"""One cell on its own: a work unit of one (sweep.engine), for callers that measure a
single cell in this process (tests, notebooks). `sweep-run` goes through the same engine."""

from __future__ import annotations

from typing import Any

from sweep.artifacts import pick_device
from sweep.cache import ArtifactCache
from sweep.cellspec import CellSpec
from sweep.engine import CellResult, measure_unit

__all__ = ["CellResult", "measure", "pick_device"]


def measure(spec: CellSpec, cache: ArtifactCache) -> CellResult:
    """Measure one cell (`cell_spec(cfg)`); raises what its measurement raised."""
    outcome: dict[str, Any] = {}

    def emit(_spec: CellSpec, result: CellResult | None, error: BaseException | None) -> None:
        outcome.update(result=result, error=error)

    summary = measure_unit([spec], cache, emit)
    if outcome["error"] is not None:
        raise outcome["error"]
    result: CellResult = outcome["result"]
    result.compute["unit"] = summary
    return result
