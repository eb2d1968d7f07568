"""Weight processing: rewrite a wrapped HF model's parameters in place so analyses read simply.

The HF forward stays the real forward; only stored weights change, read and written through the
adapter's declared module paths and layouts. A linear reading ``x [.., D]`` is ``x @ W + b`` with
``W [in, out]`` (``weight.T`` for "linear" layout, ``weight`` for GPT-2's "conv1d"), ``D`` =
d_model, ``H`` query heads, ``G`` kv heads, ``d`` d_head. Steps, in this order:

``fold_ln``
    Each norm's weight ``w [D]`` and bias ``b [D]`` move into the linears that read it (ln1 ->
    the Q/K/V projection(s); ln2 -> W_in and W_gate; ln_final -> the unembedding):
    ``W' = diag(w) @ W``, ``b' = b_lin + b @ W`` (a bias is created if needed). The norm is then
    left with weight 1 and bias 0: "centre and scale" (LN) or "scale" (RMS). On LN models the
    reading weights are also centred over their input dimension (``W' -= W'.mean(0)``), as
    TransformerLens does: the normalised input has mean 0, so this changes nothing.
``center_writing_weights`` (LN models only)
    Every weight and bias writing to the residual stream (W_E ``[V, D]``, W_pos ``[n_ctx, D]``,
    W_O and b_O, W_out and b_out) loses its mean over D. Every reader of the residual stream is
    a LayerNorm, which removes that mean first, so outputs are exact (with or without fold_ln, as
    in TransformerLens); the residual stream then has mean 0 over D. RMSNorm does not remove the
    mean, so RMS models skip this step (with a warning).
``center_unembed``
    ``W_U [D, V] -= W_U.mean(-1)``, ``b_U -= b_U.mean()``: each position's logits shift by one
    constant, which log-softmax ignores (skipped, with a warning, where the logits are
    soft-capped: Gemma 2).
``fold_value_biases``
    ``b_O += sum_h b_V[h // (H/G)] @ W_O[h]`` (``b_V [G, d]``, ``W_O [H, d, D]``), then ``b_V = 0``
    (only the V slice of a fused projection). Exact because each attention row sums to 1; skipped
    (with a warning) on models that clamp V after its bias (``cfg.clip_qkv``, OLMo).

Tied embeddings (lm_head shares W_E) are untied first, so folding into W_U leaves W_E alone.
Running twice is harmless: the second pass folds weights of 1 and centres centred tensors.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from .adapters import optional_module, split_out_proj
from .errors import InputError
from .weights import in_out

if TYPE_CHECKING:
    from .bridge import Bridge


def process_weights(bridge: Bridge, *, fold_ln: bool, center_writing_weights: bool,
                    center_unembed: bool, fold_value_biases: bool) -> tuple[str, ...]:
    """Apply the chosen steps to ``bridge.model`` in place; returns the names of those applied."""
    _check_weights(bridge.model)
    c = bridge.cfg

    def skip(step: str, why: str) -> bool:
        """Warn that ``step`` does not apply to this model, and why; returns False (not run)."""
        warnings.warn(f"{step} skipped: this {c.model_type} model {why}", UserWarning, stacklevel=4)
        return False
    if center_writing_weights and bridge.adapter.normalization != "LN":
        center_writing_weights = skip(
            "center_writing_weights", f"uses {bridge.adapter.normalization}Norm, which does not "
            "subtract the mean, so centring the residual stream would change the outputs.")
    if center_writing_weights and bridge.adapter.embed_norm is not None:
        center_writing_weights = skip(
            "center_writing_weights", "normalises its embeddings with a learned LayerNorm "
            f"({bridge.adapter.embed_norm}), whose output no weight rewrite can centre, so the "
            "residual stream would not be centred.")
    if fold_value_biases and c.clip_qkv is not None:
        fold_value_biases = skip(
            "fold_value_biases", f"clamps V to [-{c.clip_qkv}, {c.clip_qkv}] after adding its bias "
            "(clip_qkv), so moving the bias past the clamp would change the outputs.")
    if center_unembed and c.output_logits_soft_cap is not None:
        center_unembed = skip(
            "center_unembed", f"soft-caps its logits (cap * tanh(logits / cap), cap "
            f"{c.output_logits_soft_cap}), and a shift of every logit does not pass through tanh "
            "unchanged.")
    done: list[str] = []
    with torch.no_grad():
        if fold_ln or center_writing_weights or center_unembed:
            _untie_unembed(bridge)
        if fold_ln:
            _fold_ln(bridge)
            done.append("fold_ln")
        if center_writing_weights:
            _center_writing_weights(bridge)
            done.append("center_writing_weights")
        if center_unembed:
            W_U, b_U = in_out(_module(bridge, bridge.adapter.unembed), "linear")
            _assign(W_U, W_U.float() - W_U.float().mean(-1, keepdim=True))
            if b_U is not None:
                _assign(b_U, b_U.float() - b_U.float().mean())
            done.append("center_unembed")
        if fold_value_biases and _fold_value_biases(bridge):
            done.append("fold_value_biases")
    return tuple(done)


def _check_weights(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise InputError(f"Weight processing needs real weights; {name} is on the 'meta' device. "
                             "Load the model with its weights (no empty-weights init/offload).")
        if not p.is_floating_point():
            raise InputError(f"Weight processing needs floating-point weights; {name} is {p.dtype} "
                             "(quantized?). Load the model unquantized to process its weights.")


def _module(bridge: Bridge, path: str, layer: int | None = None) -> nn.Module:
    prefix = "" if layer is None else f"{bridge.adapter.blocks}.{layer}."
    return bridge.model.get_submodule(prefix + path)


def _assign(dst: torch.Tensor, value: torch.Tensor) -> None:
    """Write ``value`` (computed in fp32) into the live storage ``dst`` in its own dtype."""
    dst.copy_(value.to(dst.dtype))


def _bias(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """The module's bias ``[out]`` (live storage), created as zeros if it had none; ``like`` is
    its ``W [in, out]``. nn.Linear and Conv1D both add ``self.bias`` in forward."""
    if getattr(module, "bias", None) is None:
        module.bias = nn.Parameter(like.new_zeros(like.shape[1]), requires_grad=module.weight.requires_grad)
    return module.bias.detach()


def _untie_unembed(bridge: Bridge) -> None:
    """Give the unembedding its own copy of W_E when the two share storage."""
    emb, lm = _module(bridge, bridge.adapter.embed), _module(bridge, bridge.adapter.unembed)
    if lm.weight.untyped_storage().data_ptr() != emb.weight.untyped_storage().data_ptr():
        return
    lm.weight = nn.Parameter(lm.weight.detach().clone(), requires_grad=lm.weight.requires_grad)
    if hasattr(bridge.model.config, "tie_word_embeddings"):
        bridge.model.config.tie_word_embeddings = False


def _fold_norm(norm: nn.Module, readers: list[tuple[nn.Module, str]], center: bool,
               offset: float = 0.0) -> None:
    """Fold ``norm``'s ``w [D]``/``b [D]`` into each reader's ``W [D, out]``/``b [out]``, then
    reset the norm to weight 1, bias 0. ``center``: also remove W's mean over its input dim.
    ``offset``: the norm scales by ``offset + w`` (Gemma: 1), so it is reset to ``w = 1 - offset``."""
    w = getattr(norm, "weight", None)
    b = getattr(norm, "bias", None)
    w32 = None if w is None else w.detach().float() + offset
    b32 = None if b is None or not b.detach().any() else b.detach().float()
    for module, layout in readers:
        W = in_out(module, layout)[0] if layout is not None else module  # a raw [in, out] view
        W32 = W.float()
        if b32 is not None and layout is None:
            raise InputError("A norm bias cannot be folded into stacked expert weights (they have "
                             "no bias); run without fold_ln.")
        if b32 is not None:
            bias = _bias(module, W)
            _assign(bias, bias.float() + b32.to(W.device) @ W32)
        if w32 is not None:
            W32 = W32 * w32.to(W.device)[:, None]
        if center:
            W32 = W32 - W32.mean(0, keepdim=True)
        _assign(W, W32)
    if w is not None:
        w.detach().fill_(1.0 - offset)
    if b is not None:
        b.detach().zero_()


def _fold_ln(bridge: Bridge) -> None:
    a = bridge.adapter
    center, off = a.normalization == "LN", a.norm_weight_offset
    for layer in range(bridge.cfg.n_layers):
        qkv = [(_module(bridge, p, layer), a.linear_layout) for p in a.attn_qkv]
        block = bridge.model.get_submodule(f"{a.blocks}.{layer}")
        if optional_module(block, a.moe_router) is not None:  # experts: params [..., D]
            mlp = [(p.detach().reshape(-1, p.shape[-1]).T, None)
                   for p in (_param(block, path) for path in a.moe_readers) if p is not None]
        else:
            paths = dict.fromkeys(p for p in (a.mlp_in, a.mlp_gate) if p)  # Phi-3: one fused module
            mlp = [(_module(bridge, p, layer), a.linear_layout) for p in paths]
        ln1 = optional_module(block, a.ln1)
        ln2 = optional_module(block, a.ln2)
        if ln2 is None and ln1 is not None and bridge.cfg.parallel_attn_mlp:
            ln2 = ln1  # parallel StableLM: one norm feeds both
        # each norm folds once, into every reader it feeds (one shared norm: Phi, GPT-J); a
        # missing one (OLMo 2 has no norm before the sublayers) has nothing to fold
        feeds: dict[int, tuple[nn.Module, list]] = {}
        for norm, readers in ((ln1, qkv), (ln2, mlp)):
            if norm is not None:
                feeds.setdefault(id(norm), (norm, []))[1].extend(readers)
        for norm, readers in feeds.values():
            _fold_norm(norm, readers, center, off)
    _fold_norm(_module(bridge, a.ln_final), [(_module(bridge, a.unembed), "linear")], center, off)


def _param(block: nn.Module, path: str) -> torch.Tensor | None:
    """The parameter at ``path`` in ``block`` (e.g. ``mlp.experts.gate_up_proj``), or None."""
    owner, _, name = path.rpartition(".")
    return getattr(optional_module(block, owner), name, None)


def _center_writing_weights(bridge: Bridge) -> None:
    a = bridge.adapter
    rows = [_module(bridge, a.embed).weight.detach()]  # [V, D]
    if a.pos_embed is not None:
        rows.append(_module(bridge, a.pos_embed).weight.detach())  # [n_ctx, D]
    for layer in range(bridge.cfg.n_layers):
        for path in (a.attn_out_proj, a.mlp_out):
            W, b = in_out(_module(bridge, path, layer), a.linear_layout)  # [in, D], [D]
            rows += [W] if b is None else [W, b]
    for t in rows:
        _assign(t, t.float() - t.float().mean(-1, keepdim=True))


def _v_bias(bridge: Bridge, layer: int) -> torch.Tensor | None:
    """A live view ``[G, d]`` of one layer's value bias, or None when the model has none."""
    a, c = bridge.adapter, bridge.cfg
    h, g, d = c.n_heads, c.n_kv_heads, c.d_head
    bias = getattr(_module(bridge, a.attn_qkv[-1], layer), "bias", None)
    if bias is None:
        return None
    bias = bias.detach()
    if a.qkv_layout == "split":
        return bias.view(g, d)
    if a.qkv_layout == "fused":  # [q (h*d) | k (g*d) | v (g*d)]
        return bias[(h + g) * d:].view(g, d)
    return bias.view(g, h // g + 2, d)[:, -1]  # per_head: [kv head, (its queries, k, v), d]


def _fold_value_biases(bridge: Bridge) -> bool:
    """Fold every layer's b_V into b_O; False when no layer has a value bias."""
    a, c = bridge.adapter, bridge.cfg
    found = False
    for layer in range(c.n_layers):
        b_V = _v_bias(bridge, layer)
        if b_V is None:
            continue
        found = True
        out = _module(bridge, a.attn_out_proj, layer)
        W_O = split_out_proj(out.weight.detach(), a.linear_layout, c.n_heads, c.d_head)  # [H, d, D]
        per_head = b_V.float().repeat_interleave(c.n_heads // c.n_kv_heads, dim=0)  # [H, d]
        b_O = _bias(out, in_out(out, a.linear_layout)[0])
        _assign(b_O, b_O.float() + torch.einsum("hd,hdm->m", per_head.to(W_O.device), W_O.float()))
        b_V.zero_()
    return found
