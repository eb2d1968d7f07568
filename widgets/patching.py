"""Activation patching, point and click.

Two prompts that differ in one detail (*clean*: "... John gave a drink to" -> " Mary"; *corrupted*:
"... Mary gave a drink to" -> " John") and a metric (the logit difference of an answer and a
wrong token) ask which activations carry the behaviour: run the corrupted prompt with one
activation (a *cell*: a layer and position, or a layer and head) taken from the clean run and see
how much of the clean metric comes back (``direction="denoise"``; "noise" goes the other way).

The panel shows the two tokenizations side by side (differing positions marked; prompts of
different lengths get the problem and the fix), the cost of a full sweep before it runs
(:func:`~workbench.patch_cost.estimate_cost`), and a heatmap of the sweep
(:func:`~workbench.patching.patch_sweep`), which runs in a background thread with a progress bar
and a cancel button (a cancelled sweep shows its partial result). Clicking a cell patches that cell
alone (:class:`~workbench.cell_patch.CellPatcher`, prepared once, a few ms a click) and lists the
next tokens it pushed up and down; the click also moves the shared selection. Attribution patching
(:func:`~workbench.attribution_patching.attribution_sweep`, one backward pass) can be shown beside
the exact sweep, with their correlation.

Messages beyond the panel base's (:mod:`widgets._base`): actions ``run``, ``cancel``, ``align``
(pair the matching tokens of prompts of different lengths) and ``click`` with args ``{"row",
"col"}`` (a grid cell) or ``{"layer", "position", "head"}``: synchronous, the ``cell`` trait holds
its outcome when the message has been handled. Grids travel as float16 through the fetch ``{"kind":
"values", "which": "exact" | "attribution", "version": n}``.
"""

from __future__ import annotations

import threading
from typing import Any

from traitlets import Bool, Dict, Int, List, Unicode

from workbench.attribution_patching import AttributionResult, attribution_sweep
from workbench.cell_patch import CellPatch, CellPatcher
from workbench.errors import InputError, WorkbenchError
from workbench.patch_cost import estimate_cost
from workbench.patch_result import PatchResult
from workbench.patch_sites import resolve_site
from workbench.patching import align_positions, patch_sweep

from ._base import Panel, esm, guarded, model_lock
from ._patching_grids import Grids
from ._patching_job import BackgroundJob
from ._patching_state import (
    METRICS,
    Layout,
    alignment_message,
    ask,
    build_metric,
    cell_summary,
    differing,
    make_layout,
    matching_alignment,
    panel_code,
    positions_arg,
    site_options,
)
from ._selection import Selection

PROGRESS_HZ = 20  # at most this many progress updates a second reach the front end
TOP_K = 10  # tokens per rose / fell list of a clicked cell


class PatchingPanel(Panel):
    """Activation patching of ``prompt`` (clean) against ``corrupted`` (see the module doc).

    ``answer`` / ``wrong``: one-token strings of the logit difference (left empty, the panel asks
    for them); ``site``: any site of :func:`~workbench.patching.patch_sweep` (``index`` picks
    "pos", "head" or "head_pos" where the site has several). Python side: :meth:`run`,
    :meth:`cancel`, :meth:`wait`, :meth:`click`; ``result`` / ``attribution_result`` /
    ``last_cell`` hold the latest :class:`PatchResult`, attribution result and
    :class:`CellPatch`."""

    _esm = esm("patching.js")
    _title = "patching"
    _locks_model = False  # its BackgroundJob holds model_lock(bridge): sweeps, clicks, estimates
    _linked = ("prompt", "layer", "position", "head")
    _INPUTS = ("prompt", "corrupted", "answer", "wrong", "metric", "site", "index", "direction",
               "positions", "batch_size")

    prompt = Unicode("").tag(sync=True)
    corrupted = Unicode("").tag(sync=True)
    answer = Unicode("").tag(sync=True)
    wrong = Unicode("").tag(sync=True)
    metric = Unicode("logit_diff").tag(sync=True)
    site = Unicode("resid_pre").tag(sync=True)
    index = Unicode("").tag(sync=True)  # "": the site's default
    direction = Unicode("denoise").tag(sync=True)
    positions = List(List(Int())).tag(sync=True)  # [[clean_pos, corrupted_pos], ...]; []: one to one
    batch_size = Int(0).tag(sync=True)  # cells per forward pass; 0: automatic
    attribution = Bool(False).tag(sync=True)
    layer = Int(0).tag(sync=True)
    position = Int(-1).tag(sync=True)
    head = Int(0).tag(sync=True)
    # derived state, written by Python
    site_options = Dict().tag(sync=True)
    metric_options = Dict().tag(sync=True)
    clean_tokens = List(Unicode()).tag(sync=True)
    corrupted_tokens = List(Unicode()).tag(sync=True)
    clean_differs = List(Int()).tag(sync=True)  # positions to highlight in each tokenization
    corrupted_differs = List(Int()).tag(sync=True)
    alignment = Unicode("").tag(sync=True)
    metric_note = Unicode("").tag(sync=True)
    cost = Unicode("").tag(sync=True)
    running = Bool(False).tag(sync=True)
    progress = List(Int(), default_value=[0, 0]).tag(sync=True)
    exact_meta = Dict().tag(sync=True)
    attribution_meta = Dict().tag(sync=True)
    compare = Unicode("").tag(sync=True)
    cell = Dict().tag(sync=True)

    def __init__(self, bridge: Any, prompt: str = "", *, corrupted: str = "", answer: str | None = None,
                 wrong: str | None = None, site: str = "resid_pre", selection: Selection | None = None,
                 **kwargs: Any) -> None:
        self._job = BackgroundJob(on_progress=self._on_progress, on_error=self.report, on_done=self._on_done,
                                  lock=model_lock(bridge),
                                  hz=PROGRESS_HZ)
        self._view_lock = threading.RLock()  # results vs inputs changing under them
        self._generation = 0
        self._layout: Layout | None = None
        self._metric = self._patcher = None
        self._grids = Grids()
        self._cost_stale, self._field_error, self._problem = False, "", ""
        self.result: PatchResult | None = None
        self.attribution_result: AttributionResult | None = None
        self.last_cell: CellPatch | None = None
        super().__init__(bridge, selection=selection, corrupted=corrupted, site=site,
                         answer="" if answer is None else answer, wrong="" if wrong is None else wrong,
                         **kwargs)
        self.site_options, self.metric_options = site_options(bridge), dict(METRICS)
        if prompt:
            self.prompt = prompt  # after linking: the given prompt wins over the selection's
        self.observe(self._on_input, names=list(self._INPUTS))
        self.observe(self._on_attribution, names="attribution")
        self._refresh()

    # -- inputs -----------------------------------------------------------------------------------
    def _on_input(self, change: dict) -> None:
        name = change["name"]
        if name in ("prompt", "corrupted") and self.positions:
            self.positions = []  # an alignment belongs to the prompts it was made for
        elif name == "site" and self.index and self.index not in self.site_options.get(self.site, ()):
            self.index = ""
        else:  # the cell patcher holds the prompts and the metric; it serves every site
            self._refresh(drop_patcher=name not in ("site", "index", "batch_size"))

    @guarded("checking the inputs")
    def _refresh(self, drop_patcher: bool = True) -> None:
        """Inputs changed: drop results, re-tokenize and align, check the metric, lay out the grid,
        estimate the cost."""
        with self._view_lock:
            self._generation += 1
            if self._job.running:
                self._job.cancel()  # its result would belong to the old inputs
            self.result = self.attribution_result = self.last_cell = None
            self._layout = self._metric = None
            if drop_patcher:
                self._patcher = None
            self._grids.reset(None)
            self.cell = {}
            self._sync_grids()
        clean, corrupted = self._tokens(self.prompt), self._tokens(self.corrupted)
        self.clean_tokens, self.corrupted_tokens = clean, corrupted
        self.clean_differs, self.corrupted_differs = differing(clean, corrupted, self.positions)
        self.alignment = alignment_message(clean, corrupted, self.positions) if clean and corrupted else ""
        self._metric = self._check_metric()
        self._update_code()
        self.cost, self._problem = "", self.alignment or "Enter a clean and a corrupted prompt first."
        if not clean or not corrupted or self.alignment:
            return
        self._problem = "The site, direction or alignment is not valid: see the error above."
        try:  # a run or click repeats this problem (the error area shows the latest error)
            if self.direction not in ("denoise", "noise"):
                raise InputError(f"direction must be 'denoise' (clean into corrupted) or 'noise' "
                                 f"(corrupted into clean); got {self.direction!r}.")
            spec = resolve_site(self.bridge, self.site, self.index or None)
            pairs = align_positions(clean, corrupted, positions_arg(self.positions), spec)
        except InputError as exc:
            self._problem = str(exc)
            raise
        self._layout = make_layout(self.bridge, spec, clean, corrupted, pairs)
        self._grids.reset(self._layout)
        self._sync_grids()
        self._update_cost()

    def _tokens(self, text: str) -> list[str]:
        return list(self.bridge.to_str_tokens(text)) if text else []

    def _check_metric(self) -> Any:
        """The metric, or None (the panel then asks for the tokens); a bad token is reported in
        the error area and beside the token fields, and cleared once fixed."""
        try:
            metric = build_metric(self.bridge, self.metric, self.answer, self.wrong)
        except WorkbenchError as exc:
            self.metric_note = str(exc)
            self.report(exc)
            self._field_error = self.error
            return None
        if self._field_error and self.error == self._field_error:
            self.error = self.error_detail = ""
        self._field_error = ""
        self.metric_note = "" if metric is not None else ask(self.metric)
        return metric

    def _ready(self) -> tuple[Layout, Any]:
        """The grid and the metric, or an InputError saying what is missing."""
        if self._layout is None:
            raise InputError(self._problem)
        if self._metric is None:
            raise InputError(self.metric_note or ask(self.metric))
        return self._layout, self._metric

    def _update_cost(self) -> None:
        if self._layout is None:
            return
        positions = self._metric.positions if self._metric is not None else (-1,)
        with self._job.holding() as free:
            self._cost_stale = not free
            if not free:  # the model is busy with a sweep: estimate when it stops
                self.cost = "cost: estimated when the running sweep stops"
                return
            try:
                self.cost = estimate_cost(
                    self.bridge, self.prompt, self.corrupted, site=self._layout.site.name,
                    index=self._layout.site.index, positions=positions_arg(self.positions),
                    batch_size=self.batch_size or None, metric_positions=positions).summary()
            except Exception as exc:  # noqa: BLE001 - shown in the panel; the rest of the view stands
                self.cost = ""
                self.report(exc)

    def _update_code(self, cell: CellPatch | None = None) -> None:
        default = (self.site_options.get(self.site) or [""])[0]
        self.code = panel_code(
            clean=self.prompt, corrupted=self.corrupted, metric=self.metric, answer=self.answer,
            wrong=self.wrong, site=self.site, index="" if self.index == default else self.index,
            direction=self.direction, positions=self.positions, batch_size=self.batch_size,
            attribution=self.attribution, cell=cell)

    # -- the sweep, in a background thread ------------------------------------------------------
    def run(self) -> None:
        """Start the sweep (and attribution patching when ``attribution`` is on) in a background
        thread; returns at once. :meth:`wait` joins it; :meth:`cancel` stops it."""
        self._start(exact=True)

    def cancel(self) -> None:
        """Stop the running sweep after its current forward pass; its partial result is shown."""
        self._job.cancel()
        if self.running:
            self.status = "cancelling"

    def wait(self, timeout: float | None = None) -> PatchResult | None:
        """Join the background sweep (if any) and return the exact result shown (or None); a
        TimeoutError if it still runs after ``timeout`` seconds."""
        self._job.wait(timeout)
        return self.result

    def _start(self, exact: bool) -> None:
        self._check_open()
        if self._job.running:
            raise InputError("A sweep is already running: cancel it (or wait for it) first.")
        layout, metric = self._ready()
        kwargs = dict(site=layout.site.name, index=layout.site.index, metric=metric,
                      direction=self.direction, positions=positions_arg(self.positions))
        self.progress = [0, layout.rows * layout.cols if exact else 1]
        self.running = self.busy = True
        self.status = "sweeping" if exact else "attribution patching"
        try:
            self._job.start(self._work, self._generation, (self.prompt, self.corrupted), kwargs, exact,
                            self.batch_size or None)
        except BaseException:
            self._on_done()
            raise

    def _work(self, generation: int, prompts: tuple, kwargs: dict, exact: bool, size: int | None) -> None:
        """In the job's thread, holding the model: the sweep, then attribution patching."""
        result = estimate = None
        if exact:
            result = patch_sweep(self.bridge, *prompts, **kwargs, progress=self._job.tick, batch_size=size)
            self.progress = [result.n_done, result.values.numel()]  # the last report may be throttled
        if (self.attribution or not exact) and not self._job.cancelled:
            self.status = "attribution patching"
            estimate = attribution_sweep(self.bridge, *prompts, **kwargs)
            if not exact:
                self.progress = [1, 1]
        self._show(generation, result, estimate)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress = [done, total]

    def _on_done(self) -> None:
        self.running = self.busy = False
        self.status = ""
        if self._cost_stale:
            self._update_cost()

    def _show(self, generation: int, result: PatchResult | None, estimate: AttributionResult | None) -> None:
        with self._view_lock:
            if generation != self._generation or self._layout is None:
                return  # the inputs changed while it ran
            if result is not None:
                self.result = result
                self._grids.show("exact", result)
            if estimate is not None:
                self.attribution_result = estimate
                self._grids.show("attribution", estimate)
            self._sync_grids()
        self._update_code(self.last_cell)

    def _on_attribution(self, change: dict) -> None:
        self._update_code(self.last_cell)
        ready = self._layout is not None and self._metric is not None
        if change["new"] and ready and self.attribution_result is None and not self.running:
            self._start_attribution()  # else the next sweep computes it

    @guarded("attribution patching")
    def _start_attribution(self) -> None:
        self._start(exact=False)

    def _sync_grids(self) -> None:
        self.exact_meta, self.attribution_meta = self._grids.meta["exact"], self._grids.meta["attribution"]
        self.compare = self._grids.compare()

    # -- clicks -----------------------------------------------------------------------------------
    def click(self, row: int | None = None, col: int | None = None, *, layer: int | None = None,
              position: int | None = None, head: int | None = None) -> CellPatch:
        """Patch one cell alone: a grid cell ``(row, col)``, or ``layer`` with ``position`` and/or
        ``head``. Sets ``cell`` (and ``last_cell``), fills the cell in a grid not swept yet, and
        moves the selection's layer / position / head. Synchronous (~ms after the first click)."""
        self._check_open()
        layout, metric = self._ready()
        if row is not None or col is not None:
            where = layout.cell(row, col)
        elif layer is None:
            raise InputError("click needs a grid cell (row, col), or a layer with a position and/or head.")
        else:
            where = {"layer": layer, "position": position, "head": head}
        busy = "A sweep is running: clicks patch single cells once it finishes (or cancel it)."
        with self._job.exclusive(busy), self.working("patching one cell"):
            if self._patcher is None:
                self._patcher = CellPatcher(self.bridge, self.prompt, self.corrupted, metric=metric, k=TOP_K,
                                            direction=self.direction, positions=positions_arg(self.positions))
            patched = self._patcher.patch(site=layout.site.name, **where)
        self._show_cell(patched)
        return patched

    def _show_cell(self, patched: CellPatch) -> None:
        with self._view_lock:
            self.last_cell = patched
            rc, filled = self._grids.fill(patched)
            if filled:
                self._sync_grids()
        self.cell = cell_summary(patched, rc)
        self.layer = patched.layer
        if patched.position is not None:
            self.position = patched.position
        if patched.head is not None:
            self.head = patched.head
        self._update_code(patched)

    # -- messages ---------------------------------------------------------------------------------
    def _action_run(self) -> None:
        self.run()

    def _action_cancel(self) -> None:
        self.cancel()

    def _action_click(self, **where: Any) -> None:
        self.click(**where)

    def _action_align(self) -> None:
        """Pair the common start and end of prompts of different lengths (only those are swept)."""
        self.positions = matching_alignment(self.clean_tokens, self.corrupted_tokens)

    def _fetch_values(self, which: str, version: int | None = None) -> tuple[dict, list[bytes]]:
        """The ``which`` grid ("exact" / "attribution") as float16; ``version`` only keys the
        front end's cache (the answer carries the current version)."""
        return self._grids.fetch(which)

    def _export_requests(self) -> list[dict]:
        return self._grids.requests()

    def close(self) -> None:
        self._job.cancel()
        super().close()

