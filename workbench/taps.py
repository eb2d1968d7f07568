"""Build the hook points of a wrapped model: which HF module each name taps, and how.

Every name maps to PyTorch forward (pre-)hooks on the HF modules the adapter names:

==============================  ==============================================================
``hook_embed``                  output of the token embedding (times Granite's embedding_multiplier);
                                where a norm follows the embedding (BLOOM), that norm's output
``embed_ln.hook_*``             that norm's ``hook_scale`` / ``hook_normalized`` (BLOOM)
``hook_pos_embed``              output of the learned position embedding (absent with rotary)
``blocks.L.hook_resid_pre``     the block's input (pre-hook on the block)
``blocks.L.hook_resid_mid``     input of ln2 (sequential blocks only); a write is carried into
                                the block's output too, so everything downstream sees it
``blocks.L.hook_resid_post``    the block's output
``blocks.L.hook_attn_out``      attention module's output (after W_O and its bias), or the
                                output of the norm after it where the family has one (Gemma 2),
                                or of W_O where the module adds the residual itself (BLOOM);
                                times Granite's residual_multiplier (likewise hook_mlp_out)
``blocks.L.hook_mlp_out``       MLP module's output (likewise after a post-MLP norm)
``blocks.L.ln1|ln2.hook_*``     ``hook_scale [b, p, 1]`` and ``hook_normalized [b, p, d_model]``
                                (no ln2 where one norm feeds attention and the MLP: Phi)
``blocks.L.ln1_post|ln2_post.*`` the same for the norms after attention / the MLP (Gemma 2)
``ln_final.hook_*``             (recomputed from the norm's input; the output is rebuilt only if
                                a function replaced one of them)
``blocks.L.mlp.hook_pre``       pre-activation (output of W_in, or of W_gate when gated)
``blocks.L.mlp.hook_pre_linear`` output of W_in (the "up" projection) in gated MLPs
``blocks.L.mlp.hook_post``      input of W_out
``blocks.L.attn.hook_result``   per-head output ``[b, p, n_heads, d_model]`` (W_O split by head)
``blocks.L.attn.hook_q`` ...    attention internals: fired by the attention function
==============================  ==============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import Adapter, live_param, optional_module, split_out_proj
from .attention import AttentionSite, register_site
from .config import BridgeConfig
from .family_taps import Rows, halves_tap, router_tap, rows_tap
from .hook_points import HookPoint, Tap
from .names import parse


@dataclass
class RunState:
    """Per-forward scratch: pending ``hook_resid_mid`` writes by layer, and the batch size (to
    show a shared position embedding per prompt)."""

    mid_delta: dict[int, torch.Tensor] = field(default_factory=dict)
    batch_size: int = 1
    block_rows: dict[int, int] = field(default_factory=dict)  # rows each block received

    def clear(self) -> None:
        self.mid_delta.clear()


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``root.a.b.0.c`` from ``"a.b.0.c"``."""
    return root.get_submodule(path)


def _first_arg(args: tuple, kwargs: dict) -> tuple[torch.Tensor, str | None]:
    """The module's first input and the keyword it came under (None if positional)."""
    if args:
        return args[0], None
    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
    return kwargs[key], key


def _with_first_arg(args: tuple, kwargs: dict, key: str | None, value: torch.Tensor):
    if key is None:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, key: value}


def _replace_output(output, value: torch.Tensor):
    if isinstance(output, tuple):
        return (value, *output[1:])
    return value


def _main(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _post_tap(module: nn.Module, point: HookPoint, multiplier: float = 1.0,
              copy: bool = False) -> Tap:
    """A forward hook firing one point on the module's (first) output. ``multiplier``: the model
    multiplies that output by it before using it (Granite), so the point shows the product and
    a written value is divided back. ``copy``: the model modifies that output in place
    afterwards (Falcon), so it is handed a copy and the point's tensor stays as shown."""
    def fn(mod, args, kwargs, output):
        value = _main(output)
        if copy:
            return _replace_output(output, point.fire(value).clone())
        if multiplier != 1.0:
            shown = value * multiplier
            new = point.fire(shown)
            if new is shown and not point.bwd:
                return None
            # written, or a backward function waits on ``shown``: route the forward through it
            return _replace_output(output, new / multiplier)
        new = point.fire(value)
        return None if new is value else _replace_output(output, new)
    return Tap(module, "post", fn)


def _pos_tap(module: nn.Module, state: RunState, point: HookPoint) -> Tap:
    """Learned position embeddings, shown per prompt ``[batch, pos, d_model]`` even when HF
    computes one shared ``[1, pos, d_model]`` copy."""
    def fn(mod, args, kwargs, output):
        value = output
        if value.shape[0] == 1 and state.batch_size > 1:
            value = value.expand(state.batch_size, *value.shape[1:])
        new = point.fire(value)
        return None if new is value else new
    return Tap(module, "post", fn)


def _pre_tap(module: nn.Module, point: HookPoint) -> Tap:
    """A forward pre-hook firing one point on the module's first input."""
    def fn(mod, args, kwargs):
        value, key = _first_arg(args, kwargs)
        new = point.fire(value)
        return None if new is value else _with_first_arg(args, kwargs, key, new)
    return Tap(module, "pre", fn)


def _param(mod: nn.Module, name: str) -> torch.Tensor | None:
    """``mod``'s parameter ``name`` as its forward used it: the parameter itself, or, where
    accelerate offloaded it (on "meta" again once the module's own forward returned), a loaded
    copy (see :func:`~workbench.adapters.live_param`)."""
    p = getattr(mod, name, None)
    return live_param(mod, name) if p is not None and p.is_meta else p


def _norm_tap(module: nn.Module, kind: str, eps: float, offset: float, scale_p: HookPoint,
              norm_p: HookPoint) -> Tap:
    """Recompute a norm's ``hook_scale [b, p, 1]`` / ``hook_normalized [b, p, d]`` from its input
    (fp32 math; one fused kernel for LayerNorm), on the device of the norm's output."""
    def fn(mod, args, kwargs, output):
        x, _ = _first_arg(args, kwargs)
        # a forward hook sees the input as the caller passed it: under a device_map it may still
        # be on the previous module's device (accelerate moves it inside the forward)
        x = x.to(_main(output).device)
        x32 = x.float()
        if kind == "LN" and not scale_p.bwd:
            normalized32, _, rstd = torch.native_layer_norm(x32, x32.shape[-1:], None, None, eps)
        elif kind == "LN":  # native_layer_norm's rstd carries no gradient: a backward function waits
            centered = x32 - x32.mean(-1, keepdim=True)
            rstd = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
            normalized32 = centered * rstd
        else:
            rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
            normalized32 = x32 * rstd
        scale = rstd.reciprocal().to(x.dtype)
        new_scale = scale_p.fire(scale)
        # a function replaced the scale, or a backward function waits on it: divide by it
        if new_scale is not scale or scale_p.bwd:
            centered = x32 - x32.mean(-1, keepdim=True) if kind == "LN" else x32
            normalized32 = centered / new_scale.float()
        normalized = normalized32.to(x.dtype)
        new_norm = norm_p.fire(normalized)
        if new_scale is scale and new_norm is normalized and not (scale_p.bwd or norm_p.bwd):
            return None  # read-only: keep HF's own output bit for bit
        weight = _param(mod, "weight")
        out = new_norm if weight is None else new_norm * (weight + offset if offset else weight)
        bias = _param(mod, "bias")
        return out + bias if bias is not None else out
    return Tap(module, "post", fn, first=True)  # before a tap reading the norm's output


def _norm_eps(module: nn.Module, default: float) -> float:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        if isinstance(getattr(module, attr, None), float):
            return getattr(module, attr)
    return default


def _result_tap(module: nn.Module, cfg: BridgeConfig, layout: str, point: HookPoint) -> Tap:
    """Split W_O by head: ``result[b, p, h, :] = z[b, p, h, :] @ W_O[h]``; the projection's
    output becomes ``result.sum(heads) + b_O`` only when a function replaced the result."""
    h, d = cfg.n_heads, cfg.d_head

    def fn(mod, args, kwargs, output):
        z, _ = _first_arg(args, kwargs)  # [b, p, h*d]
        z = z.to(_main(output).device)  # (as passed in: see _norm_tap)
        w_o = split_out_proj(_param(mod, "weight"), layout, h, d)
        result = torch.einsum("bphd,hdm->bphm", z.reshape(*z.shape[:-1], h, d), w_o)
        new = point.fire(result)
        if new is result and not point.bwd:
            return None
        out = new.sum(-2)  # (also when a backward function waits on the result)
        bias = _param(mod, "bias")
        return out + bias if bias is not None else out
    return Tap(module, "post", fn, first=True)  # before hook_attn_out where it reads this module


def build_hook_points(model: nn.Module, adapter: Adapter, cfg: BridgeConfig,
                      state: RunState) -> tuple[dict[str, HookPoint], list[AttentionSite]]:
    """All hook points of ``model`` (ordered as the forward pass meets them) and the attention
    sites registered with the attention function."""
    points: dict[str, HookPoint] = {}

    def point(name: str) -> HookPoint:
        points[name] = p = HookPoint(name)
        return p

    flat_points: list[HookPoint] = []

    def seen(p: HookPoint, flat: bool):
        if not flat:
            return p
        flat_points.append(p)
        return Rows(p, state, int(parse(p.name).layer))

    def post(module, name, multiplier=1.0, flat=False, copy=False):
        p = point(name)
        p.taps = (_post_tap(module, seen(p, flat), multiplier, copy),)

    def pre(module, name, flat=False):
        p = point(name)
        p.taps = (_pre_tap(module, seen(p, flat)),)

    def norm(module, prefix, flat=False):
        s, n = point(f"{prefix}.hook_scale"), point(f"{prefix}.hook_normalized")
        s.taps = n.taps = (_norm_tap(module, cfg.normalization_type, _norm_eps(module, cfg.eps),
                                     adapter.norm_weight_offset, seen(s, flat), seen(n, flat)),)

    flat = adapter.mlp_flat_rows

    embed_norm = optional_module(model, adapter.embed_norm)
    if embed_norm is None:
        post(get_module(model, adapter.embed), "hook_embed", cfg.embed_multiplier)
    else:  # BLOOM: the residual stream receives the embedding's norm's output
        norm(embed_norm, "embed_ln")
        post(embed_norm, "hook_embed")
    r = cfg.residual_multiplier
    if adapter.pos_embed is not None:
        p = point("hook_pos_embed")
        p.taps = (_pos_tap(get_module(model, adapter.pos_embed), state, p),)

    sites = []
    for L, block in enumerate(get_module(model, adapter.blocks)):
        pre(block, f"blocks.{L}.hook_resid_pre")
        if adapter.ln1 is not None:
            norm(get_module(block, adapter.ln1), f"blocks.{L}.ln1")
        site = AttentionSite(*(point(f"blocks.{L}.attn.hook_{s}")
                               for s in ("q", "k", "v", "attn_scores", "pattern", "z")),
                             q_prescale=cfg.d_head ** -0.5 if adapter.queries_prescaled else None,
                             fp32_scores=adapter.fp32_scores)
        register_site(get_module(block, adapter.attn), site)
        if adapter.install_attention is not None:  # outside the attention interface (GPT-J)
            adapter.install_attention(get_module(block, adapter.attn))
        sites.append(site)
        result = point(f"blocks.{L}.attn.hook_result")
        result.taps = (_result_tap(get_module(block, adapter.attn_out_proj), cfg,
                                   adapter.linear_layout, result),)
        if adapter.attn_post_norm is not None:  # Gemma 2: the residual receives the norm's output
            norm(get_module(block, adapter.attn_post_norm), f"blocks.{L}.ln1_post")
            post(get_module(block, adapter.attn_post_norm), f"blocks.{L}.hook_attn_out", r)
        else:  # BLOOM's attention module adds the residual itself: tap its projection
            writer = adapter.attn_out_proj if adapter.residual_inside_sublayers else adapter.attn
            post(get_module(block, writer), f"blocks.{L}.hook_attn_out", r)
        resid_post = HookPoint(f"blocks.{L}.hook_resid_post")  # placed in order below
        block_post = _block_post_tap(block, L, state, resid_post)
        resid_post.taps = (block_post,)
        if not cfg.parallel_attn_mlp:
            mid = point(f"blocks.{L}.hook_resid_mid")
            # the MLP's input norm reads resid_mid; without one (OLMo 2), the MLP itself
            reader = optional_module(block, adapter.ln2) or get_module(block, adapter.mlp)
            mid.taps = (_mid_tap(reader, L, state, seen(mid, flat)), block_post)
        ln2 = optional_module(block, adapter.ln2) if adapter.ln2 != adapter.ln1 else None
        if ln2 is not None:  # one norm feeding both (Phi; parallel StableLM has no ln2): ln1 only
            norm(ln2, f"blocks.{L}.ln2", flat)
        router = optional_module(block, adapter.moe_router)
        if router is not None:  # a mixture of experts: routing points, no per-expert hooks
            names = ("router_logits", "expert_indices", "expert_weights")  # the order they fire
            r_points = [point(f"blocks.{L}.mlp.hook_{n}") for n in names]
            tap = router_tap(router, state, *r_points)
            for p in r_points:
                p.taps = (tap,)
        elif adapter.mlp_fused_gate_up:
            gate_p, up_p = point(f"blocks.{L}.mlp.hook_pre"), point(f"blocks.{L}.mlp.hook_pre_linear")
            gate_p.taps = up_p.taps = (halves_tap(get_module(block, adapter.mlp_in), gate_p, up_p),)
        elif adapter.mlp_gate is not None:
            post(get_module(block, adapter.mlp_gate), f"blocks.{L}.mlp.hook_pre")
            post(get_module(block, adapter.mlp_in), f"blocks.{L}.mlp.hook_pre_linear")
        else:
            post(get_module(block, adapter.mlp_in), f"blocks.{L}.mlp.hook_pre", flat=flat)
        if router is None:
            pre(get_module(block, adapter.mlp_out), f"blocks.{L}.mlp.hook_post", flat)
        if adapter.mlp_post_norm is not None:
            norm(get_module(block, adapter.mlp_post_norm), f"blocks.{L}.ln2_post")
            post(get_module(block, adapter.mlp_post_norm), f"blocks.{L}.hook_mlp_out", r)
        else:
            writer = adapter.mlp_out if adapter.residual_inside_sublayers else adapter.mlp
            post(get_module(block, writer), f"blocks.{L}.hook_mlp_out", r, flat,
                 adapter.mlp_out_modified_in_place)
        points[resid_post.name] = resid_post
        if flat_points:  # they need the block's batch rows: record them at the block's input
            rows = rows_tap(block, L, state)
            for p in flat_points:
                p.taps = (rows, *p.taps)
            flat_points.clear()
    norm(get_module(model, adapter.ln_final), "ln_final")
    return points, sites


def _mid_tap(ln2: nn.Module, layer: int, state: RunState, point: HookPoint) -> Tap:
    """Fire ``hook_resid_mid`` on ln2's input (or the MLP's, where no norm precedes it); remember
    a write as a delta for the block output
    (the block adds its MLP output to the residual it kept, not to ln2's input)."""
    def fn(mod, args, kwargs):
        x, key = _first_arg(args, kwargs)
        new = point.fire(x)
        if new is x:
            return None
        state.mid_delta[layer] = new - x
        return _with_first_arg(args, kwargs, key, new)
    return Tap(ln2, "pre", fn)


def _block_post_tap(block: nn.Module, layer: int, state: RunState, point: HookPoint) -> Tap:
    """Apply a pending ``hook_resid_mid`` write, then fire ``hook_resid_post``."""
    def fn(mod, args, kwargs, output):
        value = _main(output)
        new = value
        delta = state.mid_delta.pop(layer, None)
        if delta is not None:
            new = new + delta.reshape(new.shape)  # (OPT's MLP half sees flattened rows)
        new = point.fire(new)
        return None if new is value else _replace_output(output, new)
    return Tap(block, "post", fn)
