"""The Workbench: every panel in one layout, sharing one :class:`~widgets.Selection`, so a click
in one panel moves the others (a composition pair opens both heads in the attention panel, a
logit-lens cell picks the layer and position the patching panel highlights, ...).

    Workbench(bridge, prompt="When Mary and John went to the store, John gave a drink to",
              corrupted="When Mary and John went to the store, Mary gave a drink to",
              answer=" Mary", wrong=" John")
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w
from traitlets import link

from ._selection import Selection
from .attention import AttentionPanel
from .composition import CompositionPanel
from .generation import GenerationPanel
from .hook_picker import HookPicker
from .logit_lens import LogitLensPanel
from .patching import PatchingPanel

PANELS = ("hooks", "attention", "logit_lens", "composition", "patching", "generation")
LOGIT_PANELS = ("logit_lens", "patching", "generation")  # left out on encoders, which have no logits


class Workbench(w.VBox):
    """All panels over one bridge and one prompt. ``panels`` picks which (and their order) from
    ``"hooks"``, ``"attention"``, ``"logit_lens"``, ``"composition"``, ``"patching"``,
    ``"generation"``; each is also an attribute (``wb.attention``, ...). ``selection`` is the
    shared state. On an encoder (no logits) the logit lens, patching and generation panels are
    left out."""

    def __init__(self, bridge: Any, prompt: str = "", *, corrupted: str = "", answer: str | None = None,
                 wrong: str | None = None, panels: tuple[str, ...] = PANELS) -> None:
        unknown = [p for p in panels if p not in PANELS]
        if unknown or not panels:
            raise ValueError(f"panels must be a non-empty subset of {PANELS}; got {tuple(panels)!r}.")
        self.bridge = bridge
        self.selection = sel = Selection(prompt=prompt)
        makers = {
            "hooks": lambda: HookPicker(bridge, prompt, selection=sel),
            "attention": lambda: AttentionPanel(bridge, prompt, selection=sel),
            "logit_lens": lambda: LogitLensPanel(bridge, prompt, selection=sel),
            "composition": lambda: CompositionPanel(bridge, prompt, selection=sel),
            "patching": lambda: PatchingPanel(bridge, prompt, corrupted=corrupted, answer=answer,
                                              wrong=wrong, selection=sel),
            "generation": lambda: GenerationPanel(bridge, prompt, selection=sel),
        }
        if getattr(bridge.adapter, "encoder", False):  # no logits: no lens, no patching metric
            panels = tuple(p for p in panels if p not in LOGIT_PANELS)
            if not panels:
                raise ValueError(f"{bridge.cfg.model_type} is an encoder without logits, and the "
                                 f"panels asked for ({', '.join(LOGIT_PANELS)}) all read logits.")
        self.panels = {name: makers[name]() for name in panels}
        for name, panel in self.panels.items():
            setattr(self, name, panel)
        self._prompt = w.Text(value=prompt, description="prompt", continuous_update=False,
                              layout=w.Layout(width="100%"))
        link((self._prompt, "value"), (sel, "prompt"))
        self._where = w.Label()
        sel.observe(self._show_selection, names=["layer", "head", "heads", "position", "tokens", "prompt"])
        sel.observe(self._tokenize, names="prompt")
        self._tokenize()
        header = w.VBox([w.HTML("<b>Workbench</b>"), self._prompt, self._where])
        super().__init__([header, *self.panels.values()])

    def _tokenize(self, _change: Any = None) -> None:
        prompt = self.selection.prompt
        try:
            self.selection.tokens = list(self.bridge.to_str_tokens(prompt)) if prompt else []
        except Exception as exc:  # noqa: BLE001 - the panels show the same error in their areas
            self._where.value = f"cannot tokenize the prompt: {exc}"
            return
        self._show_selection()

    def _show_selection(self, _change: Any = None) -> None:
        s = self.selection
        pos = s.position
        tok = f" {s.tokens[pos]!r}" if 0 <= pos < len(s.tokens) else ""
        heads = ", ".join(f"L{layer}H{head}" for layer, head in s.heads)
        self._where.value = (f"selected: layer {s.layer} · head {s.head}"
                             + (f" · heads {heads}" if heads else "")
                             + (f" · position {pos}{tok}" if pos >= 0 else "")
                             + f" · {len(s.tokens)} tokens")

    def close(self) -> None:
        """Close every panel (a running sweep is cancelled) and the Workbench itself."""
        for panel in getattr(self, "panels", {}).values():  # (also from __del__ of a failed __init__)
            panel.close()
        header = self.children[0] if getattr(self, "children", ()) else None
        for child in (*header.children, header) if header is not None else ():
            child.close()
        super().close()
