"""The composition panel: how much each attention head's output feeds a later head's queries,
keys or values (Q-, K-, V-composition, Elhage et al. 2021).

A score compares an earlier head's OV circuit with a later head's QK (for Q/K) or OV (for V)
circuit: near 0 when the two act on unrelated subspaces, larger when one reads what the other
writes. The heatmap has sender heads as rows and receiver heads as columns (labels ``L0H1``);
only pairs whose receiver sits in a later layer are defined, the rest are blank. With the random
baseline subtracted, 0 means "what random matrices of these shapes score".

The panel calls :func:`workbench.composition.composition_scores` and draws its
:class:`~workbench.composition.CompositionScores` (kept in ``panel.result``). The
``[heads, heads]`` matrix travels as one float16 buffer, the validity mask as uint8. Clicking a
pair selects both heads in the shared selection (``heads = [sender, receiver]``, ``layer``/``head``
= the receiver). The weights alone decide the scores: ``prompt`` is accepted and linked so that
every panel has the same signature, but unused.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, Int, List, Tuple, Unicode

from workbench.composition import KINDS, CompositionScores, composition_scores

from ._base import Panel, esm, guarded
from ._selection import Selection
from ._transport import to_bytes


class CompositionPanel(Panel):
    """Q/K/V composition scores between every pair of heads (sender rows x receiver columns).

    ``kind``: ``"q"``, ``"k"`` or ``"v"``; ``baseline``: subtract the random-matrix baseline;
    ``threshold``: cells scoring below it are drawn blank (view only). ``panel.result`` holds
    the current :class:`~workbench.composition.CompositionScores`."""

    _esm = esm("composition.js")
    _title = "composition"
    _linked = ("prompt", "layer", "head", "heads")

    prompt = Unicode("").tag(sync=True)
    layer = Int(0).tag(sync=True)
    head = Int(0).tag(sync=True)
    heads = List(Tuple(Int(), Int())).tag(sync=True)
    kind = Unicode("k").tag(sync=True)
    baseline = Bool(False).tag(sync=True)
    threshold = Float(0.0).tag(sync=True)
    version = Int(0).tag(sync=True)  # bumped per new result: the front end fetches it

    def __init__(self, bridge: Any, prompt: str = "", *, kind: str = "k", baseline: bool = False,
                 threshold: float = 0.0, selection: Selection | None = None, **kwargs: Any) -> None:
        self.result: CompositionScores | None = None
        self._memo: dict[tuple[str, bool], CompositionScores] = {}
        kind = kind.lower() if isinstance(kind, str) else kind
        super().__init__(bridge, selection=selection, kind=kind, baseline=baseline, threshold=threshold,
                         **kwargs)
        if prompt:
            self.prompt = prompt
        self.observe(self._recompute, names=["kind", "baseline"])
        self._recompute()

    @guarded("computing composition scores")
    def _recompute(self, _change: dict | None = None) -> None:
        kind = self.kind.lower() if isinstance(self.kind, str) else self.kind
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS} (query, key or value composition), got "
                             f"{self.kind!r}; pick q, k or v.")
        key = (kind, bool(self.baseline))
        if key not in self._memo:  # the scores depend on the weights only: keep each view's
            self._memo[key] = composition_scores(self.bridge, kind, baseline=key[1])
        self.result = self._memo[key]
        self.code = ("from workbench.composition import composition_scores\n"
                     f"scores = composition_scores(bridge, kind={kind!r}"
                     + (", baseline=True)" if key[1] else ")"))
        self.version += 1

    def _fetch_scores(self, version: int | None = None) -> tuple[dict, list[bytes]]:
        """The current result: ``matrix [n, n]`` float16 (sender rows, receiver columns, ``n =
        n_layers * n_heads``) and ``valid [n, n]`` uint8; labels as JSON."""
        res = self.result
        if res is None:
            return {"version": self.version, "empty": True}, []
        n = res.n_layers * res.n_heads
        meta = {"version": self.version, "empty": False, "kind": res.kind, "labels": res.labels,
                "n_layers": res.n_layers, "n_heads": res.n_heads, "baseline": res.baseline,
                "arrays": [{"name": "matrix", "dtype": "float16", "shape": [n, n]},
                           {"name": "valid", "dtype": "uint8", "shape": [n, n]}]}
        return meta, [to_bytes(res.matrix(), "float16"), to_bytes(res.valid.reshape(n, n), "uint8")]

    def _action_select(self, sender: int, receiver: int) -> None:
        """A click on (sender row, receiver column): both heads become the selection's ``heads``,
        the receiver its ``layer``/``head``."""
        res = self.result
        n = 0 if res is None else res.n_layers * res.n_heads
        if not (0 <= sender < n and 0 <= receiver < n):
            raise ValueError(f"select: expected head indices in [0, {n}), got ({sender}, {receiver}).")
        (l1, h1), (l2, h2) = divmod(sender, res.n_heads), divmod(receiver, res.n_heads)
        if l1 >= l2:
            raise ValueError(f"select: L{l1}H{h1} -> L{l2}H{h2} is not a composition pair; the "
                             "receiver must sit in a later layer than the sender.")
        with self.selection.hold_trait_notifications():
            self.heads = [(l1, h1), (l2, h2)]
            self.layer, self.head = l2, h2

    def _export_requests(self) -> list[dict]:
        return [{"kind": "scores", "version": self.version}]
