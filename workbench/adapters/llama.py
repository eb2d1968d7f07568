"""Llama and Mistral (the same module tree; Mistral adds a sliding window, which the attention
mask carries): RMSNorm, rotary, separate Q/K/V ``nn.Linear`` projections (optional biases),
grouped-query attention, gated MLP. Other Llama-like families reuse ``llama_like_config`` and
``ADAPTER`` with their own model types."""

from __future__ import annotations

from typing import Any

from .base import Adapter


def llama_like_config(c: Any, eps: float) -> dict:
    """The config fields of a Llama-like model; ``head_dim`` may differ from d_model / n_heads."""
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads or c.num_attention_heads, d_model=c.hidden_size,
        d_head=d_head, d_mlp=c.intermediate_size, d_vocab=c.vocab_size,
        n_ctx=c.max_position_embeddings, eps=eps, act_fn=getattr(c, "hidden_act", None),
        parallel_attn_mlp=False, rotary_dim=d_head, gated_mlp=True,
    )


def read_config(c: Any) -> dict:
    return llama_like_config(c, c.rms_norm_eps)


ADAPTER = Adapter(
    family="llama", model_types=("llama", "mistral"), embed="model.embed_tokens", pos_embed=None,
    blocks="model.layers", ln_final="model.norm", unembed="lm_head",
    ln1="input_layernorm", ln2="post_attention_layernorm", attn="self_attn", mlp="mlp",
    attn_qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_layout="split",
    attn_out_proj="self_attn.o_proj", mlp_in="mlp.up_proj", mlp_gate="mlp.gate_proj",
    mlp_out="mlp.down_proj", linear_layout="linear", normalization="RMS",
    positional="rotary", read_config=read_config,
)
