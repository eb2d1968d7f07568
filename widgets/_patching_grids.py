"""The grids the patching panel draws, and how they travel.

Two grids share one :class:`~widgets._patching_state.Layout`: ``"exact"`` (the sweep, or before
a sweep the cells clicked so far, NaN elsewhere) and ``"attribution"`` (the first-order estimate).
Each has a small JSON ``meta`` (labels, baselines, ``partial``, ...) with a ``version`` that grows
with every change; the front end fetches the values of that version as one float16 buffer
``[rows, cols]`` (``{"kind": "values", "which": ..., "version": ...}``).
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.attribution_patching import pearson
from workbench.cell_patch import CellPatch
from workbench.errors import InputError

from ._patching_state import Layout
from ._transport import to_bytes

WHICH = ("exact", "attribution")


def summary(result: Any) -> dict[str, Any]:
    """A sweep's (or an attribution estimate's) scalars for the front end."""
    return {"partial": result.partial, "n_done": result.n_done, "n_cells": result.values.numel(),
            "clean_value": result.clean_value, "corrupted_value": result.corrupted_value,
            "metric": result.metric, "direction": result.direction}


def correlation(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int] | None:
    """Pearson correlation over the cells finite in both grids, and their count (None with fewer
    than 2 cells, or a constant side)."""
    n = int((a.isfinite() & b.isfinite()).sum())
    r = pearson(a, b) if n >= 2 else float("nan")
    return (r, n) if r == r else None


class Grids:
    """The exact and attribution grids of one set of inputs (see the module docstring)."""

    def __init__(self) -> None:
        self.layout: Layout | None = None
        self.values: dict[str, torch.Tensor | None] = dict.fromkeys(WHICH)
        self.meta: dict[str, dict] = {w: {} for w in WHICH}
        self._version = 0

    def reset(self, layout: Layout | None) -> None:
        """New inputs: an empty exact grid (clicks fill it in) and no estimate."""
        self.layout, self.values, self.meta = layout, dict.fromkeys(WHICH), {w: {} for w in WHICH}
        if layout is not None:
            empty = torch.full((layout.rows, layout.cols), float("nan"))
            self._set("exact", empty, source="none", partial=False, n_done=0)

    def show(self, which: str, result: Any) -> None:
        """A sweep (``"exact"``) or an attribution estimate, folded into the grid."""
        source = "sweep" if which == "exact" else "attribution_sweep"
        self._set(which, self.layout.fold(result.values), source=source, **summary(result))

    def fill(self, cell: CellPatch) -> tuple[tuple[int, int] | None, bool]:
        """A clicked cell: its ``(row, col)`` (None when the grid has no such cell), and whether
        its value was written (only where the exact grid has none yet)."""
        rc = self.layout.locate(cell.layer, cell.position, cell.head)
        grid, meta = self.values["exact"], self.meta["exact"]
        if rc is None or grid is None or not bool(grid[rc].isnan()):
            return rc, False
        grid[rc] = cell.value
        keep = {k: meta[k] for k in ("partial", "n_cells", "metric", "direction") if k in meta}
        self._set("exact", grid, **keep, source="clicks" if meta.get("source") == "none" else meta["source"],
                  n_done=int(grid.isfinite().sum()), clean_value=cell.clean_value,
                  corrupted_value=cell.corrupted_value)
        return rc, True

    def _set(self, which: str, values: torch.Tensor, **extra: Any) -> None:
        self._version += 1
        self.values[which] = values
        self.meta[which] = {**self.layout.meta(), "version": self._version, "dtype": "float16", **extra}

    def compare(self) -> str:
        """The correlation of the estimate with the exact values, in words ('' without both)."""
        a, b = self.values["exact"], self.values["attribution"]
        r = None if a is None or b is None else correlation(a, b)
        if r is None:
            return ""
        return f"correlation of attribution with exact patching: {r[0]:.3f} ({r[1]} cells)"

    def fetch(self, which: str) -> tuple[dict, list[bytes]]:
        """The current ``which`` grid as one float16 buffer ``[rows, cols]``."""
        if which not in WHICH:
            raise InputError(f"which must be 'exact' or 'attribution'; got {which!r}.")
        grid, meta = self.values[which], self.meta[which]
        if grid is None:
            raise InputError(f"No {which} values yet: run the sweep"
                             + (" with attribution on." if which == "attribution" else "."))
        return ({"which": which, "version": meta["version"], "rows": grid.shape[0], "cols": grid.shape[1],
                 "dtype": "float16"}, [to_bytes(grid, "float16")])

    def requests(self) -> list[dict]:
        """The fetches that draw the current grids (for a standalone HTML export)."""
        return [{"kind": "values", "which": w, "version": self.meta[w]["version"]}
                for w in WHICH if self.meta[w]]
