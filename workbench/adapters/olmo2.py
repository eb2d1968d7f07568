"""OLMo 2: the Llama module tree with the norms moved after the sublayers. There is no norm
before attention or the MLP (no ``ln1``/``ln2`` hook points): attention reads ``resid_pre`` and
the MLP reads ``resid_mid`` directly. RMSNorms after attention and after the MLP
(``post_attention_layernorm``, ``post_feedforward_layernorm``) normalise what they write, so
``hook_attn_out``/``hook_mlp_out`` are those norms' outputs (``ln1_post``/``ln2_post`` points).
RMSNorms over the whole query and key projections (``q_norm``/``k_norm``, weight
``[n_heads * d_head]``) sit between the projections and rotary."""

from __future__ import annotations

import dataclasses

from .llama import ADAPTER as LLAMA

ADAPTER = dataclasses.replace(LLAMA, family="olmo2", model_types=("olmo2",), ln1=None, ln2=None,
                              attn_post_norm="post_attention_layernorm",
                              mlp_post_norm="post_feedforward_layernorm",
                              attn_qk_norms=("self_attn.q_norm", "self_attn.k_norm"))
