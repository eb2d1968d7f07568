"""Declarative adapters: where each architecture family keeps its modules.

An adapter is data, not code: module paths (relative to the model, or to one block), the layout of
the weights the bridge reads (Linear ``[out, in]`` or GPT-2's Conv1D ``[in, out]``), and a reader
that turns the HF config into the bridge's config fields. Nothing is guessed from tensor shapes.
Adding a family means adding one ``Adapter`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Adapter:
    """Where a family keeps its modules; paths are dotted attribute paths."""

    family: str
    model_types: tuple[str, ...]
    embed: str  # token embedding, relative to the model
    pos_embed: str | None  # learned position embedding (None for rotary models)
    blocks: str  # the ModuleList of blocks
    ln_final: str
    unembed: str
    ln1: str  # relative to a block
    ln2: str
    attn: str
    mlp: str
    attn_qkv: tuple[str, ...]  # the Q/K/V projection module(s), relative to a block
    qkv_layout: Literal["split", "fused", "per_head"]  # see weights.qkv_weights
    attn_out_proj: str  # output projection W_O, relative to a block
    mlp_in: str  # W_in (the "up" projection for gated MLPs)
    mlp_gate: str | None  # W_gate for gated MLPs
    mlp_out: str  # W_out
    linear_layout: Literal["linear", "conv1d"]
    normalization: Literal["LN", "RMS"]
    positional: Literal["standard", "rotary"]
    read_config: Callable[[Any], dict]


def _gpt2_config(c: Any) -> dict:
    d_model = c.n_embd
    return dict(
        n_layers=c.n_layer, n_heads=c.n_head, n_kv_heads=c.n_head, d_model=d_model,
        d_head=d_model // c.n_head, d_mlp=c.n_inner or 4 * d_model, d_vocab=c.vocab_size,
        n_ctx=c.n_positions, eps=c.layer_norm_epsilon, act_fn=c.activation_function,
        parallel_attn_mlp=False, rotary_dim=None, gated_mlp=False,
    )


def _llama_config(c: Any) -> dict:
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads or c.num_attention_heads, d_model=c.hidden_size,
        d_head=d_head, d_mlp=c.intermediate_size, d_vocab=c.vocab_size,
        n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, act_fn=c.hidden_act,
        parallel_attn_mlp=False, rotary_dim=d_head, gated_mlp=True,
    )


def _neox_config(c: Any) -> dict:
    d_head = c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    pct = rope.get("partial_rotary_factor", getattr(c, "rotary_pct", 1.0))
    return dict(
        n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
        n_kv_heads=c.num_attention_heads, d_model=c.hidden_size, d_head=d_head,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings,
        eps=c.layer_norm_eps, act_fn=c.hidden_act,
        parallel_attn_mlp=bool(c.use_parallel_residual), rotary_dim=int(d_head * pct),
        gated_mlp=False,
    )


ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        family="gpt2", model_types=("gpt2",), embed="transformer.wte", pos_embed="transformer.wpe",
        blocks="transformer.h", ln_final="transformer.ln_f", unembed="lm_head",
        ln1="ln_1", ln2="ln_2", attn="attn", mlp="mlp", attn_qkv=("attn.c_attn",),
        qkv_layout="fused", attn_out_proj="attn.c_proj",
        mlp_in="mlp.c_fc", mlp_gate=None, mlp_out="mlp.c_proj", linear_layout="conv1d",
        normalization="LN", positional="standard", read_config=_gpt2_config,
    ),
    Adapter(  # mistral: the same module tree, plus a sliding window
        family="llama", model_types=("llama", "mistral"), embed="model.embed_tokens", pos_embed=None,
        blocks="model.layers", ln_final="model.norm", unembed="lm_head",
        ln1="input_layernorm", ln2="post_attention_layernorm", attn="self_attn", mlp="mlp",
        attn_qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_layout="split",
        attn_out_proj="self_attn.o_proj", mlp_in="mlp.up_proj", mlp_gate="mlp.gate_proj",
        mlp_out="mlp.down_proj", linear_layout="linear", normalization="RMS",
        positional="rotary", read_config=_llama_config,
    ),
    Adapter(
        family="gpt_neox", model_types=("gpt_neox",), embed="gpt_neox.embed_in", pos_embed=None,
        blocks="gpt_neox.layers", ln_final="gpt_neox.final_layer_norm", unembed="lm_head",
        ln1="input_layernorm", ln2="post_attention_layernorm", attn="attention", mlp="mlp",
        attn_qkv=("attention.query_key_value",), qkv_layout="per_head",
        attn_out_proj="attention.dense", mlp_in="mlp.dense_h_to_4h", mlp_gate=None,
        mlp_out="mlp.dense_4h_to_h", linear_layout="linear", normalization="LN",
        positional="rotary", read_config=_neox_config,
    ),
)


def split_out_proj(weight, layout: str, n_heads: int, d_head: int):
    """W_O by head, ``[n_heads, d_head, d_model]``, from the output projection's weight as stored
    (``layout`` "linear": ``[d_model, n_heads*d_head]``; "conv1d": ``[n_heads*d_head, d_model]``)."""
    return (weight.T if layout == "linear" else weight).reshape(n_heads, d_head, -1)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` the bridge can wrap."""
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str) -> Adapter:
    """The adapter of a model type, or UnsupportedModelError listing the supported ones."""
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    raise UnsupportedModelError(
        f"Model type {model_type!r} is not supported yet. Supported model types: "
        f"{', '.join(supported_model_types())}. Load one of those, or add an Adapter in "
        "workbench/adapters.py."
    )
