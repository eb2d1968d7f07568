"""The selection that linked panels share: a click in one panel moves the others.

A :class:`Selection` is a plain ``traitlets.HasTraits`` (no front end of its own). Each panel links
the traits it shows (``layer``, ``head``, ``position``, ``heads``, ...) to one selection; the
:class:`~widgets.Workbench` hands the same selection to every panel.
"""

from __future__ import annotations

from traitlets import HasTraits, Int, List, Tuple, Unicode


class Selection(HasTraits):
    """What is selected across panels.

    ``layer``/``head``: the focused head; ``heads``: heads picked together, as ``[layer, head]``
    pairs (a composition click picks a sender and a receiver); ``position``: a token position
    (``-1``: none); ``tokens``: the prompt's token strings; ``hooks``: hook names picked in the
    hook picker (usable as a ``names_filter``)."""

    layer = Int(0)
    head = Int(0)
    heads = List(Tuple(Int(), Int()))
    position = Int(-1)
    tokens = List(Unicode())
    hooks = List(Unicode())
    prompt = Unicode("")

    def __repr__(self) -> str:
        return (f"Selection(layer={self.layer}, head={self.head}, heads={self.heads}, "
                f"position={self.position}, hooks={len(self.hooks)})")
