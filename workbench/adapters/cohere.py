"""Cohere (Command-R): the Llama module tree with one LayerNorm (weight, no bias) per block
feeding attention and the MLP in parallel (``ln1`` and ``ln2`` are the same module), a gated
MLP, and logits multiplied by ``config.logit_scale`` after the unembedding. With
``use_qk_norm``, LayerNorms over each head's query and key (weight ``[n_heads, d_head]``) sit
between the projections and rotary; ``hook_q``/``hook_k`` are after them."""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config


def read_config(c: Any) -> dict:
    return {**llama_like_config(c, c.layer_norm_eps), "parallel_attn_mlp": True,
            "logit_multiplier": float(c.logit_scale)}


ADAPTER = dataclasses.replace(LLAMA, family="cohere", model_types=("cohere",),
                              ln2="input_layernorm", normalization="LN", read_config=read_config,
                              attn_qk_norms=("self_attn.q_norm", "self_attn.k_norm"))
