"""The batched patching engine: many patched runs in one forward pass, skipping exact work.

A :class:`PatchPlan` holds what one sweep needs, computed once: the patched ("base") run's
tokens ``[batch, pos]``, the source run's activations of the swept site at every layer, the base
run's residual stream entering every block and its keys/values (for skipping), and the metric.
:func:`run_cells` then runs the cells in chunks: a chunk of ``C`` cells is one forward pass of
``C * batch`` rows (cell ``i`` owns rows ``i*batch .. i*batch + batch - 1``), and a forward hook at
each layer's hook point writes the source activation into the rows of that layer's cells only.

Work skipped, exactly (every row of a chunk computes the base run's values there):

- **blocks before the chunk's first patched layer** ``L0``: the HF blocks ModuleList is swapped
  for one holding blocks ``L0..`` for the pass, and a forward pre-hook (registered first, so the
  bridge's own ``hook_resid_pre`` still fires after it) replaces block ``L0``'s input with the
  base run's cached ``resid_pre`` of layer ``L0``;
- **positions before the chunk's first patched position** ``P0`` (causal models; only when the
  metric reads no earlier position): only positions ``P0..`` are run, with an HF ``DynamicCache``
  holding the base run's keys/values of positions ``< P0``; the model derives position ids (and
  so rotary angles and learned position embeddings) and the causal mask from the cache length;
- **unembedding of positions the metric does not read**: ``logits_to_keep`` gets the read
  positions;
- **cells that change nothing**: where the source activation equals the base run's bit for bit
  (e.g. every position before the first token where clean and corrupted prompts differ), the
  patched run is the base run, so the cell gets the base run's metric without a forward pass.

Cells are ordered for the cost model ``rows x layers run x positions run``: layer-major, or in
tiles of a few layers by position when that costs less (the order never changes a value).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from .errors import WorkbenchError
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


def order_cells(plan: PatchPlan, cells: list[Cell], size: int) -> list[int]:
    """Indices into ``cells`` in the order whose chunks of ``size`` cost the least: layer-major,
    or tiles of ``g`` layers sorted by position within a tile."""
    n_layers, n_pos = plan.bridge.cfg.n_layers, plan.base_tokens.shape[1]

    pos = [cell_pos(plan, c) for c in cells]

    def order(g: int) -> list[int]:
        return sorted(range(len(cells)), key=lambda i: (cells[i].layer // g, pos[i], cells[i].layer,
                                                        cells[i].head, i))

    def cost(idx: list[int]) -> int:
        total = 0
        for i in range(0, len(idx), size):
            chunk = [cells[j] for j in idx[i:i + size]]
            L0, P0 = chunk_start(plan, chunk)
            total += len(chunk) * (n_layers - L0) * (n_pos - P0)
        return total

    best = order(1)  # layer-major
    if plan.kv is None or size >= len(cells):
        return best
    best_cost = cost(best)
    for g in sorted({*(2 ** i for i in range(1, n_layers.bit_length())), n_layers} - {1}):
        candidate = order(g)
        c = cost(candidate)
        if c < best_cost:
            best, best_cost = candidate, c
    return best


def _first_arg(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    """Block inputs with the hidden states (first argument) replaced by ``value``."""
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


@contextlib.contextmanager
def _skipping(plan: PatchPlan, L0: int, P0: int, n: int, keep: torch.Tensor | None) -> Iterator[None]:
    """For one forward of ``n`` cells: run blocks ``L0..`` only, from the cached residual, over
    positions ``P0..`` with the cached prefix keys/values, unembedding ``keep`` only."""
    model, path = plan.bridge.model, plan.bridge.adapter.blocks
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    blocks = getattr(parent, attr)
    handles = []
    overrides: dict = {}
    if keep is not None:
        overrides["logits_to_keep"] = keep
    if P0 > 0:
        data = [(k[:, :, :P0].repeat(n, 1, 1, 1), v[:, :, :P0].repeat(n, 1, 1, 1)) if L >= L0
                else (k[:, :, :P0], v[:, :, :P0])  # only the prefix length is read there
                for L, (k, v) in enumerate(plan.kv)]
        overrides.update(past_key_values=DynamicCache(ddp_cache_data=data), use_cache=True)
    try:
        if overrides:
            handles.append(model.register_forward_pre_hook(
                lambda mod, args, kwargs: (args, {**kwargs, **overrides}), with_kwargs=True))
        if L0 > 0:
            start = plan.resid[L0][:, P0:].repeat(n, 1, 1)
            handles.append(blocks[L0].register_forward_pre_hook(
                lambda mod, args, kwargs: _first_arg(args, kwargs, start), with_kwargs=True,
                prepend=True))
            setattr(parent, attr, torch.nn.ModuleList(list(blocks)[L0:]))
        yield
    finally:
        setattr(parent, attr, blocks)
        for h in handles:
            h.remove()


def run_chunk(plan: PatchPlan, chunk: list[Cell]) -> torch.Tensor:
    """One batched forward of ``chunk``; returns the metric ``[len(chunk), batch]``."""
    B, site = plan.batch, plan.site
    L0, P0 = chunk_start(plan, chunk)
    keep = None if plan.read is None else torch.tensor([r - P0 for r in plan.read])
    by_layer: dict[int, list[int]] = {}
    for slot, c in enumerate(chunk):
        by_layer.setdefault(c.layer, []).append(slot)

    def hook_for(layer: int, slots: list[int]):
        cells = [chunk[s] for s in slots]

        def fn(act: torch.Tensor, hook) -> torch.Tensor:
            return write(site, act, plan.source[layer], slots, cells, plan.pairs, B, P0)
        return fn

    hooks = [(site.hook(L), hook_for(L, slots)) for L, slots in by_layer.items()]
    tokens = plan.base_tokens[:, P0:].repeat(len(chunk), 1)
    with _skipping(plan, L0, P0, len(chunk), keep):
        logits = plan.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    logits = logits.reshape(len(chunk), B, *logits.shape[1:])
    return torch.stack([check_output(plan.metric.read(logits[i]), B, plan.metric.name).float()
                        for i in range(len(chunk))])


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


CPU_TOKENS = 512  # tokens per forward on CPU: larger passes run no faster and skip less (measured)


def auto_batch_size(plan: PatchPlan, budget: int | None = None) -> int:
    """Cells per forward pass that fit ``budget`` bytes (default: 1 GiB on CPU, half the free
    memory of a CUDA device). On CPU also at most ``CPU_TOKENS`` tokens per pass: bigger passes
    gain no throughput there, and smaller chunks let more of the work be skipped."""
    device = plan.base_tokens.device
    if budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = free // 2
        else:
            budget = 1 << 30
    cells = int(budget // bytes_per_cell(plan))
    if device.type != "cuda":
        cells = min(cells, CPU_TOKENS // plan.base_tokens.numel())
    return max(1, cells)
