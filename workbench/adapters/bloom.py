"""BLOOM: ALiBi instead of position embeddings, a LayerNorm right after the token embedding
(``embed_ln``; ``hook_embed`` is its output, the residual stream's start), Q/K/V fused and
interleaved per head, a tanh-GELU MLP, and sequential blocks whose attention and MLP modules add
the residual themselves (``hook_attn_out`` / ``hook_mlp_out`` are the outputs of ``dense`` /
``dense_4h_to_h``).

BLOOM does not call transformers' attention interface: its attention module computes
``alibi + q.k / sqrt(d_head)`` inline in ``forward``. The bridge gives each attention module an
instance-level ``forward`` that runs the module's own one unchanged when no hook reads attention
internals, and otherwise the same computation through the bridge's hooked eager attention, with
the ALiBi bias inside ``hook_attn_scores`` (as TransformerLens shows it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..attention import hooked_eager_attention, site_of
from ..errors import UnsupportedModelError
from .base import Adapter


def read_config(c: Any) -> dict:
    if getattr(c, "apply_residual_connection_post_layernorm", False):
        raise UnsupportedModelError(
            "This BLOOM config sets apply_residual_connection_post_layernorm=True: its blocks "
            "carry the normalised stream as the residual, which has no resid_pre/resid_post "
            "decomposition. Expected False (every released BLOOM model); use a model with it off.")
    return dict(
        n_layers=c.n_layer, n_heads=c.n_head, n_kv_heads=c.n_head, d_model=c.hidden_size,
        d_head=c.hidden_size // c.n_head, d_mlp=4 * c.hidden_size, d_vocab=c.vocab_size,
        # ALiBi has no position table; BLOOM was trained on 2048 tokens
        n_ctx=getattr(c, "seq_length", None) or 2048, eps=c.layer_norm_epsilon, act_fn="gelu_new",
        parallel_attn_mlp=False, rotary_dim=None, gated_mlp=False,
    )


def install_attention(module: nn.Module) -> None:
    """Give ``module`` an instance-level ``forward`` with BLOOM's signature: ``hidden_states``
    and ``residual`` ``[batch, pos, d_model]``, ``alibi [batch * heads, 1, k_pos]``, an additive
    ``attention_mask [batch, 1, q, k]``; returns ``(attention output + residual, pattern)``."""
    original = type(module).forward

    def forward(hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                output_attentions=False, **kwargs):
        site = site_of(module)
        if site is None or not site.wants_internals():
            return original(module, hidden_states, residual, alibi, attention_mask, layer_past,
                            use_cache, output_attentions, **kwargs)
        batch, q_len, _ = hidden_states.shape
        query, key, value = module._reshape(module.query_key_value(hidden_states))  # [b, h, p, d]
        if layer_past is not None:
            key, value = layer_past.update(key, value, module.layer_idx)
        mask = _additive(attention_mask, q_len, key.shape[2], alibi)  # masked: the dtype's min
        z, pattern = hooked_eager_attention(
            site, module, query, key, value, mask, scaling=None, dropout=module.attention_dropout.p,
            scores_fn=lambda q, k: _scores(module, alibi, q, k))
        out = module.dense(z.reshape(batch, q_len, -1))
        out = residual + F.dropout(out, p=module.hidden_dropout, training=module.training)
        return out, pattern

    module.forward = forward


def _scores(module: nn.Module, alibi: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """BLOOM's scores ``alibi + q.k / sqrt(d_head)`` ``[batch, heads, q, k]``, in one fused
    ``baddbmm`` as BLOOM computes them (one rounding in half precision, not three)."""
    batch, heads, q_len, d_head = query.shape
    scores = alibi.baddbmm(query.reshape(batch * heads, q_len, d_head),
                           key.reshape(batch * heads, -1, d_head).transpose(-1, -2),
                           beta=module.beta, alpha=module.inv_norm_factor)
    return scores.view(batch, heads, q_len, -1)


def _additive(mask: torch.Tensor | None, q_len: int, k_len: int, like: torch.Tensor) -> torch.Tensor:
    """The mask as an additive ``[b or 1, 1, q, k]`` tensor (0 or the dtype's min): HF's float
    mask as it is, a boolean one (True = attend) converted, and None (a plain run) causal."""
    low = torch.finfo(like.dtype).min
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=like.device).tril(k_len - q_len)
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, low)
    return mask


ADAPTER = Adapter(
    family="bloom", model_types=("bloom",), embed="transformer.word_embeddings", pos_embed=None,
    blocks="transformer.h", ln_final="transformer.ln_f", unembed="lm_head",
    ln1="input_layernorm", ln2="post_attention_layernorm", attn="self_attention", mlp="mlp",
    attn_qkv=("self_attention.query_key_value",), qkv_layout="per_head",
    attn_out_proj="self_attention.dense", mlp_in="mlp.dense_h_to_4h", mlp_gate=None,
    mlp_out="mlp.dense_4h_to_h", linear_layout="linear", normalization="LN", positional="alibi",
    read_config=read_config, install_attention=install_attention,
    embed_norm="transformer.word_embeddings_layernorm", residual_inside_sublayers=True,
)
