"""Phi-3: the Llama module tree with Q, K and V fused in one projection (``qkv_proj``, output
``[q (n_heads*d_head) | k (n_kv*d_head) | v (n_kv*d_head)]``) and the gated MLP's gate and up
projections fused in one (``gate_up_proj``, output ``[gate | up]``). ``mlp.hook_pre`` and
``mlp.hook_pre_linear`` are the two halves of that output; ``W_gate`` and ``W_in`` are the two
halves of its weight. Rotary may cover part of each head (``partial_rotary_factor``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config


def read_config(c: Any) -> dict:
    out = llama_like_config(c, c.rms_norm_eps)
    rope = getattr(c, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) or 1.0
    return {**out, "rotary_dim": int(out["d_head"] * pct)}


ADAPTER = dataclasses.replace(LLAMA, family="phi3", model_types=("phi3",),
                              attn_qkv=("self_attn.qkv_proj",), qkv_layout="fused",
                              mlp_in="mlp.gate_up_proj", mlp_gate="mlp.gate_up_proj",
                              mlp_fused_gate_up=True, read_config=read_config)
