"""Qwen3: the Llama module tree, plus an RMSNorm over each head's query and key (``q_norm``,
``k_norm``, weight ``[d_head]``) between the projections and rotary; ``head_dim`` is its own
config field (often not d_model / n_heads).

``attn.hook_q``/``hook_k`` are what the attention function receives: after the projection, the
per-head norm and rotary, in that order. So ``W_Q``/``W_K`` (and ``QK``) describe the projection
only; the query is ``rotary(q_norm(x @ W_Q + b_Q))``, not linear in the residual stream.
"""

from __future__ import annotations

import dataclasses

from .llama import ADAPTER as LLAMA

ADAPTER = dataclasses.replace(LLAMA, family="qwen3", model_types=("qwen3",),
                              attn_qk_norms=("self_attn.q_norm", "self_attn.k_norm"))
