"""GPT-J: one LayerNorm per block (``ln_1``) feeding attention and the MLP in parallel (``ln1``
points only), rotary on the first ``rotary_dim`` dims of each head (interleaved pairs), no
biases in attention, an MLP ``fc_in`` -> gelu -> ``fc_out``, and a bias on the unembedding.

Before transformers 5.24, GPT-J does not call transformers' attention interface: its attention
module computes the scores in its own ``_attn(query, key, value, attention_mask)``. The bridge
then loads it with eager attention and gives each attention module an instance-level ``_attn``
that runs the module's own method unchanged when no hook reads attention internals, and the
bridge's hooked eager attention (the same computation, in fp32 as GPT-J does) when one does.
From 5.24 on GPT-J calls the interface, and is served as the other families are (with
``fp32_scores``: q.k in float32, as its eager attention computes it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.gptj.modeling_gptj import GPTJAttention

from ..attention import hooked_eager_attention, site_of
from .base import Adapter


def read_config(c: Any) -> dict:
    d_head = c.n_embd // c.n_head
    return dict(
        n_layers=c.n_layer, n_heads=c.n_head, n_kv_heads=c.n_head, d_model=c.n_embd, d_head=d_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions,
        eps=c.layer_norm_epsilon, act_fn=c.activation_function, parallel_attn_mlp=True,
        rotary_dim=c.rotary_dim or d_head, gated_mlp=False,
    )


def install_attention(module: nn.Module) -> None:
    """Route ``module._attn`` (query/key/value ``[batch, heads, pos, d_head]``, an additive
    ``[batch, 1, q, k]`` mask) through the hook points when they are in use; returns what GPT-J's
    own ``_attn`` returns: ``(z [batch, heads, q, d_head], pattern)``."""
    original = type(module)._attn

    def _attn(query, key, value, attention_mask=None):
        site = site_of(module)
        if site is None or not site.wants_internals():
            return original(module, query, key, value, attention_mask)
        z, pattern = hooked_eager_attention(
            site, module, query, key, value, attention_mask, scaling=None,
            dropout=module.attn_dropout.p, scores_fn=lambda q, k: _scores(module, q, k))
        return z.transpose(1, 2), pattern

    module._attn = _attn


def _scores(module: nn.Module, query, key):
    """GPT-J's scores: ``q.k`` in float32 (whatever the model's dtype), divided by
    ``sqrt(d_head)``; ``[batch, heads, q, k]``."""
    return torch.matmul(query.float(), key.float().transpose(-1, -2)) / module.scale_attn


# transformers before 5.24 computes GPT-J's attention inline in ``GPTJAttention._attn`` (which
# ``install_attention`` routes through the hook points); from 5.24 on it calls the attention
# interface like the other families, so the bridge's registered attention function serves it.
_INLINE = hasattr(GPTJAttention, "_attn")

ADAPTER = Adapter(
    family="gptj", model_types=("gptj",), embed="transformer.wte", pos_embed=None,
    blocks="transformer.h", ln_final="transformer.ln_f", unembed="lm_head",
    ln1="ln_1", ln2="ln_1", attn="attn", mlp="mlp",
    attn_qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"), qkv_layout="split",
    attn_out_proj="attn.out_proj", mlp_in="mlp.fc_in", mlp_gate=None, mlp_out="mlp.fc_out",
    linear_layout="linear", normalization="LN", positional="rotary", read_config=read_config,
    install_attention=install_attention if _INLINE else None, fp32_scores=True,
)
