"""StarCoder2: the Llama module tree for attention (separate Q/K/V/O ``nn.Linear`` with optional
biases, grouped-query attention, rotary, an optional sliding window carried by the mask), but
LayerNorms with bias (eps ``norm_epsilon``) and a plain, non-gated MLP ``c_fc`` -> act ->
``c_proj``."""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config


def read_config(c: Any) -> dict:
    return {**llama_like_config(c, c.norm_epsilon), "gated_mlp": False}


ADAPTER = dataclasses.replace(LLAMA, family="starcoder2", model_types=("starcoder2",),
                              normalization="LN", mlp_in="mlp.c_fc", mlp_gate=None,
                              mlp_out="mlp.c_proj", read_config=read_config)
