"""Hook points: named places where a user function can read or replace an activation.

A ``HookPoint`` holds the user's functions for one name. It does not hold a PyTorch hook itself:
it needs one or more *taps* (a forward or pre-forward hook on one HF module, see ``taps.py``).
A tap is attached to its module only while some point that needs it has a function, so a model
with no user hooks runs with no PyTorch hooks at all, and removing the last function removes the
tap (``module._forward_hooks`` is empty again).

Hook functions have the TransformerLens signature ``fn(tensor, hook) -> tensor | None``; ``hook``
is the ``HookPoint`` (``hook.name``, ``hook.layer()``, ``hook.ctx``). Returning a tensor replaces
the activation; it must have the same shape (another dtype or device is converted to the
activation's). Values are not checked here (NaN and inf flow on, as in PyTorch); the analyses
(logit lens, DLA, attention patterns, activation and attribution patching) refuse non-finite
results and name the hooks attached.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import HookShapeError
from .names import parse

HookFn = Callable[..., "torch.Tensor | None"]
_ids = itertools.count()


class Tap:
    """One PyTorch hook on one module, attached while at least one hook point needs it.

    ``kind`` is "pre" (``register_forward_pre_hook``) or "post" (``register_forward_hook``);
    ``fn`` follows PyTorch's ``with_kwargs=True`` signatures. ``first``: run before the module's
    other hooks whenever it was attached (a norm's recomputation, or the per-head split of an
    output projection, must precede a tap reading that module's output).
    """

    __slots__ = ("module", "kind", "fn", "first", "refs", "handle")

    def __init__(self, module: nn.Module, kind: str, fn: Callable, first: bool = False) -> None:
        self.module, self.kind, self.fn, self.first = module, kind, fn, first
        self.refs = 0
        self.handle = None

    def acquire(self) -> None:
        if self.refs == 0:
            register = (self.module.register_forward_pre_hook if self.kind == "pre"
                        else self.module.register_forward_hook)
            self.handle = register(self.fn, with_kwargs=True, prepend=self.first)
        self.refs += 1

    def release(self) -> None:
        self.refs -= 1
        if self.refs == 0 and self.handle is not None:
            self.handle.remove()
            self.handle = None


@dataclass(frozen=True)
class AttachedHook:
    """One user function attached to a hook point (as listed by ``bridge.attached_hooks()``)."""

    name: str
    direction: str  # "fwd" or "bwd"
    fn: HookFn
    permanent: bool
    id: int


class HookPoint:
    """A named activation site. ``fire(tensor)`` runs the attached forward functions in order and
    arranges the backward ones; everything else is bookkeeping."""

    def __init__(self, name: str, taps: tuple[Tap, ...] = ()) -> None:
        self.name = name
        self.taps = taps
        self.fwd: list[AttachedHook] = []
        self.bwd: list[AttachedHook] = []
        self.ctx: dict = {}
        self._layer = parse(name).layer

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, fwd={len(self.fwd)}, bwd={len(self.bwd)})"

    def layer(self) -> int:
        """The block index of this point (TransformerLens's ``hook.layer()``)."""
        if self._layer is None:
            raise ValueError(f"{self.name!r} is a model-level hook point and has no layer.")
        return self._layer

    @property
    def active(self) -> bool:
        """Whether any function is attached (and the taps are therefore live)."""
        return bool(self.fwd or self.bwd)

    def add(self, fn: HookFn, direction: str, permanent: bool) -> AttachedHook:
        entry = AttachedHook(self.name, direction, fn, permanent, next(_ids))
        was_active = self.active
        (self.fwd if direction == "fwd" else self.bwd).append(entry)
        if not was_active:
            for tap in self.taps:
                tap.acquire()
        return entry

    def remove(self, entry: AttachedHook) -> bool:
        """Detach one function; returns False if it was not attached here."""
        entries = self.fwd if entry.direction == "fwd" else self.bwd
        for i, e in enumerate(entries):
            if e.id == entry.id:
                del entries[i]
                if not self.active:
                    for tap in self.taps:
                        tap.release()
                    self.ctx.clear()
                return True
        return False

    def fire(self, tensor: torch.Tensor) -> torch.Tensor:
        """Run the forward functions on ``tensor`` (any shape) and return the (maybe replaced)
        activation; attach the backward functions to it when it takes part in autograd."""
        out = tensor
        for entry in self.fwd:
            try:
                result = entry.fn(out, hook=self)
            except Exception as err:  # name the hook, keep the original exception
                if hasattr(err, "add_note"):
                    err.add_note(f"(raised inside a hook function on {self.name!r})")
                raise
            if result is not None:
                out = self._checked(result, out)
        if self.bwd and out.requires_grad:
            for entry in self.bwd:
                out.register_hook(_BackwardCall(entry.fn, self))
        return out

    def _checked(self, result: object, like: torch.Tensor) -> torch.Tensor:
        if not isinstance(result, torch.Tensor):
            raise HookShapeError(
                f"A hook function on {self.name!r} returned {type(result).__name__}; expected a "
                f"tensor of shape {tuple(like.shape)} or None. Return the (modified) tensor, or "
                "None to leave the activation unchanged."
            )
        if result.shape != like.shape:
            raise HookShapeError(
                f"A hook function on {self.name!r} returned shape {tuple(result.shape)}; expected "
                f"{tuple(like.shape)} (the shape it received). Return a tensor of the same shape."
            )
        if result.is_meta and not like.is_meta:
            raise HookShapeError(
                f"A hook function on {self.name!r} returned a tensor on the meta device, which has no "
                f"values; expected one on {like.device}. Return the (modified) tensor it received."
            )
        if result.dtype != like.dtype or result.device != like.device:
            result = result.to(device=like.device, dtype=like.dtype)
        return result


class _BackwardCall:
    """Calls a backward hook function as ``fn(grad, hook=point)``; a returned tensor replaces the
    gradient."""

    __slots__ = ("fn", "point")

    def __init__(self, fn: HookFn, point: HookPoint) -> None:
        self.fn, self.point = fn, point

    def __call__(self, grad: torch.Tensor) -> torch.Tensor | None:
        result = self.fn(grad, hook=self.point)
        return None if result is None else self.point._checked(result, grad)
