"""Activation steering: add ``scale * vector`` to one hook point's activation.

A :class:`Steering` is one intervention with one meaning everywhere: its :attr:`~Steering.hook`
is a ``(name, fn)`` pair, so the same object steers a run (``bridge.run_with_hooks(...,
fwd_hooks=[s.hook])``), a generation (``bridge.generate(..., fwd_hooks=[s.hook])``, where
every step adds it to the new position) and a patching experiment (``with
bridge.hooks(fwd_hooks=[s.hook]): patch_sweep(...)``: every run of the sweep is steered).

The vector is added at every position: ``[d_model]`` for residual points, ``[d_mlp]`` for
``mlp.hook_post``; at per-head points such as ``hook_z``, either ``[n_heads, d_head]`` (one
direction per head) or ``[d_head]`` (the same added to every head).
:meth:`Steering.from_prompts` builds it as a difference of means of cached activations between
two sets of prompts, per head at per-head points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError

if TYPE_CHECKING:
    from .bridge import Bridge


@dataclass(frozen=True)
class Steering:
    """``vector`` (``[d]``, or ``[n_heads, d_head]`` at a per-head point; float32, CPU; moved to
    each activation's device and dtype when added), added ``scale`` times at ``name``."""

    name: str
    vector: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.vector, torch.Tensor) or self.vector.ndim not in (1, 2):
            v = self.vector
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise InputError(f"Steering vector: expected a tensor [d] (or [n_heads, d_head] at a per-head "
                             f"point), got {got}.")
        if not bool(torch.isfinite(self.vector).all()):
            raise InputError("Steering vector has NaN or infinite entries; build it from finite activations.")
        if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool):
            raise InputError(f"Steering scale: expected a number, got {self.scale!r}.")

    @classmethod
    def from_vector(cls, bridge: Bridge, name: str, vector: torch.Tensor, scale: float = 1.0) -> Steering:
        """Steer ``name`` by ``vector``: ``[d]``, the point's last dimension, or at a per-head
        point ``[n_heads, d_head]``, one direction per head."""
        trailing = _trailing_sizes(bridge, name)  # the sizes after (batch, pos)
        vector = torch.as_tensor(vector).detach().float().cpu()
        per_head = len(trailing) == 2 and tuple(vector.shape) == trailing
        if not per_head:
            vector = vector.reshape(-1)
            size = trailing[-1]
            if size is not None and vector.numel() != size:
                shapes = f"[{size}]" + (f" or {list(trailing)}" if len(trailing) == 2 else "")
                raise InputError(f"Steering {name!r}: its activations end in a dimension of {size}, but the "
                                 f"vector has {vector.numel()} entries. Build a vector of shape {shapes}.")
        return cls(name, vector, float(scale))

    @classmethod
    def from_prompts(cls, bridge: Bridge, name: str, positive: Sequence[str], negative: Sequence[str], *,
                     position: int | str = -1, scale: float = 1.0) -> Steering:
        """The mean activation at ``name`` over ``positive`` prompts minus that over ``negative``
        ones: at ``position`` (an index into each prompt's own tokens; -1, the last, by default)
        or averaged over each prompt's positions (``position="mean"``). At a per-head point the
        vector is ``[n_heads, d_head]``: each head gets its own difference."""
        means = [_mean_activation(bridge, name, prompts, position, which)
                 for prompts, which in ((positive, "positive"), (negative, "negative"))]
        return cls.from_vector(bridge, name, means[0] - means[1], scale)

    def scaled(self, scale: float) -> Steering:
        """The same direction with another ``scale``."""
        return Steering(self.name, self.vector, float(scale))

    @property
    def hook(self) -> tuple[str, Any]:
        """``(name, fn)`` for ``fwd_hooks``: ``fn`` returns ``act + scale * vector``."""
        vector, scale = self.vector, self.scale

        def steer(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return act + scale * vector.to(device=act.device, dtype=act.dtype)
        return self.name, steer


def _trailing_sizes(bridge: Bridge, name: str) -> tuple[int | None, ...]:
    """The sizes of ``name``'s activation after ``(batch, pos)``, e.g. ``(n_heads, d_head)``."""
    info = bridge.hook_info(name)  # an unknown name raises, listing close ones
    return tuple(info.sizes[2:])


def _mean_activation(bridge: Bridge, name: str, prompts: Sequence[str], position: int | str,
                     which: str) -> torch.Tensor:
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise InputError(f"Steering.from_prompts: {which} must be a non-empty list of non-empty strings; "
                         f"got {prompts!r}.")
    if position != "mean" and (isinstance(position, bool) or not isinstance(position, int)):
        raise InputError(f"Steering.from_prompts: position must be an int or 'mean'; got {position!r}.")
    rows = []
    for prompt in prompts:  # one at a time: no padding to account for
        _, cache = bridge.run_with_cache(prompt, names_filter=[name])
        act = cache[name][0].float()  # [pos, ..., d]
        n = act.shape[0]
        if position == "mean":
            rows.append(act.mean(0))
        elif -n <= position < n:
            rows.append(act[position])
        else:
            raise InputError(f"Steering.from_prompts: position {position} is outside {prompt!r} "
                             f"({n} tokens); use an index in [-{n}, {n - 1}] or 'mean'.")
    return torch.stack(rows).mean(0).cpu()  # [d], or [n_heads, d_head] at a per-head point
