"""What a patching sweep will cost, before running it: cells, passes, memory and time.

:func:`estimate_cost` plans a :func:`~workbench.patching.patch_sweep` the way the engine will
(:mod:`workbench.patch_engine`: the same cells, batch size and cell order, so the same number of
forward passes and the same skipped work) without running it, and prices it:

- **work**, in *token-layers* (one position through one block): each pass runs ``rows x layers
  run x positions run`` of them, plus the unembedding of the positions the metric reads (priced
  as ``d_vocab * d_model`` over one block's weights token-layers each); preparing the sweep
  runs both prompts once in full;
- **time**: work times seconds per token-layer, plus a fixed cost per forward pass, both
  calibrated once per bridge and sequence length by timing a few small unpatched forwards of the
  model on the prompt (cached; the first estimate pays 5 short forwards);
- **memory**: the engine's own per-cell estimate (:func:`~workbench.patch_engine.bytes_per_cell`)
  times the batch size, plus what the sweep caches (the site's activations at every layer, and
  the residual stream and keys/values for skipping), or the preparing runs' logits if larger.

Estimates, not measurements: expect the time within a factor of about two on an idle machine
(sites that need the per-head attention path, such as ``z`` or ``pattern``, run somewhat slower).
An upper bound on passes and work: the sweep also skips cells that change nothing (where the
source activation equals the base run's, e.g. positions before the first token that differs),
which only the prepared runs can tell.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .metrics import Metric
from .patch_engine import PatchPlan, auto_batch_size, bytes_per_cell, chunk_cost, chunk_start, order_cells
from .patch_sites import check_heads, check_layers, enumerate_cells, resolve_site
from .patching import align_positions, pair_tokens
from .results import decode, encode_input

if TYPE_CHECKING:
    from .bridge import Bridge

CALIBRATION_TOKENS = 256  # tokens in the larger calibration forward


@dataclass(frozen=True)
class CostEstimate:
    """A sweep's planned cost. ``n_cells`` cells in ``n_forward`` batched passes of
    ``batch_size`` cells (``batch_size * batch`` rows each), plus 2 unpatched runs to prepare;
    ``work`` token-layers in the passes after skipping (``work_unskipped``: a one-at-a-time loop
    without skipping); ``peak_bytes`` above the model's weights; ``seconds`` for the whole sweep,
    from ``seconds_per_token_layer`` and ``seconds_per_pass`` (the calibration)."""

    site: str
    index: str
    n_cells: int
    n_forward: int
    batch_size: int
    rows_per_pass: int
    work: int
    work_unskipped: int
    peak_bytes: int
    seconds: float
    seconds_per_token_layer: float
    seconds_per_pass: float

    def summary(self) -> str:
        """One line for a panel, e.g. ``"480 cells in 8 passes, ~1.2 s, ~300 MB"``."""
        passes = "pass" if self.n_forward == 1 else "passes"
        return (f"{self.n_cells} cells in {self.n_forward} {passes}, ~{_seconds(self.seconds)}, "
                f"~{_bytes(self.peak_bytes)}")

    __str__ = summary


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1e3:.0f} ms"
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class _Calibration:
    per_unit: float  # seconds per token-layer
    per_pass: float  # fixed seconds per forward pass


_CALIBRATIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _unembed_units(bridge: Bridge) -> float:
    """Token-layers one unembedded position costs: ``d_vocab * d_model`` over one block's
    weight-matrix elements."""
    block = bridge.model.get_submodule(bridge.adapter.blocks)[0]
    per_block = sum(p.numel() for p in block.parameters() if p.ndim >= 2) or 1
    return bridge.cfg.d_vocab * bridge.cfg.d_model / per_block


def _time_forward(bridge: Bridge, tokens: torch.Tensor, reps: int) -> float:
    """Fastest of ``reps`` unpatched forwards of ``tokens [rows, pos]``, unembedding the last
    position only (seconds)."""
    model, cuda = bridge.model, tokens.device.type == "cuda"
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: (args, {**kwargs, "logits_to_keep": 1}), with_kwargs=True)
    best = math.inf
    try:
        for _ in range(reps):
            if cuda:
                torch.cuda.synchronize(tokens.device)
            t0 = time.perf_counter()
            bridge(tokens)
            if cuda:
                torch.cuda.synchronize(tokens.device)
            best = min(best, time.perf_counter() - t0)
    finally:
        handle.remove()
    return best


@torch.inference_mode()
def _calibrate(bridge: Bridge, tokens: torch.Tensor) -> _Calibration:
    """Seconds per token-layer and per pass, from timing 1 row and ``~CALIBRATION_TOKENS``
    tokens of the prompt ``tokens [batch, pos]``; cached per bridge and sequence length."""
    n = tokens.shape[1]
    cached = _CALIBRATIONS.setdefault(bridge, {})
    if n not in cached:
        one = tokens[:1]
        rows = max(2, CALIBRATION_TOKENS // n)
        units = bridge.cfg.n_layers * n + _unembed_units(bridge)
        _time_forward(bridge, one, 1)  # warm-up
        t1 = _time_forward(bridge, one, 2)
        t2 = _time_forward(bridge, one.repeat(rows, 1), 2)
        per_unit = max((t2 - t1) / ((rows - 1) * units), t2 / (rows * units) / 4, 1e-12)
        cached[n] = _Calibration(per_unit, max(t1 - per_unit * units, 0.0))
    return cached[n]


def _prompt(bridge: Bridge, clean: Any, corrupted: Any, positions: Mapping[int, int] | None,
            site) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The patched run's tokens ``[batch, pos]`` and the aligned pairs, checked as the sweep
    checks them."""
    if corrupted is None:
        enc = encode_input(bridge, clean)
        if enc.padded:
            raise InputError("The clean prompts have different lengths (padding); a patching sweep "
                             "needs prompts of one length per batch.")
        clean_t = corrupted_t = enc.tokens
    else:
        clean_t, corrupted_t = pair_tokens(bridge, clean, corrupted)
    pairs = align_positions(decode(bridge, clean_t[0].tolist()), decode(bridge, corrupted_t[0].tolist()),
                   positions, site)
    return corrupted_t, pairs


def _kv_reused(bridge: Bridge, n: int) -> bool:
    """Whether the prefix keys/values cover every position (no sliding window shorter than
    the prompt), as the engine needs for prefix reuse."""
    window = getattr(bridge.model.config, "sliding_window", None)
    return not (isinstance(window, int) and window < n)


def estimate_cost(bridge: Bridge, clean: Any, corrupted: Any = None, *, site: str,
                  index: str | None = None, layers: Sequence[int] | None = None,
                  heads: Sequence[int] | None = None, batch_size: int | None = None,
                  memory_budget: int | None = None, metric_positions: Sequence[int] | None = (-1,),
                  positions: Mapping[int, int] | None = None, skip_blocks: bool = True,
                  reuse_prefix: bool = True) -> CostEstimate:
    """The cost of ``patch_sweep(bridge, clean, corrupted, site=..., ...)`` with the same
    arguments (see the module docstring); runs a few small calibration forwards the first time,
    never the sweep. ``corrupted`` may be left out (only the lengths matter);
    ``metric_positions``: the positions the metric will read (None: all)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise InputError(f"batch_size must be a positive int (cells per forward pass); got {batch_size!r}.")
    spec = resolve_site(bridge, site, index)
    layer_list, head_list = check_layers(bridge, layers), check_heads(spec, heads)
    base, pairs = _prompt(bridge, clean, corrupted, positions, spec)
    batch, n = base.shape
    metric = Metric(lambda at: at, metric_positions, "estimate")
    bad = [p for p in metric.positions or () if not -n <= p < n]
    if bad:
        raise InputError(f"metric_positions {bad} are outside the prompt's {n} positions "
                         f"(valid: {-n}..{n - 1}).")
    read = None if metric.positions is None else tuple(p % n for p in metric.positions)
    skip = not bridge.attached_hooks()  # the engine switches skipping off for the user's hooks
    kv = [] if skip and reuse_prefix and _kv_reused(bridge, n) else None
    pair_t = torch.tensor(pairs, device=base.device)
    plan = PatchPlan(bridge, spec, base, [], pair_t, [] if skip and skip_blocks else None, kv,
                     metric, read)
    cells = enumerate_cells(spec, layer_list, len(pairs), head_list)
    size = batch_size or auto_batch_size(plan, memory_budget)
    n_layers, unembed = bridge.cfg.n_layers, _unembed_units(bridge)
    order = order_cells(plan, cells, size)
    work = unembedded = 0.0
    for i in range(0, len(order), size):
        chunk = [cells[j] for j in order[i:i + size]]
        _, P0 = chunk_start(plan, chunk)
        work += batch * chunk_cost(plan, chunk)
        unembedded += len(chunk) * batch * (n - P0 if read is None else len(read))
    n_forward = math.ceil(len(cells) / size)
    prepare = 2 * batch * n * (n_layers + unembed)  # both prompts in full, every logit
    calib = _calibrate(bridge, base)
    seconds = (calib.per_unit * (work + unembedded * unembed + prepare)
               + calib.per_pass * (n_forward + 2))
    return CostEstimate(
        site=spec.name, index=spec.index, n_cells=len(cells), n_forward=n_forward, batch_size=size,
        rows_per_pass=min(size, len(cells)) * batch, work=int(work),
        work_unskipped=len(cells) * batch * n_layers * n, peak_bytes=_peak(bridge, plan, size, len(cells)),
        seconds=seconds, seconds_per_token_layer=calib.per_unit, seconds_per_pass=calib.per_pass)


def _peak(bridge: Bridge, plan: PatchPlan, size: int, n_cells: int) -> int:
    """Bytes at the sweep's peak: what it caches, plus the larger of a pass's rows and the
    preparing runs' logits and temporaries."""
    c, (batch, n) = bridge.cfg, plan.base_tokens.shape
    item = max(torch.finfo(c.dtype).bits // 8 if c.dtype.is_floating_point else 4, 4)
    cached = bridge.hook_info(plan.site.hook(0), n).nbytes(batch, n) * c.n_layers
    if plan.resid is not None:
        cached += c.n_layers * batch * n * c.d_model * item
    if plan.kv is not None:
        cached += 2 * c.n_layers * batch * c.n_kv_heads * n * c.d_head * item
    one = bytes_per_cell(plan)
    prepare = 2 * batch * n * c.d_vocab * item + one
    return int(cached + max(prepare, min(size, n_cells) * one))
