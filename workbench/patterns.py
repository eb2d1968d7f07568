"""Attention patterns of one prompt: where each query position looks, head by head.

A head's pattern is the softmax of its attention scores: row ``q`` (the query, or destination,
position) is a probability distribution over key (source) positions ``0..q``; in a causal model
everything above the diagonal is exactly 0. The bridge's ``blocks.{L}.attn.hook_pattern`` is
already per *query* head, so a grouped-query model (``n_kv_heads < n_heads``, several query heads
sharing one key/value head) shows all ``n_heads`` patterns, which differ because the queries do.

:func:`attention_patterns` runs the prompt once, keeping only the patterns of the chosen layers
(and stopping the forward pass after the last of them), and returns a labelled, frozen
:class:`AttentionPatterns` on the CPU. :func:`max_pool` shrinks long patterns for thumbnails while
keeping every peak visible (a sharp diagonal survives, an average would wash it out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .results import check_layers, dataframe, decode, encode_input, non_finite_error

if TYPE_CHECKING:
    from .bridge import Bridge


@dataclass(frozen=True)
class AttentionPatterns:
    """Attention patterns of one prompt for some layers.

    - ``pattern``: float32 on the CPU, ``[len(layers), n_heads, q_pos, k_pos]``; ``pattern[i, h]``
      is layer ``layers[i]``, query head ``h``; each row sums to 1 and, when ``causal``, is 0
      above the diagonal (an encoder's queries also attend to later keys);
    - ``layers``: the model layers, in the order of ``pattern``'s first dimension;
    - ``str_tokens``: ``[pos]`` the prompt's tokens as strings (``q_pos == k_pos == pos``);
    - ``n_heads`` query heads; ``n_kv_heads`` key/value heads (fewer on grouped-query models)."""

    pattern: torch.Tensor
    layers: list[int]
    str_tokens: list[str]
    n_heads: int
    n_kv_heads: int
    causal: bool = True

    def head(self, layer: int, head: int) -> torch.Tensor:
        """``[q_pos, k_pos]`` pattern of one head, addressed by model layer (not by index into
        ``layers``)."""
        if layer not in self.layers:
            raise InputError(f"Layer {layer} is not in these patterns (layers {self.layers}); "
                             f"compute it with attention_patterns(bridge, prompt, layers=[{layer}]).")
        if not 0 <= head < self.n_heads:
            raise InputError(f"Head {head} does not exist: heads are 0..{self.n_heads - 1}.")
        return self.pattern[self.layers.index(layer), head]

    def to_dataframe(self):
        """One row per (layer, head, query, key) with key <= query (the part that can be
        non-zero; every pair on an encoder): positions, token strings and the attention weight."""
        n_l, n_h, n = self.pattern.shape[:3]
        q, k = np.tril_indices(n) if self.causal else np.indices((n, n)).reshape(2, -1)
        tokens = np.asarray(self.str_tokens, dtype=object)
        weights = self.pattern[:, :, q, k].numpy()  # [layers, heads, n(n+1)/2]
        reps = n_l * n_h
        return dataframe({  # columns, not rows: a 1024-token prompt has ~500k cells per head
            "layer": np.repeat(np.asarray(self.layers), n_h * len(q)),
            "head": np.tile(np.repeat(np.arange(n_h), len(q)), n_l),
            "query": np.tile(q, reps), "key": np.tile(k, reps),
            "query_token": np.tile(tokens[q], reps), "key_token": np.tile(tokens[k], reps),
            "weight": weights.reshape(-1),
        })


@torch.inference_mode()
def attention_patterns(bridge: Bridge, input: Any, *, layers: int | list[int] | None = None
                       ) -> AttentionPatterns:
    """Attention patterns of one prompt (a string, or token ids ``[pos]`` / ``[1, pos]``).

    ``layers``: a layer, a list of layers (negative counts from the end) or None for all. Returns
    :class:`AttentionPatterns` with ``pattern`` ``[len(layers), n_heads, pos, pos]`` (float32,
    CPU), read from ``blocks.{L}.attn.hook_pattern``; the forward pass stops after the last
    layer asked for."""
    enc = encode_input(bridge, input)
    if enc.tokens.shape[0] != 1:
        raise InputError(f"attention_patterns reads one prompt; got a batch of {enc.tokens.shape[0]}. "
                         "Pass a single string (or tokens[i:i+1]).")
    chosen = check_layers(bridge, layers)
    names = [f"blocks.{L}.attn.hook_pattern" for L in chosen]
    stop = max(chosen) + 1
    _, cache = bridge.run_with_cache(enc.tokens, names_filter=names,
                                     stop_at_layer=stop if stop < bridge.cfg.n_layers else None)
    pattern = torch.stack([cache[n][0].to("cpu", torch.float32) for n in names])
    if not bool(torch.isfinite(pattern).all()):
        raise non_finite_error(bridge, "The attention patterns")
    return AttentionPatterns(pattern=pattern, layers=chosen,
                             str_tokens=decode(bridge, enc.tokens[0].tolist()),
                             n_heads=bridge.cfg.n_heads, n_kv_heads=bridge.cfg.n_kv_heads,
                             causal=not bridge.adapter.encoder)


def max_pool(pattern: torch.Tensor, max_size: int = 64) -> tuple[torch.Tensor, int]:
    """Shrink square patterns ``[..., n, n]`` to ``[..., m, m]`` with ``m <= max_size``: each
    output cell is the maximum over a ``block x block`` square of cells (``block =
    ceil(n / max_size)``, the last block may be partial). Returns ``(pooled, block)``; with
    ``n <= max_size`` the patterns come back unchanged and ``block == 1``."""
    n = pattern.shape[-1]
    if pattern.ndim < 2 or pattern.shape[-2] != n:
        raise InputError(f"max_pool expects square [..., n, n] patterns; got {tuple(pattern.shape)}.")
    if max_size < 1:
        raise InputError(f"max_size must be >= 1; got {max_size}.")
    block = math.ceil(n / max_size)
    if block == 1:
        return pattern, 1
    lead = pattern.shape[:-2]
    flat = pattern.reshape(-1, 1, n, n).float()
    pooled = F.max_pool2d(flat, kernel_size=block, stride=block, ceil_mode=True)
    m = pooled.shape[-1]
    return pooled.reshape(*lead, m, m), block
