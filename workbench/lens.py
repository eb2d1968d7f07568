"""Logit lens: what the model would predict if the residual stream stopped at each layer.

For each chosen residual site (``resid_pre`` / ``resid_mid`` / ``resid_post`` of a layer) and
position, the model's own final norm and unembedding are applied to the residual stream there
(the norm recomputes its scale from that residual, as the model would). The last layer's
``resid_post`` therefore gives exactly the model's logits. Only the top-k tokens and a target's
statistics are kept, never the full ``[rows, pos, d_vocab]`` logits.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .results import check_layers, dataframe, decode, encode_input, need_logits, non_finite_error, token_ids

if TYPE_CHECKING:
    from .bridge import Bridge

SITES = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class LogitLens:
    """One prompt's logit lens. ``rows`` are residual sites in forward order (labels like
    ``"3_pre"``, ``"3_post"``), ``positions`` the prompt positions shown.

    - ``top_tokens`` ``[rows, positions, k]`` ids, ``top_probs`` likewise (softmax over the vocab),
      ``top_strs`` the decoded strings, ``entropy`` ``[rows, positions]`` in nats;
    - with a target: ``target_prob`` / ``target_logprob`` / ``target_rank`` ``[rows, positions]``
      (rank 0 = top prediction)."""

    rows: list[str]
    layers: list[int]
    sites: list[str]
    positions: list[int]
    str_tokens: list[str]
    top_tokens: torch.Tensor
    top_probs: torch.Tensor
    top_strs: list[list[list[str]]]
    entropy: torch.Tensor
    target: int | None = None
    target_str: str | None = None
    target_prob: torch.Tensor | None = None
    target_logprob: torch.Tensor | None = None
    target_rank: torch.Tensor | None = None

    def to_dataframe(self):
        """One row per (site, position): top-1 token and probability, entropy, target stats."""
        out = []
        for r, label in enumerate(self.rows):
            for j, pos in enumerate(self.positions):
                row = dict(row=label, layer=self.layers[r], site=self.sites[r], position=pos,
                           token=self.str_tokens[j], top1=self.top_strs[r][j][0],
                           top1_prob=float(self.top_probs[r, j, 0]), entropy=float(self.entropy[r, j]))
                if self.target is not None:
                    row.update(target=self.target_str, target_prob=float(self.target_prob[r, j]),
                               target_logprob=float(self.target_logprob[r, j]),
                               target_rank=int(self.target_rank[r, j]))
                out.append(row)
        return dataframe(out)


def _site_names(bridge: Bridge, sites, layers) -> list[tuple[str, int, str]]:
    if isinstance(sites, str):
        sites = SITES if sites == "all" else (sites,)
    bad = [s for s in sites if s not in SITES]
    if bad:
        raise InputError(f"sites must be among {SITES} or 'all'; got {bad}.")
    if not sites:
        raise InputError(f"sites is empty; pass one or more of {SITES}, or 'all'.")
    out = []
    for L in check_layers(bridge, layers):
        for s in SITES:  # forward order within a block
            if s in sites and not (s == "resid_mid" and bridge.cfg.parallel_attn_mlp):
                out.append((f"blocks.{L}.hook_{s}", L, s))
    if not out:  # only resid_mid was asked for
        raise InputError("This model runs attention and MLP in parallel, so it has no resid_mid; "
                         "pass sites='resid_post' or 'all'.")
    return out


@torch.inference_mode()
def logit_lens(bridge: Bridge, input: Any, *, sites: str | tuple[str, ...] = "resid_post",
               layers: list[int] | None = None, positions: list[int] | None = None, k: int = 5,
               target: int | str | None = None) -> LogitLens:
    """Logit lens of one prompt (a string or token ids ``[1, pos]``).

    ``sites``: "resid_pre", "resid_mid", "resid_post", a tuple of them, or "all"; ``layers``:
    which blocks (default all); ``positions``: which positions (default all); ``k``: how many top
    tokens per cell; ``target``: a token (id or one-token string) whose probability and rank are
    tracked in every cell."""
    need_logits(bridge, "The logit lens")
    enc = encode_input(bridge, input)
    if enc.tokens.shape[0] != 1:
        raise InputError(f"logit_lens reads one prompt; got a batch of {enc.tokens.shape[0]}. "
                         "Pass a single string (or tokens[i:i+1]).")
    n_pos = enc.tokens.shape[1]
    try:
        positions = None if positions is None else [operator.index(p) for p in positions]
    except TypeError:
        raise InputError(f"positions must be a list of ints (token positions); got {positions!r}.") from None
    bad = [p for p in positions or () if not -n_pos <= p < n_pos]
    if bad:
        raise InputError(f"positions {bad} do not exist: the prompt has {n_pos} tokens, so positions are "
                         f"0..{n_pos - 1} (or -{n_pos}..-1 from the end). Leave positions=None for all.")
    positions = list(range(n_pos)) if positions is None else [p % n_pos for p in positions]
    if not 1 <= k <= bridge.cfg.d_vocab:
        raise InputError(f"k must be in [1, d_vocab={bridge.cfg.d_vocab}]; got {k}.")
    names = _site_names(bridge, sites, layers)
    _, cache = bridge.run_with_cache(enc.tokens, names_filter=[n for n, _, _ in names])
    ln_final = bridge.model.get_submodule(bridge.adapter.ln_final)
    unembed = bridge.model.get_submodule(bridge.adapter.unembed)
    tgt = None if target is None else int(token_ids(bridge, target, 1, "target")[0])
    tops, probs, ents, t_prob, t_lp, t_rank = [], [], [], [], [], []
    for name, _, _ in names:
        # (a list index: under a device_map each layer's residual is on its own device, which
        # accelerate's hooks on the final norm and the unembedding move it from)
        resid = cache[name][0, positions]  # [positions, d_model]
        logits = bridge.cfg.finish_logits(unembed(ln_final(resid)))
        logp = torch.log_softmax(logits.float(), dim=-1)  # [positions, d_vocab]
        top = logp.topk(k, dim=-1)
        tops.append(top.indices)
        probs.append(top.values.exp())
        ents.append(-(logp.exp() * logp).sum(-1))
        if tgt is not None:
            lp = logp[:, tgt]
            t_lp.append(lp)
            t_prob.append(lp.exp())
            t_rank.append((logp > lp[:, None]).sum(-1))
    if not bool(torch.isfinite(torch.stack(ents)).all()):  # a hook wrote NaN or inf: say where
        first = next((n for n, _, _ in names if not bool(torch.isfinite(cache[n]).all())), None)
        raise non_finite_error(bridge, "The logit lens", first)
    top_tokens = torch.stack(tops).cpu()
    str_tokens = decode(bridge, enc.tokens[0].tolist())
    return LogitLens(
        rows=[f"{L}_{s.split('_')[1]}" for _, L, s in names], layers=[L for _, L, _ in names],
        sites=[s for _, _, s in names], positions=positions,
        str_tokens=[str_tokens[p] for p in positions], top_tokens=top_tokens,
        top_probs=torch.stack(probs).cpu(),
        top_strs=[[decode(bridge, cell.tolist()) for cell in row] for row in top_tokens],
        entropy=torch.stack(ents).cpu(), target=tgt,
        target_str=None if tgt is None else decode(bridge, [tgt])[0],
        target_prob=torch.stack(t_prob).cpu() if tgt is not None else None,
        target_logprob=torch.stack(t_lp).cpu() if tgt is not None else None,
        target_rank=torch.stack(t_rank).cpu() if tgt is not None else None,
    )
