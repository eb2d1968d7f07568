"""Direct logit attribution: how much each component writes directly toward an answer's logit.

The final residual stream is an exact sum of parts: token (and position) embeddings, each
attention head's output ``z_h @ W_O[h]``, each layer's attention output bias ``b_O``, and each
MLP's output. Each part is pushed through the final norm the way TransformerLens does it, with
the norm's *cached* scale of the real run (centred first for LayerNorm), times the norm's weight,
then dotted with the unembedding direction ``W_U[:, answer] - W_U[:, wrong]``.

Identity: the contributions sum to the model's logit (difference) minus ``bias_term``, the two
constants no component owns: the final norm's bias and the unembedding bias, dotted with the
same direction (zero for bias-free models such as Llama).

Where the model transforms the unembedding's output (Gemma 2's final soft-capping, Cohere's and
Granite's logit multipliers), the attribution, ``logit_diff`` included, is of the unembedding's
output before that transform, the last place where the logits are linear in the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .adapters import live_param, norm_weight
from .errors import InputError
from .results import dataframe, decode, encode_input, last_positions, need_logits, non_finite_error, token_ids

if TYPE_CHECKING:
    from .bridge import Bridge


@dataclass(frozen=True)
class DirectLogitAttribution:
    """Per-component direct contributions ``values [components, batch]``, labelled
    ``labels[i]`` ("embed", "pos_embed", "L3H1", "L3 attn bias", "L3 mlp"), with ``kinds[i]`` in
    {"embed", "head", "attn_bias", "mlp"} and ``layers[i]`` / ``heads[i]`` (-1 where not
    applicable). ``logit_diff [batch]`` is the model's real logit (difference) at ``positions
    [batch]``; ``bias_term [batch]`` the constant part, so ``values.sum(0) + bias_term ==
    logit_diff``."""

    labels: list[str]
    kinds: list[str]
    layers: list[int]
    heads: list[int]
    values: torch.Tensor
    logit_diff: torch.Tensor
    bias_term: torch.Tensor
    positions: torch.Tensor
    answer: list[str]
    wrong: list[str] | None
    n_layers: int
    n_heads: int

    @property
    def mean(self) -> torch.Tensor:
        """``[components]``: contributions averaged over the batch."""
        return self.values.mean(-1)

    def by_head(self) -> torch.Tensor:
        """``[n_layers, n_heads]`` batch-mean contribution of every head."""
        out = torch.zeros(self.n_layers, self.n_heads)
        for i, kind in enumerate(self.kinds):
            if kind == "head":
                out[self.layers[i], self.heads[i]] = self.mean[i]
        return out

    def by_layer(self) -> dict[str, torch.Tensor]:
        """``{"attn": [n_layers], "mlp": [n_layers]}`` batch-mean contributions (attn = its heads
        plus its output bias), and ``"embed"`` (a 0-d tensor)."""
        attn, mlp, embed = torch.zeros(self.n_layers), torch.zeros(self.n_layers), torch.zeros(())
        for i, kind in enumerate(self.kinds):
            if kind in ("head", "attn_bias"):
                attn[self.layers[i]] += self.mean[i]
            elif kind == "mlp":
                mlp[self.layers[i]] += self.mean[i]
            else:
                embed += self.mean[i]
        return {"embed": embed, "attn": attn, "mlp": mlp}

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` components with the largest absolute batch-mean contribution."""
        order = self.mean.abs().argsort(descending=True)[:k]
        return [(self.labels[i], float(self.mean[i])) for i in order]

    def to_dataframe(self):
        """One row per component: label, kind, layer, head, batch-mean contribution."""
        return dataframe([dict(component=lab, kind=kd, layer=L, head=h, contribution=float(v))
                          for lab, kd, L, h, v in zip(self.labels, self.kinds, self.layers, self.heads,
                                                      self.mean, strict=True)])


@torch.inference_mode()
def direct_logit_attribution(bridge: Bridge, input: Any, answer: Any, wrong: Any = None, *,
                             position: int | None = None) -> DirectLogitAttribution:
    """Direct logit attribution of ``input`` (a string, list of strings or tokens
    ``[batch, pos]``) toward ``answer`` (minus ``wrong`` if given): one token (id or one-token
    string) or one per prompt. ``position``: which position's logits (default: each prompt's
    last real token, whatever the padding side)."""
    need_logits(bridge, "Direct logit attribution")
    enc = encode_input(bridge, input)
    batch, n_pos = enc.tokens.shape
    ans = token_ids(bridge, answer, batch, "answer")
    bad = token_ids(bridge, wrong, batch, "wrong") if wrong is not None else None
    if position is None:
        pos = last_positions(enc.attention_mask)
    else:
        if not -n_pos <= position < n_pos:
            raise InputError(f"position must be in [{-n_pos}, {n_pos}) for {n_pos} tokens; got {position}.")
        pos = torch.full((batch,), position % n_pos, device=enc.tokens.device)
    logits, cache = bridge.run_with_cache(enc.tokens, attention_mask=enc.attention_mask)
    rows = torch.arange(batch, device=pos.device)
    dev = pos.device  # where the parts meet: under a device_map each layer's are on its device

    def at(t: torch.Tensor) -> torch.Tensor:
        """``t [batch, pos, ...]`` at each prompt's position, ``[batch, ...]`` (on t's device)."""
        return t[rows.to(t.device), pos.to(t.device)]

    final = at(logits).float().to(dev)  # [batch, d_vocab]
    c = bridge.cfg
    if c.output_logits_soft_cap is not None or c.logit_multiplier != 1.0:  # the linear logits
        resid = at(cache["resid_post", c.n_layers - 1])
        ln_final = bridge.model.get_submodule(bridge.adapter.ln_final)
        final = bridge.model.get_submodule(bridge.adapter.unembed)(ln_final(resid)).float().to(dev)
    logit_diff = final[rows, ans] - (final[rows, bad] if bad is not None else 0)
    if not bool(torch.isfinite(logit_diff).all()):
        raise non_finite_error(bridge, "Direct logit attribution's logit difference")

    parts, labels, kinds, layers, heads = [], [], [], [], []
    for name in ("hook_embed", "hook_pos_embed"):
        if name in cache:
            parts.append(at(cache[name]).to(dev))
            labels.append(name[5:])
            kinds.append("embed"), layers.append(-1), heads.append(-1)
    b_O, ctx = bridge.b_O, cache.context
    for L in range(c.n_layers):
        z = at(cache["z", L])  # [batch, heads, d_head], on layer L's device
        w_o = ctx.W_O(L).to(z.device, z.dtype)
        head_out = torch.einsum("bhd,hdm->hbm", z, w_o)  # [heads, batch, d_model]
        bias_out = b_O[L].to(z.device, z.dtype).expand(batch, -1)
        # as the residual stream receives them (Gemma 2's post-norm, scale frozen; Granite's r)
        name = ctx.post_norm_scale_name(L)
        scale = None if name is None else at(cache[name])  # [batch, 1]
        head_out, bias_out = ctx.attn_written(L, head_out, scale), ctx.attn_written(L, bias_out, scale)
        head_out, bias_out = head_out.to(dev), bias_out.to(dev)
        parts.extend(head_out.unbind(0))
        labels += [f"L{L}H{h}" for h in range(c.n_heads)]
        kinds += ["head"] * c.n_heads
        layers += [L] * c.n_heads
        heads += list(range(c.n_heads))
        parts.append(bias_out)
        labels.append(f"L{L} attn bias"), kinds.append("attn_bias"), layers.append(L), heads.append(-1)
        parts.append(at(cache["mlp_out", L]).to(dev))
        labels.append(f"L{L} mlp"), kinds.append("mlp"), layers.append(L), heads.append(-1)
    stack = torch.stack(parts).float()  # [components, batch, d_model]
    scale = at(cache["ln_final.hook_scale"]).float().to(dev)  # [batch, 1]
    if c.normalization_type.startswith("LN"):
        stack = stack - stack.mean(-1, keepdim=True)
    W_U, b_U = bridge.W_U, bridge.b_U  # on the unembedding's device: only the tokens' columns move

    def unembed(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_U[:, ids].T [batch, d_model], b_U[ids] [batch])`` in float32 on ``dev``."""
        i = ids.to(W_U.device)
        return W_U[:, i].T.float().to(dev), b_U[i].float().to(dev)

    direction, constant = unembed(ans)  # [batch, d_model], [batch]
    if bad is not None:
        bad_direction, bad_constant = unembed(bad)
        direction, constant = direction - bad_direction, constant - bad_constant
    ln_final = bridge.model.get_submodule(bridge.adapter.ln_final)
    ln_bias = live_param(ln_final, "bias")
    if ln_bias is not None:  # the norm's bias goes straight into the unembedding
        constant = constant + direction @ ln_bias.float().to(dev)
    ln_w = norm_weight(bridge.adapter, ln_final)
    if ln_w is not None:
        direction = direction * ln_w.float().to(dev)
    values = ((stack / scale) * direction).sum(-1)  # [components, batch]
    return DirectLogitAttribution(
        labels=labels, kinds=kinds, layers=layers, heads=heads, values=values.cpu(),
        logit_diff=logit_diff.cpu(), bias_term=constant.cpu(), positions=pos.cpu(),
        answer=decode(bridge, ans.tolist()),
        wrong=decode(bridge, bad.tolist()) if bad is not None else None,
        n_layers=c.n_layers, n_heads=c.n_heads)
