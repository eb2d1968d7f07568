"""GPT-NeoX (Pythia): LayerNorm, partial rotary, Q/K/V fused and interleaved per head, and
(by default) parallel attention and MLP, both reading the block's input."""

from __future__ import annotations

from typing import Any

from .base import Adapter


def read_config(c: Any) -> dict:
    d_head = c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(c, "rotary_pct", 1.0))
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_attention_heads, d_model=c.hidden_size, d_head=d_head,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings,
        eps=c.layer_norm_eps, act_fn=c.hidden_act,
        parallel_attn_mlp=bool(c.use_parallel_residual), rotary_dim=int(d_head * pct),
        gated_mlp=False,
    )


ADAPTER = Adapter(
    family="gpt_neox", model_types=("gpt_neox",), embed="gpt_neox.embed_in", pos_embed=None,
    blocks="gpt_neox.layers", ln_final="gpt_neox.final_layer_norm", unembed="lm_head",
    ln1="input_layernorm", ln2="post_attention_layernorm", attn="attention", mlp="mlp",
    attn_qkv=("attention.query_key_value",), qkv_layout="per_head",
    attn_out_proj="attention.dense", mlp_in="mlp.dense_h_to_4h", mlp_gate=None,
    mlp_out="mlp.dense_4h_to_h", linear_layout="linear", normalization="LN",
    positional="rotary", read_config=read_config,
)
