"""Gemma, Gemma 2 and Gemma 3 (text): the Llama module tree with Gemma's conventions.

- RMSNorms scale by ``1 + weight`` (``norm_weight_offset=1``); the embedding module multiplies its
  output by sqrt(d_model), so ``hook_embed`` and ``W_E`` include that factor.
- Gemma 2 and 3 add a norm after attention and after the MLP (``post_attention_layernorm``,
  ``post_feedforward_layernorm``); the MLP's input norm is ``pre_feedforward_layernorm``.
  ``hook_attn_out``/``hook_mlp_out`` are those post-norms' outputs, what the residual stream
  receives, and the norms have their own ``ln1_post``/``ln2_post`` hook points.
- Gemma 2 soft-caps attention scores and the final logits (``cap * tanh(x / cap)``); a capped
  model always takes the eager attention path (SDPA cannot cap). Layers alternate between a
  sliding window and full attention (``config.layer_types``, carried by the mask).
- Gemma 3 adds per-head RMSNorms over queries and keys (``q_norm``/``k_norm``, as Qwen3).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config


def read_config(c: Any) -> dict:
    act = getattr(c, "hidden_activation", None) or getattr(c, "hidden_act", None)
    return {**llama_like_config(c, c.rms_norm_eps), "act_fn": act,
            "attn_scores_soft_cap": getattr(c, "attn_logit_softcapping", None),
            "output_logits_soft_cap": getattr(c, "final_logit_softcapping", None)}


ADAPTER = dataclasses.replace(LLAMA, family="gemma", model_types=("gemma",), norm_weight_offset=1.0,
                              read_config=read_config)
GEMMA2 = dataclasses.replace(ADAPTER, family="gemma2", model_types=("gemma2",),
                             ln2="pre_feedforward_layernorm",
                             attn_post_norm="post_attention_layernorm",
                             mlp_post_norm="post_feedforward_layernorm")
GEMMA3 = dataclasses.replace(GEMMA2, family="gemma3", model_types=("gemma3_text",),
                             attn_qk_norms=("self_attn.q_norm", "self_attn.k_norm"))
