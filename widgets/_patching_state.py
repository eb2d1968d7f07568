"""What the patching panel derives from its inputs, without widgets: the metric, the token
alignment, the grid a sweep is drawn on, and the Python call that reproduces the view.

A sweep's ``values`` come in TransformerLens's layouts (``[n_layers, n_pos]``, ``[n_layers,
n_heads]``, ``[n_layers, n_pos, n_heads]`` or, for patterns by position, ``[n_layers, n_heads,
n_pos]``; see :mod:`workbench.patch_sites`). The panel draws every one of them as one 2-D grid:
rows are layers (or layer-head pairs, ``"L2H3"``), columns are positions (or heads). A
:class:`Layout` folds ``values`` into that grid and maps a grid cell back to the patch it stands
for (layer, clean position or None, head or None), which is what a click patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workbench.cell_patch import CellPatch
from workbench.errors import InputError, TokenizerError
from workbench.metrics import Metric, logit_diff, logprob, normalized, prob
from workbench.patch_result import position_labels
from workbench.patch_sites import INDEXES, SITES, Site, resolve_site

METRICS = {"logit_diff": "logit difference (answer - wrong)",
           "normalized": "normalized logit difference (0 corrupted, 1 clean)",
           "logprob": "log-probability of the answer", "prob": "probability of the answer"}

ASK = ("Pick the answer token (what the clean prompt should predict, e.g. ' Mary') and the wrong "
       "token (e.g. ' John'): the metric is their logit difference. Mind the leading space.")


def site_options(bridge: Any) -> dict[str, list[str]]:
    """``{site: [index kinds]}`` for the sites this model can patch (first index: the default)."""
    out = {}
    for name, (_, kind) in SITES.items():
        try:
            resolve_site(bridge, name, None)
        except InputError:
            continue  # e.g. resid_mid on a model running attention and MLP in parallel
        out[name] = list(INDEXES[kind])
    return out


def check_token(bridge: Any, text: str, what: str) -> int:
    """The id of ``text`` if it is exactly one token, else a TokenizerError saying what it is."""
    try:
        return bridge.to_single_token(text)
    except (TokenizerError, InputError) as exc:
        raise TokenizerError(f"The {what} token must be a single token; {exc}") from None


def build_metric(bridge: Any, kind: str, answer: str, wrong: str) -> Metric | None:
    """The panel's metric, or None while the tokens it needs are still empty (then the panel
    asks for them: :data:`ASK`). Raises a clear error for a token that is not one token."""
    if kind not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}; got {kind!r}.")
    needs_wrong = kind in ("logit_diff", "normalized")
    if answer == "" or (needs_wrong and wrong == ""):
        return None
    a = check_token(bridge, answer, "answer")
    if not needs_wrong:
        return (logprob if kind == "logprob" else prob)(bridge, a)
    w = check_token(bridge, wrong, "wrong")
    if a == w:
        raise InputError(f"The answer and wrong tokens are the same ({answer!r}), so their logit "
                         "difference is always 0. Pick two different tokens.")
    metric = logit_diff(bridge, a, w)
    return normalized(metric) if kind == "normalized" else metric


def metric_code(kind: str, answer: str, wrong: str) -> str:
    if kind in ("logprob", "prob"):
        return f"{kind}(bridge, {answer!r})"
    inner = f"logit_diff(bridge, {answer!r}, {wrong!r})"
    return f"normalized({inner})" if kind == "normalized" else inner


def differing(clean: Sequence[str], corrupted: Sequence[str],
              positions: Sequence | None = None) -> tuple[list[int], list[int]]:
    """Positions to highlight in the clean and in the corrupted tokenization: tokens that differ
    from the token they are aligned with, or that nothing is aligned with. The alignment is
    ``positions`` (``[[clean_pos, corrupted_pos], ...]``) when given, position by position for
    prompts of one length, else the common start and end (:func:`matching_alignment`)."""
    if positions:
        pairs = [(c, d) for c, d in positions]
    elif len(clean) == len(corrupted):
        pairs = [(i, i) for i in range(len(clean))]
    else:
        pairs = [(c, d) for c, d in matching_alignment(clean, corrupted)]
    same = [(c, d) for c, d in pairs
            if 0 <= c < len(clean) and 0 <= d < len(corrupted) and clean[c] == corrupted[d]]
    keep_c, keep_d = {c for c, _ in same}, {d for _, d in same}
    return ([i for i in range(len(clean)) if i not in keep_c],
            [j for j in range(len(corrupted)) if j not in keep_d])


def positions_arg(positions: Sequence) -> dict[int, int] | None:
    """The ``positions`` trait (``[[clean_pos, corrupted_pos], ...]``) as ``patch_sweep``'s
    ``positions`` argument (None when empty: position by position)."""
    bad = [p for p in positions if len(p) != 2]
    if bad:
        raise InputError(f"positions holds [clean_pos, corrupted_pos] pairs; got {bad[:3]}. Clear the "
                         "alignment, or align the matching tokens again.")
    return {int(c): int(d) for c, d in positions} or None


def ask(kind: str) -> str:
    """What the panel asks for while the metric's tokens are empty."""
    if kind in ("logprob", "prob"):
        return "Pick the answer token whose probability to measure (e.g. ' Mary'; mind the leading space)."
    return ASK


def matching_alignment(clean: Sequence[str], corrupted: Sequence[str]) -> list[list[int]]:
    """``[[clean_pos, corrupted_pos], ...]`` pairing the common prefix and the common suffix of
    two tokenizations (the differing middle is left out): an alignment for prompts of different
    lengths, e.g. a name of two tokens in one and one token in the other."""
    n = min(len(clean), len(corrupted))
    pre = next((i for i in range(n) if clean[i] != corrupted[i]), n)
    suf = next((j for j in range(n - pre) if clean[-1 - j] != corrupted[-1 - j]), n - pre)
    tail = [[len(clean) - suf + j, len(corrupted) - suf + j] for j in range(suf)]
    return [[i, i] for i in range(pre)] + tail


def alignment_message(clean: Sequence[str], corrupted: Sequence[str], positions: Sequence) -> str:
    """'' when the prompts can be patched position by position; else what is wrong and the fix."""
    if len(clean) == len(corrupted) or positions:
        return ""
    pairs = matching_alignment(clean, corrupted)
    return (f"Clean and corrupted tokenize to different lengths ({len(clean)} vs {len(corrupted)} "
            "tokens; differing positions are highlighted), so positions cannot be patched one to "
            "one. Fix: make them the same length (e.g. names that are one token each), or align "
            f"the {len(pairs)} matching tokens (common start and end; "
            "positions={clean_pos: corrupted_pos}) and patch only those.")


@dataclass(frozen=True)
class Layout:
    """A sweep's grid: ``rows`` x ``cols`` with text labels. ``kind``: "layer_pos" (resid-like
    sites), "layer_head" (heads over all positions) or "layerhead_pos" (rows ``L*n_heads + h``,
    columns positions). ``pairs``: the aligned (clean pos, corrupted pos) per position column."""

    site: Site
    kind: str
    n_layers: int
    pairs: tuple[tuple[int, int], ...]
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.row_labels)

    @property
    def cols(self) -> int:
        return len(self.col_labels)

    def fold(self, values: torch.Tensor) -> torch.Tensor:
        """A sweep's ``values`` (its TransformerLens layout) as the grid ``[rows, cols]``."""
        if self.site.axes == ("layer", "pos", "head"):
            values = values.permute(0, 2, 1)
        return values.reshape(self.rows, self.cols).float().cpu().clone()

    def cell(self, row: Any, col: Any) -> dict[str, int | None]:
        """The patch a grid cell stands for: ``{"layer", "position" (clean) or None, "head" or
        None}``; an InputError for a cell outside the grid."""
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (row, col))
        if not ok or not (0 <= row < self.rows and 0 <= col < self.cols):
            raise InputError(f"Cell ({row!r}, {col!r}) is outside the {self.rows} x {self.cols} grid "
                             f"(rows 0..{self.rows - 1}, columns 0..{self.cols - 1}).")
        if self.kind == "layer_pos":
            return {"layer": row, "position": self.pairs[col][0], "head": None}
        if self.kind == "layer_head":
            return {"layer": row, "position": None, "head": col}
        h = self.site.n_heads
        return {"layer": row // h, "position": self.pairs[col][0], "head": row % h}

    def locate(self, layer: int, position: int | None, head: int | None) -> tuple[int, int] | None:
        """The grid cell of a patch, or None when this grid has no such cell."""
        cols = [c for c, _ in self.pairs]
        col = cols.index(position) if position in cols else None
        if self.kind == "layer_head":
            row, col = layer, head
        elif self.kind == "layer_pos":
            row = layer
        else:
            row = None if head is None else layer * self.site.n_heads + head
        if row is None or col is None or not (0 <= row < self.rows and 0 <= col < self.cols):
            return None
        return row, col

    def meta(self) -> dict[str, Any]:
        """What the front end needs to draw and label the grid (small JSON)."""
        axes = {"layer_pos": ("layer", "position"), "layer_head": ("layer", "head"),
                "layerhead_pos": ("layer, head", "position")}[self.kind]
        return {"rows": self.rows, "cols": self.cols, "kind": self.kind, "site": self.site.name,
                "index": self.site.index, "n_heads": self.site.n_heads, "row_axis": axes[0],
                "col_axis": axes[1], "row_labels": list(self.row_labels),
                "col_labels": list(self.col_labels), "clean_positions": [c for c, _ in self.pairs]}


def make_layout(bridge: Any, spec: Site, clean: list[str], corrupted: list[str],
                pairs: Sequence[tuple[int, int]]) -> Layout:
    """The grid of a sweep of ``spec`` (a resolved site and index) over the aligned ``pairs``."""
    n_layers, pairs = bridge.cfg.n_layers, tuple((int(c), int(d)) for c, d in pairs)
    pos_labels = tuple(position_labels(clean, corrupted, list(pairs)))
    layers = tuple(f"L{L}" for L in range(n_layers))
    if spec.kind == "resid":
        return Layout(spec, "layer_pos", n_layers, pairs, layers, pos_labels)
    if spec.index == "head":
        return Layout(spec, "layer_head", n_layers, pairs, layers,
                      tuple(f"H{h}" for h in range(spec.n_heads)))
    rows = tuple(f"L{L}H{h}" for L in range(n_layers) for h in range(spec.n_heads))
    return Layout(spec, "layerhead_pos", n_layers, pairs, rows, pos_labels)


def cell_summary(cell: CellPatch, where: tuple[int, int] | None) -> dict[str, Any]:
    """A clicked cell for the front end: its label, metric, the change from the unpatched run,
    and the tokens that rose and fell most (as text with their change)."""
    base = cell.corrupted_value if cell.direction == "denoise" else cell.clean_value
    gap = cell.clean_value - cell.corrupted_value
    return {"label": cell.label, "metric": cell.metric, "direction": cell.direction, "by": cell.by,
            "value": cell.value, "base_value": base, "change": cell.value - base,
            "clean_value": cell.clean_value, "corrupted_value": cell.corrupted_value,
            "normalized": (cell.value - cell.corrupted_value) / gap if gap else None,
            "layer": cell.layer, "position": cell.position, "head": cell.head,
            "row": None if where is None else where[0], "col": None if where is None else where[1],
            "rose": _moved(cell.rose), "fell": _moved(cell.fell)}


MOVED = 1e-4  # a token whose log-prob / logit moved less than this did not move (float noise)


def _moved(shift: Any) -> list[dict[str, Any]]:
    """The tokens of a rose/fell list that really moved, as ``[{"token", "delta"}]``."""
    return [{"token": t, "delta": float(d)} for t, d in zip(shift.tokens, shift.delta, strict=True)
            if abs(float(d)) >= MOVED]


def call_code(fn: str, *, site: str, metric: str, index: str = "",
              direction: str = "denoise", positions: Sequence = (), cell: dict | None = None,
              batch_size: int = 0) -> str:
    """``fn(bridge, clean, corrupted, site=..., ...)`` as the panel calls it, the prompts in
    variables ``clean`` and ``corrupted``; ``cell``: the ``layer`` / ``position`` / ``head`` of a
    single-cell patch (None entries left out)."""
    args = [f"site={site!r}"]
    args += [f"{k}={v!r}" for k, v in (cell or {}).items() if v is not None]
    if index:
        args.append(f"index={index!r}")
    if direction != "denoise":
        args.append(f"direction={direction!r}")
    if positions:
        args.append("positions={" + ", ".join(f"{c}: {d}" for c, d in positions) + "}")
    args.append(f"metric={metric}")
    if batch_size:
        args.append(f"batch_size={batch_size}")
    return f"{fn}(bridge, clean, corrupted, {', '.join(args)})"


def panel_code(*, clean: str, corrupted: str, metric: str, answer: str, wrong: str, site: str, index: str,
               direction: str, positions: Sequence, batch_size: int, attribution: bool,
               cell: CellPatch | None) -> str:
    """The Python that reproduces the panel's view: the sweep, the attribution estimate (when
    shown) and the last clicked cell. ``index``: "" for the site's default."""
    names = {"logit_diff": "logit_diff", "normalized": "logit_diff, normalized"}.get(metric, metric)
    common = dict(site=site, direction=direction, positions=positions,
                  metric=metric_code(metric, answer or "<answer>", wrong or "<wrong>"))
    fns = ["patch_sweep"] + ["attribution_sweep"] * attribution + ["patch_cell"] * (cell is not None)
    lines = [f"from workbench import {', '.join(fns)}", f"from workbench.metrics import {names}", "",
             f"clean = {clean!r}", f"corrupted = {corrupted!r}",
             "result = " + call_code("patch_sweep", index=index, batch_size=batch_size, **common)]
    if attribution:
        lines.append("estimate = " + call_code("attribution_sweep", index=index, **common))
    if cell is not None:
        where = {"layer": cell.layer, "position": cell.position, "head": cell.head}
        lines.append("cell = " + call_code("patch_cell", cell=where, **common))
    return "\n".join(lines)
