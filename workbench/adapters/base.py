"""The ``Adapter`` record: where one architecture family keeps its modules.

An adapter is data, not code: module paths (relative to the model, or to one block), the layout of
the weights the bridge reads (Linear ``[out, in]`` or GPT-2's Conv1D ``[in, out]``), and a reader
that turns the HF config into the bridge's config fields (see ``BridgeConfig``). Nothing is
guessed from tensor shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..attention import ATTN_IMPLEMENTATION


@dataclass(frozen=True)
class Adapter:
    """Where a family keeps its modules; paths are dotted attribute paths.

    ``read_config(hf_config)`` returns the ``BridgeConfig`` fields ``n_layers``, ``n_heads``,
    ``n_kv_heads``, ``d_model``, ``d_head``, ``d_mlp``, ``d_vocab``, ``n_ctx``, ``eps``,
    ``act_fn``, ``parallel_attn_mlp``, ``rotary_dim`` and ``gated_mlp`` (and ``clip_qkv`` where
    the family clamps Q/K/V).
    """

    family: str
    model_types: tuple[str, ...]
    embed: str  # token embedding, relative to the model
    pos_embed: str | None  # learned position embedding (None for rotary models)
    blocks: str  # the ModuleList of blocks
    ln_final: str | None  # None on encoders (post-norm blocks end in their own norm)
    unembed: str | None  # None on headless encoders
    ln1: str | None  # relative to a block; None where attention reads the residual directly (OLMo 2)
    ln2: str | None  # likewise for the MLP
    attn: str
    mlp: str
    attn_qkv: tuple[str, ...]  # the Q/K/V projection module(s), relative to a block
    # see weights.qkv_weights; "per_head": [kv head, (its query heads, k, v), d_head]
    qkv_layout: Literal["split", "fused", "per_head"]
    attn_out_proj: str  # output projection W_O, relative to a block
    mlp_in: str  # W_in (the "up" projection for gated MLPs)
    mlp_gate: str | None  # W_gate for gated MLPs
    mlp_out: str  # W_out
    linear_layout: Literal["linear", "conv1d"]
    normalization: Literal["LN", "RMS"]  # "LN" also covers a LayerNorm without weight/bias (OLMo)
    positional: Literal["standard", "rotary", "alibi"]
    read_config: Callable[[Any], dict]
    # per-head norms applied to Q and K after the projections and before rotary (Qwen3's
    # q_norm/k_norm), relative to a block; hook_q/hook_k are then taken after them. A model whose
    # config turns them off (Cohere's use_qk_norm, Phi's qk_layernorm) simply lacks the modules
    attn_qk_norms: tuple[str, str] | None = None
    # norms applied to the attention / MLP output before it joins the residual stream (Gemma 2's
    # post_attention_layernorm / post_feedforward_layernorm), relative to a block; hook_attn_out
    # and hook_mlp_out are then their outputs (what the residual stream receives)
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    # RMSNorms that scale by ``offset + weight`` (Gemma's ``1 + weight``; stored weights near 0)
    norm_weight_offset: float = 0.0
    # mixture-of-experts MLPs (relative to a block): the router module, returning
    # ``(router_logits [N, E], weights [N, k], indices [N, k])`` over the N = batch * pos tokens;
    # a layer is sparse when it has this module (Qwen-MoE mixes dense and sparse layers).
    # ``moe_readers``: every parameter that reads the MLP's input, its last dim the input (where
    # ln2's weight folds)
    moe_router: str | None = None
    moe_readers: tuple[str, ...] = ()
    # one projection computes the gate and the up halves, output ``[gate (d_mlp) | up (d_mlp)]``
    # (Phi-3's gate_up_proj); mlp_in and mlp_gate then both name it
    mlp_fused_gate_up: bool = False
    # the block flattens the residual to [batch * pos, d_model] before the MLP's norm (OPT): the
    # hook points of that half reshape to [batch, pos, ...]
    mlp_flat_rows: bool = False
    # rows of the learned position embedding before position 0 (OPT's offset of 2)
    pos_offset: int = 0
    # the attention module multiplies queries by d_head ** -0.5 itself and calls the attention
    # function with scaling 1 (OPT): hook_q is shown divided back, as the projection's output
    queries_prescaled: bool = False
    # HF's eager attention computes q.k in float32 whatever the model's dtype (GPT-J): the hooked
    # path does the same, so half-precision patterns equal HF's
    fp32_scores: bool = False
    # families whose attention bypasses transformers' attention interface (GPT-J, BLOOM, Falcon):
    # the model is loaded with ``inline_attn_implementation``, and this installs the hooked path
    # on each attention module
    install_attention: Callable[[Any], None] | None = None
    # a norm between the token embedding and the first block (BLOOM's word_embeddings_layernorm),
    # relative to the model: hook_embed is then its output, what the residual stream receives,
    # and its embed_ln.hook_scale / hook_normalized points are shown
    embed_norm: str | None = None
    # the attention and MLP modules return their output plus the residual (BLOOM): hook_attn_out
    # and hook_mlp_out are then the outputs of the output projections (attn_out_proj, mlp_out)
    residual_inside_sublayers: bool = False
    # the block adds to the MLP module's output in place (Falcon's parallel ``mlp_output +=
    # attention_output``): hook_mlp_out hands the block a copy, so a kept activation stays intact
    mlp_out_modified_in_place: bool = False
    # a BERT-style encoder (bidirectional attention, norms after each sublayer), wrapped by
    # ``EncoderBridge``: ln1/ln2 then name the norms after attention / the MLP
    encoder: bool = False
    token_type_embed: str | None = None  # BERT's segment embedding, relative to the model
    # what an ``install_attention`` family is loaded with: the path its own forward takes when no
    # hook reads attention internals (Falcon: "sdpa", the path its ALiBi checkpoints are right on)
    inline_attn_implementation: str = "eager"
    # families whose module layout varies with the config (Falcon): ``for_config(hf_config)``
    # returns the fields that differ from these, applied by :func:`for_model`
    for_config: Callable[[Any], dict] | None = None

    @property
    def attn_implementation(self) -> str:
        """The ``attn_implementation`` the bridge loads the family with: its own inline path for
        families outside the attention interface, else the bridge's registered function."""
        return self.inline_attn_implementation if self.install_attention else ATTN_IMPLEMENTATION


def for_model(adapter: Adapter, hf_config: Any) -> Adapter:
    """``adapter`` with the fields its ``for_config`` gives for this config (itself if none)."""
    if adapter.for_config is None:
        return adapter
    return dataclasses.replace(adapter, **adapter.for_config(hf_config))


def optional_module(root, path: str | None):
    """The submodule of ``root`` at ``path``, or None when there is no path or no such module
    (a config may leave optional modules out: Qwen-MoE's dense layers have no router)."""
    if path is None:
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def live_param(module, name: str = "weight") -> Any:
    """``module``'s parameter ``name`` (detached), or None when it has none. A parameter that
    accelerate offloaded (``device_map`` with "disk" or "cpu" offload: it sits on the "meta"
    device between forwards) is loaded for the read and returned as a copy, as the module
    would see it in its forward."""
    p = getattr(module, name, None)
    if p is None:
        return None
    if p.device.type == "meta" and hasattr(module, "_hf_hook"):
        from accelerate.utils import align_module_device

        with align_module_device(module):
            return getattr(module, name).detach().clone()
    return p.detach()


def execution_device(module) -> torch.device:
    """The ``torch.device`` where ``module`` computes: accelerate's execution device for a
    dispatched module (its weights may sit on "meta" or the CPU between forwards, and the module
    or one of its parents carries the hook), else the device of its first parameter or buffer."""
    hook = getattr(module, "_hf_hook", None)
    for h in (hook, *getattr(hook, "hooks", ())):
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device)
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    if tensor is None:
        raise ValueError(f"{type(module).__name__} has no parameter or buffer to place it by")
    return tensor.device


def norm_factor(module, offset: float = 0.0) -> Any:
    """The factor a norm module multiplies by, ``[d]`` (detached), or None when it has no weight:
    its ``weight`` plus ``offset`` (Gemma stores ``w`` and scales by ``1 + w``)."""
    w = live_param(module)
    if w is None:
        return None
    return w + offset if offset else w


def norm_weight(adapter: Adapter, module) -> Any:
    """:func:`norm_factor` with the family's ``norm_weight_offset``."""
    return norm_factor(module, adapter.norm_weight_offset)


def split_out_proj(weight, layout: str, n_heads: int, d_head: int):
    """W_O by head, ``[n_heads, d_head, d_model]``, from the output projection's weight as stored
    (``layout`` "linear": ``[d_model, n_heads*d_head]``; "conv1d": ``[n_heads*d_head, d_model]``)."""
    return (weight.T if layout == "linear" else weight).reshape(n_heads, d_head, -1)
