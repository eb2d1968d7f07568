"""BERT-style encoders (BERT, MiniLM): bidirectional attention and post-norm blocks.

The embedding sums token, position and segment embeddings and normalises them (``embed_ln``);
each block is ``mid = LN1(x + attn(x))``, ``out = LN2(mid + mlp(mid))``. The bridge wraps the
encoder itself (``model.base_model``: ``BertModel``), so paths are relative to it; a task head
(masked LM, classifier, pooler) is not part of the wrapped model. See ``workbench.encoder``.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter


def read_config(c: Any) -> dict:
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_attention_heads, d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads, d_mlp=c.intermediate_size,
        d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, eps=c.layer_norm_eps,
        act_fn=c.hidden_act, parallel_attn_mlp=False, rotary_dim=None, gated_mlp=False,
    )


ADAPTER = Adapter(
    family="bert", model_types=("bert",), embed="embeddings.word_embeddings",
    pos_embed="embeddings.position_embeddings", blocks="encoder.layer", ln_final=None,
    unembed=None, ln1="attention.output.LayerNorm", ln2="output.LayerNorm",
    attn="attention.self", mlp="intermediate",
    attn_qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    qkv_layout="split", attn_out_proj="attention.output.dense", mlp_in="intermediate.dense",
    mlp_gate=None, mlp_out="output.dense", linear_layout="linear", normalization="LN",
    positional="standard", read_config=read_config, encoder=True,
    embed_norm="embeddings.LayerNorm", token_type_embed="embeddings.token_type_embeddings",
)
