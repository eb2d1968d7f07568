"""The bridge's hook bookkeeping: resolve names and filters to hook points, attach and detach
user functions, and guarantee that temporary functions never outlive their context.

Removal is exact: leaving a ``hooks()`` context removes the functions it added and nothing else
(other hooks on the same point stay), also when the body raised or was interrupted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from .config import BridgeConfig
from .errors import HookNameError
from .hook_points import AttachedHook, HookFn, HookPoint
from .names import parse, unknown_name_error

NameFilter = str | Sequence[str] | Callable[[str], bool] | None
HookSpec = tuple[str | Callable[[str], bool], HookFn]

OPT_IN_SITES = ("hook_result",)  # memory-heavy; only when named or use_attn_result is set


class HookRegistry:
    """All hook points of one bridge, by name, in forward order."""

    def __init__(self, points: dict[str, HookPoint], cfg: BridgeConfig) -> None:
        self.points = points
        self.cfg = cfg
        self.use_attn_result = False

    # -- resolving -----------------------------------------------------------------------
    def point(self, name: str) -> HookPoint:
        """The hook point called ``name``, or an error naming the closest valid names."""
        if not isinstance(name, str):
            raise HookNameError(f"Hook names are strings such as 'blocks.0.hook_resid_pre'; got "
                                f"{type(name).__name__} {name!r}. See bridge.hook_names().")
        p = self.points.get(name)
        if p is None:
            raise unknown_name_error(name, list(self.points), self._why_absent(name))
        return p

    def _why_absent(self, name: str) -> str | None:
        try:
            parsed = parse(name)
        except HookNameError:
            return None
        cfg = self.cfg
        if parsed.layer is not None and parsed.layer >= cfg.n_layers:
            return f"Layer {parsed.layer} is out of range: this model has layers 0..{cfg.n_layers - 1}."
        if parsed.site == "hook_resid_mid" and cfg.parallel_attn_mlp:
            return ("This model runs attention and MLP in parallel (both read hook_resid_pre), so "
                    "there is no residual stream between them.")
        if parsed.site == "hook_pos_embed" and cfg.positional_embedding_type != "standard":
            return (f"This model uses {cfg.positional_embedding_type} position embeddings, which "
                    "rotate queries and keys instead of adding to the residual stream.")
        if parsed.site == "hook_pre_linear" and not cfg.gated_mlp:
            return "This model's MLP is not gated; use mlp.hook_pre."
        return None

    def _default(self, name: str) -> bool:
        return self.use_attn_result or name.rsplit(".", 1)[-1] not in OPT_IN_SITES

    def select(self, names_filter: NameFilter) -> list[HookPoint]:
        """Points chosen by a ``names_filter``: None (all, less opt-in ones), a name, a list of
        names, or a predicate on names. Named points are always honoured."""
        if names_filter is None:
            return [p for n, p in self.points.items() if self._default(n)]
        if isinstance(names_filter, str):
            return [self.point(names_filter)]
        if callable(names_filter):
            return [p for n, p in self.points.items() if self._default(n) and names_filter(n)]
        if isinstance(names_filter, (list, tuple, set, frozenset)):
            chosen = {id(p): p for p in (self.point(n) for n in names_filter)}
            return [p for p in self.points.values() if id(p) in chosen]
        raise TypeError(
            f"names_filter must be None, a hook name, a list of names or a predicate; got "
            f"{type(names_filter).__name__}."
        )

    def resolve(self, name_or_filter) -> list[HookPoint]:
        """Points for a hook spec's first element (a name or a predicate); never empty."""
        if isinstance(name_or_filter, str):
            return [self.point(name_or_filter)]
        if callable(name_or_filter):
            found = self.select(name_or_filter)
            if not found:
                raise HookNameError(
                    "The hook predicate matched no hook point on this model. See "
                    "bridge.hook_names() for the names it is called with."
                )
            return found
        raise HookNameError(
            f"A hook spec names its point with a string or a predicate; got "
            f"{type(name_or_filter).__name__}."
        )

    # -- attaching -----------------------------------------------------------------------
    def add(self, name_or_filter, fn: HookFn, direction: str = "fwd",
            permanent: bool = False) -> list[AttachedHook]:
        if direction not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {direction!r}.")
        if not callable(fn):
            raise TypeError(f"A hook function must be callable; got {type(fn).__name__}.")
        return [p.add(fn, direction, permanent) for p in self.resolve(name_or_filter)]

    def remove(self, entries: Iterable[AttachedHook]) -> None:
        for e in entries:
            self.points[e.name].remove(e)

    def reset(self, including_permanent: bool = False) -> None:
        self.remove([e for e in self.attached() if including_permanent or not e.permanent])

    def attached(self) -> list[AttachedHook]:
        return [e for p in self.points.values() for e in (*p.fwd, *p.bwd)]

    @contextlib.contextmanager
    def temporary(self, fwd_hooks: Sequence[HookSpec] = (),
                  bwd_hooks: Sequence[HookSpec] = ()) -> Iterator[None]:
        """Attach hook specs for the duration of a ``with`` block; always detached after."""
        added: list[AttachedHook] = []
        try:
            for direction, specs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for spec in specs:
                    if not (isinstance(spec, tuple) and len(spec) == 2):
                        raise TypeError(
                            f"Each hook is a (name_or_predicate, fn) pair; got {spec!r}."
                        )
                    added += self.add(spec[0], spec[1], direction)
            yield
        finally:
            self.remove(added)
