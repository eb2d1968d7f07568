"""The bridge's attention function, registered in transformers' attention interface.

HF decoder families compute Q, K, V (and apply rotary) in their own modules, then call the
function named by ``config._attn_implementation`` with ``query [batch, n_heads, q_pos, d_head]``,
``key/value [batch, n_kv_heads, k_pos, d_head]`` and a mask. We register ``"workbench"`` there:

- when no hook point of that layer's attention internals has a function, it calls HF's own SDPA
  function unchanged (a plain run stays on the fused kernel);
- otherwise it runs the eager computation itself and fires ``hook_q``, ``hook_k``, ``hook_v``
  (post-rotary, ``[batch, pos, heads, d_head]``), ``hook_attn_scores`` (pre-softmax, masked
  entries ``-inf``, ``[batch, n_heads, q_pos, k_pos]``), ``hook_pattern`` (post-softmax) and
  ``hook_z`` (``[batch, pos, n_heads, d_head]``), each readable and writable, numerically equal
  to HF's eager path. In ``bridge.generate`` (inside :func:`kv_write_back`) the keys reach the
  function with the cached positions in front: ``hook_k`` / ``hook_v`` then show only the new
  positions, and a write to them is stored in the cache; ``hook_attn_scores`` /
  ``hook_pattern`` are ``[batch, n_heads, new_pos, all_pos]``.

Masks are built by HF's SDPA mask builder (a boolean ``[batch, 1, q, k]`` mask, True = attend, or
None for a plain causal run), registered under the same name.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import HookShapeError
from .hook_points import HookPoint

ATTN_IMPLEMENTATION = "workbench"


@dataclass
class AttentionSite:
    """The attention hook points of one layer, and how to present grouped K/V."""

    q: HookPoint
    k: HookPoint
    v: HookPoint
    scores: HookPoint
    pattern: HookPoint
    z: HookPoint
    ungroup_kv: bool = False  # show K/V hooks per query head
    # the module multiplied the queries by this before the call (OPT's d_head ** -0.5, with
    # scaling=1): hook_q shows them divided back, the projection's output
    q_prescale: float | None = None
    fp32_scores: bool = False  # q.k in float32 whatever the dtype (GPT-J's eager attention)

    def wants_internals(self) -> bool:
        return (self.q.active or self.k.active or self.v.active or self.scores.active
                or self.pattern.active or self.z.active)


# attention module -> its site; weak so a dropped model frees its entry
_SITES: weakref.WeakKeyDictionary[nn.Module, AttentionSite] = weakref.WeakKeyDictionary()


def register_site(module: nn.Module, site: AttentionSite) -> None:
    _SITES[module] = site


def site_of(module: nn.Module) -> AttentionSite | None:
    return _SITES.get(module)


def ensure_registered() -> None:
    """Register the ``"workbench"`` attention and mask functions with transformers (idempotent)."""
    if ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_IMPLEMENTATION, workbench_attention)
    if ATTN_IMPLEMENTATION not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def workbench_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                        value: torch.Tensor, attention_mask: torch.Tensor | None,
                        scaling: float | None = None, dropout: float = 0.0, **kwargs):
    """The registered function. Shapes: query ``[b, h, q, d]``, key/value ``[b, h_kv, k, d]``;
    returns ``(z [b, q, h, d], pattern [b, h, q, k] or None)``."""
    site = _SITES.get(module)
    softcap = kwargs.get("softcap")
    if softcap is None and (site is None or not site.wants_internals()):
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    # SDPA has no soft-capping (Gemma 2), so a capped model always takes the eager path
    return hooked_eager_attention(site or _unhooked_site(), module, query, key, value,
                                  attention_mask, scaling=scaling, dropout=dropout, softcap=softcap)


def _unhooked_site() -> AttentionSite:
    """A site whose points have no functions (a module the bridge did not register)."""
    return AttentionSite(*(HookPoint(f"blocks.0.attn.hook_{s}")
                           for s in ("q", "k", "v", "attn_scores", "pattern", "z")))


def _repeat_heads(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """Repeat each K/V head ``groups`` times along ``dim`` (query head h uses K/V head h // g)."""
    return x if groups == 1 else torch.repeat_interleave(x, groups, dim=dim)


def _allowed(mask: torch.Tensor | None, q_len: int, k_len: int, device: torch.device,
             causal: bool = True) -> torch.Tensor:
    """Boolean ``[b or 1, 1, q, k]``: True where a query may attend to a key."""
    if mask is None:  # plain run; causal: queries are the last q_len of k_len positions
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
        return (allowed.tril(k_len - q_len) if causal else allowed)[None, None]
    if mask.dtype == torch.bool:
        return mask[..., :q_len, :k_len]
    return mask[..., :q_len, :k_len] > torch.finfo(mask.dtype).min / 2


class _KVState(threading.local):
    write_back = False  # set by generation around each pass that fills a key-value cache


_KV = _KVState()


@contextlib.contextmanager
def kv_write_back() -> Iterator[None]:
    """While inside, writes to ``hook_k`` / ``hook_v`` go into the tensors HF passed in, which
    are the key-value cache's own (so they last for the later steps), on the prompt's pass too."""
    before, _KV.write_back = _KV.write_back, True
    try:
        yield
    finally:
        _KV.write_back = before


def _fire_new_positions(point: HookPoint, x: torch.Tensor, q_len: int, groups: int) -> None:
    """Fire ``point`` on the last ``q_len`` positions of ``x [b, h_kv, k, d]`` (the cached
    tensor HF passes in) as ``[b, q_len, h_kv * groups, d]`` and write the result back into
    ``x`` in place, so a write lasts in the key-value cache for the later steps. Shown per query
    head (``groups > 1``), a write must be the same within each K/V group: the cache holds one."""
    new = x[:, :, -q_len:]
    shown = (_repeat_heads(new, groups, 1) if groups > 1 else new).transpose(1, 2)
    out = point.fire(shown)
    if groups > 1:
        b, q, h, d = out.shape
        per_group = out.reshape(b, q, h // groups, groups, d)
        if not torch.equal(per_group, per_group[:, :, :, :1].expand_as(per_group)):
            raise HookShapeError(
                f"A hook on {point.name!r} wrote different values to query heads that share a K/V "
                "head, during generation with a key-value cache, which stores one K/V per group. "
                "Write whole groups, generate with use_past_kv_cache=False, or set "
                "bridge.ungroup_grouped_query_attention = False."
            )
        out = per_group[:, :, :, 0]
    if out is not shown:
        new.copy_(out.transpose(1, 2))


def hooked_eager_attention(site: AttentionSite, module: nn.Module, query: torch.Tensor,
                           key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, *, scaling: float | None,
                           dropout: float, softcap: float | None = None, scores_fn=None):
    """Eager attention with every internal hook point fired (shapes as in the module doc).
    ``scores_fn(query, key)``, where given, computes the scaled scores ``[batch, heads, q, k]``
    from ``query`` and the (repeated) ``key`` exactly as the family's own attention does (its
    dtype and order of operations), in place of ``query @ key^T * scaling``. The pattern is
    cast to ``value``'s dtype before it is applied, as HF's eager attention does."""
    n_heads, n_kv = query.shape[1], key.shape[1]
    groups = n_heads // n_kv
    if scaling is None:
        scaling = query.shape[-1] ** -0.5

    if site.q.active and site.q_prescale is None:
        query = site.q.fire(query.transpose(1, 2)).transpose(1, 2)
    elif site.q.active:  # shown as the projection's output; used scaled again (exact if unwritten)
        shown = query.transpose(1, 2) / site.q_prescale
        new = site.q.fire(shown)
        if new is not shown or site.q.bwd:
            query = (new * site.q_prescale).transpose(1, 2)
    q_len = query.shape[2]
    # generation (bridge.generate) with a key-value cache: K/V hooks see the new positions only,
    # and writes go into the cache. Elsewhere (e.g. the patch engine's reused prefixes) they see
    # every key position, as the keys arrive.
    if _KV.write_back:
        shown_groups = groups if site.ungroup_kv else 1
        for point, x in ((site.k, key), (site.v, value)):
            if point.active:
                _fire_new_positions(point, x, q_len, shown_groups)
    else:
        if site.ungroup_kv and groups > 1 and (site.k.active or site.v.active):
            key, value = _repeat_heads(key, groups, 1), _repeat_heads(value, groups, 1)
            groups = 1
        if site.k.active:
            key = site.k.fire(key.transpose(1, 2)).transpose(1, 2)
        if site.v.active:
            value = site.v.fire(value.transpose(1, 2)).transpose(1, 2)
    key, value = _repeat_heads(key, groups, 1), _repeat_heads(value, groups, 1)

    if scores_fn is not None:
        scores = scores_fn(query, key)
    elif site.fp32_scores:
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)).mul_(scaling)
    else:
        scores = torch.matmul(query, key.transpose(2, 3)).mul_(scaling)  # in place: no second buffer
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        scores = scores + attention_mask[..., : key.shape[-2]]  # additive (e.g. ALiBi) masks
    allowed = _allowed(attention_mask, query.shape[2], key.shape[2], query.device,
                       causal=getattr(module, "is_causal", True))  # False: an encoder
    scores.masked_fill_(~allowed, float("-inf"))  # scores is a fresh tensor here
    if site.scores.active:
        scores = site.scores.fire(scores)

    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    if not bool(allowed.any(-1).all()):  # rows with nothing to attend to (padding queries)
        pattern = pattern.nan_to_num(0.0)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    if site.pattern.active:
        pattern = site.pattern.fire(pattern)

    z = torch.matmul(pattern, value).transpose(1, 2)
    if site.z.active:
        z = site.z.fire(z)
    return z.contiguous(), pattern
