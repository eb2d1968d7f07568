"""GPT-2: learned absolute positions, LayerNorm, fused Q/K/V in ``Conv1D`` layers (``[in, out]``)."""

from __future__ import annotations

from typing import Any

from .base import Adapter


def read_config(c: Any) -> dict:
    d_model = c.n_embd
    return dict(
        n_layers=c.n_layer, n_heads=c.n_head, n_kv_heads=c.n_head, d_model=d_model,
        d_head=d_model // c.n_head, d_mlp=c.n_inner or 4 * d_model, d_vocab=c.vocab_size,
        n_ctx=c.n_positions, eps=c.layer_norm_epsilon, act_fn=c.activation_function,
        parallel_attn_mlp=False, rotary_dim=None, gated_mlp=False,
    )


ADAPTER = Adapter(
    family="gpt2", model_types=("gpt2",), embed="transformer.wte", pos_embed="transformer.wpe",
    blocks="transformer.h", ln_final="transformer.ln_f", unembed="lm_head",
    ln1="ln_1", ln2="ln_2", attn="attn", mlp="mlp", attn_qkv=("attn.c_attn",),
    qkv_layout="fused", attn_out_proj="attn.c_proj",
    mlp_in="mlp.c_fc", mlp_gate=None, mlp_out="mlp.c_proj", linear_layout="conv1d",
    normalization="LN", positional="standard", read_config=read_config,
)
