"""Per-head attention scores from the literature, for quick head classification.

Both read ``blocks.{L}.attn.hook_pattern`` (``[batch, head, query_pos, key_pos]``) and return a
``[n_layers, n_heads]`` tensor of mean attention weights in [0, 1].

- previous-token score (Olsson et al. 2022; Elhage et al. 2021): the mean attention from each
  position ``i >= 2`` to position ``i - 1`` (position 0 is BOS, and position 1's previous token is
  BOS, which many heads use as a resting place, so it is left out).
- induction score (Olsson et al. 2022): on a sequence ``[BOS, r_1..r_n, r_1..r_n]`` of ``n``
  random tokens repeated once, the mean attention from each token of the second repeat to the
  token right after its first occurrence, i.e. key position ``q - n + 1`` for query position
  ``q`` in ``n + 1 .. 2n``.
- duplicate-token score: on the same sequence, the attention from each token of the second repeat
  to its own first occurrence (key ``q - n``).
- first-token (attention sink) score: the mean attention to position 0 from positions ``1 ..``.

:func:`head_scores` computes all four from one run and returns a labelled :class:`HeadScores`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError
from .results import dataframe


def _patterns(bridge, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_layers, batch, head, q, k]`` attention patterns of ``tokens`` (``[batch, pos]``)."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(bridge.cfg.n_layers)]
    # gathered on the embedding's device (under a device_map each layer's pattern is on its own)
    _, cache = bridge.run_with_cache(tokens, names_filter=names, device=bridge.cfg.device)
    return torch.stack([cache[n].float() for n in names])


def previous_token_scores(bridge, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_layers, n_heads]`` mean attention to the previous token over query positions
    ``2 .. pos-1`` of ``tokens`` (``[batch, pos]``, starting with BOS, ``pos >= 3``)."""
    if tokens.ndim != 2 or tokens.shape[1] < 3:
        raise InputError(f"previous_token_scores expects tokens [batch, pos] with pos >= 3; got "
                         f"shape {tuple(tokens.shape)}. Pass e.g. bridge.to_tokens(texts).")
    return _previous(_patterns(bridge, tokens))


def _previous(pat: torch.Tensor) -> torch.Tensor:
    """``[layers, heads]`` from patterns ``[layers, batch, head, q, k]``: attention to ``q - 1``."""
    q = torch.arange(2, pat.shape[-2], device=pat.device)
    return pat[..., q, q - 1].mean(dim=(1, 3))


def _repeat(pat: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    """``[layers, heads]``: attention from query ``q`` in the repeat to key ``q - n + offset``."""
    q = torch.arange(n + 1, 2 * n + 1, device=pat.device)
    return pat[..., q, q - n + offset].mean(dim=(1, 3))


def _first(pat: torch.Tensor) -> torch.Tensor:
    """``[layers, heads]``: attention to position 0 from query positions ``1 ..``."""
    return pat[..., 1:, 0].mean(dim=(1, 3))


def repeated_random_tokens(bridge, n: int = 50, batch: int = 8, seed: int = 0) -> torch.Tensor:
    """``[batch, 1 + 2n]``: BOS, then ``n`` tokens drawn uniformly from the non-special vocabulary,
    then the same ``n`` tokens again."""
    most = (bridge.cfg.n_ctx - 1) // 2  # BOS + 2n tokens fit the context
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
        raise InputError(f"n (tokens repeated) must be an int in [1, {most}], so that BOS + 2n tokens "
                         f"fit this model's context of {bridge.cfg.n_ctx}; got {n!r}.")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch (random sequences) must be a positive int; got {batch!r}.")
    gen = torch.Generator().manual_seed(seed)
    special = set(getattr(bridge.tokenizer, "all_special_ids", []) or [])
    pool = torch.tensor([i for i in range(bridge.cfg.d_vocab) if i not in special])
    seq = pool[torch.randint(len(pool), (batch, n), generator=gen)]
    bos_id = getattr(bridge.tokenizer, "bos_token_id", None)
    bos = torch.full((batch, 1), 0 if bos_id is None else bos_id)
    return torch.cat([bos, seq, seq], dim=1).to(bridge.cfg.device)


def induction_scores(bridge, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_layers, n_heads]`` induction scores on ``tokens`` (``[batch, 1 + 2n]`` as made by
    :func:`repeated_random_tokens`)."""
    return _repeat_scores(bridge, tokens, "induction_scores", offset=1)


def duplicate_token_scores(bridge, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_layers, n_heads]`` duplicate-token scores on ``tokens`` (``[batch, 1 + 2n]`` as made
    by :func:`repeated_random_tokens`)."""
    return _repeat_scores(bridge, tokens, "duplicate_token_scores", offset=0)


def _repeat_scores(bridge, tokens: torch.Tensor, what: str, offset: int) -> torch.Tensor:
    """Mean attention from query ``q`` in the repeat to key ``q - n + offset``."""
    if tokens.ndim != 2 or tokens.shape[1] % 2 != 1 or tokens.shape[1] < 5:
        raise InputError(f"{what} expects tokens [batch, 1 + 2n] (BOS + a sequence "
                         f"repeated once); got shape {tuple(tokens.shape)}. Use "
                         f"repeated_random_tokens(bridge, n).")
    n = (tokens.shape[1] - 1) // 2
    if not torch.equal(tokens[:, 1:n + 1], tokens[:, n + 1:]):
        raise InputError(f"{what} expects the second half to repeat the first "
                         "(tokens[:, 1:n+1] == tokens[:, n+1:]); it does not. Use "
                         "repeated_random_tokens(bridge, n).")
    return _repeat(_patterns(bridge, tokens), n, offset)


def first_token_scores(bridge, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_layers, n_heads]`` mean attention to position 0 from query positions ``1 .. pos-1``
    of ``tokens`` (``[batch, pos]``, ``pos >= 2``): how much each head rests on the first token."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise InputError(f"first_token_scores expects tokens [batch, pos] with pos >= 2; got shape "
                         f"{tuple(tokens.shape)}.")
    return _first(_patterns(bridge, tokens))


KINDS = ("previous_token", "induction", "duplicate_token", "first_token")


@dataclass(frozen=True)
class HeadScores:
    """``scores[kind]`` is ``[n_layers, n_heads]`` in [0, 1] for each kind in :data:`KINDS`."""

    scores: dict[str, torch.Tensor]
    n_layers: int
    n_heads: int

    def __getitem__(self, kind: str) -> torch.Tensor:
        if kind not in self.scores:
            raise InputError(f"Unknown head score {kind!r}; expected one of {list(self.scores)}.")
        return self.scores[kind]

    def top(self, kind: str, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` highest-scoring heads of one kind, as ``("L{l}H{h}", score)``."""
        flat = self[kind].flatten()
        order = flat.argsort(descending=True)[:k].tolist()
        return [(f"L{i // self.n_heads}H{i % self.n_heads}", float(flat[i])) for i in order]

    def classify(self, threshold: float = 0.4) -> dict[str, list[str]]:
        """Heads whose score of a kind is at least ``threshold``, by kind (highest first)."""
        return {kind: [h for h, v in self.top(kind, self.n_layers * self.n_heads) if v >= threshold]
                for kind in self.scores}

    def to_dataframe(self):
        """One row per head: layer, head, label and one column per score."""
        return dataframe([dict(layer=L, head=h, label=f"L{L}H{h}",
                               **{kind: float(t[L, h]) for kind, t in self.scores.items()})
                          for L in range(self.n_layers) for h in range(self.n_heads)])


@torch.inference_mode()
def head_scores(bridge, n: int = 50, batch: int = 8, seed: int = 0) -> HeadScores:
    """All four scores from one run on :func:`repeated_random_tokens` (``[batch, 1 + 2n]``).
    On random tokens nothing but position and repetition can steer attention, so the scores
    isolate those mechanisms. (The functions above also take your own tokens.)"""
    tokens = repeated_random_tokens(bridge, n, batch, seed)
    pat = _patterns(bridge, tokens)  # [layers, batch, head, q, k]
    scores = {"previous_token": _previous(pat), "induction": _repeat(pat, n, 1),
              "duplicate_token": _repeat(pat, n, 0), "first_token": _first(pat)}
    return HeadScores({k: v.cpu() for k, v in scores.items()}, bridge.cfg.n_layers, bridge.cfg.n_heads)
