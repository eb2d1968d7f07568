"""The bridge's view of a model's shape: ``BridgeConfig``, built from the HF config by an adapter.

Field names follow TransformerLens (``n_layers``, ``d_head``, ``positional_embedding_type``,
``normalization_type``...) so code written against ``model.cfg`` reads the same here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BridgeConfig:
    """Sizes and kinds of a wrapped model. ``n_kv_heads < n_heads`` means grouped-query attention
    (``n_kv_heads == 1`` multi-query); ``rotary_dim`` is the number of rotated dims per head
    (``None`` without rotary); ``clip_qkv``: Q, K and V are clamped to ``[-clip_qkv, clip_qkv]``
    right after their projections (OLMo), ``None`` when not."""

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    eps: float
    act_fn: str
    positional_embedding_type: str  # "standard" (learned) or "rotary"
    normalization_type: str  # "LN" or "RMS"
    gated_mlp: bool
    parallel_attn_mlp: bool
    rotary_dim: int | None
    dtype: torch.dtype
    device: torch.device
    clip_qkv: float | None = None

    @property
    def grouped_query(self) -> bool:
        """True when keys and values have fewer heads than queries."""
        return self.n_kv_heads != self.n_heads
