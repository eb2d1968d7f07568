"""OLMo (v1): the Llama module tree, with a LayerNorm that has neither weight nor bias (fixed
eps 1e-5) in place of each RMSNorm, and an optional ``clip_qkv``: Q, K and V are clamped to
``[-clip_qkv, clip_qkv]`` right after the projections (before rotary).

``attn.hook_q``/``hook_k``/``hook_v`` are what the attention function receives (after the clamp,
and rotary for Q/K). ``W_Q``/``W_K``/``W_V`` describe the projection only, so with ``clip_qkv``
set they reproduce the activations only where nothing was clamped, and weight processing
skips ``fold_value_biases`` (a value bias cannot move past the clamp).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config

OLMO_LAYER_NORM_EPS = 1e-5  # OlmoLayerNorm hard-codes it; the config has no eps field


def read_config(c: Any) -> dict:
    return {**llama_like_config(c, OLMO_LAYER_NORM_EPS), "clip_qkv": c.clip_qkv}


ADAPTER = dataclasses.replace(LLAMA, family="olmo", model_types=("olmo",), normalization="LN",
                              read_config=read_config)
