"""Single-cell activation patching, for point-and-click panels.

A click on one cell of a sweep (a layer and position, or a layer and head) asks "what does this
one patch do?": the metric, and which next tokens it pushed up and down. :class:`CellPatcher`
runs :func:`~workbench.patching.prepare_patching` once per site (clean and corrupted runs, both
baselines), then hands each click to the batched engine as a chunk of one cell, so its exact
skipping applies (earlier blocks, earlier positions, unread unembeddings): one short forward::

    patcher = CellPatcher(bridge, clean, corrupted, metric=metric)
    cell = patcher.patch(site="resid_pre", layer=3, position=10)
    cell.value, cell.to_dataframe()          # metric; top tokens that rose / fell

:func:`patch_cell` is the one-shot form. A cell is the same cell of
:func:`~workbench.patching.patch_sweep` (same metric): residual-like sites take ``layer`` and
``position`` (None: every position at once); head sites (``z``, ``q``, ``k``, ``v``,
``result``) ``layer`` and ``head``, at every position or one ``position``; ``pattern`` a head's
whole pattern or its destination row ``position``. Positions are clean-prompt positions (with an
explicit ``positions`` alignment, one of its clean positions). The patcher caches activations:
make a new one after changing the weights; attaching or removing hooks of your own makes it
prepare the site again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .metrics import Metric, as_metric
from .patch_engine import run_cells
from .patch_result import position_labels
from .patch_sites import Cell, Site, check_heads, check_layers, resolve_site
from .patching import Prepared, patch_prompts, prepare_patching
from .results import dataframe, decode

if TYPE_CHECKING:
    from .bridge import Bridge


@dataclass(frozen=True)
class TokenShift:
    """``k`` tokens whose score moved most one way: ``ids [k]``, ``tokens`` (strings), ``delta
    [k]`` (patched minus base), ``base [k]`` and ``patched [k]`` (log-probs or logits)."""

    ids: torch.Tensor
    tokens: tuple[str, ...]
    delta: torch.Tensor
    base: torch.Tensor
    patched: torch.Tensor


@dataclass(frozen=True)
class CellPatch:
    """One patched cell.

    - ``value``: the batch-mean metric of the patched run; ``per_prompt [batch]``.
    - ``clean_value`` / ``corrupted_value`` (batch means) and ``clean_per`` / ``corrupted_per``
      ``[batch]``: the unpatched runs' metric.
    - ``logits [batch, n_read, d_vocab]`` (fp32, CPU): the patched run's logits at
      ``read_positions`` only (the metric's read positions, or the last one when it reads all).
    - ``rose`` / ``fell``: the tokens whose ``by`` ("logprob" or "logit") rose / fell most from
      the base (unpatched) run to the patched run, for the first prompt at the last read position.
    - ``position`` (clean position) and ``head`` are None where the cell spans all of them;
      ``label`` says it in words, e.g. ``"resid_pre L3 @ 10:␣Felix/␣Nora"``."""

    site: str
    layer: int
    position: int | None
    head: int | None
    label: str
    direction: str
    metric: str
    value: float
    per_prompt: torch.Tensor
    clean_value: float
    corrupted_value: float
    clean_per: torch.Tensor
    corrupted_per: torch.Tensor
    logits: torch.Tensor
    read_positions: tuple[int, ...]
    by: str
    rose: TokenShift
    fell: TokenShift

    def __repr__(self) -> str:
        return (f"CellPatch({self.label}; {self.direction}, {self.metric} {self.value:.4g} (clean "
                f"{self.clean_value:.4g}, corrupted {self.corrupted_value:.4g}))")

    @property
    def normalized(self) -> float:
        """``value`` rescaled so 0 is the corrupted baseline and 1 the clean one."""
        return (self.value - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def to_dataframe(self):
        """The rose/fell table: ``change`` ("rose" / "fell"), ``rank``, ``token_id``, ``token``,
        ``delta``, ``base`` and ``patched``; rose rows first, each largest change first."""
        rows = [{"change": change, "rank": i, "token_id": int(s.ids[i]), "token": s.tokens[i],
                 "delta": float(s.delta[i]), "base": float(s.base[i]), "patched": float(s.patched[i])}
                for change, s in (("rose", self.rose), ("fell", self.fell)) for i in range(len(s.tokens))]
        return dataframe(rows)


class _Tap(Metric):
    """Wraps a metric: ``prepare`` keeps the clean and corrupted logits ``[batch, pos, d_vocab]``
    (in ``seen``) and returns a prepared _Tap, which keeps the last logits it read ``[batch,
    n_read, d_vocab]`` (in ``last``)."""

    def __init__(self, inner: Metric) -> None:
        super().__init__(self._read, inner.positions, inner.name)
        self.inner = inner
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last: torch.Tensor | None = None

    def _read(self, at: torch.Tensor) -> torch.Tensor:
        self.last = at
        return self.inner.read(at)

    def prepare(self, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor) -> Metric:
        self.seen = (clean_logits, corrupted_logits)
        return _Tap(self.inner.prepare(clean_logits, corrupted_logits))


@dataclass(frozen=True)
class _SiteState:
    prep: Prepared  # its plan's metric is a prepared _Tap
    base_logits: torch.Tensor  # the unpatched run at `read` [batch, n_read, d_vocab], fp32 CPU
    read: tuple[int, ...]
    hooks: tuple  # the user's hooks (and the K/V grouping) when prepared


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be an int; got {value!r}.")
    return value


def _check_options(direction: str, k: Any, by: str) -> None:
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' (clean into corrupted) or 'noise' "
                         f"(corrupted into clean); got {direction!r}.")
    if by not in ("logprob", "logit"):
        raise InputError(f"by must be 'logprob' or 'logit'; got {by!r}.")
    if _as_int(k, "k") < 1:
        raise InputError(f"k must be at least 1 (tokens per rose/fell list); got {k}.")


def _state(prep: Prepared, base_logits: torch.Tensor, hooks: tuple) -> _SiteState:
    n = prep.plan.base_tokens.shape[1]
    read = prep.plan.read if prep.plan.read is not None else (n - 1,)
    return _SiteState(prep, base_logits[:, list(read)].float().cpu(), read, hooks)


class CellPatcher:
    """Patches single cells of ``clean`` / ``corrupted`` (see the module docstring), preparing
    each site once. ``metric``: a Metric or a function of logits ``[batch, pos, d_vocab]``
    returning ``[batch]``; ``direction``: "denoise" (clean into corrupted) or "noise";
    ``positions``: an explicit ``{clean_pos: corrupted_pos}`` alignment; ``k``: tokens per
    rose/fell list; ``by``: "logprob" or "logit" for those lists."""

    def __init__(self, bridge: Bridge, clean: Any, corrupted: Any, *,
                 metric: Metric | Callable[[torch.Tensor], torch.Tensor], direction: str = "denoise",
                 positions: Mapping[int, int] | None = None, k: int = 10, by: str = "logprob") -> None:
        _check_options(direction, k, by)
        # the prompts and their alignment now, not at the first click (tokenizing only)
        patch_prompts(bridge, clean, corrupted, direction, positions, resolve_site(bridge, "resid_pre", None))
        self.bridge, self.clean, self.corrupted = bridge, clean, corrupted
        self.metric, self.direction, self.positions = as_metric(metric), direction, positions
        self.k, self.by = k, by
        self._sites: dict[str, _SiteState] = {}

    def __repr__(self) -> str:
        return (f"CellPatcher({self.direction}, {self.metric.name}; prepared: "
                f"{', '.join(self._sites) or 'none'})")

    @torch.inference_mode()
    def prepare(self, site: str) -> Prepared:
        """Run the clean and corrupted prompts for ``site`` now (clicks on it then cost one short
        forward each); cached, and redone when the bridge's attached hooks (or K/V grouping) changed."""
        return self._site(resolve_site(self.bridge, site, None)).prep

    def _site(self, spec: Site) -> _SiteState:
        hooks = (*self.bridge.attached_hooks(), self.bridge.ungroup_grouped_query_attention)
        state = self._sites.get(spec.name)
        if state is None or state.hooks != hooks:
            tap = _Tap(self.metric)
            prep = prepare_patching(self.bridge, self.clean, self.corrupted, spec, tap,
                                    direction=self.direction, positions=self.positions)
            base = tap.seen[1] if self.direction == "denoise" else tap.seen[0]
            state = self._sites[spec.name] = _state(prep, base, hooks)
        return state

    def patch(self, *, site: str, layer: int, position: int | None = None,
              head: int | None = None) -> CellPatch:
        """Patch one cell (see the module docstring) and return its :class:`CellPatch`."""
        spec = resolve_site(self.bridge, site, None)
        _check_cell(self.bridge, spec, layer, head)  # before the (slower) first run of a site
        with torch.inference_mode():
            state = self._site(spec)
        return _patch(self.bridge, state, spec, layer, position, head, self.k, self.by)


def _check_cell(bridge: Bridge, spec: Site, layer: Any, head: Any) -> tuple[int, int]:
    """``(layer, head or -1)`` checked, or an InputError with the valid range."""
    layer = check_layers(bridge, _as_int(layer, "layer"))[0]
    if spec.kind != "resid" and head is None:
        raise InputError(f"Site {spec.name!r} is patched per head: pass head=0..{spec.n_heads - 1} "
                         "(and a position, or None for every position).")
    heads = check_heads(spec, None if head is None else _as_int(head, "head"))
    return layer, heads[0] if heads else -1


def _pair(prep: Prepared, position: Any) -> int:
    """Index of the aligned pair whose clean position is ``position`` (negative: from the end)."""
    clean, n = [c for c, _ in prep.pairs], len(prep.clean_str)
    pos = _as_int(position, "position")
    pos = pos + n if -n <= pos < 0 else pos
    if pos not in clean:
        valid = (f"0..{n - 1} (or -{n}..-1 from the end)" if clean == list(range(n))
                 else f"the aligned clean positions {clean}")
        raise InputError(f"Position {position!r} does not exist: valid positions are {valid}; "
                         "or None for every position.")
    return clean.index(pos)


def _shift(bridge: Bridge, delta: torch.Tensor, base: torch.Tensor, patched: torch.Tensor, k: int,
           largest: bool) -> TokenShift:
    top = torch.topk(delta, min(k, delta.numel()), largest=largest).indices
    return TokenShift(top, tuple(decode(bridge, top.tolist())), delta[top], base[top], patched[top])


@torch.inference_mode()
def _patch(bridge: Bridge, state: _SiteState, spec: Site, layer: Any, position: Any, head: Any,
           k: int, by: str) -> CellPatch:
    layer, h = _check_cell(bridge, spec, layer, head)
    prep, tap = state.prep, state.prep.plan.metric
    pair = -1 if position is None else _pair(prep, position)
    per_prompt = run_cells(prep.plan, [Cell(layer, h, pair, 0)], 1)[0][0]
    if tap.last is None:  # the cell changes nothing (its source equals the base run): not run
        logits = state.base_logits.clone()
    else:
        logits = (tap.last if prep.plan.read is not None else tap.last[:, -1:]).float().cpu().clone()
    tap.last = None
    base, patched = state.base_logits[0, -1], logits[0, -1]
    if by == "logprob":
        base, patched = torch.log_softmax(base, -1), torch.log_softmax(patched, -1)
    delta = patched - base
    where = "" if pair < 0 else " @ " + position_labels(prep.clean_str, prep.corrupted_str,
                                                        [prep.pairs[pair]])[0]
    return CellPatch(
        site=spec.name, layer=layer, position=None if pair < 0 else prep.pairs[pair][0],
        head=None if h < 0 else h, label=f"{spec.name} L{layer}" + ("" if h < 0 else f" H{h}") + where,
        direction=prep.direction, metric=tap.name, value=float(per_prompt.mean()),
        per_prompt=per_prompt, clean_value=float(prep.clean_per.mean()),
        corrupted_value=float(prep.corrupted_per.mean()), clean_per=prep.clean_per,
        corrupted_per=prep.corrupted_per, logits=logits, read_positions=state.read, by=by,
        rose=_shift(bridge, delta, base, patched, k, True),
        fell=_shift(bridge, delta, base, patched, k, False))


def patch_cell(bridge: Bridge, clean: Any, corrupted: Any, *, site: str, layer: int,
               position: int | None = None, head: int | None = None,
               metric: Metric | Callable[[torch.Tensor], torch.Tensor] | None = None,
               direction: str = "denoise", k: int = 10, by: str = "logprob",
               positions: Mapping[int, int] | None = None, prepared: Prepared | None = None) -> CellPatch:
    """Patch one cell of ``site`` once (see the module docstring; use :class:`CellPatcher` for
    repeated clicks). ``prepared``: a :func:`~workbench.patching.prepare_patching` set-up of the
    same site to reuse (its prompts, metric and direction are used; ``clean``, ``corrupted`` and
    ``metric`` may then be None) at the price of one unpatched forward for the rose/fell lists."""
    if prepared is None:
        if metric is None:
            raise InputError("patch_cell needs a metric (or a prepared= set-up that holds one).")
        patcher = CellPatcher(bridge, clean, corrupted, metric=metric, direction=direction,
                              positions=positions, k=k, by=by)
        return patcher.patch(site=site, layer=layer, position=position, head=head)
    if not isinstance(prepared, Prepared):
        raise InputError(f"prepared must come from prepare_patching(); got {type(prepared).__name__}.")
    spec, plan = resolve_site(bridge, site, None), prepared.plan
    if plan.site.name != spec.name or plan.bridge is not bridge:
        raise InputError(f"prepared was made for site {plan.site.name!r} (or another bridge); this call "
                         f"patches {spec.name!r}. Prepare that site, or leave prepared=None.")
    if direction != prepared.direction:
        raise InputError(f"prepared runs direction {prepared.direction!r}, but direction={direction!r} "
                         "was asked; pass the same direction (or leave prepared=None).")
    _check_options(direction, k, by)
    _check_cell(bridge, spec, layer, head)
    prep = dataclasses.replace(prepared, plan=dataclasses.replace(plan, metric=_Tap(plan.metric)))
    with torch.inference_mode():  # one unpatched run for the base logits
        state = _state(prep, bridge(plan.base_tokens), tuple(bridge.attached_hooks()))
    return _patch(bridge, state, spec, layer, position, head, k, by)
