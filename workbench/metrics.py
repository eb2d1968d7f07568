"""Patching metrics: functions of a model's logits that return one number per prompt.

A metric maps logits ``[batch, pos, d_vocab]`` to ``[batch]`` (one scalar per batch element).
Each :class:`Metric` also declares the positions it reads (``positions``, default the last one,
``-1``; ``None`` = all), so a patching engine can unembed only those positions: it calls
:meth:`Metric.read` on the logits at ``positions`` alone (``[batch, len(positions), d_vocab]``),
which is what ``metric(logits)`` does after selecting them from the full logits.

Factories (tokens are ids or one-token strings; one token, or one per prompt):

- :func:`logit_diff` ``logits[answer] - logits[wrong]``;
- :func:`prob` / :func:`logprob` of a token (softmax over the vocabulary, in fp32);
- :func:`kl_to` ``KL(clean || patched)`` of the next-token distributions, summed over the read
  positions (nats);
- :func:`normalized` ``(m - corrupted) / (clean - corrupted)``: 0 at the corrupted baseline, 1 at
  the clean one. With scalar (batch-mean) baselines the batch mean of the normalised metric is
  the normalised batch mean, as in TransformerLens's patching tutorials.

Any plain function of the full logits returning ``[batch]`` is accepted where a metric is
expected (:func:`as_metric` wraps it, reading every position). :func:`check_output` is the shape
check the engine applies to every metric call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .results import token_ids

if TYPE_CHECKING:
    from .bridge import Bridge

ReadFn = Callable[[torch.Tensor], torch.Tensor]


class Metric:
    """A metric reading the logits at ``positions`` only.

    ``fn(logits_at)`` gets ``[batch, len(positions), d_vocab]`` (the logits at ``positions``, in
    that order; all positions when ``positions`` is None) and returns ``[batch]``. Calling the
    metric on full logits ``[batch, pos, d_vocab]`` selects the positions first. Negative
    positions count from the end of the sequence."""

    def __init__(self, fn: ReadFn, positions: Sequence[int] | None = (-1,), name: str = "metric") -> None:
        if positions is not None:
            positions = tuple(int(p) for p in positions)
            if not positions:
                raise InputError("A metric must read at least one position; got positions=().")
        self.fn = fn
        self.positions: tuple[int, ...] | None = positions
        self.name = name

    def __repr__(self) -> str:
        return f"Metric({self.name}, positions={self.positions})"

    def read(self, logits_at: torch.Tensor) -> torch.Tensor:
        """The metric on the logits at its positions, ``[batch, len(positions), d_vocab]``."""
        return self.fn(logits_at)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric on full logits ``[batch, pos, d_vocab]``; returns ``[batch]``."""
        if self.positions is None:
            return self.read(logits)
        n = logits.shape[1]
        bad = [p for p in self.positions if not -n <= p < n]
        if bad:
            raise InputError(f"Metric {self.name} reads positions {list(bad)}, outside the "
                             f"{n} positions of these logits (valid: {-n}..{n - 1}).")
        return self.read(logits[:, list(self.positions)])

    def prepare(self, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor) -> Metric:
        """A metric ready for one sweep, given the clean and corrupted runs' logits
        (``[batch, pos, d_vocab]`` each); metrics that need nothing from them return self."""
        return self


def as_metric(metric: Metric | Callable[[torch.Tensor], torch.Tensor]) -> Metric:
    """``metric`` itself, or a plain function of the full logits wrapped as a Metric reading all
    positions (wrap it in ``Metric(fn, positions=...)`` yourself to read fewer)."""
    if isinstance(metric, Metric):
        return metric
    if not callable(metric):
        raise InputError(f"metric must be a Metric or a function of logits [batch, pos, d_vocab] "
                         f"returning [batch]; got {type(metric).__name__}.")
    return Metric(metric, positions=None, name=getattr(metric, "__name__", "custom"))


def check_output(out: Any, batch: int, name: str) -> torch.Tensor:
    """``out`` as a ``[batch]`` tensor, or an InputError saying what came back instead."""
    if not isinstance(out, torch.Tensor):
        raise InputError(f"Metric {name} returned {type(out).__name__} ({out!r:.60}); expected a "
                         f"tensor of shape [{batch}] (one scalar per batch element).")
    if tuple(out.shape) != (batch,):
        hint = (" Drop the final .mean()/.sum() over the batch: the sweep averages over prompts"
                " itself." if out.ndim == 0 else "")
        raise InputError(f"Metric {name} returned shape {tuple(out.shape)}; expected [{batch}] "
                         f"(one scalar per batch element).{hint}")
    return out


def _ids(bridge: Bridge | None, tokens: Any, what: str) -> torch.Tensor:
    """``[1]`` or ``[n]`` token ids (CPU) from an id, a one-token string, or a sequence of them."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.flatten().tolist()
    n = 1 if isinstance(tokens, (int, str)) else len(tokens)
    if bridge is not None:
        return token_ids(bridge, tokens, n, what).cpu()
    items = [tokens] if isinstance(tokens, (int, str)) else list(tokens)
    if any(not isinstance(t, int) for t in items) or n == 0:
        raise InputError(f"{what}: without a bridge, give token ids (ints); got {tokens!r}. Pass the "
                         "bridge first to use one-token strings.")
    return torch.tensor(items)


def _per_row(ids: torch.Tensor, batch: int, device: torch.device, what: str) -> torch.Tensor:
    if ids.numel() == 1:
        return ids.to(device).expand(batch)
    if ids.numel() != batch:
        raise InputError(f"{what}: {ids.numel()} tokens given (one per prompt), but the logits have "
                         f"batch {batch}.")
    return ids.to(device)


def logit_diff(bridge: Bridge | None, answer: Any, wrong: Any, position: int = -1) -> Metric:
    """``logits[b, position, answer[b]] - logits[b, position, wrong[b]]`` ``[batch]``.
    ``bridge`` resolves one-token strings (None when giving ids)."""
    ans, bad = _ids(bridge, answer, "answer"), _ids(bridge, wrong, "wrong")

    def fn(at: torch.Tensor) -> torch.Tensor:
        last = at[:, 0].float()  # [batch, d_vocab]
        a = _per_row(ans, len(last), last.device, "answer")
        w = _per_row(bad, len(last), last.device, "wrong")
        return last.gather(1, a[:, None])[:, 0] - last.gather(1, w[:, None])[:, 0]
    return Metric(fn, (position,), "logit_diff")


def _token_stat(bridge: Bridge | None, token: Any, position: int, log: bool) -> Metric:
    ids = _ids(bridge, token, "token")

    def fn(at: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(at[:, 0].float(), dim=-1)  # [batch, d_vocab]
        t = _per_row(ids, len(logp), logp.device, "token")
        out = logp.gather(1, t[:, None])[:, 0]
        return out if log else out.exp()
    return Metric(fn, (position,), "logprob" if log else "prob")


def prob(bridge: Bridge | None, token: Any, position: int = -1) -> Metric:
    """Probability of ``token`` (one, or one per prompt) at ``position`` ``[batch]``."""
    return _token_stat(bridge, token, position, log=False)


def logprob(bridge: Bridge | None, token: Any, position: int = -1) -> Metric:
    """Log-probability (nats) of ``token`` at ``position`` ``[batch]``."""
    return _token_stat(bridge, token, position, log=True)


class _KL(Metric):
    def __init__(self, clean_logits: torch.Tensor | None, positions: tuple[int, ...]) -> None:
        super().__init__(self._kl, positions, "kl_to_clean")
        self.ref: torch.Tensor | None = None  # clean log-probs at positions [batch, k, d_vocab]
        if clean_logits is not None:
            if clean_logits.ndim != 3:
                raise InputError(f"kl_to takes the clean logits [batch, pos, d_vocab]; got shape "
                                 f"{tuple(clean_logits.shape)}.")
            self.ref = torch.log_softmax(Metric(lambda x: x, positions)(clean_logits).float(), -1)

    def _kl(self, at: torch.Tensor) -> torch.Tensor:
        if self.ref is None:
            raise InputError("kl_to() without clean logits gets them from a patching sweep; to call it "
                             "directly, pass kl_to(clean_logits).")
        if at.shape[0] != self.ref.shape[0]:
            raise InputError(f"kl_to: the clean logits have batch {self.ref.shape[0]}, these have "
                             f"{at.shape[0]}.")
        ref = self.ref.to(at.device)
        logq = torch.log_softmax(at.float(), dim=-1)
        return (ref.exp() * (ref - logq)).sum(-1).sum(-1)

    def prepare(self, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor) -> Metric:
        return self if self.ref is not None else _KL(clean_logits, self.positions)


def kl_to(clean_logits: torch.Tensor | None = None, positions: Sequence[int] = (-1,)) -> Metric:
    """``KL(clean || patched)`` in nats, summed over ``positions`` ``[batch]``. ``clean_logits
    [batch, pos, d_vocab]``; left out, a patching sweep uses its own clean run's logits."""
    return _KL(clean_logits, tuple(positions))


class _Normalized(Metric):
    def __init__(self, inner: Metric, clean: Any, corrupted: Any) -> None:
        super().__init__(self._norm, inner.positions, f"normalized({inner.name})")
        self.inner, self.clean, self.corrupted = inner, clean, corrupted

    def _norm(self, at: torch.Tensor) -> torch.Tensor:
        if self.clean is None or self.corrupted is None:
            raise InputError("normalized(metric) without baselines gets them from a patching sweep; "
                             "to call it directly, pass clean_value and corrupted_value.")
        m = self.inner.read(at).float()
        clean = torch.as_tensor(self.clean, dtype=torch.float32, device=m.device)
        corrupted = torch.as_tensor(self.corrupted, dtype=torch.float32, device=m.device)
        return (m - corrupted) / (clean - corrupted)

    def prepare(self, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor) -> Metric:
        inner = self.inner.prepare(clean_logits, corrupted_logits)
        clean = inner(clean_logits).float().mean() if self.clean is None else self.clean
        corrupted = (inner(corrupted_logits).float().mean() if self.corrupted is None
                     else self.corrupted)
        return normalized(inner, clean, corrupted)


def normalized(metric: Metric | Callable[[torch.Tensor], torch.Tensor], clean_value: Any = None,
               corrupted_value: Any = None) -> Metric:
    """``(metric - corrupted_value) / (clean_value - corrupted_value)`` ``[batch]``: 0 at the
    corrupted baseline, 1 at the clean one. Baselines are floats or ``[batch]`` tensors; left out,
    a patching sweep fills in the batch means of ``metric`` on its clean and corrupted runs."""
    inner = as_metric(metric)
    for value in (clean_value, corrupted_value):
        if value is not None and not isinstance(value, (int, float, torch.Tensor)):
            raise InputError(f"normalized: baselines are floats or [batch] tensors; got "
                             f"{type(value).__name__}.")
    if clean_value is not None and corrupted_value is not None:
        gap = torch.as_tensor(clean_value, dtype=torch.float32) - torch.as_tensor(
            corrupted_value, dtype=torch.float32)
        if bool((gap.abs() < 1e-12).any()):
            raise InputError(f"normalized: the clean and corrupted baselines are equal ({clean_value} "
                             f"vs {corrupted_value}), so the normalised metric is undefined. Choose "
                             "prompts (or a metric) that the corruption changes.")
    return _Normalized(inner, clean_value, corrupted_value)
