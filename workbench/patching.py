"""Activation patching sweeps: how much of the clean behaviour one activation carries.

``patch_sweep(bridge, clean, corrupted, site=..., metric=...)`` runs one patched forward per
*cell* (a layer and position, a layer and head, or all three; see :mod:`workbench.patch_sites`
for the sites, index kinds and the TransformerLens layout of ``values``):

- ``direction="denoise"`` (default): run the corrupted prompt with the cell's activation taken
  from the clean run ("clean into corrupted");
- ``direction="noise"``: run the clean prompt with the corrupted run's activation.

:func:`prepare_patching` runs the clean and the corrupted prompt once (caching only the swept
site, and what skipping needs) and evaluates both baselines; :func:`patch_sweep` then packs the
cells many to one forward pass (:mod:`workbench.patch_engine`). Other analyses (a single cell,
custom cell sets) reuse the same two steps.

Clean and corrupted prompts must tokenize to the same number of tokens, unless ``positions``
aligns them explicitly (``{clean_pos: corrupted_pos}``; then only those positions are swept).
Batches of prompts must be of one length (no padding). Hooks the user attached to the bridge
stay active in every run (the skipping is then switched off, so they see every block and
position).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .hf_compat import output_cache
from .metrics import Metric, as_metric, check_output
from .patch_engine import Cancelled, PatchPlan, auto_batch_size, run_cells
from .patch_result import PatchResult, position_labels
from .patch_sites import Site, check_heads, check_layers, enumerate_cells, resolve_site, same_mask
from .results import check_memory_budget, decode, encode_input, need_logits, non_finite_error

if TYPE_CHECKING:
    from .bridge import Bridge

ProgressArg = bool | Callable[[int, int], Any] | None


@dataclass(frozen=True)
class Prepared:
    """A patching set-up: the engine's ``plan``, the aligned ``pairs`` (clean pos, corrupted
    pos), the per-prompt baselines ``clean_per`` / ``corrupted_per`` ``[batch]``, and the first
    prompt's token strings."""

    plan: PatchPlan
    direction: str
    pairs: list[tuple[int, int]]
    clean_per: torch.Tensor
    corrupted_per: torch.Tensor
    clean_str: list[str]
    corrupted_str: list[str]


def pair_tokens(bridge: Bridge, clean: Any, corrupted: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean and corrupted prompts as token ids, ``[batch, pos]`` each, unpadded."""
    need_logits(bridge, "Patching")
    out = []
    for name, x in (("clean", clean), ("corrupted", corrupted)):
        enc = encode_input(bridge, x)
        if enc.padded:
            raise InputError(f"The {name} prompts have different lengths (padding); a patching sweep "
                             "needs prompts of one length per batch. Sweep them separately or use "
                             "same-length prompts.")
        out.append(enc.tokens)
    if out[0].shape[0] != out[1].shape[0]:
        raise InputError(f"clean has {out[0].shape[0]} prompts and corrupted {out[1].shape[0]}; "
                         "give one corrupted prompt per clean prompt.")
    return out[0], out[1]


def align_positions(clean: list[str], corrupted: list[str], positions: Mapping[int, int] | None,
           site: Site) -> list[tuple[int, int]]:
    """Aligned (clean pos, corrupted pos) pairs, or an InputError showing both tokenizations."""
    nc, nd = len(clean), len(corrupted)
    if positions is None:
        if nc != nd:
            raise InputError(
                f"Clean and corrupted prompts tokenize to different lengths ({nc} vs {nd} tokens):\n"
                f"  clean:     {clean}\n  corrupted: {corrupted}\n"
                "Make them the same length, or pass positions={clean_pos: corrupted_pos, ...} to "
                "align them.")
        return [(p, p) for p in range(nc)]
    if not isinstance(positions, Mapping) or not positions:
        raise InputError(f"positions must be a non-empty mapping {{clean_pos: corrupted_pos}}; got "
                         f"{positions!r}.")
    pairs = []
    for c, d in sorted(positions.items()):
        if not (isinstance(c, int) and isinstance(d, int) and 0 <= c < nc and 0 <= d < nd):
            raise InputError(f"positions: {c!r} -> {d!r} is out of range; clean positions are "
                             f"0..{nc - 1} and corrupted 0..{nd - 1}.")
        pairs.append((c, d))
    if site.kind == "pattern" and nc != nd:
        raise InputError("Patching attention patterns needs prompts of the same length (a pattern row "
                         f"spans every key); got {nc} and {nd} tokens.")
    return pairs


@dataclass(frozen=True)
class PatchPrompts:
    """Checked prompts of a patching run: token strings of the first prompt, the aligned
    ``pairs`` (clean pos, corrupted pos), the ``base`` (patched) and ``source`` tokens
    ``[batch, pos]``, and ``pair_tensor [n_pairs, 2]`` as (source pos, base pos)."""

    clean_str: list[str]
    corrupted_str: list[str]
    pairs: list[tuple[int, int]]
    base: torch.Tensor
    source: torch.Tensor
    pair_tensor: torch.Tensor


def patch_prompts(bridge: Bridge, clean: Any, corrupted: Any, direction: str,
                  positions: Mapping[int, int] | None, site: Site) -> PatchPrompts:
    """Check ``direction``, tokenize and align the prompts; which one is patched follows
    ``direction`` ("denoise": the corrupted prompt runs with clean activations)."""
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted "
                         f"into clean); got {direction!r}.")
    clean_t, corrupted_t = pair_tokens(bridge, clean, corrupted)
    clean_str = decode(bridge, clean_t[0].tolist())
    corrupted_str = decode(bridge, corrupted_t[0].tolist())
    pairs = align_positions(clean_str, corrupted_str, positions, site)
    denoise = direction == "denoise"
    base, source = (corrupted_t, clean_t) if denoise else (clean_t, corrupted_t)
    pair_t = torch.tensor([(c, d) if denoise else (d, c) for c, d in pairs], device=base.device)
    return PatchPrompts(clean_str, corrupted_str, pairs, base, source, pair_t)


def _runs(bridge: Bridge, base: torch.Tensor, source: torch.Tensor, site: Site, pairs: torch.Tensor,
          skip_blocks: bool, reuse_prefix: bool):
    """The source run (logits, the site at every layer) and the base run (logits, resid_pre at
    every layer for block skipping, HF's keys/values cache for prefix reuse, and where the site
    equals the source run's: :func:`~workbench.patch_sites.same_mask` per layer)."""
    n = bridge.cfg.n_layers
    src_logits, src_cache = bridge.run_with_cache(source, names_filter=[site.hook(L) for L in range(n)])
    same: list = [None] * n

    def compare(layer: int):
        def fn(act: torch.Tensor, hook) -> None:
            same[layer] = same_mask(site, act, src_cache[site.hook(layer)], pairs).cpu()
        return fn
    kv: list = []
    handles = []
    if reuse_prefix:
        def keep_kv(mod, args, kwargs, output):
            kv.extend((layer.keys, layer.values) for layer in output_cache(output).layers)
        handles = [bridge.model.register_forward_pre_hook(
            lambda mod, args, kwargs: (args, {**kwargs, "use_cache": True}), with_kwargs=True),
            bridge.model.register_forward_hook(keep_kv, with_kwargs=True)]
    try:
        names = [f"blocks.{L}.hook_resid_pre" for L in range(n)] if skip_blocks else []
        with bridge.hooks(fwd_hooks=[(site.hook(L), compare(L)) for L in range(n)]):
            base_logits, base_cache = bridge.run_with_cache(base, names_filter=names)
    finally:
        for h in handles:
            h.remove()
    resid = [base_cache[nm] for nm in names] if skip_blocks else None
    if len(kv) != n or any(k.shape[-2] != base.shape[1] for k, _ in kv):
        kv = []  # not one full-length cache entry per layer (e.g. sliding windows): no reuse
    return (src_logits, [src_cache[site.hook(L)] for L in range(n)], base_logits, resid, kv or None,
            None if any(m is None for m in same) else same)


@torch.inference_mode()
def prepare_patching(bridge: Bridge, clean: Any, corrupted: Any, site: Site | str,
                     metric: Metric | Callable[[torch.Tensor], torch.Tensor], *,
                     direction: str = "denoise", positions: Mapping[int, int] | None = None,
                     skip_blocks: bool = True, reuse_prefix: bool = True,
                     skip_unchanged: bool = True) -> Prepared:
    """Tokenize and check the prompts, run clean and corrupted once, evaluate both baselines.
    ``site``: a :class:`~workbench.patch_sites.Site` or a site name (default index)."""
    if isinstance(site, str):
        site = resolve_site(bridge, site, None)
    metric = as_metric(metric)
    if bridge.attached_hooks():  # the user's hooks must see every block and position: no skipping
        skip_blocks = reuse_prefix = False
    prompts = patch_prompts(bridge, clean, corrupted, direction, positions, site)
    pairs, base, source = prompts.pairs, prompts.base, prompts.source
    clean_str, corrupted_str = prompts.clean_str, prompts.corrupted_str
    denoise = direction == "denoise"
    src_logits, src_acts, base_logits, resid, kv, same = _runs(
        bridge, base, source, site, prompts.pair_tensor, skip_blocks, reuse_prefix)
    clean_logits, corrupted_logits = (src_logits, base_logits) if denoise else (base_logits, src_logits)
    metric = metric.prepare(clean_logits, corrupted_logits)
    batch, n_base = base.shape
    clean_per = check_output(metric(clean_logits), batch, metric.name).float().cpu()
    corrupted_per = check_output(metric(corrupted_logits), batch, metric.name).float().cpu()
    for name, per in (("clean", clean_per), ("corrupted", corrupted_per)):
        if not bool(torch.isfinite(per).all()):
            raise non_finite_error(bridge, f"The metric {metric.name} on the {name} run")
    read = None if metric.positions is None else tuple(p % n_base for p in metric.positions)
    plan = PatchPlan(bridge, site, base, src_acts, prompts.pair_tensor, resid, kv, metric, read,
                     same if skip_unchanged else None, corrupted_per if denoise else clean_per)
    return Prepared(plan, direction, pairs, clean_per, corrupted_per, clean_str, corrupted_str)


def progress_callback(progress: ProgressArg, total: int):
    """``(callback(done, total) -> keep going?, close)`` for the ``progress`` argument."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="patching", unit="cell")

        def tick(done: int, _total: int) -> bool:
            bar.update(done - bar.n)
            return True
        return tick, bar.close
    if not callable(progress):
        raise InputError(f"progress must be None, True or a callable(done, total); got "
                         f"{type(progress).__name__}.")

    def call(done: int, total: int) -> bool:
        try:
            return progress(done, total) is not False
        except Cancelled:
            return False
    return call, lambda: None


@torch.inference_mode()
def patch_sweep(bridge: Bridge, clean: Any, corrupted: Any, *, site: str,
                metric: Metric | Callable[[torch.Tensor], torch.Tensor], index: str | None = None,
                direction: str = "denoise", positions: Mapping[int, int] | None = None,
                layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                batch_size: int | None = None, memory_budget: int | None = None,
                progress: ProgressArg = None, skip_blocks: bool = True,
                reuse_prefix: bool = True, skip_unchanged: bool = True) -> PatchResult:
    """Patch every cell of ``site`` by ``index`` and measure ``metric`` (see the module doc).

    ``clean`` / ``corrupted``: a string, a list of same-length strings, or tokens ``[batch, pos]``.
    ``site``: resid_pre|resid_mid|resid_post|attn_out|mlp_out|z|q|k|v|result|pattern; ``index``:
    "pos" (residual-like sites), "head" (heads over all positions, the default for head sites)
    or "head_pos" (heads by position). ``metric``: a :class:`~workbench.metrics.Metric` or a
    function of logits ``[batch, pos, d_vocab]`` returning ``[batch]``. ``direction``: "denoise"
    (clean into corrupted) or "noise" (corrupted into clean). ``positions``: an explicit
    ``{clean_pos: corrupted_pos}`` alignment (needed when the lengths differ; sweeps only those
    positions). ``layers`` / ``heads`` restrict the sweep (default all; the result then has
    ``len(layers)`` / ``len(heads)`` along those axes). ``batch_size``: cells per forward pass
    (each cell takes ``batch`` rows; default: as many as
    fit ``memory_budget`` bytes, see :func:`~workbench.patch_engine.auto_batch_size`).
    ``progress``: None, True (a tqdm bar) or ``callable(done, total)`` that may return False or
    raise :class:`~workbench.patch_engine.Cancelled` to stop: the result is then ``partial``
    (cells not run are NaN). ``skip_blocks`` / ``reuse_prefix`` / ``skip_unchanged`` switch the
    exact skipping off (for checking): earlier blocks, earlier positions, and cells whose source
    activation equals the base run's (they get the base run's metric without a pass)."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise InputError(f"batch_size must be a positive int (cells per forward pass); got {batch_size!r}.")
    check_memory_budget(memory_budget, "the default")
    spec = resolve_site(bridge, site, index)
    layer_list, head_list = check_layers(bridge, layers), check_heads(spec, heads)
    prep = prepare_patching(bridge, clean, corrupted, spec, metric, direction=direction,
                            positions=positions, skip_blocks=skip_blocks, reuse_prefix=reuse_prefix,
                            skip_unchanged=skip_unchanged)
    plan, batch = prep.plan, prep.plan.batch
    cells = enumerate_cells(spec, layer_list, len(prep.pairs), head_list)
    size = batch_size or auto_batch_size(plan, memory_budget)
    tick, close = progress_callback(progress, len(cells))
    try:
        flat, done, n_forward = run_cells(plan, cells, size, tick)
    finally:
        close()
    sizes = {"layer": len(layer_list), "pos": len(prep.pairs), "head": len(head_list)}
    per_prompt = torch.empty(len(cells), batch)
    per_prompt[[c.flat for c in cells]] = flat
    per_prompt = per_prompt.reshape(*(sizes[a] for a in spec.axes), batch)
    axis_labels = {"layer": tuple(layer_list), "head": tuple(head_list),
                   "pos": position_labels(prep.clean_str, prep.corrupted_str, prep.pairs)}
    return PatchResult(
        values=per_prompt.mean(-1), per_prompt=per_prompt, site=spec.name, index=spec.index,
        axes=spec.axes, labels=tuple(axis_labels[a] for a in spec.axes),
        positions=tuple(prep.pairs), clean_value=float(prep.clean_per.mean()),
        corrupted_value=float(prep.corrupted_per.mean()), direction=direction,
        metric=plan.metric.name, partial=done < len(cells), n_done=done, n_forward=n_forward)
