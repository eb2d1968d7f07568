"""Attribution patching: a first-order estimate of every cell of a patching sweep at once.

Activation patching runs the base prompt once per *cell* (a slice of one activation ``a``, see
:mod:`workbench.patch_sites`) with that slice taken from the source run. Attribution patching
(Nanda, 2023) replaces each of those runs by the linear approximation at the base run::

    metric(patched) - metric(base)  ~=  sum over the cell's slice of (a_source - a_base) * dmetric/da

where the gradient is taken at the base run. A whole sweep then costs the source forward, one
base forward and ONE backward pass (of the metric summed over the batch: prompts do not interact,
so that sum's gradient holds every prompt's own gradient). Cells sum the elementwise product over
their slice: ``d_model`` for a residual-like site at one position; positions and ``d_head`` for a
head over all positions; ``d_head`` for a head at one position; source positions for one row of
an attention pattern.

:func:`attribution_sweep` takes :func:`~workbench.patching.patch_sweep`'s arguments and returns its
layout, with ``values`` holding the *estimated* patched metric (the base run's metric plus the
estimated change), so the two are read the same way. With ``exact=True`` it also runs the exact
sweep and reports the Pearson correlation over cells. The estimate is exact where the metric is
linear in the patched activation (e.g. the last block's output under an identity final norm with
a logit difference), and a screening tool elsewhere: nonlinearities (softmax, norms, saturated
outputs) make it err, most for large changes.

Gradients cannot leak: the model's parameters have ``requires_grad`` switched off for the backward
pass (and restored after), so their ``.grad`` stays untouched; every hook is detached afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .metrics import Metric, as_metric, check_output
from .patch_result import PatchResult, position_labels
from .patch_sites import Site, check_heads, check_layers, resolve_site
from .patching import patch_prompts, patch_sweep
from .results import non_finite_error

if TYPE_CHECKING:
    from .bridge import Bridge


@dataclass(frozen=True)
class AttributionResult(PatchResult):
    """An attribution-patching sweep: a :class:`~workbench.patch_result.PatchResult` whose
    ``values`` / ``per_prompt`` are first-order *estimates* of ``estimate_of`` (the exact sweep)
    with the same axes and labels. ``exact_values`` (``values``' shape) and ``correlation``
    (Pearson over cells, estimate vs exact) are filled in when the sweep ran with ``exact=True``,
    None otherwise. ``n_forward`` counts the forward passes of the estimate (2)."""

    estimate_of: str = "patch_sweep"
    exact_values: torch.Tensor | None = None
    correlation: float | None = None

    def __repr__(self) -> str:
        shape = " x ".join(f"{a} {len(lab)}" for a, lab in zip(self.axes, self.labels, strict=True))
        corr = "" if self.correlation is None else f"; correlation with exact {self.correlation:.3f}"
        return (f"AttributionResult({self.site} by {self.index}: {shape}; {self.direction}, "
                f"{self.metric} clean {self.clean_value:.4g} corrupted {self.corrupted_value:.4g}"
                f"{corr})")

    def to_dataframe(self):
        """:meth:`PatchResult.to_dataframe`'s rows (``value`` = the estimate), plus ``exact``
        when the exact sweep was run."""
        df = super().to_dataframe()
        if self.exact_values is not None:
            df["exact"] = self.exact_values.flatten().tolist()
        return df


def _gradients(bridge: Bridge, base: torch.Tensor, names: list[str], metric: Metric,
               source_logits: torch.Tensor, denoise: bool):
    """The base run with gradients: ``(metric prepared for the sweep, base per-prompt metric
    [batch], clean per-prompt [batch], corrupted per-prompt [batch], {name: base activation},
    {name: dmetric/dactivation})``. Only the hooked activations take part in autograd (the
    parameters' ``requires_grad`` is off meanwhile and restored after)."""
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def enter(act: torch.Tensor, hook) -> torch.Tensor:
        acts[hook.name] = act.detach()
        # a fresh node in the graph (for hook_result: makes W_O's output read it); the first swept
        # activation starts the graph
        return act.view_as(act) if act.requires_grad else act.detach().requires_grad_(True).clone()

    def keep_grad(grad: torch.Tensor, hook) -> None:
        grads[hook.name] = grad.detach()

    flags = {name: p.requires_grad for name, p in bridge.model.named_parameters()}
    try:
        for p in bridge.model.parameters():
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), bridge.hooks(
                fwd_hooks=[(n, enter) for n in names], bwd_hooks=[(n, keep_grad) for n in names]):
            logits = bridge(base)
            detached = logits.detach()
            clean_logits, corrupted_logits = ((source_logits, detached) if denoise
                                              else (detached, source_logits))
            metric = metric.prepare(clean_logits, corrupted_logits)
            per = check_output(metric(logits), base.shape[0], metric.name).float()
            if per.requires_grad:
                per.sum().backward()
    finally:  # by name: accelerate swaps offloaded parameters for new ones at each forward
        for name, p in bridge.model.named_parameters():
            if name in flags and p.requires_grad != flags[name]:
                with torch.inference_mode(p.is_inference()):  # made under inference mode
                    p.requires_grad_(flags[name])
    with torch.no_grad():
        clean_per = check_output(metric(clean_logits), base.shape[0], metric.name).float()
        corrupted_per = check_output(metric(corrupted_logits), base.shape[0], metric.name).float()
    return metric, per.detach(), clean_per, corrupted_per, acts, grads


def _cells(site: Site, src: torch.Tensor, act: torch.Tensor, grad: torch.Tensor | None,
           pairs: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """The estimated change of every cell of one layer, ``[*site axes without layer, batch]``.

    ``src`` ``[batch, src_pos, ...]`` and ``act`` / ``grad`` ``[batch, pos, ...]`` (patterns:
    ``[batch, heads, q_pos, k_pos]``); ``pairs [n_pairs, 2]`` (source pos, patched pos)."""
    if grad is None:  # the activation does not reach the metric
        grad = torch.zeros_like(act)
    sp, pp = pairs[:, 0].to(act.device), pairs[:, 1].to(act.device)  # (act: its layer's device)
    src = src.to(act.device)
    if site.kind == "pattern":
        d = (src[:, :, sp].float() - act[:, :, pp].float()) * grad[:, :, pp].float()  # [b, h, n, k]
        out = d.sum((2, 3)) if site.index == "head" else d.sum(-1)  # [b, h] / [b, h, n]
        out = out[:, heads]
    else:
        d = (src[:, sp].float() - act[:, pp].float()) * grad[:, pp].float()  # [b, n, (h,) d]
        if site.kind == "resid":
            out = d.sum(-1)  # [b, n]
        else:
            out = d.sum((1, 3)) if site.index == "head" else d.sum(-1)  # [b, h] / [b, n, h]
            out = out[..., heads]
    return out.movedim(0, -1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two same-sized grids over the cells finite in both (cells a partial
    sweep did not run are NaN); NaN with a constant side or no such cells."""
    a, b = a.flatten().double(), b.flatten().double()
    keep = a.isfinite() & b.isfinite()
    a, b = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def attribution_sweep(bridge: Bridge, clean: Any, corrupted: Any, *, site: str,
                      metric: Metric | Callable[[torch.Tensor], torch.Tensor], index: str | None = None,
                      direction: str = "denoise", positions: Mapping[int, int] | None = None,
                      layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                      exact: bool = False) -> AttributionResult:
    """Estimate every cell of ``patch_sweep(bridge, clean, corrupted, site=..., ...)`` by
    attribution patching (see the module doc): same arguments, same layout of ``values`` (e.g.
    ``[n_layers, n_pos]`` for ``resid_pre``, ``[n_layers, n_heads]`` for ``z`` by head,
    ``[n_layers, n_pos, n_heads]`` by head and position, ``[n_layers, n_heads, n_pos]`` for
    pattern rows) and of ``per_prompt`` ``[*values.shape, batch]``, holding the base run's
    metric plus the estimated change. ``exact=True`` also runs :func:`patch_sweep` and fills in
    ``exact_values`` and ``correlation``. Works under ``torch.inference_mode`` too."""
    spec = resolve_site(bridge, site, index)
    layer_list, head_list = check_layers(bridge, layers), check_heads(spec, heads)
    user_metric = as_metric(metric)
    prompts = patch_prompts(bridge, clean, corrupted, direction, positions, spec)
    pairs, base, source = prompts.pairs, prompts.base, prompts.source
    clean_str, corrupted_str = prompts.clean_str, prompts.corrupted_str
    denoise = direction == "denoise"
    names = [spec.hook(L) for L in dict.fromkeys(layer_list)]
    with torch.inference_mode():
        src_logits, src_cache = bridge.run_with_cache(source, names_filter=names)
    prepared, base_per, clean_per, corrupted_per, acts, grads = _gradients(
        bridge, base, names, user_metric, src_logits, denoise)
    for name, per in (("clean", clean_per), ("corrupted", corrupted_per)):
        if not bool(torch.isfinite(per).all()):
            raise non_finite_error(bridge, f"The metric {user_metric.name} on the {name} run")
    pair_t = prompts.pair_tensor
    with torch.no_grad():
        delta = torch.stack([_cells(spec, src_cache[spec.hook(L)], acts[spec.hook(L)],
                                    grads.get(spec.hook(L)), pair_t, head_list).cpu()
                             for L in layer_list])  # (each layer's on its own device, then here)
    per_prompt = delta + base_per.cpu()
    values = per_prompt.mean(-1)
    exact_values = correlation = None
    if exact:
        ref = patch_sweep(bridge, clean, corrupted, site=site, metric=metric, index=index,
                          direction=direction, positions=positions, layers=layers, heads=heads)
        exact_values, correlation = ref.values, pearson(values, ref.values)
    axis_labels = {"layer": tuple(layer_list), "head": tuple(head_list),
                   "pos": position_labels(clean_str, corrupted_str, pairs)}
    return AttributionResult(
        values=values, per_prompt=per_prompt, site=spec.name, index=spec.index, axes=spec.axes,
        labels=tuple(axis_labels[a] for a in spec.axes), positions=tuple(pairs),
        clean_value=float(clean_per.mean()), corrupted_value=float(corrupted_per.mean()),
        direction=direction, metric=prepared.name, partial=False, n_done=values.numel(), n_forward=2,
        exact_values=exact_values, correlation=correlation)
