"""The model's weights in TransformerLens's shapes, read from the HF modules by declared layout.

Nothing is guessed from tensor shapes: each adapter declares where Q/K/V live and how they are
laid out (``split``: separate q/k/v projections; ``fused``: one projection whose output is
``[q | k | v]``, GPT-2; ``per_head``: one projection whose output is ``[head, (q, k, v), d_head]``,
GPT-NeoX, or with grouped K/V ``[kv head, (its query heads, k, v), d_head]``, Falcon) and whether
linears are stored ``[out, in]`` (``linear``) or ``[in, out]`` (``conv1d``).

Shapes (row-vector convention, ``x @ W``; ``L`` layers, ``H`` query heads, ``D`` d_model):

=========  ===================================  =====================================================
``W_E``    ``[d_vocab, D]``                     token embedding: the live parameter, or a scaled copy
                                                where the embedding is scaled (Gemma, Granite)
``W_pos``  ``[n_ctx, D]``                       learned positions (rotary models have none)
``W_Q``    ``[L, H, D, d_head]``                pre-rotary; ``W_K``/``W_V`` grouped K/V expanded per
                                                query head (query head ``h`` reads kv head ``h // g``)
``b_Q``    ``[L, H, d_head]``                   zeros where the model has no bias (also b_K, b_V)
``W_O``    ``[L, H, d_head, D]``                ``b_O [L, D]``
``W_in``   ``[L, D, d_mlp]``                    the "up" projection; ``W_gate`` (gated MLPs only)
``W_out``  ``[L, d_mlp, D]``                    ``b_in [L, d_mlp]``, ``b_out [L, D]``
``W_U``    ``[D, d_vocab]``                     ``b_U [d_vocab]``
``QK``     ``FactoredMatrix [L, H, D, D]``      ``W_Q @ W_K^T``; ``OV``: ``W_V @ W_O``
=========  ===================================  =====================================================

Stacked weights are fresh tensors (detached), on the first layer's device when a ``device_map``
spreads the layers; ``W_E``/``W_U`` are views of the live parameters (except a scaled ``W_E``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .adapters import live_param, optional_module, split_out_proj
from .cache import gather_stack
from .errors import InputError
from .factored import FactoredMatrix

if TYPE_CHECKING:
    from .bridge import Bridge


def in_out(module: nn.Module, layout: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear's ``(W [in, out], b [out] or None)`` from its stored weight (detached views; copies
    of weights that accelerate offloaded, see :func:`~workbench.adapters.live_param`)."""
    w, b = live_param(module), live_param(module, "bias")
    return (w.T if layout == "linear" else w), b


def _block(bridge: Bridge, layer: int, path: str) -> nn.Module:
    return bridge.model.get_submodule(f"{bridge.adapter.blocks}.{layer}.{path}")


def qkv_weights(bridge: Bridge, layer: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """One layer's ``{"q"|"k"|"v": (W [heads, D, d_head], b [heads, d_head] or None)}``, with K and V
    per kv head (not expanded)."""
    a, c = bridge.adapter, bridge.cfg
    h, kv, d = c.n_heads, c.n_kv_heads, c.d_head
    if a.qkv_layout == "split":
        parts = [in_out(_block(bridge, layer, p), a.linear_layout) for p in a.attn_qkv]
    else:
        w, b = in_out(_block(bridge, layer, a.attn_qkv[0]), a.linear_layout)
        if a.qkv_layout == "fused":  # output = [q (h*d) | k (kv*d) | v (kv*d)]
            sizes = [h * d, kv * d, kv * d]
            ws, bs = w.split(sizes, -1), (b.split(sizes, -1) if b is not None else (None,) * 3)
        else:  # per_head: output = [kv head, (its g query heads, k, v), d_head]
            g = h // kv
            parts = [slice(0, g), slice(g, g + 1), slice(g + 1, g + 2)]  # q, k, v in each group
            ws = [w.reshape(w.shape[0], kv, g + 2, d)[:, :, j].reshape(w.shape[0], -1) for j in parts]
            bs = [b.reshape(kv, g + 2, d)[:, j].reshape(-1) for j in parts] if b is not None \
                else [None] * 3
        parts = list(zip(ws, bs, strict=True))
    out = {}
    for key, (w, b), n in zip("qkv", parts, (h, kv, kv), strict=True):
        out[key] = (w.reshape(w.shape[0], n, d).permute(1, 0, 2),
                    None if b is None else b.reshape(n, d))
    return out


def _expand(t: torch.Tensor, bridge: Bridge) -> torch.Tensor:
    """``[.., n_kv_heads, ..]`` per query head (dim 0 of one layer's tensor)."""
    g = bridge.cfg.n_heads // bridge.cfg.n_kv_heads
    return t if g == 1 else t.repeat_interleave(g, dim=0)


def _stack(bridge: Bridge, fn: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """``[n_layers, ...]`` of ``fn(layer)``, on the first layer's device (a ``device_map`` may
    spread the layers over several)."""
    return gather_stack([fn(layer) for layer in range(bridge.cfg.n_layers)])


def _attn(bridge: Bridge, key: str, bias: bool) -> torch.Tensor:
    c = bridge.cfg

    def one(layer: int) -> torch.Tensor:
        w, b = qkv_weights(bridge, layer)[key]
        t = b if bias else w
        if t is None:
            t = w.new_zeros(w.shape[0], c.d_head)
        return _expand(t, bridge) if key != "q" else t
    return _stack(bridge, one)


def _linear(bridge: Bridge, path: str | None, what: str, bias: bool) -> torch.Tensor:
    if path is None:
        raise InputError(f"{what} exists only on gated MLPs; this {bridge.cfg.model_type} model's MLP "
                         "is not gated. Use W_in.")
    a = bridge.adapter
    if a.moe_router is not None and path in (a.mlp_in, a.mlp_gate, a.mlp_out):
        blocks = bridge.model.get_submodule(a.blocks)
        sparse = [L for L in range(bridge.cfg.n_layers) if optional_module(blocks[L], a.moe_router)]
        if sparse:
            raise InputError(
                f"{what} is one matrix per layer, but the MLPs of layers {sparse} are mixtures of "
                f"{bridge.cfg.n_experts} experts. Read the stacked expert weights from the model: "
                f"{a.blocks}.<layer>.mlp.experts (gate_up_proj [experts, 2 * d_mlp, d_model], "
                "down_proj [experts, d_model, d_mlp]).")

    def one(layer: int) -> torch.Tensor:
        w, b = in_out(_block(bridge, layer, path), bridge.adapter.linear_layout)
        if a.mlp_fused_gate_up and path == a.mlp_in:  # [in, gate | up]: W_gate, then W_in
            half = slice(None, w.shape[1] // 2) if what.endswith("gate") else slice(w.shape[1] // 2, None)
            w, b = w[:, half], (b[half] if b is not None else None)
        if not bias:
            return w
        return b if b is not None else w.new_zeros(w.shape[1])
    return _stack(bridge, one)


def _W_O(bridge: Bridge) -> torch.Tensor:
    c, a = bridge.cfg, bridge.adapter
    return _stack(bridge, lambda layer: split_out_proj(
        live_param(_block(bridge, layer, a.attn_out_proj)), a.linear_layout, c.n_heads, c.d_head))


def _W_pos(bridge: Bridge) -> torch.Tensor:
    if bridge.adapter.pos_embed is None:
        how = ("as a per-head bias on the attention scores (inside hook_attn_scores)"
               if bridge.cfg.positional_embedding_type == "alibi"
               else "through W_Q/W_K after rotation (see hook_q/hook_k)")
        raise InputError(f"This {bridge.cfg.model_type} model uses {bridge.cfg.positional_embedding_type} "
                         f"positions applied inside attention; it has no W_pos. Positions enter {how}.")
    # OPT keeps 2 rows before position 0
    return live_param(bridge.model.get_submodule(bridge.adapter.pos_embed))[bridge.adapter.pos_offset:]


def _b_U(bridge: Bridge) -> torch.Tensor:
    w, b = in_out(bridge.model.get_submodule(bridge.adapter.unembed), "linear")
    return b if b is not None else w.new_zeros(w.shape[1])


def _W_E(bridge: Bridge) -> torch.Tensor:
    """What the embedding adds per token: its weight, times the scale that Gemma's embedding
    module applies in its forward (``scalar_embed_scale``, sqrt(d_model)) and Granite's
    ``embedding_multiplier``."""
    module = bridge.model.get_submodule(bridge.adapter.embed)
    scale = getattr(module, "scalar_embed_scale", 1.0) * bridge.cfg.embed_multiplier
    w = live_param(module)
    return w if scale == 1.0 else w * torch.tensor(scale, dtype=w.dtype)


READERS: dict[str, Callable[[Bridge], torch.Tensor]] = {
    "W_E": _W_E,
    "W_pos": _W_pos,
    "W_Q": lambda br: _attn(br, "q", False),
    "W_K": lambda br: _attn(br, "k", False),
    "W_V": lambda br: _attn(br, "v", False),
    "b_Q": lambda br: _attn(br, "q", True),
    "b_K": lambda br: _attn(br, "k", True),
    "b_V": lambda br: _attn(br, "v", True),
    "W_O": _W_O,
    "b_O": lambda br: _linear(br, br.adapter.attn_out_proj, "b_O", True),
    "W_in": lambda br: _linear(br, br.adapter.mlp_in, "W_in", False),
    "b_in": lambda br: _linear(br, br.adapter.mlp_in, "b_in", True),
    "W_gate": lambda br: _linear(br, br.adapter.mlp_gate, "W_gate", False),
    "W_out": lambda br: _linear(br, br.adapter.mlp_out, "W_out", False),
    "b_out": lambda br: _linear(br, br.adapter.mlp_out, "b_out", True),
    "W_U": lambda br: in_out(br.model.get_submodule(br.adapter.unembed), "linear")[0],
    "b_U": _b_U,
    "QK": lambda br: FactoredMatrix(br.W_Q, br.W_K.mT),
    "OV": lambda br: FactoredMatrix(br.W_V, br.W_O),
}
