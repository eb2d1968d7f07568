"""Path patching: the effect of some heads' outputs on other heads' inputs only.

Path patching (Wang et al. 2022, the IOI paper) isolates one *path*: from the sender heads to
the query, key or value input of the receiver heads (or, with ``receivers=None``, to the logits).
With ``base`` the patched prompt and ``source`` the other one (``direction="denoise"``: the
corrupted prompt runs with the clean senders; ``"noise"``: the reverse), for each set of senders:

1. the source and base runs are cached once (every head's ``hook_z``);
2. the base prompt runs with the senders' ``hook_z`` taken from the source run and every other
   head's ``hook_z`` frozen to its base-run value (MLPs recompute, so paths through MLPs count
   as direct), caching the receivers' ``hook_q|k|v``; with ``receivers=None`` the metric is
   read from this run (the sender -> logits path, e.g. name movers);
3. the base prompt runs again with only the receivers' ``hook_q|k|v`` replaced by those cached
   values (everything else recomputes), and the metric is read.

Receivers must be in later layers than every sender. On grouped-query models key/value
receivers are patched per query head (the bridge shows K/V per query head meanwhile).
``positions={clean_pos: corrupted_pos}`` restricts which positions of the senders' output come
from the source run (default: all; then both prompts must have one length); receivers are
patched at every position. :func:`path_patch_sweep` runs every single head before the
receivers as the sender, many senders per forward pass (each takes ``batch`` rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .metrics import Metric, as_metric, check_output
from .patch_engine import PatchPlan, auto_batch_size
from .patch_result import PatchResult
from .patch_sites import resolve_site
from .patching import ProgressArg, align_positions, pair_tokens, progress_callback
from .results import dataframe, decode

if TYPE_CHECKING:
    from .bridge import Bridge

Head = tuple[int, int]


@dataclass(frozen=True)
class PathPatchResult(PatchResult):
    """Path patching, as a :class:`~workbench.patch_result.PatchResult` of the senders' ``z``.
    :func:`path_patch_sweep`: ``values [n_layers, n_heads]`` (axes ``("layer", "head")``; cell
    ``[L, h]``: sender ``(L, h)`` alone; NaN where that head is not before the receivers, or not
    run when ``partial``). :func:`path_patch`: ``values []`` (axes ``()``; read ``.value``).
    ``per_prompt [*values.shape, batch]``. ``senders``: the senders (every valid one for a
    sweep); ``receivers``: ``(layer, head)`` pairs, or None for the logits; ``receiver_input``:
    ``"q"``, ``"k"``, ``"v"`` or a combination such as ``"qkv"`` (``"logits"`` when
    ``receivers`` is None); ``positions``: the (clean pos, corrupted pos) pairs where the senders
    are patched."""

    senders: tuple[Head, ...] = ()
    receivers: tuple[Head, ...] | None = None
    receiver_input: str = "logits"

    @property
    def value(self) -> float:
        """The batch-mean metric of a single path patch (the mean over cells for a sweep)."""
        return float(self.values.nanmean())

    def __repr__(self) -> str:
        to = "logits" if self.receivers is None else f"{_names(self.receivers)} ({self.receiver_input})"
        what = (f"layer {len(self.labels[0])} x head {len(self.labels[1])}" if self.axes
                else f"{_names(self.senders)}: {self.value:.4g}")
        return (f"PathPatchResult({what} -> {to}; {self.direction}, {self.metric} clean "
                f"{self.clean_value:.4g} corrupted {self.corrupted_value:.4g}"
                f"{', partial' if self.partial else ''})")

    def to_dataframe(self):
        """A sweep: one row per sender (``layer``, ``head``, ``value``); a single path patch:
        one row (``senders``, ``receivers``, ``receiver_input``, ``value``)."""
        if self.axes:
            return super().to_dataframe()
        to = "logits" if self.receivers is None else _names(self.receivers)
        return dataframe([{"senders": _names(self.senders), "receivers": to,
                           "receiver_input": self.receiver_input, "value": self.value}])


def _names(heads: Sequence[Head]) -> str:
    return ",".join(f"L{L}H{h}" for L, h in heads)


@dataclass(frozen=True)
class _Setup:
    """Cached runs: ``base [batch, pos]``; ``src_z[L] [batch, src_pos, heads, d_head]``,
    ``base_z[L] [batch, pos, heads, d_head]``; ``pairs [n, 2]`` (source pos, base pos); the
    prepared metric and the batch-mean baselines."""

    bridge: Bridge
    base: torch.Tensor
    src_z: list[torch.Tensor]
    base_z: list[torch.Tensor]
    pairs: torch.Tensor
    metric: Metric
    direction: str
    positions: tuple[tuple[int, int], ...]
    clean_value: float
    corrupted_value: float

    def result(self, per_prompt: torch.Tensor, axes: tuple[str, ...], senders: list[Head],
               receivers: list[Head] | None, inputs: str, n_done: int, n_total: int,
               n_forward: int) -> PathPatchResult:
        cfg = self.bridge.cfg
        labels = (tuple(range(cfg.n_layers)), tuple(range(cfg.n_heads))) if axes else ()
        return PathPatchResult(
            values=per_prompt.mean(-1), per_prompt=per_prompt, site="z", index="head", axes=axes,
            labels=labels, senders=tuple(senders), receivers=None if receivers is None else tuple(receivers),
            receiver_input=inputs, positions=self.positions, clean_value=self.clean_value,
            corrupted_value=self.corrupted_value, direction=self.direction, metric=self.metric.name,
            partial=n_done < n_total, n_done=n_done, n_forward=n_forward)


def _heads(bridge: Bridge, heads: Any, what: str) -> list[Head]:
    """``(layer, head)`` pairs (one pair alone is accepted too), checked, without repeats."""
    n, h = bridge.cfg.n_layers, bridge.cfg.n_heads
    items = [heads] if isinstance(heads, tuple) and len(heads) == 2 and isinstance(heads[0], int) else heads
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError(f"{what} must be a non-empty list of (layer, head) pairs; got {heads!r}.")
    out = []
    for item in items:
        ok = (isinstance(item, (tuple, list)) and len(item) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in item))
        if not ok or not (-n <= item[0] < n and 0 <= item[1] < h):
            raise InputError(f"{what}: {item!r} is not a head of this model; give (layer, head) with "
                             f"layers 0..{n - 1} and heads 0..{h - 1}.")
        out.append((item[0] % n, item[1]))
    return list(dict.fromkeys(out))


def _receivers(bridge: Bridge, receivers: Any, receiver_input: Any,
               last_sender: int) -> tuple[list[Head] | None, str]:
    """``(receivers or None for the logits, "q"|"k"|"v"|... or "logits")``; every receiver in a
    layer after ``last_sender`` (a sweep passes 0: some head must come before them)."""
    if receivers is None or (isinstance(receivers, str) and receivers == "logits"):
        return None, "logits"
    out, n = _heads(bridge, receivers, "receivers"), bridge.cfg.n_layers
    bad = [r for r in out if r[0] <= last_sender]
    if bad:
        valid = (f"layers {last_sender + 1}..{n - 1}" if last_sender + 1 < n
                 else "no layer (the senders are in the last one): use receivers=None for the logits")
        raise InputError(f"Receivers must come after every sender (the last sender is in layer "
                         f"{last_sender}): {_names(bad)} do not. Valid receivers are in {valid}.")
    text = "".join(receiver_input) if isinstance(receiver_input, (list, tuple)) else receiver_input
    if not isinstance(text, str) or not text or set(text) - set("qkv"):
        raise InputError(f"receiver_input must be 'q', 'k', 'v' or a combination such as 'qkv' (the "
                         f"receivers' query, key or value input); got {receiver_input!r}.")
    return out, "".join(x for x in "qkv" if x in text)


def _setup(bridge: Bridge, clean: Any, corrupted: Any, metric: Any, direction: str,
           positions: Mapping[int, int] | None) -> _Setup:
    """Tokenize, run source and base once (caching every ``hook_z``), prepare the metric."""
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted "
                         f"into clean); got {direction!r}.")
    metric = as_metric(metric)
    clean_t, corrupted_t = pair_tokens(bridge, clean, corrupted)
    pairs = align_positions(decode(bridge, clean_t[0].tolist()), decode(bridge, corrupted_t[0].tolist()),
                   positions, resolve_site(bridge, "z", None))
    denoise = direction == "denoise"
    base, source = (corrupted_t, clean_t) if denoise else (clean_t, corrupted_t)
    names = [f"blocks.{L}.attn.hook_z" for L in range(bridge.cfg.n_layers)]
    with torch.inference_mode():
        src_logits, src = bridge.run_with_cache(source, names_filter=names)
        base_logits, cache = bridge.run_with_cache(base, names_filter=names)
        clean_l, corrupted_l = (src_logits, base_logits) if denoise else (base_logits, src_logits)
        metric = metric.prepare(clean_l, corrupted_l)
        clean_v, corrupted_v = (float(check_output(metric(lg), base.shape[0], metric.name).float().mean())
                                for lg in (clean_l, corrupted_l))
    pair_t = torch.tensor([(c, d) if denoise else (d, c) for c, d in pairs], device=base.device)
    return _Setup(bridge, base, [src[n] for n in names], [cache[n] for n in names], pair_t, metric,
                  direction, tuple(pairs), clean_v, corrupted_v)


def _run_groups(s: _Setup, groups: list[list[Head]], receivers: list[Head] | None,
                inputs: str) -> torch.Tensor:
    """Path patch each group of senders (one group per ``batch`` rows of one forward pass);
    returns the metric ``[len(groups), batch]``."""
    bridge, B, C = s.bridge, s.base.shape[0], len(groups)
    n = bridge.cfg.n_layers
    frozen_layers = n if receivers is None else max(L for L, _ in receivers)
    sp, pp = s.pairs[:, 0], s.pairs[:, 1]

    def freeze(layer: int):
        z = s.base_z[layer].repeat(C, 1, 1, 1)  # on this layer's device (several under a device_map)
        src, at_src, at_base = s.src_z[layer].to(z.device), sp.to(z.device), pp.to(z.device)
        for slot, group in enumerate(groups):
            for L, h in group:
                if L == layer:
                    z[slot * B:(slot + 1) * B, at_base, h] = src[:, at_src, h].to(z.dtype)
        return lambda act, hook: z

    tokens = s.base.repeat(C, 1)
    fwd = [(f"blocks.{L}.attn.hook_z", freeze(L)) for L in range(frozen_layers)]
    grouped = bridge.ungroup_grouped_query_attention
    try:
        if receivers is None:
            logits = bridge.run_with_hooks(tokens, fwd_hooks=fwd)
        else:
            bridge.ungroup_grouped_query_attention = True  # K/V per query head
            by_name: dict[str, list[int]] = {}
            for L, h in receivers:
                for x in inputs:
                    by_name.setdefault(f"blocks.{L}.attn.hook_{x}", []).append(h)
            cached: dict[str, torch.Tensor] = {}

            def keep(act, hook):
                cached[hook.name] = act[:, :, by_name[hook.name]].clone()

            def patch(act, hook):
                out = act.clone()
                out[:, :, by_name[hook.name]] = cached[hook.name]
                return out
            bridge.run_with_hooks(tokens, fwd_hooks=fwd + [(nm, keep) for nm in by_name],
                                  stop_at_layer=frozen_layers + 1)
            logits = bridge.run_with_hooks(tokens, fwd_hooks=[(nm, patch) for nm in by_name])
    finally:
        bridge.ungroup_grouped_query_attention = grouped
    logits = logits.reshape(C, B, *logits.shape[1:])
    return torch.stack([check_output(s.metric(logits[i]), B, s.metric.name).float()
                        for i in range(C)]).cpu()


@torch.inference_mode()
def path_patch(bridge: Bridge, clean: Any, corrupted: Any, *, senders: Sequence[Head],
               receivers: Sequence[Head] | str | None, receiver_input: str = "v",
               metric: Metric | Callable[[torch.Tensor], torch.Tensor], direction: str = "denoise",
               positions: Mapping[int, int] | None = None) -> PathPatchResult:
    """Path patch ``senders`` (``(layer, head)`` pairs) -> the ``receiver_input`` (``"q"``,
    ``"k"``, ``"v"`` or e.g. ``"qkv"``) of ``receivers`` (heads in later layers; None or
    ``"logits"``: the logits), see the module doc. ``clean`` / ``corrupted`` / ``metric`` /
    ``direction`` / ``positions`` as for :func:`~workbench.patching.patch_sweep`. Returns a
    result with ``values []`` and ``per_prompt [batch]`` (the metric of the path-patched run)."""
    heads = _heads(bridge, senders, "senders")
    recv, inputs = _receivers(bridge, receivers, receiver_input, max(L for L, _ in heads))
    s = _setup(bridge, clean, corrupted, metric, direction, positions)
    per = _run_groups(s, [heads], recv, inputs)[0]
    return s.result(per, (), heads, recv, inputs, 1, 1, 1 if recv is None else 2)


@torch.inference_mode()
def path_patch_sweep(bridge: Bridge, clean: Any, corrupted: Any, *,
                     receivers: Sequence[Head] | str | None, receiver_input: str = "v",
                     metric: Metric | Callable[[torch.Tensor], torch.Tensor], direction: str = "denoise",
                     positions: Mapping[int, int] | None = None, batch_size: int | None = None,
                     memory_budget: int | None = None, progress: ProgressArg = None) -> PathPatchResult:
    """:func:`path_patch` with every single head before the receivers as the sender (every head
    for the logits): ``values [n_layers, n_heads]``, NaN where a head is not a valid sender.
    Senders are packed ``batch_size`` to a forward pass (default: as many as fit
    ``memory_budget``, see :func:`~workbench.patch_engine.auto_batch_size`); ``progress`` as for
    :func:`~workbench.patching.patch_sweep` (a cancelled sweep is ``partial``)."""
    cfg = bridge.cfg
    recv, inputs = _receivers(bridge, receivers, receiver_input, 0)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise InputError(f"batch_size must be a positive int (senders per forward pass); got {batch_size!r}.")
    first = cfg.n_layers if recv is None else min(L for L, _ in recv)
    senders = [(L, h) for L in range(first) for h in range(cfg.n_heads)]
    s = _setup(bridge, clean, corrupted, metric, direction, positions)
    plan = PatchPlan(bridge, resolve_site(bridge, "z", None), s.base, [], s.pairs, None, None, s.metric, None)
    size = batch_size or auto_batch_size(plan, memory_budget)  # memory per sender ~ per patched cell
    per_prompt = torch.full((cfg.n_layers, cfg.n_heads, s.base.shape[0]), float("nan"))
    tick, close = progress_callback(progress, len(senders))
    done = n_forward = 0
    try:
        for i in range(0, len(senders), size):
            chunk = senders[i:i + size]
            per = _run_groups(s, [[x] for x in chunk], recv, inputs)
            for (L, h), row in zip(chunk, per, strict=True):
                per_prompt[L, h] = row
            done, n_forward = done + len(chunk), n_forward + (1 if recv is None else 2)
            if tick is not None and not tick(done, len(senders)):
                break
    finally:
        close()
    return s.result(per_prompt, ("layer", "head"), senders, recv, inputs, done, len(senders), n_forward)
