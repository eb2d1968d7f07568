"""StableLM (StableLM-2, StableLM-3B-4E1T): the Llama module tree with LayerNorms (with bias),
partial rotary (``partial_rotary_factor``), optional Q/K/V biases (``use_qkv_bias``) and
optional per-head LayerNorms over queries and keys (``qk_layernorm``: one LayerNorm per head,
``q_layernorm.norms.<h>``), before rotary; ``hook_q``/``hook_k`` are after them. With
``use_parallel_residual`` one norm feeds attention and the MLP (``ln1`` only, no ``ln2``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config


def read_config(c: Any) -> dict:
    out = llama_like_config(c, c.layer_norm_eps)
    rope = getattr(c, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) or 1.0
    return {**out, "rotary_dim": int(out["d_head"] * pct),
            "parallel_attn_mlp": bool(c.use_parallel_residual)}


ADAPTER = dataclasses.replace(LLAMA, family="stablelm", model_types=("stablelm",), normalization="LN",
                              read_config=read_config,
                              attn_qk_norms=("self_attn.q_layernorm", "self_attn.k_layernorm"))
