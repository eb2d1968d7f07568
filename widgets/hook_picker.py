"""Hook picker: the model's hook points as a tree (blocks, components, hooks) with search, each
hook's shape and the memory it would take for the current prompt; picking hooks runs the prompt
and caches them.

    picker = HookPicker(bridge, prompt="When Mary and John went to the store")
    picker.hooks = ["blocks.0.attn.hook_pattern"]     # or tick them in the panel
    picker.cache["blocks.0.attn.hook_pattern"]         # [batch, n_heads, q_pos, k_pos]
    bridge.run_with_cache(prompt, names_filter=picker.names_filter)

The picked names are shared through the :class:`~widgets.Selection` (``hooks``), so other panels
and your own code can use them as a ``names_filter``.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Int, List, Unicode

from workbench import memory

from ._base import Panel, esm, guarded


def hook_tree(bridge: Any, seq_len: int) -> list[dict]:
    """Every hook point grouped as the model is: ``[{"name": group, "children": [{"name":
    component, "hooks": [{"name", "shape", "bytes"}]}]}]`` (JSON-able, small). ``shape`` reads
    like ``"batch × pos × n_heads=4 × d_head=32"``; ``bytes`` is for one prompt of ``seq_len``."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for name in bridge.hook_names():
        parts = name.split(".")
        if parts[0] == "blocks":
            group, rest = f"blocks.{parts[1]}", parts[2:]
            component = rest[0] if len(rest) > 1 else "block"
        else:
            group, component = "model", parts[0] if len(parts) > 1 else "embed"
        info = bridge.hook_info(name, seq_len)
        shape = " × ".join(dim if size is None or dim == str(size) else f"{dim}={size}"
                           for dim, size in zip(info.shape, info.sizes, strict=True))
        groups.setdefault(group, {}).setdefault(component, []).append(
            {"name": name, "shape": shape, "bytes": info.nbytes(1, seq_len)})
    return [{"name": g, "children": [{"name": c, "hooks": hooks} for c, hooks in comps.items()]}
            for g, comps in groups.items()]


class HookPicker(Panel):
    """Pick hook points; the picked ones are cached for the prompt (``cache``) and shared as
    ``selection.hooks``. ``auto_run``: re-run whenever the pick or the prompt changes.
    ``memory_budget``: as :meth:`Bridge.run_with_cache`; the default "auto" refuses, with the
    sizes, a cache that would not fit in the memory free now (instead of running out of it)."""

    _esm = esm("hook_picker.js")
    _title = "hook picker"
    _linked = ("prompt", "hooks")

    prompt = Unicode("").tag(sync=True)
    hooks = List(Unicode()).tag(sync=True)
    auto_run = Bool(True).tag(sync=True)
    tree = List(Dict()).tag(sync=True)
    n_tokens = Int(0).tag(sync=True)
    cached = List(Dict()).tag(sync=True)  # [{"name", "shape": [ints], "bytes"}] of the last run
    free_bytes = Int(-1).tag(sync=True)  # memory free where the cache goes (-1: unknown), at the last refresh
    free_where = Unicode("").tag(sync=True)  # which device(s) that is, e.g. "cuda:0"

    def __init__(self, bridge: Any, prompt: str = "", *, hooks: list[str] | None = None,
                 auto_run: bool = True, selection: Any = None,
                 memory_budget: int | str | None = "auto") -> None:
        self.cache = None
        self.memory_budget = memory_budget  # run_with_cache's: "auto" refuses what would not fit
        super().__init__(bridge, selection=selection, auto_run=auto_run)
        if prompt:
            self.prompt = prompt
        if hooks:
            self.hooks = list(hooks)
        self.observe(self._on_prompt, names="prompt")
        self.observe(self._on_hooks, names="hooks")
        self._refresh()

    @property
    def names_filter(self) -> list[str]:
        """The picked hook names, for ``bridge.run_with_cache(..., names_filter=...)``."""
        return list(self.hooks)

    @guarded("reading hook shapes")
    def _refresh(self) -> None:
        self.n_tokens = self.bridge.to_tokens(self.prompt).shape[-1] if self.prompt else 1
        self.tree = hook_tree(self.bridge, self.n_tokens)
        self._update_free()
        self._update_code()
        if self.auto_run and self.hooks and self.prompt:
            self._run()

    def _on_prompt(self, _change: dict) -> None:
        self._refresh()

    @guarded("checking hook names")
    def _on_hooks(self, change: dict) -> None:
        known = set(self.bridge.hook_names())
        unknown = [n for n in change["new"] if n not in known]
        if unknown:
            self.hooks = [n for n in change["new"] if n in known]
            raise ValueError(f"unknown hook names {unknown}; expected names from bridge.hook_names() "
                             f"(e.g. {sorted(known)[:3]}); they were left out of the pick.")
        self._update_code()
        if self.auto_run and self.prompt:
            self._run()

    def _action_run(self) -> None:
        self._run()

    @guarded("running and caching")
    def _run(self) -> None:
        if not self.prompt:
            raise ValueError("no prompt: type one in the panel (or set picker.prompt) before caching.")
        self.cache, self.cached = None, []  # a failed run leaves none (never the old prompt's)
        if not self.hooks:
            return
        _, self.cache = self.bridge.run_with_cache(self.prompt, names_filter=list(self.hooks),
                                                   memory_budget=self.memory_budget)
        self.cached = [{"name": k, "shape": list(v.shape), "bytes": v.numel() * v.element_size()}
                       for k, v in self.cache.items()]
        self._update_free()

    def _update_free(self) -> None:
        """The memory free now where a cache goes (every device of a spread model), for the
        summary line; what ``memory_budget="auto"`` compares the estimate with."""
        devices = self.bridge._cache_devices(None)
        free = memory.available_on(devices)
        self.free_where = ", ".join(map(str, devices))
        self.free_bytes = -1 if free is None else free

    def _update_code(self) -> None:
        self.code = (f"_, cache = bridge.run_with_cache({self.prompt!r},\n"
                     f"                                names_filter={list(self.hooks)!r})")

    def _export_requests(self) -> list[dict]:
        return []
