"""What a patching sweep patches: sites, index kinds, cells, and how one cell is written.

A *site* is a family of hook points, one per layer (``resid_pre`` is ``blocks.L.hook_resid_pre``).
An *index kind* says which slices of it are swept, and fixes the layout of the result, which is
TransformerLens's ``patching.get_act_patch_*`` layout:

=========================================  =========  =====================  ====================
site                                       index      cell                   values
=========================================  =========  =====================  ====================
resid_pre|mid|post, attn_out, mlp_out      "pos"      (layer, pos)           [n_layers, n_pos]
z, q, k, v, result                         "head"     (layer, head)          [n_layers, n_heads]
z, q, k, v, result                         "head_pos" (layer, pos, head)     [n_layers, n_pos, n_heads]
pattern                                    "head"     (layer, head)          [n_layers, n_heads]
pattern                                    "head_pos" (layer, head, dest)    [n_layers, n_heads, n_pos]
=========================================  =========  =====================  ====================

``"head"`` patches a head at every position; ``pattern`` by position patches one destination
row ``[src_pos]`` of a head's pattern. On grouped-query models ``k`` and ``v`` are swept per
key/value head (``n_kv_heads``, as TransformerLens does), unless the bridge shows them per query
head (``bridge.ungroup_grouped_query_attention``): then patching query head h's keys changes only
what head h reads. ``result`` is the opt-in ``attn.hook_result`` (it is computed because the
sweep names it).

Positions are *aligned pairs* ``(source_pos, patched_pos)``: the identity when both prompts have
the same length, or the caller's explicit alignment. ``n_pos`` counts the pairs.

``resolve_site``, ``check_layers`` and ``check_heads`` turn user arguments into a :class:`Site`
and index lists (or an InputError with the valid range); ``enumerate_cells`` lists the cells;
``write`` patches one chunk's rows of one layer's activation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .errors import InputError
from .results import check_layers  # noqa: F401 (re-exported for the patching modules)

# site -> (hook suffix, tensor kind). Kinds: "resid" [b, pos, d]; "head" [b, pos, heads, d];
# "pattern" [b, heads, q_pos, k_pos].
SITES: dict[str, tuple[str, str]] = {
    "resid_pre": ("hook_resid_pre", "resid"), "resid_mid": ("hook_resid_mid", "resid"),
    "resid_post": ("hook_resid_post", "resid"), "attn_out": ("hook_attn_out", "resid"),
    "mlp_out": ("hook_mlp_out", "resid"), "z": ("attn.hook_z", "head"), "q": ("attn.hook_q", "head"),
    "k": ("attn.hook_k", "head"), "v": ("attn.hook_v", "head"),
    "result": ("attn.hook_result", "head"), "pattern": ("attn.hook_pattern", "pattern"),
}
INDEXES = {"resid": ("pos",), "head": ("head", "head_pos"), "pattern": ("head", "head_pos")}
AXES = {("resid", "pos"): ("layer", "pos"), ("head", "head"): ("layer", "head"),
        ("head", "head_pos"): ("layer", "pos", "head"), ("pattern", "head"): ("layer", "head"),
        ("pattern", "head_pos"): ("layer", "head", "pos")}


@dataclass(frozen=True)
class Site:
    """One swept site: short ``name``, hook ``suffix``, tensor ``kind``, ``index`` kind, and
    ``n_heads`` along its head axis (0 for residual-like sites)."""

    name: str
    suffix: str
    kind: str
    index: str
    n_heads: int

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.{self.suffix}"

    @property
    def axes(self) -> tuple[str, ...]:
        return AXES[self.kind, self.index]

    @property
    def full_keys(self) -> bool:
        """The position axis of the patched tensor spans the whole sequence even when only the
        last positions are run (keys and values come back concatenated with the cached prefix)."""
        return self.name in ("k", "v")


def resolve_site(bridge, site: str, index: str | None) -> Site:
    """The :class:`Site` for a name (``"z"``, ``"hook_z"`` and ``"attn.hook_z"`` alike) and an
    index kind (None: the site's default), or an InputError listing the valid ones."""
    if not isinstance(site, str):
        raise InputError(f"site must be a string such as 'resid_pre' or 'z'; got {type(site).__name__}.")
    short = site.removeprefix("attn.").removeprefix("hook_")
    if short not in SITES:
        raise InputError(f"Unknown patching site {site!r}. Valid sites: {', '.join(SITES)}.")
    suffix, kind = SITES[short]
    cfg = bridge.cfg
    if short == "resid_mid" and cfg.parallel_attn_mlp:
        raise InputError("This model runs attention and MLP in parallel, so it has no resid_mid; "
                         "patch resid_pre, attn_out or mlp_out instead.")
    valid = INDEXES[kind]
    index = valid[0] if index is None else index
    if index not in valid:
        raise InputError(f"index {index!r} is not valid for site {short!r}; valid: {', '.join(valid)}.")
    n_heads = 0
    if kind != "resid":
        grouped = short in ("k", "v") and not bridge.ungroup_grouped_query_attention
        n_heads = cfg.n_kv_heads if grouped else cfg.n_heads
    return Site(short, suffix, kind, index, n_heads)


@dataclass(frozen=True)
class Cell:
    """One patch: the model's ``layer``, the ``head`` along the site's head axis (-1 at
    residual-like sites) and ``pair`` (index into the aligned positions; -1: every aligned
    position, as for heads over all positions); ``flat`` is its index in the flattened result."""

    layer: int
    head: int
    pair: int
    flat: int


def enumerate_cells(site: Site, layers: list[int], n_pairs: int, heads: list[int]) -> list[Cell]:
    """Every cell of the sweep over ``layers`` x ``n_pairs`` positions x ``heads`` (as the
    site's axes ask), in the result's row-major order (``Cell.flat``)."""
    values = {"layer": layers, "pos": list(range(n_pairs)), "head": heads}
    grid = [values[a] for a in site.axes]
    cells = []
    for flat, idx in enumerate(itertools.product(*grid)):
        named = dict(zip(site.axes, idx, strict=True))
        cells.append(Cell(named["layer"], named.get("head", -1), named.get("pos", -1), flat))
    return cells


def check_heads(site: Site, heads) -> list[int]:
    """Head indices along the site's head axis, or an InputError with the valid range."""
    if site.kind == "resid":
        if heads is not None:
            raise InputError(f"Site {site.name!r} has no heads; leave heads=None.")
        return []
    n = site.n_heads
    if heads is None:
        return list(range(n))
    what = "key/value head" if site.name in ("k", "v") and n else "head"
    out = []
    for h in [heads] if isinstance(heads, int) else list(heads):
        if not isinstance(h, int) or not 0 <= h < n:
            raise InputError(f"{what.capitalize()} {h!r} does not exist at site {site.name!r}: valid "
                             f"{what}s are 0..{n - 1}.")
        out.append(h)
    if not out:
        raise InputError("heads is empty; give at least one head (or None for all).")
    return out


def write(site: Site, act: torch.Tensor, src: torch.Tensor, slots: list[int], cells: list[Cell],
          pairs: torch.Tensor, batch: int, offset: int) -> torch.Tensor:
    """A copy of ``act`` (the patched run's activation, ``batch * n_slots`` rows) with each cell's
    source activation written into its rows ``slot * batch .. slot * batch + batch - 1``.

    ``src``: the source run's activation at this layer ``[batch, src_pos, ...]``; ``pairs``
    ``[n_pairs, 2]`` (source pos, patched pos); ``offset``: the first position the patched run
    computes (its position axis starts there, except for keys/values and pattern sources)."""
    out = act.clone()
    src, pairs = src.to(act.device, act.dtype), pairs.to(act.device)
    shift = 0 if site.full_keys else offset
    for one_pos in (True, False):  # cells at one position, then cells at every aligned position
        group = [(s, c) for s, c in zip(slots, cells, strict=True) if (c.pair >= 0) == one_pos]
        if not group:
            continue
        b = torch.arange(batch, device=act.device)
        rows = (torch.tensor([s for s, _ in group], device=act.device)[:, None] * batch + b).flatten()
        bb = b.repeat(len(group))  # [n * batch]: the source prompt of each row
        heads = torch.tensor([c.head for _, c in group], device=act.device).repeat_interleave(batch)
        if one_pos:
            idx = torch.tensor([c.pair for _, c in group], device=act.device).repeat_interleave(batch)
            sp, pp = pairs[idx, 0], pairs[idx, 1] - shift
        else:  # [1, n_pairs], broadcast against [n * batch, 1] rows
            sp, pp = pairs[:, 0][None], pairs[:, 1][None] - shift
            rows, bb, heads = rows[:, None], bb[:, None], heads[:, None]
        if site.kind == "resid":
            out[rows, pp] = src[bb, sp]
        elif site.kind == "head":
            out[rows, pp, heads] = src[bb, sp, heads]
        else:  # pattern: whole destination rows (source and patched keys have the same length)
            out[rows, heads, pp] = src[bb, heads, sp]
    return out


def same_mask(site: Site, base: torch.Tensor, src: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Where the source activation equals the base run's, bit for bit, in every prompt: patching
    there changes nothing. ``base`` / ``src``: one layer's activation of the two runs (full
    length); ``pairs [n_pairs, 2]`` (source pos, base pos). Returns ``[n_pairs]`` (residual-like
    sites) or ``[n_pairs, n_heads]`` (head and pattern sites), bool."""
    sp, pp = pairs[:, 0].to(base.device), pairs[:, 1].to(base.device)
    src = src.to(base.device, base.dtype)  # (sp indexes src once it is on base's device)
    if site.kind in ("resid", "head"):  # [b, pos, d] -> [n_pairs]; [b, pos, h, d] -> [n_pairs, h]
        return (src[:, sp] == base[:, pp]).all(-1).all(0)
    return (src[:, :, sp] == base[:, :, pp]).all(-1).all(0).T  # pattern [b, h, q, k]


def cell_unchanged(mask: torch.Tensor, cell: Cell) -> bool:
    """Whether patching ``cell`` changes nothing, from its layer's :func:`same_mask`."""
    at = mask if cell.pair < 0 else mask[cell.pair : cell.pair + 1]
    if mask.dim() == 2:
        at = at[:, cell.head]
    return bool(at.all())
