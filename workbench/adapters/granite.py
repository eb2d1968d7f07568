"""Granite: the Llama module tree with four scalars from the config. ``embedding_multiplier``
scales the token embedding before the first block; ``residual_multiplier`` scales what attention
and the MLP add to the residual stream; ``attention_multiplier`` replaces 1/sqrt(d_head) as the
attention scale (it reaches the attention function as ``scaling``); the logits are divided by
``logits_scaling``. ``hook_embed``, ``hook_attn_out`` and ``hook_mlp_out`` show the scaled
tensors (what the residual stream receives); ``hook_result`` is each head's ``z @ W_O`` before
the multiplier, as the module computes it."""

from __future__ import annotations

import dataclasses
from typing import Any

from .llama import ADAPTER as LLAMA
from .llama import llama_like_config


def read_config(c: Any) -> dict:
    return {**llama_like_config(c, c.rms_norm_eps),
            "embed_multiplier": float(c.embedding_multiplier),
            "residual_multiplier": float(c.residual_multiplier),
            "logit_multiplier": 1.0 / float(c.logits_scaling)}


ADAPTER = dataclasses.replace(LLAMA, family="granite", model_types=("granite",),
                              read_config=read_config)
