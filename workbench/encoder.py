"""``EncoderBridge``: a BERT-style encoder behind TransformerLens-named hook points.

An encoder attends in both directions and normalises *after* each sublayer, so its residual
stream is cut differently from a decoder's. The names follow TransformerLens's ``HookedEncoder``:

==============================  ==============================================================
``hook_embed``                  token embedding ``[batch, pos, d_model]``
``hook_pos_embed``              position embedding (per prompt)
``hook_token_type_embed``       segment embedding
``embed_ln.hook_*``             the norm of their sum; its output is ``blocks.0.hook_resid_pre``
``blocks.L.hook_resid_pre``     the block's input
``blocks.L.attn.hook_*``        attention internals (bidirectional: no ``-inf`` but padding)
``blocks.L.hook_attn_out``      attention's output (after W_O and its bias)
``blocks.L.hook_resid_mid``     ``resid_pre + attn_out``, the input of the norm after attention
``blocks.L.ln1.hook_*``         that norm (its output feeds the MLP and is kept as residual)
``blocks.L.mlp.hook_pre|post``  the MLP's pre- and post-activation
``blocks.L.hook_mlp_out``       the MLP's output
``blocks.L.hook_resid_post``    ``ln1 output + mlp_out``, the input of the norm after the MLP
``blocks.L.ln2.hook_*``         that norm; its output is the next block's ``hook_resid_pre``
==============================  ==============================================================

There is no unembedding: the wrapped model is the encoder (``model.base_model``), and a run
returns its last hidden state ``[batch, pos, d_model]``. Text is tokenised with the tokenizer's
own special tokens (``[CLS] ... [SEP]``). Analyses that read logits (logit lens, direct logit
attribution, patching metrics) and weight processing need a causal LM and say so.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .adapters import Adapter
from .attention import AttentionSite, ensure_registered, register_site
from .bridge import Bridge
from .errors import InputError, UnsupportedModelError
from .hook_points import HookPoint
from .taps import (
    _norm_eps,
    _norm_tap,
    _pos_tap,
    _post_tap,
    _pre_tap,
    _result_tap,
    get_module,
)
from .tokens import Encoded, encode, positions_from_mask


class EncoderBridge(Bridge):
    """A wrapped BERT-style encoder; build it with ``Bridge.from_pretrained`` or
    ``Bridge.from_hf`` (which pick this class from the model type)."""

    @classmethod
    def wrap(cls, model: nn.Module, tokenizer: Any, adapter: Adapter) -> EncoderBridge:
        """Wrap ``model`` (an encoder, or a model with a task head: its ``base_model`` is
        wrapped and the head left out, with a warning)."""
        base = getattr(model, "base_model", model)
        if base is not model:
            warnings.warn(f"{type(model).__name__} has a task head; the bridge wraps its encoder "
                          f"({type(base).__name__}) and leaves the head out.", stacklevel=3)
        try:
            get_module(base, adapter.blocks)
        except AttributeError as err:
            raise UnsupportedModelError(
                f"Expected an encoder with a module {adapter.blocks!r} (e.g. BertModel); got "
                f"{type(model).__name__}. Load it with AutoModel.") from err
        ensure_registered()
        base.set_attn_implementation(adapter.attn_implementation)
        return cls(base, tokenizer, adapter)

    def _build_hook_points(self):
        return build_encoder_points(self.model, self.adapter, self.cfg, self._state)

    def _make_cache_context(self):
        return None  # no unembedding: the logit decompositions do not apply

    def process_weights(self, *args, **kwargs) -> EncoderBridge:
        raise InputError(
            "Weight processing (fold_ln, centring) is defined for pre-norm decoders; this "
            f"{self.cfg.model_type} encoder normalises after each sublayer, where folding a norm "
            "into the next weights does not keep the outputs. Use the weights as they are.")

    def __call__(self, input, return_type: str | None = "hidden", *,
                 attention_mask: torch.Tensor | None = None, stop_at_layer: int | None = None,
                 prepend_bos: bool | None = None, padding_side: str | None = None, **unused):
        """Run the encoder. ``input``: a string, a list of strings or token ids ``[batch, pos]``.
        Returns the last hidden state ``[batch, pos, d_model]`` ("hidden") or None; with
        ``stop_at_layer=L``, block L's input ``[batch, pos, d_model]``. Text gets the
        tokenizer's own special tokens, so ``prepend_bos`` does not apply."""
        if return_type not in ("hidden", None):
            raise InputError(
                f"return_type={return_type!r}: this {self.cfg.model_type} bridge wraps an encoder "
                "without a language-model head, so it has no logits or loss. Use "
                "return_type='hidden' (the last hidden state) or None, and read activations with "
                "run_with_cache.")
        if unused:
            raise InputError(f"Unexpected arguments for an encoder run: {sorted(unused)}.")
        enc = self._encode_input(input, attention_mask, prepend_bos, padding_side)
        kwargs: dict[str, Any] = {"input_ids": enc.tokens, "attention_mask": enc.attention_mask,
                                  "position_ids": positions_from_mask(enc.attention_mask)}
        n = self.cfg.n_layers
        if stop_at_layer == n:  # the encoder's output: the last block's output
            stop_at_layer, return_type = None, "hidden"
        out, stopped = self._run_model(kwargs, stop_at_layer)
        if stopped is not None:
            return stopped
        return out.last_hidden_state if return_type == "hidden" else None

    forward = __call__

    def _encode_text(self, texts, prepend_bos, padding_side) -> Encoded:
        """Text with the tokenizer's own special tokens (``[CLS] ... [SEP]``), no BOS added."""
        return encode(self.tokenizer, texts, prepend_bos=None, padding_side=padding_side,
                      special_tokens=True)


def build_encoder_points(model: nn.Module, adapter: Adapter, cfg, state):
    """The hook points of a post-norm encoder (see the module doc) and its attention sites."""
    points: dict[str, HookPoint] = {}

    def point(name: str) -> HookPoint:
        points[name] = p = HookPoint(name)
        return p

    def post(module, name):
        p = point(name)
        p.taps = (_post_tap(module, p),)

    def pre(module, name):
        p = point(name)
        p.taps = (_pre_tap(module, p),)

    def norm(module, prefix):
        s, n = point(f"{prefix}.hook_scale"), point(f"{prefix}.hook_normalized")
        s.taps = n.taps = (_norm_tap(module, "LN", _norm_eps(module, cfg.eps), 0.0, s, n),)

    post(get_module(model, adapter.embed), "hook_embed")
    p = point("hook_pos_embed")
    p.taps = (_pos_tap(get_module(model, adapter.pos_embed), state, p),)
    if adapter.token_type_embed is not None:
        post(get_module(model, adapter.token_type_embed), "hook_token_type_embed")
    norm(get_module(model, adapter.embed_norm), "embed_ln")
    sites = []
    for L, block in enumerate(get_module(model, adapter.blocks)):
        pre(block, f"blocks.{L}.hook_resid_pre")
        site = AttentionSite(*(point(f"blocks.{L}.attn.hook_{s}")
                               for s in ("q", "k", "v", "attn_scores", "pattern", "z")))
        register_site(get_module(block, adapter.attn), site)
        sites.append(site)
        result = point(f"blocks.{L}.attn.hook_result")
        out_proj = get_module(block, adapter.attn_out_proj)
        result.taps = (_result_tap(out_proj, cfg, adapter.linear_layout, result),)
        post(out_proj, f"blocks.{L}.hook_attn_out")
        ln1, ln2 = get_module(block, adapter.ln1), get_module(block, adapter.ln2)
        pre(ln1, f"blocks.{L}.hook_resid_mid")  # its input: resid_pre + attn_out
        norm(ln1, f"blocks.{L}.ln1")
        post(get_module(block, adapter.mlp_in), f"blocks.{L}.mlp.hook_pre")
        pre(get_module(block, adapter.mlp_out), f"blocks.{L}.mlp.hook_post")
        post(get_module(block, adapter.mlp_out), f"blocks.{L}.hook_mlp_out")
        pre(ln2, f"blocks.{L}.hook_resid_post")  # its input: ln1's output + mlp_out
        norm(ln2, f"blocks.{L}.ln2")
    return points, sites
