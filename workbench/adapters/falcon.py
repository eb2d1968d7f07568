"""Falcon: LayerNorm, one fused Q/K/V projection, rotary (or ALiBi on the RW checkpoints), and a
block layout that depends on the config, so this adapter's module paths come from
``for_config``:

- ``new_decoder_architecture`` (Falcon-40B/180B, Falcon 2): grouped-query attention with Q/K/V
  fused per K/V group (``[kv, (its g queries, k, v), d_head]``, the ``per_head`` layout), and
  parallel attention and MLP fed by two norms (``ln_attn``, ``ln_mlp``) or one
  (``num_ln_in_parallel_attn=1``);
- otherwise (Falcon-7B, RW): multi-query attention (``[q | k | v]`` with one K/V head) or
  multi-head attention interleaved per head, in a parallel block with one norm, or a sequential
  block (``parallel_attn=False``: ``input_layernorm`` then ``post_attention_layernorm``).

Falcon computes attention inline in its module's ``forward`` (SDPA or its own eager code), not
through transformers' attention interface. The bridge loads it with SDPA, and each attention
module gets an instance-level ``forward``: the module's own when no hook reads attention
internals, else the same computation through the bridge's hooked eager attention. With ALiBi,
that is what SDPA computes, ``(q.k + alibi) / sqrt(d_head)``, with the bias inside
``hook_attn_scores``; transformers' eager Falcon code (used for ``output_attentions=True``) adds
the ALiBi bias a second time, so its attention weights differ from the model's own SDPA run.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from ..attention import hooked_eager_attention, site_of
from .base import Adapter


def _kv_heads(c: Any) -> int:
    if c.new_decoder_architecture:
        return c.num_kv_heads
    return 1 if c.multi_query else c.num_attention_heads


def read_config(c: Any) -> dict:
    d_head = c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, n_kv_heads=_kv_heads(c),
        d_model=c.hidden_size, d_head=d_head, d_mlp=c.ffn_hidden_size, d_vocab=c.vocab_size,
        n_ctx=c.max_position_embeddings, eps=c.layer_norm_epsilon, act_fn=c.activation,
        parallel_attn_mlp=bool(c.parallel_attn or c.new_decoder_architecture),
        rotary_dim=None if c.alibi else int(d_head * rope.get("partial_rotary_factor", 1.0)),
        gated_mlp=False,
    )


def for_config(c: Any) -> dict:
    """The fields that vary with the config: norms, Q/K/V layout and positions."""
    if c.new_decoder_architecture and (c.num_ln_in_parallel_attn or 2) == 2:
        norms = dict(ln1="ln_attn", ln2="ln_mlp")
    elif c.new_decoder_architecture or c.parallel_attn:  # one norm feeds both: ln1 points only
        norms = dict(ln1="input_layernorm", ln2="input_layernorm")
    else:
        norms = dict(ln1="input_layernorm", ln2="post_attention_layernorm")
    multi_query = c.multi_query and not c.new_decoder_architecture
    return dict(**norms, qkv_layout="fused" if multi_query else "per_head",
                positional="alibi" if c.alibi else "rotary")


def install_attention(module: nn.Module) -> None:
    """Give ``module`` an instance-level ``forward`` with Falcon's signature: ``hidden_states
    [batch, pos, d_model]``, ``alibi`` (or None with rotary ``position_embeddings``), the
    block's ``attention_mask`` (boolean ``[batch, 1, q, k]``, or additive with the ALiBi bias
    already in it); returns ``(attention output [batch, pos, d_model], pattern)``."""
    original = type(module).forward
    rotate = sys.modules[type(module).__module__].apply_rotary_pos_emb  # Falcon's own

    def forward(hidden_states, alibi, attention_mask, position_ids=None, layer_past=None,
                use_cache=False, output_attentions=False, position_embeddings=None, **kwargs):
        site = site_of(module)
        if site is None or not site.wants_internals():
            return original(module, hidden_states, alibi, attention_mask, position_ids, layer_past,
                            use_cache, output_attentions, position_embeddings, **kwargs)
        batch, q_len, _ = hidden_states.shape
        h, d = module.num_heads, module.head_dim
        fused = module.query_key_value(hidden_states)
        if module.new_decoder_architecture:  # [kv, (g queries, k, v), d]: K/V one per group
            kv = module.config.num_kv_heads
            x = fused.view(batch, q_len, kv, h // kv + 2, d)
            query, key, value = x[:, :, :, :-2].flatten(2, 3), x[:, :, :, -2], x[:, :, :, -1]
        elif module.multi_query:  # [q (h * d) | k (d) | v (d)]
            x = fused.view(batch, q_len, h + 2, d)
            query, key, value = x[:, :, :-2], x[:, :, -2:-1], x[:, :, -1:]
        else:  # [head, (q, k, v), d]
            x = fused.view(batch, q_len, h, 3, d)
            query, key, value = x[..., 0, :], x[..., 1, :], x[..., 2, :]
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # [b, heads, p, d]
        if alibi is None:
            cos, sin = position_embeddings
            query, key = rotate(query, key, cos, sin)
        if layer_past is not None:
            groups = h // key.shape[1]
            if module.new_decoder_architecture and groups > 1:
                # Falcon caches K/V per query head: store them so, and read one per group back
                key, value = (t.repeat_interleave(groups, 1) for t in (key, value))
                key, value = layer_past.update(key, value, module.layer_idx)
                key, value = key[:, ::groups], value[:, ::groups]
            else:
                key, value = layer_past.update(key, value, module.layer_idx)
        z, pattern = hooked_eager_attention(
            site, module, query, key, value, attention_mask, scaling=module.inv_norm_factor,
            dropout=module.attention_dropout.p if alibi is not None else 0.0)
        return module.dense(z.reshape(batch, q_len, h * d)), pattern

    module.forward = forward


ADAPTER = Adapter(
    family="falcon", model_types=("falcon",), embed="transformer.word_embeddings", pos_embed=None,
    blocks="transformer.h", ln_final="transformer.ln_f", unembed="lm_head",
    ln1="input_layernorm", ln2="input_layernorm", attn="self_attention", mlp="mlp",
    attn_qkv=("self_attention.query_key_value",), qkv_layout="fused",
    attn_out_proj="self_attention.dense", mlp_in="mlp.dense_h_to_4h", mlp_gate=None,
    mlp_out="mlp.dense_4h_to_h", linear_layout="linear", normalization="LN", positional="rotary",
    read_config=read_config, install_attention=install_attention,
    inline_attn_implementation="sdpa", for_config=for_config, mlp_out_modified_in_place=True,
)
