"""The generic path: an adapter discovered from the module tree of a decoder family that has none.

``discover(model)`` finds, structurally, what a declarative adapter states: the block list (the
``ModuleList`` of ``config.num_hidden_layers`` modules under the base model), the embedding and
unembedding (the model's own accessors), and inside a block the attention (the child holding the
Q/K/V and output projections), the MLP and the norms. Which norm feeds what is read from one
probe forward: the norm whose output *is* the attention's input is ``ln1``, the one whose
output is the MLP's input is ``ln2``, a norm whose input is attention's (the MLP's) output is a
post-norm, and the block is parallel when the MLP's input is a norm of the block's input. Each
norm's kind (LayerNorm or RMSNorm, weight offset) is told by evaluating it on a probe vector.
Anything that cannot be told unambiguously (fused or interleaved Q/K/V, mixtures of experts,
learned positions) is refused with :class:`UnsupportedModelError`; nothing is guessed.

``verify(bridge)`` then checks the bridge against the model itself on a probe input (every
layer's residual equals the model's hidden states, the logits equal, every layer's attention
reached the bridge's attention function and its pattern equals eager attention); the bridge
warns with :class:`UnverifiedFamilyWarning` that the family is outside the tested ones.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.activations import ACT2FN
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..errors import UnsupportedModelError, UnverifiedFamilyWarning
from ..taps import _first_arg, _norm_eps
from .base import Adapter, execution_device

_ATTN_SPLIT = ("q_proj", "k_proj", "v_proj")
_ATTN_OUT = ("o_proj", "out_proj", "dense")
# (gate, up, down) child names of MLPs; gate None: not gated; "gate_up_proj": fused [gate | up]
_MLPS = (("gate_proj", "up_proj", "down_proj"), ("gate_up_proj", "gate_up_proj", "down_proj"),
         (None, "up_proj", "down_proj"), (None, "fc1", "fc2"), (None, "c_fc", "c_proj"))
_NORMS = {"LN": "LayerNorm", "RMS": "RMSNorm"}
_HOW = ("Write an adapter for it: one small module in workbench/adapters/ (see docs/support.md, "
        "'Adding a family').")


def _refuse(model: nn.Module, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"Model type {model.config.model_type!r} has no adapter, and the generic path cannot wrap "
        f"{type(model).__name__}: {what} {_HOW}")


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def _is_norm(module: nn.Module, d_model: int) -> bool:
    """A norm over d_model: no submodules, at most a weight and a bias of shape ``[d_model]``."""
    params = dict(module.named_parameters(recurse=False))
    return (not _children(module) and set(params) <= {"weight", "bias"}
            and all(p.shape == (d_model,) for p in params.values())
            and "norm" in type(module).__name__.lower())


def _norm_kind(norm: nn.Module, d_model: int) -> tuple[str, float, float]:
    """``(normalization, weight offset, eps)`` of a norm, told by evaluating it on probe rows
    ``[4, d_model]`` with a non-zero mean and comparing with each formula."""
    eps = _norm_eps(norm, 1e-5)
    p = next(norm.parameters(), None)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, d_model, generator=gen) * 2 + 1.5).to(p.dtype if p is not None else torch.float32)
    with torch.no_grad():
        y = norm(x.to(p.device) if p is not None else x).float().cpu()
    x = x.float()
    w = norm.weight.detach().float().cpu() if getattr(norm, "weight", None) is not None else 1.0
    b = norm.bias.detach().float().cpu() if getattr(norm, "bias", None) is not None else 0.0
    centred = x - x.mean(-1, keepdim=True)
    shapes = {"LN": centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps),
              "RMS": x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)}
    for kind, normalized in shapes.items():
        for offset in (0.0, 1.0):
            want = normalized * (w + offset if isinstance(w, torch.Tensor) else 1.0) + b
            if ((want - y).abs().max() / y.abs().max().clamp_min(1e-6)).item() < 1e-3:
                return kind, offset, eps
    raise UnsupportedModelError(
        f"{type(norm).__name__} is neither a LayerNorm nor an RMSNorm (with weight w or 1 + w) on a "
        f"probe input. {_HOW}")


def _signature(block: nn.Module) -> list[tuple[str, str]]:
    """A block's module tree as (path, class name) pairs."""
    return [(n, type(m).__name__) for n, m in block.named_modules()]


def _same(a: Any, b: Any) -> bool:
    """Whether two activations are the same tensor (the same object, or a view of the same
    memory with the same shape)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape)


def _trace(model: nn.Module, block: nn.Module, names: list[str]) -> dict[str, tuple]:
    """One probe forward; ``{name: (first input, first output)}`` of block 0's children ``names``
    (and ``""``: the block itself)."""
    seen: dict[str, tuple] = {}
    handles = []
    for name in ["", *names]:
        module = block.get_submodule(name) if name else block

        def hook(mod, args, kwargs, output, name=name):
            if name not in seen:
                out = output[0] if isinstance(output, tuple) else output
                seen[name] = (_first_arg(args, kwargs)[0], out)
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(_probe_ids(model), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def _probe_ids(model: nn.Module) -> torch.Tensor:
    """A short probe prompt ``[1, 8]`` of token ids inside the vocabulary."""
    device = execution_device(model.get_input_embeddings())
    vocab = model.config.vocab_size
    return (torch.arange(8, device=device) * 7 + 3)[None] % vocab


_PROBE = "workbench_probe"  # an attention function that records who calls it
_probe_calls: list[nn.Module] = []


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    """Transformers' SDPA attention, recording the calling module."""
    _probe_calls.append(module)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _check_interface(model: nn.Module) -> None:
    """Raise UnsupportedModelError unless the model's attention goes through transformers'
    attention interface (one probe forward with a recording attention function)."""
    if _PROBE not in AttentionInterface._global_mapping:
        AttentionInterface.register(_PROBE, _recording_attention)
        AttentionMaskInterface.register(_PROBE, sdpa_mask)
    before = model.config._attn_implementation
    _probe_calls.clear()
    failed = ""
    try:
        model.set_attn_implementation(_PROBE)
        with torch.no_grad():
            model(_probe_ids(model), use_cache=False)
    except Exception as err:  # e.g. the class does not accept a registered attention function
        failed = f" (the probe forward raised {type(err).__name__}: {err})"
    finally:
        try:
            model.set_attn_implementation(before)
        except (KeyError, ValueError):
            pass
    if not _probe_calls:
        classes = sorted({type(m).__name__ for m in model.modules()
                          if "attention" in type(m).__name__.lower()})
        raise _refuse(model, f"its attention ({', '.join(classes) or 'no attention module found'}) "
                             "computes attention itself instead of calling transformers' attention "
                             "interface (ALL_ATTENTION_FUNCTIONS), so the generic path could not fire "
                             "hook_q/k/v, hook_attn_scores, hook_pattern and hook_z. An adapter can "
                             "install its own hooked attention (install_attention, see "
                             f"workbench/adapters/gptj.py){failed}.")


def discover(model: nn.Module) -> Adapter:
    """An adapter for ``model`` (a ``*ForCausalLM`` whose family has none), found structurally;
    raises UnsupportedModelError naming what could not be found."""
    _check_interface(model)
    c = model.config
    d_model, n_layers = getattr(c, "hidden_size", None), getattr(c, "num_hidden_layers", None)
    if not isinstance(d_model, int) or not isinstance(n_layers, int):
        raise _refuse(model, "its config has no hidden_size / num_hidden_layers.")
    path_of = {id(m): n for n, m in model.named_modules()}
    base = getattr(model, "base_model", model)
    lists = [n for n, m in base.named_children() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if base is model or len(lists) != 1:
        raise _refuse(model, f"expected a base model holding one ModuleList of {n_layers} blocks; "
                             f"found {len(lists)}.")
    blocks = f"{path_of[id(base)]}.{lists[0]}"
    embed, unembed = model.get_input_embeddings(), model.get_output_embeddings()
    if unembed is None or not isinstance(unembed, nn.Linear):
        raise _refuse(model, "it has no Linear output embedding (a causal LM's lm_head).")
    block = model.get_submodule(blocks)[0]
    shape = _signature(block)
    odd = [i for i, b in enumerate(model.get_submodule(blocks)) if _signature(b) != shape]
    if odd:
        raise _refuse(model, f"its blocks differ in structure (layer {odd[0]} differs from layer "
                             "0, e.g. dense and mixture-of-experts layers mixed).")
    kids = _children(block)
    attn = [n for n, m in kids.items() if set(_ATTN_SPLIT) <= set(_children(m))
            or "qkv_proj" in _children(m)]
    if len(attn) != 1:
        raise _refuse(model, f"no single attention child with q_proj/k_proj/v_proj (or qkv_proj) in "
                             f"its blocks (children: {', '.join(kids)}).")
    attn_kids = _children(kids[attn[0]])
    out_proj = [n for n in _ATTN_OUT if n in attn_kids]
    if not out_proj:
        raise _refuse(model, f"its attention {type(kids[attn[0]]).__name__} has no output "
                             f"projection named {' / '.join(_ATTN_OUT)}.")
    qkv = _ATTN_SPLIT if set(_ATTN_SPLIT) <= set(attn_kids) else ("qkv_proj",)
    mlp, names = None, None
    for name, m in kids.items():
        for gate, up, down in _MLPS:
            if {up, down} <= set(_children(m)) and (gate is None or gate in _children(m)):
                mlp, names = name, (gate, up, down)
                break
        if mlp:
            break
    if mlp is None:
        moe = any("expert" in n for n, _ in block.named_modules())
        raise _refuse(model, "its blocks are mixtures of experts, which the generic path does not "
                             "wrap." if moe else f"no MLP child with gate/up/down or fc1/fc2 "
                             f"projections (children: {', '.join(kids)}).")
    linears = [kids[attn[0]].get_submodule(n) for n in (*qkv, out_proj[0])] + \
        [kids[mlp].get_submodule(n) for n in names if n is not None]
    if not all(isinstance(m, nn.Linear) for m in linears):
        raise _refuse(model, "its projections are not nn.Linear layers.")
    if not hasattr(base, "rotary_emb"):
        raise _refuse(model, "it has no rotary_emb (learned or other positions are not discovered).")

    norms = [n for n, m in kids.items() if _is_norm(m, d_model)]
    final = [n for n, m in base.named_children() if _is_norm(m, d_model)]
    if len(final) != 1:
        raise _refuse(model, f"expected one final norm beside the blocks; found {final or 'none'}.")
    seen = _trace(model, block, [*norms, attn[0], mlp])
    block_in, (attn_in, attn_out), (mlp_in, mlp_out) = seen[""][0], seen[attn[0]], seen[mlp]
    fed = {n: seen[n] for n in norms if n in seen}

    def norm_of(x):  # the norm whose output is x
        return next((n for n, (_, out) in fed.items() if _same(out, x)), None)

    def norm_reading(x):  # the norm whose input is x
        return next((n for n, (inp, _) in fed.items() if _same(inp, x)), None)

    ln1, ln2 = norm_of(attn_in), norm_of(mlp_in)
    if ln1 is None and not _same(attn_in, block_in):
        raise _refuse(model, "its attention reads neither a norm of the block's input nor the "
                             "input itself.")
    parallel = ln2 is not None and (ln2 == ln1 or _same(fed[ln2][0], block_in))
    kinds = {_norm_kind(kids[n], d_model) for n in fed} | {_norm_kind(base.get_submodule(final[0]),
                                                                      d_model)}
    if len({k[:2] for k in kinds}) != 1:
        raise _refuse(model, f"its norms are of different kinds ({sorted(k[:2] for k in kinds)}).")
    normalization, offset, eps = next(iter(kinds))
    gate, up, down = names
    fused_gate_up = gate == up
    qk_norms = next(([q, k] for q, k in (("q_norm", "k_norm"), ("q_layernorm", "k_layernorm"))
                     if q in attn_kids and k in attn_kids), [])

    d_mlp = kids[mlp].get_submodule(down).in_features

    def read_config(cfg: Any) -> dict:
        return _read_config(cfg, eps=eps, parallel=parallel, gated=gate is not None, d_mlp=d_mlp)

    a = attn[0]
    try:
        sizes = read_config(c)
    except AttributeError as err:
        raise _refuse(model, f"its config lacks a standard field ({err}).") from err
    h, kv, d = sizes["n_heads"], sizes["n_kv_heads"], sizes["d_head"]
    widths = [m.out_features for m in linears[:len(qkv)]]
    if widths != ([h * d, kv * d, kv * d] if len(qkv) == 3 else [(h + 2 * kv) * d]):
        raise _refuse(model, f"its Q/K/V projections output {widths} features; the config's "
                             f"{h} heads, {kv} K/V heads and head size {d} say otherwise.")
    return Adapter(
        family=f"generic:{c.model_type}", model_types=(c.model_type,), embed=path_of[id(embed)],
        pos_embed=None, blocks=blocks, ln_final=f"{path_of[id(base)]}.{final[0]}",
        unembed=path_of[id(unembed)], ln1=ln1, ln2=ln2, attn=a,
        mlp=mlp, attn_qkv=tuple(f"{a}.{n}" for n in qkv),
        qkv_layout="split" if len(qkv) == 3 else "fused", attn_out_proj=f"{a}.{out_proj[0]}",
        mlp_in=f"{mlp}.{up}", mlp_gate=f"{mlp}.{gate}" if gate else None, mlp_out=f"{mlp}.{down}",
        linear_layout="linear", normalization=normalization, positional="rotary",
        read_config=read_config,
        attn_qk_norms=tuple(f"{a}.{n}" for n in qk_norms) if len(qk_norms) == 2 else None,
        attn_post_norm=norm_reading(attn_out), mlp_post_norm=norm_reading(mlp_out),
        norm_weight_offset=offset, mlp_fused_gate_up=fused_gate_up,
    )


def _read_config(c: Any, *, eps: float, parallel: bool, gated: bool, d_mlp: int) -> dict:
    """The BridgeConfig fields from the standard config attributes (``d_mlp``: the MLP's
    output projection's input width)."""
    n_heads = c.num_attention_heads
    d_head = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    rope = getattr(c, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) or 1.0
    return dict(
        n_layers=c.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads, d_model=c.hidden_size,
        d_head=d_head, d_mlp=d_mlp, d_vocab=c.vocab_size,
        n_ctx=getattr(c, "max_position_embeddings", None) or 2048, eps=eps,
        act_fn=getattr(c, "hidden_act", None) or getattr(c, "hidden_activation", "unknown"),
        parallel_attn_mlp=parallel, rotary_dim=int(d_head * factor), gated_mlp=gated,
    )


def _reference(model: nn.Module, a: Adapter, ids: torch.Tensor):
    """The model's own run on ``ids``, read with temporary PyTorch hooks (``output_hidden_states``
    would leave transformers' recording hooks on the model): each block's input, the logits, and
    each attention module's weights under eager attention."""
    blocks = model.get_submodule(a.blocks)
    inputs: dict[int, torch.Tensor] = {}
    weights: dict[int, torch.Tensor] = {}
    def keep_input(L):
        def hook(mod, args, kwargs):
            inputs.setdefault(L, _first_arg(args, kwargs)[0])
        return hook

    def keep_weights(L):
        def hook(mod, args, output):
            weights.setdefault(L, output[1])
        return hook

    handles = [b.register_forward_pre_hook(keep_input(L), with_kwargs=True)
               for L, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
        for h in handles:
            h.remove()
        handles = [b.get_submodule(a.attn).register_forward_hook(keep_weights(L))
                   for L, b in enumerate(blocks)]
        model.set_attn_implementation("eager")
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation(a.attn_implementation)
    return inputs, logits, weights


def verify(bridge, tol: float | None = None) -> None:
    """Check a discovered bridge against its model on a probe prompt, or raise
    UnsupportedModelError saying what differs; then warn that the family is unverified."""
    model, a, cfg = bridge.model, bridge.adapter, bridge.cfg
    tol = tol if tol is not None else (1e-4 if cfg.dtype == torch.float32 else 3e-2)
    ids = _probe_ids(model)
    hidden, ref_logits, eager = _reference(model, a, ids)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids)
    fired = [L for L in range(cfg.n_layers) if f"blocks.{L}.attn.hook_pattern" in cache]
    if len(fired) != cfg.n_layers:
        attn = type(model.get_submodule(f"{a.blocks}.0.{a.attn}")).__name__
        raise _refuse(model, f"{attn} computes attention itself instead of calling transformers' "
                             "attention interface (ALL_ATTENTION_FUNCTIONS), so hook_q/k/v, "
                             "hook_attn_scores, hook_pattern and hook_z would never fire (they "
                             f"fired on layers {fired} of {cfg.n_layers}). An adapter can install "
                             "its own hooked attention (install_attention, see "
                             "workbench/adapters/gptj.py).")

    def rel(x, y):
        return ((x.float() - y.float()).abs().max() / y.float().abs().max().clamp_min(1.0)).item()

    checks = [(f"blocks.{L}.hook_resid_pre", cache["resid_pre", L], hidden[L])
              for L in range(cfg.n_layers)] + [("the logits", logits, ref_logits)]
    # the identities the analyses rely on (they fail where the model scales something the
    # discovery cannot see: an embedding or residual multiplier, a logit scale or cap)
    checks.append(("hook_embed as blocks.0.hook_resid_pre", cache["hook_embed"], cache["resid_pre", 0]))
    for L in range(cfg.n_layers):
        pre, attn_out = cache["resid_pre", L], cache["attn_out", L]
        if ("resid_mid", L) in cache:
            checks.append((f"resid_pre + attn_out as blocks.{L}.hook_resid_mid", pre + attn_out,
                           cache["resid_mid", L]))
        checks.append((f"resid_pre + attn_out + mlp_out as blocks.{L}.hook_resid_post",
                       pre + attn_out + cache["mlp_out", L], cache["resid_post", L]))
    final = model.get_submodule(a.ln_final)(cache["resid_post", cfg.n_layers - 1])
    checks.append(("the unembedded final residual as the logits",
                   model.get_submodule(a.unembed)(final), logits))
    checks += [(f"blocks.{L}.attn.hook_pattern", cache["pattern", L], eager[L])
               for L in range(cfg.n_layers)]
    checks += _weight_checks(bridge, cache)
    for name, ours, theirs in checks:
        if rel(ours, theirs) > tol:
            raise _refuse(model, f"the discovered structure does not reproduce the model: {name} "
                                 f"differs from the model's own by {rel(ours, theirs):.2g} (relative; "
                                 f"allowed {tol:g}). Discovered: {describe(a, cfg)}.")
    warnings.warn(
        f"Model type {cfg.model_type!r} has no tested adapter; the workbench discovered its "
        f"structure ({describe(a, cfg)}) and checked it on a probe prompt (every residual, the "
        "logits and every attention pattern equal the model's own), but the family is not in "
        "the parity tests. See docs/support.md, 'Unknown families'.",
        UnverifiedFamilyWarning, stacklevel=4)


def _weight_checks(bridge, cache) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The layouts read from names, checked on the activations: V (and Q, K at position 0,
    which rotary leaves as it is, where no Q/K norm follows) from W_V, W_Q, W_K and their
    biases; the MLP's hook_pre (and hook_pre_linear) from W_gate / W_in."""
    from ..weights import qkv_weights

    a, cfg, model = bridge.adapter, bridge.cfg, bridge.model
    out = []
    for L in range(cfg.n_layers):
        block = model.get_submodule(a.blocks)[L]
        pre = cache["resid_pre", L]
        x = pre if a.ln1 is None else block.get_submodule(a.ln1)(pre)  # attention's input
        for key, (w, b) in qkv_weights(bridge, L).items():  # w [heads, d_model, d_head]
            if key != "v" and a.attn_qk_norms is not None:
                continue  # a norm sits between the projection and hook_q / hook_k
            made = torch.einsum("bpd,hde->bphe", x, w) + (0 if b is None else b)
            ours = cache[key, L]
            if key != "v":
                made, ours = made[:, :1], ours[:, :1]
            out.append((f"blocks.{L}.attn.hook_{key} from W_{key.upper()}", made, ours))
        mid = pre if cfg.parallel_attn_mlp else cache["resid_mid", L]
        x2 = mid if a.ln2 is None else block.get_submodule(a.ln2)(mid)  # the MLP's input
        act = ACT2FN[cfg.act_fn] if cfg.act_fn in ACT2FN else None
        if cfg.gated_mlp:
            out.append((f"blocks.{L}.mlp.hook_pre from W_gate", x2 @ bridge.W_gate[L], cache["pre", L]))
            out.append((f"blocks.{L}.mlp.hook_pre_linear from W_in", x2 @ bridge.W_in[L],
                        cache["pre_linear", L]))
            if act is not None:  # which projection is the gate: act(gate) * up feeds W_out
                out.append((f"blocks.{L}.mlp.hook_post as {cfg.act_fn}(hook_pre) * hook_pre_linear",
                            act(cache["pre", L]) * cache["pre_linear", L], cache["post", L]))
        else:
            out.append((f"blocks.{L}.mlp.hook_pre from W_in", x2 @ bridge.W_in[L] + bridge.b_in[L],
                        cache["pre", L]))
            if act is not None:
                out.append((f"blocks.{L}.mlp.hook_post as {cfg.act_fn}(hook_pre)",
                            act(cache["pre", L]), cache["post", L]))
    return out


def describe(a: Adapter, cfg) -> str:
    """The discovered structure in words."""
    norms = ", ".join(f"{k} {v}" for k, v in (("ln1", a.ln1), ("ln2", a.ln2), ("ln1_post", a.attn_post_norm),
                                              ("ln2_post", a.mlp_post_norm)) if v)
    return (f"blocks {a.blocks}, attention {a.attn}, MLP {a.mlp} "
            f"({'gated' if cfg.gated_mlp else 'not gated'}), "
            f"{'parallel' if cfg.parallel_attn_mlp else 'sequential'}, {_NORMS[a.normalization]}: "
            f"{norms or 'no block norms'}")
