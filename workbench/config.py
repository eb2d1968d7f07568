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
    right after their projections (OLMo), ``None`` when not; ``attn_scores_soft_cap`` /
    ``output_logits_soft_cap``: scores and logits pass through ``cap * tanh(x / cap)`` (Gemma 2);
    ``logit_multiplier``: the model multiplies the unembedding's output by it (Cohere's
    ``logit_scale``, Granite's ``1 / logits_scaling``); ``embed_multiplier``: the model scales
    the token embedding by it before the first block, and ``residual_multiplier``: each block
    adds that times attention's and the MLP's outputs (Granite); ``n_experts`` /
    ``experts_per_token``: mixture-of-experts MLPs (0 for dense models); ``hook_embed``,
    ``hook_attn_out`` and ``hook_mlp_out`` show the scaled tensors, what the residual receives."""

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
    positional_embedding_type: str  # "standard" (learned), "rotary" or "alibi"
    normalization_type: str  # "LN" or "RMS"
    gated_mlp: bool
    parallel_attn_mlp: bool
    rotary_dim: int | None
    dtype: torch.dtype
    device: torch.device
    clip_qkv: float | None = None
    attn_scores_soft_cap: float | None = None
    output_logits_soft_cap: float | None = None
    logit_multiplier: float = 1.0
    embed_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    n_experts: int = 0  # mixture-of-experts MLPs: experts per layer, and experts each token uses
    experts_per_token: int = 0

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model does to the unembedding's output ``[..., d_vocab]`` before returning it
        (a multiplier, then soft-capping); the identity for most families."""
        if self.logit_multiplier != 1.0:
            logits = logits * self.logit_multiplier
        if self.output_logits_soft_cap is not None:
            cap = self.output_logits_soft_cap
            logits = torch.tanh(logits / cap) * cap
        return logits

    @property
    def grouped_query(self) -> bool:
        """True when keys and values have fewer heads than queries."""
        return self.n_kv_heads != self.n_heads
