"""``ActivationCache``: activations of one run by hook name, indexable without the model.

``cache["blocks.0.attn.hook_pattern"]``, ``cache["pattern", 0]`` and ``cache["resid_pre", -1]``
name the same kind of thing; a negative layer counts from the end. The cache holds tensors and a
few facts about the model's shape (number of layers), never the model itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from .adapters import live_param, norm_factor, split_out_proj
from .errors import HookNameError, InputError
from .names import act_name


@dataclass(frozen=True)
class CacheContext:
    """The facts about the model that the decompositions need (weights are the model's own
    tensors, not copies): ``W_U [d_model, d_vocab]``, the final norm module (its factor read at
    use, so later edits count) and each layer's output projection, whose weight is read at use
    as stored (``o_layout`` "linear": ``[d_model, n_heads*d_head]``; "conv1d": transposed)."""

    normalization_type: str  # "LN" (centre, then scale) or "RMS" (scale only)
    n_heads: int
    d_head: int
    W_U: torch.Tensor
    o_projs: tuple[torch.nn.Module, ...]  # each layer's output projection (weight read at use)
    o_layout: str
    ln_final: torch.nn.Module | None = None
    norm_weight_offset: float = 0.0  # Gemma's norms scale by 1 + weight
    attn_post_norms: tuple[torch.nn.Module, ...] = ()  # per layer, where attention has one (Gemma 2)
    residual_multiplier: float = 1.0  # Granite: the block adds r * (attention's output)
    pre_norms: bool = True  # False where no norm precedes attention and the MLP (OLMo 2)

    def attn_written(self, layer: int, x: torch.Tensor, scale=None) -> torch.Tensor:
        """Pieces ``x [..., d_model]`` of the attention module's output (heads' ``z @ W_O``, the
        bias) as the residual stream receives them: through layer ``layer``'s post-attention
        norm with its scale frozen at the cached ``scale`` (broadcastable to ``x[..., :1]``;
        Gemma 2), times the residual multiplier (Granite). Linear, so the pieces sum to
        ``hook_attn_out``; the identity on most families."""
        if self.attn_post_norms:
            norm = self.attn_post_norms[layer]
            if self.normalization_type == "LN":
                x = x - x.mean(-1, keepdim=True)
            x = x / scale.to(x.device, x.dtype)
            w = norm_factor(norm, self.norm_weight_offset)
            x = x if w is None else x * w.to(x.device, x.dtype)
        return x * self.residual_multiplier if self.residual_multiplier != 1.0 else x

    def post_norm_scale_name(self, layer: int) -> str | None:
        """The cached scale that ``attn_written`` needs, or None."""
        return f"blocks.{layer}.ln1_post.hook_scale" if self.attn_post_norms else None

    @property
    def ln_final_w(self) -> torch.Tensor | None:
        """The final norm's factor ``[d_model]``, or None when it has no weight."""
        return norm_factor(self.ln_final, self.norm_weight_offset)

    def W_O(self, layer: int) -> torch.Tensor:
        """``[n_heads, d_head, d_model]`` of one layer."""
        return split_out_proj(live_param(self.o_projs[layer]), self.o_layout, self.n_heads, self.d_head)


def gather_stack(parts: list[torch.Tensor], cat: bool = False) -> torch.Tensor:
    """``torch.stack`` (or ``cat``) of tensors that may live on several devices (layers of a model
    spread by a ``device_map``), gathered on the first one's device."""
    parts = [t.to(parts[0].device) for t in parts]
    return torch.cat(parts) if cat else torch.stack(parts)


def _pos(t: torch.Tensor, pos_slice, dim: int = -2) -> torch.Tensor:
    """Select positions along ``dim``: an int drops the dimension, a slice/list/tensor keeps it."""
    if pos_slice is None:
        return t
    if isinstance(pos_slice, int):
        return t.select(dim, pos_slice)
    if isinstance(pos_slice, slice):
        index = torch.arange(t.shape[dim], device=t.device)[pos_slice]
    else:
        index = torch.as_tensor(pos_slice, device=t.device)
    return t.index_select(dim, index)


class ActivationCache(Mapping[str, torch.Tensor]):
    """A read-only mapping from hook name to a detached tensor (shapes as the hook saw them,
    with a leading batch dimension unless ``has_batch_dim`` is False)."""

    def __init__(self, tensors: dict[str, torch.Tensor], n_layers: int,
                 has_batch_dim: bool = True, context: CacheContext | None = None) -> None:
        self._tensors = dict(tensors)
        self.n_layers = n_layers
        self.has_batch_dim = has_batch_dim
        self.context = context

    def _ctx(self, what: str) -> CacheContext:
        if self.context is None:
            raise InputError(f"{what} needs the model's weights; this cache was built without "
                             "them. Use a cache from bridge.run_with_cache.")
        return self.context

    def _name(self, key) -> str:
        if isinstance(key, str):
            return act_name(key, n_layers=self.n_layers)
        if isinstance(key, tuple) and 1 <= len(key) <= 3 and isinstance(key[0], str):
            return act_name(*key, n_layers=self.n_layers)
        raise HookNameError(f"Cache keys are a name or (name, layer[, layer_type]); got {key!r}.")

    def __getitem__(self, key) -> torch.Tensor:
        name = self._name(key)
        if name not in self._tensors:
            raise HookNameError(
                f"{name!r} is not in this cache ({len(self._tensors)} entries). Include it in "
                "run_with_cache's names_filter."
            )
        return self._tensors[name]

    def __contains__(self, key) -> bool:
        try:
            return self._name(key) in self._tensors
        except HookNameError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} entries: {list(self._tensors)[:4]}...)"

    def nbytes(self) -> int:
        """Bytes held, counting each underlying storage once."""
        seen: dict[int, int] = {}
        for t in self._tensors.values():
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
        return sum(seen.values())

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy of the cache with every tensor on ``device``."""
        return ActivationCache({k: v.to(device) for k, v in self._tensors.items()},
                               self.n_layers, self.has_batch_dim, self.context)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the leading batch dimension (the batch must have size 1)."""
        if not self.has_batch_dim:
            return self
        for k, v in self._tensors.items():
            if v.shape[0] != 1:
                raise InputError(
                    f"remove_batch_dim needs batch size 1; {k!r} has shape {tuple(v.shape)}. "
                    "Run one prompt, or index the batch yourself."
                )
        return ActivationCache({k: v[0] for k, v in self._tensors.items()}, self.n_layers,
                               has_batch_dim=False, context=self.context)

    def stack_activation(self, name: str) -> torch.Tensor:
        """``[n_layers, ...]``: one short-named activation (e.g. "resid_post") of every layer."""
        return gather_stack([self[name, layer] for layer in range(self.n_layers)])

    # -- residual-stream decompositions (TransformerLens conveniences) ----------------------
    def _layer_arg(self, layer: int | None) -> int:
        n = self.n_layers
        if layer is None or layer == -1:
            return n
        if not 0 <= layer <= n:
            raise InputError(f"layer must be in [0, {n}] (or None / -1 for all); got {layer}.")
        return layer

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False,
                          apply_ln: bool = False, pos_slice=None, mlp_input: bool = False,
                          return_labels: bool = False):
        """The residual stream as it builds up: ``resid_pre`` of layers ``0..layer-1`` (plus
        ``resid_mid`` with ``incl_mid``) and, for ``layer=None``, the final ``resid_post``.
        Shape ``[components, batch, pos, d_model]``; labels like "3_pre", "3_mid", "final_post".
        """
        layer = self._layer_arg(layer)
        parts, labels = [], []
        for L in range(layer):
            parts.append(self["resid_pre", L])
            labels.append(f"{L}_pre")
            if incl_mid and ("resid_mid", L) in self:
                parts.append(self["resid_mid", L])
                labels.append(f"{L}_mid")
        if mlp_input and layer < self.n_layers:
            parts.append(self["resid_mid", layer])
            labels.append(f"{layer}_mid")
        if layer == self.n_layers:
            parts.append(self["resid_post", self.n_layers - 1])
            labels.append("final_post")
        return self._finish(gather_stack(parts), labels, layer, apply_ln, mlp_input, pos_slice,
                            return_labels)

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False,
                        mode: str = "all", apply_ln: bool = False, pos_slice=None,
                        incl_embeds: bool = True, return_labels: bool = False):
        """What each component wrote into the residual stream before ``layer`` (None: all):
        embeddings, then each layer's ``attn_out`` and ``mlp_out``. They sum to the residual
        stream there. ``mode`` is "all", "attn" or "mlp". Shape
        ``[components, batch, pos, d_model]``."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp'; got {mode!r}.")
        layer = self._layer_arg(layer)
        parts, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed"):
                if name in self:
                    parts.append(self[name])
                    labels.append(name)
        for L in range(layer + (1 if mlp_input and layer < self.n_layers else 0)):
            if mode in ("all", "attn"):
                parts.append(self["attn_out", L])
                labels.append(f"{L}_attn_out")
            if mode in ("all", "mlp") and L < layer:
                parts.append(self["mlp_out", L])
                labels.append(f"{L}_mlp_out")
        return self._finish(gather_stack(parts), labels, layer, apply_ln, mlp_input, pos_slice,
                            return_labels)

    def stack_head_results(self, layer: int | None = None, return_labels: bool = False,
                           incl_remainder: bool = False, pos_slice=None, apply_ln: bool = False):
        """Each head's output ``z_h @ W_O[h]`` for layers ``0..layer-1``, from ``hook_result`` if
        cached, else computed from ``hook_z``. Shape ``[layers*heads, batch, pos, d_model]``,
        labels "L{l}H{h}"; ``incl_remainder`` appends the rest of the residual stream. Where a
        norm follows attention (Gemma 2) each head's output is passed through it with its cached
        scale frozen (``blocks.L.ln1_post.hook_scale`` must be cached), and where the block
        scales what attention writes (Granite) it is scaled, so that it is what the head adds to
        the residual stream."""
        layer = self._layer_arg(layer)
        parts, labels = [], []
        for L in range(layer):
            if ("result", L) in self:
                result = self["result", L]
            else:
                w_o = self._ctx("stack_head_results").W_O(L)
                z = self["z", L]
                result = torch.einsum("...hd,hdm->...hm", z, w_o.to(z.device, z.dtype))
            ctx = self.context
            if ctx is not None:
                name, scale = ctx.post_norm_scale_name(L), None
                if name is not None and name not in self:
                    raise InputError(f"stack_head_results needs {name!r} on this model (its "
                                     "attention output passes through a norm); include it in "
                                     "run_with_cache's names_filter.")
                if name is not None:
                    scale = self[name][..., None, :]  # [b, p, 1, 1]
                result = ctx.attn_written(L, result, scale)
            result = result.movedim(-2, 0)  # [heads, batch, pos, d_model]
            parts.append(result)
            labels += [f"L{L}H{h}" for h in range(result.shape[0])]
        stack = gather_stack(parts, cat=True) if parts else torch.empty(0)
        if incl_remainder:
            total = (self["resid_post", layer - 1] if layer == self.n_layers
                     else self["resid_pre", layer])
            total = total.to(stack.device) if parts else total
            stack = torch.cat([stack, (total - stack.sum(0))[None]])
            labels.append("remainder")
        return self._finish(stack, labels, layer, apply_ln, False, pos_slice, return_labels)

    def _finish(self, stack, labels, layer, apply_ln, mlp_input, pos_slice, return_labels):
        """Slice positions, optionally apply the norm at ``layer``, attach labels if asked."""
        stack = _pos(stack, pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, None if layer == self.n_layers else layer,
                                           mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None,
                          mlp_input: bool = False, pos_slice=None) -> torch.Tensor:
        """Scale a stack of residual components ``[..., batch, pos, d_model]`` as the norm at
        ``layer`` scaled the full residual (final norm for None), using the cached
        ``hook_scale``: centre (LayerNorm only), then divide. Components then sum to that norm's
        ``hook_normalized``. The norm's weight and bias are not applied."""
        if layer is None or layer in (-1, self.n_layers):
            scale = self["ln_final.hook_scale"]
        else:
            if not self._ctx("apply_ln_to_stack").pre_norms:
                raise InputError(
                    f"No norm reads the residual stream before layer {layer}'s attention or MLP on "
                    "this model (OLMo 2 normalises the sublayers' outputs instead), so there is "
                    "no scale to apply. Use apply_ln=False, or the final norm (layer=None).")
            ln = "ln2" if mlp_input and f"blocks.{layer}.ln2.hook_scale" in self else "ln1"
            scale = self["scale", layer, ln]  # one norm feeding both has ln1 only (Phi)
        scale = _pos(scale, pos_slice).to(residual_stack.device)
        stack = residual_stack
        if self._ctx("apply_ln_to_stack").normalization_type == "LN":
            stack = stack - stack.mean(-1, keepdim=True)
        return stack / scale

    def logit_attrs(self, residual_stack: torch.Tensor, tokens, incorrect_tokens=None,
                    pos_slice=None) -> torch.Tensor:
        """Direct logit attribution: each component's contribution to the logit of ``tokens``
        (minus ``incorrect_tokens``) through the final norm (its cached scale and its weight)
        and the unembedding. ``residual_stack`` ``[components, batch, (pos,) d_model]``
        (already position-sliced if ``pos_slice`` was used to build it), tokens an int or an
        int tensor broadcastable to the batch (and position) dims. Returns
        ``[components, batch, (pos)]``. Summed over a full decomposition it equals the logit
        (difference) minus the constant terms no component owns: the final norm's bias and
        the unembedding's bias, dotted with the same direction."""
        ctx = self._ctx("logit_attrs")
        W_U = ctx.W_U
        tokens = torch.as_tensor(tokens, device=W_U.device)
        directions = W_U[:, tokens].movedim(0, -1)
        if incorrect_tokens is not None:
            incorrect = torch.as_tensor(incorrect_tokens, device=W_U.device)
            if incorrect.shape != tokens.shape:
                raise InputError(f"incorrect_tokens has shape {tuple(incorrect.shape)}; expected "
                                 f"the shape of tokens {tuple(tokens.shape)}.")
            directions = directions - W_U[:, incorrect].movedim(0, -1)
        if ctx.ln_final_w is not None:  # fold the final norm's weight into the direction
            directions = directions * ctx.ln_final_w.to(directions.device, directions.dtype)
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice)
        return (scaled * directions.to(scaled.device, scaled.dtype)).sum(-1)
