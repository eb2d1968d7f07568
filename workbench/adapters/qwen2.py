"""Qwen2: the Llama module tree, with biases on the Q, K and V projections (none on W_O), and
an optional sliding window on the upper layers (carried by the attention mask)."""

from __future__ import annotations

import dataclasses

from .llama import ADAPTER as LLAMA

ADAPTER = dataclasses.replace(LLAMA, family="qwen2", model_types=("qwen2",))
