"""The batched patching engine: many patched runs in one forward pass, skipping exact work.

A :class:`PatchPlan` holds what one sweep needs, computed once: the patched ("base") run's
tokens ``[batch, pos]``, the source run's activations of the swept site at every layer, the base
run's residual stream entering every block and its keys/values (for skipping), and the metric.
:func:`run_cells` then runs the cells in chunks: a chunk of ``C`` cells is one forward pass of up
to ``C * batch`` rows (with the chunk's cells sorted by layer, cell ``i`` owns rows
``i*batch .. i*batch + batch - 1``), and a forward hook at each layer's hook point writes the
source activation into the rows of that layer's cells only.

Work skipped, exactly (every row computes the base run's values wherever it is not patched):

- **blocks before each cell's patched layer**: a cell's rows join the pass at its own layer ``L``.
  The HF blocks ModuleList is swapped for one holding blocks ``L0..`` (``L0``: the chunk's first
  layer); a forward pre-hook (registered first, so the bridge's own ``hook_resid_pre`` still fires
  after it) replaces block ``L0``'s input with the base run's cached ``resid_pre`` of layer
  ``L0``, and at each later layer where cells join, appends their rows (the base run's cached
  ``resid_pre`` there) to the block's input, together with the rows of every per-row tensor the
  block receives (masks, position ids, rotary tables: rows repeat with period ``batch``). HF
  picks each block's mask by its index in ``config.layer_types`` (full or sliding-window
  attention, per layer: Qwen2, Qwen3), so that list is sliced from ``L0`` too, for the forward;
- **positions before the chunk's first patched position** ``P0`` (causal models; only when the
  metric reads no earlier position): only positions ``P0..`` are run, with an HF ``DynamicCache``
  holding the base run's keys/values of positions ``< P0`` (as many rows per layer as take part
  there); the model derives position ids (and so rotary angles and learned position embeddings)
  and the causal mask from the cache length;
- **unembedding of positions the metric does not read**: ``logits_to_keep`` gets the read
  positions;
- **cells that change nothing**: where the source activation equals the base run's bit for bit
  (e.g. every position before the first token where clean and corrupted prompts differ), the
  patched run is the base run, so the cell gets the base run's metric without a forward pass.

Cells are ordered for the cost model ``sum over cells of (layers run) x (positions run)``: by
position when keys/values are reused (so each chunk's ``P0`` is as late as it can be), else by
layer (the order never changes a value).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from . import memory
from .errors import WorkbenchError
from .hf_compat import cache_kwarg
from .metrics import Metric, check_output
from .patch_sites import Cell, Site, cell_unchanged, write

if TYPE_CHECKING:
    from .bridge import Bridge

class Cancelled(WorkbenchError):
    """Raised by a progress callback (or returned as ``False``) to stop a sweep early; the sweep
    returns what it has, marked partial."""


@dataclass(frozen=True)
class PatchPlan:
    """Everything a sweep's patched runs need, computed once (see the module docstring).

    ``base_tokens [batch, pos]``; ``source[L]`` the source activation at layer L
    ``[batch, src_pos, ...]``; ``pairs [n_pairs, 2]`` (source pos, patched pos); ``resid[L]``
    the base run's ``resid_pre`` of layer L ``[batch, pos, d_model]`` (None: no block skipping);
    ``kv[L]`` its keys and values ``[batch, n_kv_heads, pos, d_head]`` (None: no prefix reuse);
    ``read``: the absolute positions the metric reads (None: all); ``same[L]``: where the source
    equals the base run at layer L (:func:`~workbench.patch_sites.same_mask`; None: not checked)
    and ``base_value [batch]`` the base run's metric, given to those cells without running them."""

    bridge: Bridge
    site: Site
    base_tokens: torch.Tensor
    source: list[torch.Tensor]
    pairs: torch.Tensor
    resid: list[torch.Tensor] | None
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    metric: Metric
    read: tuple[int, ...] | None
    same: list[torch.Tensor] | None = None
    base_value: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.base_tokens.shape[0]


def cell_pos(plan: PatchPlan, cell: Cell) -> int:
    """The first patched-run position a cell changes (0 when it patches every position)."""
    if cell.pair < 0:
        return 0
    return int(plan.pairs[cell.pair, 1])


def chunk_start(plan: PatchPlan, chunk: list[Cell]) -> tuple[int, int]:
    """``(L0, P0)``: the first layer and position the chunk must compute."""
    L0 = min(c.layer for c in chunk) if plan.resid is not None else 0
    P0 = 0
    if plan.kv is not None and plan.read is not None:
        P0 = min(min(cell_pos(plan, c) for c in chunk), *plan.read)
    return L0, P0


def chunk_cost(plan: PatchPlan, chunk: list[Cell]) -> int:
    """Token-layers one chunk computes: each cell's rows run from its own layer, over positions
    ``P0..`` (per prompt of the batch)."""
    n_layers, n_pos = plan.bridge.cfg.n_layers, plan.base_tokens.shape[1]
    L0, P0 = chunk_start(plan, chunk)
    return sum(n_layers - (c.layer if plan.resid is not None else L0) for c in chunk) * (n_pos - P0)


def order_cells(plan: PatchPlan, cells: list[Cell], size: int) -> list[int]:
    """Indices into ``cells`` in the order whose chunks of ``size`` cost the least
    (:func:`chunk_cost`): by position, then layer, when a chunk can skip its prefix positions;
    layer-major otherwise."""
    if plan.kv is None or size >= len(cells):
        return sorted(range(len(cells)), key=lambda i: (cells[i].layer, cells[i].head, i))
    pos = [cell_pos(plan, c) for c in cells]
    return sorted(range(len(cells)), key=lambda i: (pos[i], cells[i].layer, cells[i].head, i))


def _first_arg(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    """Block inputs with the hidden states (first argument) replaced by ``value``."""
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def _grow_rows(value, rows: int, new_rows: int, period: int, heads: int):
    """``value`` (a block argument) for ``new_rows`` rows instead of ``rows``: a tensor whose
    first axis is the rows (2-D or more), or rows times ``heads`` (BLOOM's ALiBi bias
    ``[rows * heads, 1, k]``, row-major), repeats its first ``period`` rows; tuples and lists are
    walked; anything else (and tensors shared by every row) is returned as is."""
    if isinstance(value, torch.Tensor):
        if value.ndim >= 2 and rows != new_rows and value.shape[0] in (rows, rows * heads):
            per_row = value.shape[0] // rows
            shown = value.reshape(rows, per_row, *value.shape[1:])[:period]
            grown = shown.repeat(new_rows // period, *([1] * (shown.ndim - 1)))
            return grown.reshape(new_rows * per_row, *value.shape[1:])
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_grow_rows(v, rows, new_rows, period, heads) for v in value)
    return value


def _join_hook(extra: torch.Tensor | None, first_rows: int, period: int, heads: int):
    """A forward pre-hook for a block after the pass's first: append ``extra`` rows
    ``[k, pos, d_model]`` (if any) to its hidden states (first argument), and grow the per-row
    arguments the model hands every block (sized for the pass's ``first_rows`` input rows) to
    the hidden states' rows."""
    def hook(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if extra is not None:  # (hidden comes from the block before, maybe on another device)
            hidden = torch.cat([hidden, extra.to(hidden.device, hidden.dtype)])
        rows = hidden.shape[0]
        rest = tuple(_grow_rows(a, first_rows, rows, period, heads) for a in args[1:])
        kw = {k: _grow_rows(v, first_rows, rows, period, heads) for k, v in kwargs.items()
              if k != "hidden_states"}
        return _first_arg((hidden, *rest) if args else (), kw, hidden)
    return hook


@contextlib.contextmanager
def _skipping(plan: PatchPlan, L0: int, P0: int, joining: dict[int, int],
              keep: list[int] | None) -> Iterator[None]:
    """For one forward: run blocks ``L0..`` only, from the cached residual, with ``joining[L]``
    cells' rows joining at layer ``L`` (``L0`` included), over positions ``P0..`` with the cached
    prefix keys/values, unembedding ``keep`` only."""
    model, path = plan.bridge.model, plan.bridge.adapter.blocks
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    blocks = getattr(parent, attr)
    n_layers = len(blocks)
    active = [sum(k for L, k in joining.items() if L <= layer) for layer in range(n_layers)]
    handles = []
    overrides: dict = {}
    config = model.config
    layer_types = getattr(config, "layer_types", None)  # per-layer attention kind, read by index
    if keep is not None:
        overrides["logits_to_keep"] = keep
    if P0 > 0:
        data = [(k[:, :, :P0].repeat(active[L], 1, 1, 1), v[:, :, :P0].repeat(active[L], 1, 1, 1))
                if L >= L0 else (k[:, :, :P0], v[:, :, :P0])  # only the prefix length is read there
                for L, (k, v) in enumerate(plan.kv)]
        overrides.update({cache_kwarg(model): DynamicCache(ddp_cache_data=data), "use_cache": True})
    try:
        if overrides:
            handles.append(model.register_forward_pre_hook(
                lambda mod, args, kwargs: (args, {**kwargs, **overrides}), with_kwargs=True))
        if L0 > 0:
            start = plan.resid[L0][:, P0:].repeat(joining[L0], 1, 1)
            handles.append(blocks[L0].register_forward_pre_hook(
                lambda mod, args, kwargs: _first_arg(args, kwargs, start), with_kwargs=True,
                prepend=True))
        first_rows = joining[L0] * plan.batch
        for L in range(L0 + 1, n_layers) if len(joining) > 1 else ():
            extra = plan.resid[L][:, P0:].repeat(joining[L], 1, 1) if L in joining else None
            hook = _join_hook(extra, first_rows, plan.batch, plan.bridge.cfg.n_heads)
            handles.append(blocks[L].register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
        if L0 > 0:
            setattr(parent, attr, torch.nn.ModuleList(list(blocks)[L0:]))
            if layer_types is not None:  # block i of the slice is layer L0 + i
                config.layer_types = layer_types[L0:]
        yield
    finally:
        setattr(parent, attr, blocks)
        if layer_types is not None:
            config.layer_types = layer_types
        for h in handles:
            h.remove()


def run_chunk(plan: PatchPlan, chunk: list[Cell]) -> torch.Tensor:
    """One batched forward of ``chunk``; returns the metric ``[len(chunk), batch]`` (in the
    chunk's order). Rows are laid out by layer (cells joining later come later)."""
    B, site = plan.batch, plan.site
    L0, P0 = chunk_start(plan, chunk)
    # a list, not a tensor: accelerate moves a tensor argument to the first device of a
    # device_map, where it cannot index the last block's output on another GPU
    keep = None if plan.read is None else [r - P0 for r in plan.read]
    if plan.resid is not None:
        order = sorted(range(len(chunk)), key=lambda i: chunk[i].layer)  # stable
        joining = dict(Counter(c.layer for c in chunk))
    else:  # every row from the first block
        order, joining = list(range(len(chunk))), {L0: len(chunk)}
    by_layer: dict[int, list[int]] = {}
    for slot, i in enumerate(order):
        by_layer.setdefault(chunk[i].layer, []).append(slot)

    def hook_for(layer: int, slots: list[int]):
        cells = [chunk[order[s]] for s in slots]

        def fn(act: torch.Tensor, hook) -> torch.Tensor:
            return write(site, act, plan.source[layer], slots, cells, plan.pairs, B, P0)
        return fn

    hooks = [(site.hook(L), hook_for(L, slots)) for L, slots in by_layer.items()]
    tokens = plan.base_tokens[:, P0:].repeat(joining[L0], 1)
    with _skipping(plan, L0, P0, joining, keep):
        logits = plan.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    logits = logits.reshape(len(chunk), B, *logits.shape[1:])
    values = torch.stack([check_output(plan.metric.read(logits[slot]), B, plan.metric.name).float()
                          for slot in range(len(chunk))])
    out = torch.empty_like(values)
    out[torch.tensor(order)] = values
    return out


def run_cells(plan: PatchPlan, cells: list[Cell], size: int,
              progress: Callable[[int, int], bool] | None = None) -> tuple[torch.Tensor, int, int]:
    """Run every cell in chunks of ``size`` cells. Returns ``(values [len(cells), batch]`` (NaN
    where not run, in the order of ``cells``), ``n_done``, ``n_forward)``; stops early when
    ``progress(done, total)`` returns False."""
    values = torch.full((len(cells), plan.batch), float("nan"))
    done = n_forward = 0
    todo = list(range(len(cells)))
    if plan.same is not None and plan.base_value is not None:
        todo = [j for j in todo if not cell_unchanged(plan.same[cells[j].layer], cells[j])]
        skipped = sorted(set(range(len(cells))) - set(todo))
        values[skipped] = plan.base_value.float().cpu()
        done = len(skipped)
        if done and progress is not None and not progress(done, len(cells)):
            return values, done, n_forward
    order = order_cells(plan, [cells[j] for j in todo], size)
    for i in range(0, len(order), size):
        idx = [todo[j] for j in order[i:i + size]]
        values[idx] = run_chunk(plan, [cells[j] for j in idx]).cpu()
        done += len(idx)
        n_forward += 1
        if progress is not None and not progress(done, len(cells)):
            break
    return values, done, n_forward


def bytes_per_cell(plan: PatchPlan) -> int:
    """Estimated peak memory of one cell's rows in a forward pass (worst case: all layers and
    positions run): residual-stream and MLP temporaries, attention scores and pattern, the
    prefix keys/values of every layer, the kept logits and their log-softmax, the site's copy;
    counted at 4 bytes or more an element (metrics work in fp32)."""
    c = plan.bridge.cfg
    n = plan.base_tokens.shape[1]
    k = n if plan.read is None else len(plan.read)
    elems = (8 * n * c.d_model + 3 * n * c.d_mlp + 3 * c.n_heads * n * n
             + 2 * c.n_layers * n * c.n_kv_heads * c.d_head + 3 * k * c.d_vocab)
    if plan.site.name == "result":
        elems += 2 * n * c.n_heads * c.d_model
    size = torch.finfo(c.dtype).bits // 8 if c.dtype.is_floating_point else 4
    return plan.batch * elems * max(size, 4)


# tokens per forward on CPU (counted at the pass's widest block): bigger passes gain no throughput
# and skip fewer prefix positions; GPT-2 small sweeps at 32 and 64 tokens ran fastest at about this
CPU_TOKENS = 1536


def auto_batch_size(plan: PatchPlan, budget: int | None = None) -> int:
    """Cells per forward pass that fit ``budget`` bytes (default: 1 GiB on CPU, half the free
    memory of a CUDA device: of the fullest one when a ``device_map`` spreads the model, as every
    device holds its layers' share of the pass). On CPU also at most ``CPU_TOKENS`` tokens per
    pass: bigger passes gain no throughput there, and smaller chunks let more of the work be
    skipped."""
    device = plan.base_tokens.device
    if budget is None:
        if device.type == "cuda":
            gpus = [d for d in plan.bridge._cache_devices(None) if d.type == "cuda"] or [device]
            budget = min(memory.available_bytes(d) for d in gpus) // 2
        else:
            budget = 1 << 30
    cells = int(budget // bytes_per_cell(plan))
    if device.type != "cuda":
        cells = min(cells, CPU_TOKENS // plan.base_tokens.numel())
    return max(1, cells)
