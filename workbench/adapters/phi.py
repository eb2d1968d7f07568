"""Phi (Phi-1, Phi-1.5, Phi-2): one LayerNorm per block feeding attention and the MLP in
parallel (``ln1`` and ``ln2`` are the same module, so their hook points show the same tensor),
partial rotary, biases on Q/K/V, W_O (``dense``), the MLP (``fc1``/``fc2``) and the unembedding.
With ``qk_layernorm``, a LayerNorm over each head's query and key sits between the projections
and rotary; ``hook_q``/``hook_k`` are after it."""

from __future__ import annotations

from typing import Any

from .base import Adapter


def read_config(c: Any) -> dict:
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0))
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads or c.num_attention_heads, d_model=c.hidden_size,
        d_head=d_head, d_mlp=c.intermediate_size, d_vocab=c.vocab_size,
        n_ctx=c.max_position_embeddings, eps=c.layer_norm_eps, act_fn=c.hidden_act,
        parallel_attn_mlp=True, rotary_dim=int(d_head * pct), gated_mlp=False,
    )


ADAPTER = Adapter(
    family="phi", model_types=("phi",), embed="model.embed_tokens", pos_embed=None,
    blocks="model.layers", ln_final="model.final_layernorm", unembed="lm_head",
    ln1="input_layernorm", ln2="input_layernorm", attn="self_attn", mlp="mlp",
    attn_qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_layout="split",
    attn_out_proj="self_attn.dense", mlp_in="mlp.fc1", mlp_gate=None, mlp_out="mlp.fc2",
    linear_layout="linear", normalization="LN", positional="rotary", read_config=read_config,
    attn_qk_norms=("self_attn.q_layernorm", "self_attn.k_layernorm"),
)
