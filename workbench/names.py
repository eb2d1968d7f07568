"""The hook-name grammar: one parser from a TransformerLens-style name to (layer, component, site).

Canonical names::

    hook_embed, hook_pos_embed
    blocks.{L}.hook_resid_pre | hook_resid_mid | hook_resid_post | hook_attn_out | hook_mlp_out
    blocks.{L}.attn.hook_q | hook_k | hook_v | hook_z | hook_attn_scores | hook_pattern | hook_result
    blocks.{L}.mlp.hook_pre | hook_pre_linear | hook_post   (dense MLPs)
    blocks.{L}.mlp.hook_router_logits | hook_expert_weights | hook_expert_indices   (MoE MLPs)
    blocks.{L}.ln1.hook_scale | hook_normalized, blocks.{L}.ln2.hook_scale | hook_normalized
    blocks.{L}.ln1_post.hook_* , blocks.{L}.ln2_post.hook_*   (norms after attention / MLP, Gemma 2)
    ln_final.hook_scale | hook_normalized
    embed_ln.hook_scale | hook_normalized   (a norm right after the embedding, BLOOM)

Short names ("pattern", "resid_pre", "q", ...) expand to canonical ones with :func:`act_name`, the
way ``cache["pattern", 0]`` does.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass

from .errors import HookNameError

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(?:(attn|mlp|ln1_post|ln2_post|ln1|ln2)\.)?(hook_[a-z_]+)$")
_TOP_RE = re.compile(r"^(?:(ln_final|embed_ln)\.)?(hook_[a-z_]+)$")

# short name -> (component, hook) for per-block activations
_SHORT: dict[str, tuple[str, str]] = {
    "resid_pre": ("", "hook_resid_pre"),
    "resid_mid": ("", "hook_resid_mid"),
    "resid_post": ("", "hook_resid_post"),
    "attn_out": ("", "hook_attn_out"),
    "mlp_out": ("", "hook_mlp_out"),
    "q": ("attn", "hook_q"),
    "k": ("attn", "hook_k"),
    "v": ("attn", "hook_v"),
    "z": ("attn", "hook_z"),
    "attn_scores": ("attn", "hook_attn_scores"),
    "pattern": ("attn", "hook_pattern"),
    "result": ("attn", "hook_result"),
    "pre": ("mlp", "hook_pre"),
    "pre_linear": ("mlp", "hook_pre_linear"),
    "post": ("mlp", "hook_post"),
    "router_logits": ("mlp", "hook_router_logits"),
    "expert_weights": ("mlp", "hook_expert_weights"),
    "expert_indices": ("mlp", "hook_expert_indices"),
}
_ALIASES = {
    "attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
    "mlp_pre": "pre", "mlp_post": "post", "resid": "resid_post",
}
_LAYER_TYPES = {"ln1": "ln1", "ln2": "ln2", "ln_final": "ln_final", "a": "ln1", "m": "ln2",
                "attn": "ln1", "mlp": "ln2", "ln1_post": "ln1_post", "ln2_post": "ln2_post"}


@dataclass(frozen=True)
class HookName:
    """A parsed hook name. ``layer`` is None for model-level names; ``component`` is one of
    "", "attn", "mlp", "ln1", "ln2", "ln1_post", "ln2_post", "ln_final", "embed_ln"; ``site`` is
    the final ``hook_*`` part."""

    layer: int | None
    component: str
    site: str

    def __str__(self) -> str:
        comp = f"{self.component}." if self.component else ""
        if self.layer is None:
            return f"{comp}{self.site}"
        return f"blocks.{self.layer}.{comp}{self.site}"


def parse(name: str) -> HookName:
    """Split a canonical name into (layer, component, site); raises HookNameError if malformed."""
    m = _BLOCK_RE.match(name)
    if m:
        return HookName(int(m.group(1)), m.group(2) or "", m.group(3))
    m = _TOP_RE.match(name)
    if m:
        return HookName(None, m.group(1) or "", m.group(2))
    raise HookNameError(
        f"{name!r} is not a hook name. Expected e.g. 'blocks.0.attn.hook_pattern', "
        "'blocks.3.hook_resid_post' or 'hook_embed'."
    )


def closest(name: str, valid: list[str], n: int = 5) -> list[str]:
    """The valid names nearest to ``name`` (for 'did you mean' messages)."""
    hits = difflib.get_close_matches(name, valid, n=n, cutoff=0.6)
    if not hits:  # fall back on the same site at any layer
        site = name.rsplit(".", 1)[-1]
        hits = [v for v in valid if v.endswith(site)][:n]
    return hits


def unknown_name_error(name: str, valid: list[str], why: str | None = None) -> HookNameError:
    """The error for a name not on this model, listing the closest valid names."""
    near = closest(name, valid)
    msg = f"No hook point named {name!r} on this model."
    if why:
        msg += f" {why}"
    if near:
        msg += " Closest valid names: " + ", ".join(near) + "."
    msg += " See bridge.hook_names() for the full list."
    return HookNameError(msg)


def act_name(name: str, layer: int | None = None, layer_type: str | None = None,
             n_layers: int | None = None) -> str:
    """Expand a short activation name into a canonical hook name.

    ``act_name("pattern", 0) == "blocks.0.attn.hook_pattern"``; ``act_name("scale", 2, "ln1")``
    gives ``"blocks.2.ln1.hook_scale"``; ``act_name("scale")`` gives ``"ln_final.hook_scale"``.
    A negative layer counts from the end and needs ``n_layers``. A canonical name passes through.
    """
    if name.startswith(("blocks.", "hook_", "ln_final.", "embed_ln.")):
        return name
    name = _ALIASES.get(name, name)
    try:
        layer = None if layer is None else operator.index(layer)  # an int, numpy int or int tensor
    except TypeError:
        raise HookNameError(f"The layer of {name!r} must be an int (e.g. ({name!r}, 0)); "
                            f"got {layer!r}.") from None
    if layer is not None and n_layers is not None and not -n_layers <= layer < n_layers:
        raise HookNameError(f"Layer {layer} out of range for a model with {n_layers} layers: use "
                            f"0..{n_layers - 1}, or -{n_layers}..-1 from the end.")
    if layer is not None and layer < 0:
        if n_layers is None:
            raise HookNameError(f"Negative layer {layer} for {name!r} needs the number of layers.")
        layer += n_layers
    if name in ("embed", "pos_embed"):
        return f"hook_{name}"
    if name in ("scale", "normalized"):
        lt = _LAYER_TYPES.get(layer_type or ("ln_final" if layer is None else ""), None)
        if lt is None or (lt != "ln_final" and layer is None):
            raise HookNameError(
                f"{name!r} needs a norm: layer_type 'ln1' or 'ln2' with a layer, or 'ln_final'; "
                f"got layer={layer}, layer_type={layer_type!r}."
            )
        return f"ln_final.hook_{name}" if lt == "ln_final" else f"blocks.{layer}.{lt}.hook_{name}"
    if name not in _SHORT:
        raise HookNameError(
            f"Unknown activation name {name!r}. Expected one of: "
            + ", ".join(sorted([*_SHORT, "embed", "pos_embed", "scale", "normalized"])) + "."
        )
    if layer is None:
        raise HookNameError(f"{name!r} is a per-layer activation: give a layer, e.g. ({name!r}, 0).")
    comp, site = _SHORT[name]
    return str(HookName(layer, comp, site))
