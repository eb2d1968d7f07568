"""Notebook panels over the workbench's analyses (JupyterLab, ipywidgets 8 via anywidget).

    from workbench import Bridge
    from widgets import Workbench
    bridge = Bridge.from_pretrained("workbench-demo")
    Workbench(bridge, prompt="When Mary and John went to the store, John gave a drink to")

Each panel is a thin view: traits hold the state, one analysis function from ``workbench``
computes, and one ES module (``widgets/js``, shipped in the package, no CDN) draws. Tensors
travel as typed binary buffers, fetched lazily per layer or head.
"""

from importlib import import_module
from typing import Any

from ._selection import Selection

_PANELS = {"AttentionPanel": "attention", "CompositionPanel": "composition", "GenerationPanel": "generation",
           "HookPicker": "hook_picker", "LogitLensPanel": "logit_lens", "PatchingPanel": "patching",
           "Workbench": "workbench"}

__all__ = ["AttentionPanel", "CompositionPanel", "GenerationPanel", "HookPicker", "LogitLensPanel",
           "PatchingPanel", "Selection", "Workbench"]


def __getattr__(name: str) -> Any:
    """Panels are imported on first use (``import widgets`` stays light)."""
    if name in _PANELS:
        return getattr(import_module(f".{_PANELS[name]}", __name__), name)
    raise AttributeError(f"module 'widgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
