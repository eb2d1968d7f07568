"""Q-, K- and V-composition scores between every pair of attention heads (Elhage et al. 2021,
"A Mathematical Framework for Transformer Circuits").

``comp(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)`` between an earlier head's OV circuit
``W_A = OV = W_V W_O`` and a later head's circuit ``W_B`` (row-vector convention, as in
TransformerLens's ``all_composition_scores``):

- ``"q"``: ``W_B = QK = W_Q W_K^T`` (the earlier head's output feeds the later head's queries);
- ``"k"``: ``W_B = QK^T = W_K W_Q^T`` (... its keys);
- ``"v"``: ``W_B = OV`` (... its values).

No ``d_model x d_model`` matrix is ever built. With ``R^T R = W_V^T W_V`` (Cholesky), ``||W_V X|| =
||R X||``, so each sender reduces to ``M = R_V W_O`` (``[d_head, d_model]``) and each receiver
``A B`` to ``N = A R_B^T`` with ``R_B^T R_B = B B^T`` (``[d_model, d_head]``); the score is
``||M N|| / (||M|| ||N||)``, a ``d_head x d_head`` product per pair, batched as one matmul per
sender layer (chunked to bound memory). Computed in float32 (or float64 for float64 models).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from .errors import InputError
from .results import dataframe

if TYPE_CHECKING:
    from .bridge import Bridge

KINDS = ("q", "k", "v")
_CHUNK = 1 << 25  # most elements of one batched pair product


@dataclass(frozen=True, eq=False)
class CompositionScores:
    """``scores [n_layers, n_heads, n_layers, n_heads]``: entry ``[l1, h1, l2, h2]`` is the score of
    sender ``L{l1}H{h1}`` into receiver ``L{l2}H{h2}``; ``valid`` (bool, same shape) is True where
    ``l1 < l2``, and ``scores`` is 0 elsewhere. ``baseline`` is the random-matrix mean subtracted
    from the valid scores (None when raw). A head whose circuit is exactly zero scores NaN (0/0)."""

    kind: str
    scores: torch.Tensor
    valid: torch.Tensor
    baseline: float | None = None

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    @property
    def labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]``, ``n_layers * n_heads`` labels in :meth:`matrix` order."""
        return [f"L{layer}H{h}" for layer in range(self.n_layers) for h in range(self.n_heads)]

    def matrix(self) -> torch.Tensor:
        """``[n_layers * n_heads (sender), n_layers * n_heads (receiver)]``, rows/cols as ``labels``."""
        n = self.n_layers * self.n_heads
        return self.scores.reshape(n, n)

    def top(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` highest valid (non-NaN) pairs as ``(sender, receiver, score)``, highest first."""
        ok = (self.valid & ~self.scores.isnan()).flatten()
        flat = self.scores.flatten().float().masked_fill(~ok, float("-inf"))
        k = min(k, int(ok.sum()))
        vals, idx = flat.topk(k)
        labels, n = self.labels, self.n_layers * self.n_heads
        return [(labels[i // n], labels[i % n], v) for i, v in zip(idx.tolist(), vals.tolist(), strict=True)]

    def to_dataframe(self):
        """A pandas DataFrame, one row per valid pair: sender_layer, sender_head, receiver_layer,
        receiver_head, score."""
        idx = self.valid.nonzero().tolist()
        vals = self.scores[self.valid].float().tolist()
        cols = ("sender_layer", "sender_head", "receiver_layer", "receiver_head")
        return dataframe([{**dict(zip(cols, i, strict=True)), "score": v}
                          for i, v in zip(idx, vals, strict=True)])


def _check_kind(kind: object) -> str:
    k = kind.lower() if isinstance(kind, str) else kind
    if k not in KINDS:
        raise InputError(f"composition_scores: expected kind in {KINDS} (query, key or value "
                         f"composition), got {kind!r}; pass kind='q', 'k' or 'v'.")
    return k


def _r(t: torch.Tensor) -> torch.Tensor:
    """``R [..., cols, cols]`` with ``R^T R == t^T t`` for ``t [..., rows, cols]``, so ``||t X||_F ==
    ||R X||_F``: the Cholesky factor of the Gram matrix (much faster than a batched QR on CPU), or
    ``diag(sqrt(w)) U^T`` from its eigendecomposition where the Gram matrix is singular."""
    g = t.mT @ t
    chol, info = torch.linalg.cholesky_ex(g)
    r, bad = chol.mT.clone(), info != 0
    if bad.any():
        w, u = torch.linalg.eigh(g[bad])
        r[bad] = (u * w.clamp_min(0).sqrt()[..., None, :]).mT
    return r


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / torch.linalg.matrix_norm(t, keepdim=True)


def _factors(W_Q, W_K, W_V, W_O, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm sender ``M [..., d_head, d_model]`` and receiver ``N [..., d_model, d_head]``."""
    m = _r(W_V) @ W_O  # OV = W_V W_O
    a, b_t = {"q": (W_Q, W_K), "k": (W_K, W_Q), "v": (W_V, W_O.mT)}[kind]  # receiver A @ B, B^T = b_t
    return _unit(m), _unit(a @ _r(b_t).mT)


def composition_scores_from_weights(W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor,
                                    W_O: torch.Tensor, kind: str = "k", *, baseline: bool = False,
                                    n_baseline: int = 64, seed: int = 0) -> CompositionScores:
    """:func:`composition_scores` from stacked weights: ``W_Q``/``W_K``/``W_V``
    ``[n_layers, n_heads, d_model, d_head]`` (K/V expanded per query head), ``W_O``
    ``[n_layers, n_heads, d_head, d_model]``."""
    kind = _check_kind(kind)
    dtype = torch.promote_types(W_Q.dtype, torch.float32)
    W_Q, W_K, W_V, W_O = (w.detach().to(W_Q.device, dtype) for w in (W_Q, W_K, W_V, W_O))
    n_layers, n_heads, d_model, _ = W_Q.shape
    m, n = _factors(W_Q, W_K, W_V, W_O, kind)
    scores = W_Q.new_zeros(n_layers, n_heads, n_layers, n_heads)
    rows, cols = n_heads * m.shape[-2], n_heads * n.shape[-1]
    step = max(1, _CHUNK // (rows * cols))
    n_cols = n.permute(2, 0, 1, 3).contiguous()  # [D, L, H, k]: receiver layers as column blocks
    for l1 in range(n_layers - 1):
        left = m[l1].reshape(rows, d_model)
        for l2 in range(l1 + 1, n_layers, step):
            right = n_cols[:, l2:l2 + step]  # [D, r, H, k]
            prod = left @ right.reshape(d_model, -1)  # [H*k, r*H*k], one block per head pair
            blocks = prod.reshape(n_heads, -1, right.shape[1], n_heads, right.shape[-1])
            scores[l1, :, l2:l2 + step] = torch.linalg.vector_norm(blocks, dim=(1, 4))
    layer = torch.arange(n_layers, device=W_Q.device)
    valid = (layer[:, None] < layer[None, :])[:, None, :, None].expand_as(scores)
    base = None
    if baseline:
        base = random_baseline(d_model, W_Q.shape[-1], n=n_baseline, seed=seed)
        scores = torch.where(valid, scores - base, 0.0)
    return CompositionScores(kind, scores, valid.clone(), base)


def composition_scores(bridge: Bridge, kind: str = "k", *, baseline: bool = False, n_baseline: int = 64,
                       seed: int = 0) -> CompositionScores:
    """Q-, K- or V-composition scores (``kind`` ``"q"``, ``"k"``, ``"v"``) from every head to every
    head of a later layer, as :class:`CompositionScores` ``[n_layers, n_heads, n_layers, n_heads]``.

    Equal to TransformerLens's ``all_composition_scores(kind.upper())`` on the same weights. With
    ``baseline=True`` the valid scores have :func:`random_baseline` (``n_baseline`` samples, ``seed``)
    subtracted, so 0 reads as "what random matrices of these shapes score" and positive as above
    chance; ``result.baseline`` holds the value subtracted. The scores do not depend on how an
    ``OV`` or ``QK`` circuit is split between its two factors, or on scaling either factor.
    """
    kind = _check_kind(kind)
    return composition_scores_from_weights(bridge.W_Q, bridge.W_K, bridge.W_V, bridge.W_O, kind,
                                           baseline=baseline, n_baseline=n_baseline, seed=seed)


@lru_cache(maxsize=32)
def random_baseline(d_model: int, d_head: int, n: int = 64, seed: int = 0) -> float:
    """Mean composition score of ``n`` random pairs ``W_A = A_1 B_1``, ``W_B = A_2 B_2`` with iid
    standard Gaussian factors ``A [d_model, d_head]``, ``B [d_head, d_model]`` (float32, CPU
    generator seeded with ``seed``: deterministic, and cached). The same for q/k/v: transposing ``W_B`` does
    not change the distribution. About ``1 / sqrt(d_model)`` (0.036 for d_model 768), well above 0."""
    if n < 1:
        raise InputError(f"random_baseline: expected n >= 1 samples, got {n}; pass n_baseline >= 1.")
    gen, total = torch.Generator().manual_seed(seed), 0.0
    for start in range(0, n, 16):
        b = min(16, n - start)
        a1, a2, b1t, b2t = (torch.randn(b, d_model, d_head, generator=gen)
                            for _ in range(4))
        m, r = _unit(_r(a1) @ b1t.mT), _unit(a2 @ _r(b2t).mT)
        total += torch.linalg.matrix_norm(m @ r).sum().item()
    return total / n
