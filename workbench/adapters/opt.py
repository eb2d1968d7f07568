"""OPT (pre-LayerNorm checkpoints, ``do_layer_norm_before=True``: all but opt-350m): learned
positions with an offset of 2 (``W_pos`` drops the first two rows of the table), biases
everywhere, a ReLU MLP written inline in the block (``fc1``/``fc2``, no MLP module:
``hook_mlp_out`` is ``fc2``'s output). The block flattens the residual to ``[batch * pos,
d_model]`` before its second LayerNorm; those hook points are shown as ``[batch, pos, ...]``.
Post-LayerNorm OPT (opt-350m) and the projections around a smaller embedding
(``word_embed_proj_dim``) are refused with an error that says so."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedModelError
from .base import Adapter


def read_config(c: Any) -> dict:
    if not c.do_layer_norm_before:
        raise UnsupportedModelError(
            "This OPT checkpoint normalises after each sublayer (do_layer_norm_before=False, as "
            "opt-350m), so its residual stream has no resid_mid/ln2 in the usual sense; only "
            "pre-LayerNorm OPT (opt-125m, 1.3b, ...) is supported.")
    if c.word_embed_proj_dim != c.hidden_size:
        raise UnsupportedModelError(
            f"This OPT checkpoint projects a {c.word_embed_proj_dim}-dim embedding into its "
            f"{c.hidden_size}-dim residual stream (project_in/project_out); not supported yet.")
    d_head = c.hidden_size // c.num_attention_heads
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, n_kv_heads=c.num_attention_heads,
        d_model=c.hidden_size, d_head=d_head, d_mlp=c.ffn_dim, d_vocab=c.vocab_size,
        n_ctx=c.max_position_embeddings, eps=1e-5, act_fn=c.activation_function,
        parallel_attn_mlp=False, rotary_dim=None, gated_mlp=False,
    )


ADAPTER = Adapter(
    family="opt", model_types=("opt",), embed="model.decoder.embed_tokens",
    pos_embed="model.decoder.embed_positions", blocks="model.decoder.layers",
    ln_final="model.decoder.final_layer_norm", unembed="lm_head",
    ln1="self_attn_layer_norm", ln2="final_layer_norm", attn="self_attn", mlp="fc2",
    attn_qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_layout="split",
    attn_out_proj="self_attn.out_proj", mlp_in="fc1", mlp_gate=None, mlp_out="fc2",
    linear_layout="linear", normalization="LN", positional="standard", read_config=read_config,
    mlp_flat_rows=True, pos_offset=2, queries_prescaled=True,
)
