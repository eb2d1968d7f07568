"""Mixture-of-experts families: Mixtral, Qwen2-MoE and Qwen3-MoE. The Llama module tree (Qwen3-MoE
with Qwen3's per-head Q/K norms) whose MLP is a sparse block: a router (``mlp.gate``) picks
``experts_per_token`` of ``n_experts`` experts per token, whose weights are stacked 3-D
parameters (``mlp.experts.gate_up_proj [E, 2 * d_mlp, d_model]``, ``down_proj``). Qwen2-MoE adds
a shared expert on every token, scaled by a sigmoid gate. Qwen-MoE models may keep some layers
dense (``mlp_only_layers``, ``decoder_sparse_step``): those have the usual MLP hook points.

Hook points of a sparse layer: ``mlp.hook_router_logits [batch, pos, n_experts]`` and
``mlp.hook_expert_indices [batch, pos, k]`` (read-only: the router has chosen),
``mlp.hook_expert_weights [batch, pos, n_experts]`` (each expert's mixing weight, 0 where not
chosen, as in TransformerLens; writable for the chosen experts, so zeroing one removes that
expert's output), and ``hook_mlp_out``. There is no
``mlp.hook_pre``/``hook_post`` there: each token runs through different experts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config


def read_mixtral(c: Any) -> dict:
    return {**llama_like_config(c, c.rms_norm_eps), "n_experts": c.num_local_experts,
            "experts_per_token": c.num_experts_per_tok}


def read_qwen_moe(c: Any) -> dict:
    return {**llama_like_config(c, c.rms_norm_eps), "n_experts": c.num_experts,
            "experts_per_token": c.num_experts_per_tok}


_EXPERTS = ("mlp.gate.weight", "mlp.experts.gate_up_proj")
MIXTRAL = dataclasses.replace(LLAMA, family="mixtral", model_types=("mixtral",),
                              read_config=read_mixtral, moe_router="mlp.gate", moe_readers=_EXPERTS)
QWEN2_MOE = dataclasses.replace(
    MIXTRAL, family="qwen2_moe", model_types=("qwen2_moe",), read_config=read_qwen_moe,
    moe_readers=(*_EXPERTS, "mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight",
                 "mlp.shared_expert_gate.weight"))
QWEN3_MOE = dataclasses.replace(MIXTRAL, family="qwen3_moe", model_types=("qwen3_moe",),
                                read_config=read_qwen_moe,
                                attn_qk_norms=("self_attn.q_norm", "self_attn.k_norm"))
