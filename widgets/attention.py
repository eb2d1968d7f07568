"""The attention panel: every head of a layer as small multiples, a large view of the chosen heads,
and a token strip that shows where a query looks (or who looks at a key) on hover.

It draws :func:`workbench.attention_patterns` of the ``prompt``, one layer at a time, and
:func:`workbench.head_scores` (previous-token, induction, duplicate-token and first-token scores
of the model, measured once per panel on random repeated tokens) under each thumbnail.

Data travels lazily, as binary buffers (``widgets._transport``), through :meth:`Panel.fetch`:

- ``{"kind": "head", "layer": L, "head": H}`` -> one buffer, float16, the lower triangle of the
  ``[n, n]`` pattern (``n(n+1)/2`` values, row ``q`` holding keys ``0..q``); meta ``n``, ``shape``.
- ``{"kind": "thumbs", "layer": L}`` -> one buffer, uint8 ``[n_heads, m, m]``: each head max-pooled
  (:func:`workbench.patterns.max_pool`) to ``m <= 64`` cells a side, ``round(255 * weight)``;
  meta ``n``, ``size`` (m), ``block`` (positions per cell), ``shape``.
- ``{"kind": "scores"}`` -> one buffer, float32 ``[len(kinds), n_layers, n_heads]``; meta ``kinds``.

The bytes sent for one layer's heads are therefore ``sum(len(b) for h in heads for b in
panel.fetch({"kind": "head", "layer": L, "head": h})[1])``. Token strings travel in the synced
``tokens`` list and are shown as text only.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from traitlets import Int, List, Tuple, Unicode

from workbench import InputError, attention_patterns, head_scores
from workbench.head_scores import KINDS
from workbench.patterns import AttentionPatterns, max_pool

from ._base import Panel, esm, guarded
from ._selection import Selection
from ._transport import lower_triangle, to_bytes

THUMB_SIZE = 64  # thumbnails are at most this many cells a side
KEEP_LAYERS = 4  # computed layers kept per prompt (a 1024-token layer of 32 heads is 128 MiB)


class AttentionPanel(Panel):
    """Attention patterns of ``prompt``: all heads of ``layer`` as thumbnails, a large view of
    ``(layer, head)`` and of each picked pair in ``heads`` (up to 3 views), and a token strip.
    Clicking a thumbnail sets ``head``; clicking a query pins ``position``. ``to_circuitsvis()``
    writes circuitsvis's HTML of the current layer.

    With a shared ``selection`` the selection's layer/head win unless others are passed."""

    _esm = esm("attention.js")
    _title = "attention"
    _linked = ("layer", "head", "heads", "position", "prompt")

    prompt = Unicode("").tag(sync=True)
    layer = Int(0).tag(sync=True)
    head = Int(0).tag(sync=True)
    heads = List(Tuple(Int(), Int())).tag(sync=True)
    position = Int(-1).tag(sync=True)
    tokens = List(Unicode()).tag(sync=True)
    n_layers = Int(0).tag(sync=True)
    n_heads = Int(0).tag(sync=True)
    n_kv_heads = Int(0).tag(sync=True)
    revision = Int(0).tag(sync=True)  # bumped when the data changes (the front end refetches)
    notice = Unicode("").tag(sync=True)  # a lasting message, e.g. where an export was written

    def __init__(self, bridge: Any, prompt: str = "", *, layer: int = 0, head: int = 0,
                 selection: Selection | None = None) -> None:
        self._layers: OrderedDict[int, AttentionPatterns] = OrderedDict()
        self._scores: torch.Tensor | None = None
        cfg = bridge.cfg
        super().__init__(bridge, selection=selection, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                         n_kv_heads=cfg.n_kv_heads)
        if selection is None or (layer, head) != (0, 0):
            self.layer, self.head = layer, head
        if prompt:
            self.prompt = prompt
        self.observe(self._on_prompt, names="prompt")
        self.observe(self._on_view, names=["layer", "head", "heads", "position"])
        self._on_prompt()

    # -- observers --------------------------------------------------------------------------------
    @guarded("computing attention")
    def _on_prompt(self, _change: Any = None) -> None:
        self._layers.clear()
        try:
            if self.prompt:
                self._check_view()
                self.tokens = self._patterns(self.layer).str_tokens
            else:
                self.tokens = []
        except BaseException:  # an interrupt too: no tokens shown over no patterns
            self.tokens = []
            raise
        finally:
            self._update_code()
            self.revision += 1

    @guarded("computing attention")
    def _on_view(self, _change: Any = None) -> None:
        self._update_code()
        self._check_view()
        if self.prompt:
            self._patterns(self.layer)

    # -- checks and data --------------------------------------------------------------------------
    def _check_layer(self, layer: Any) -> int:
        n = self.n_layers
        if not isinstance(layer, int) or not 0 <= layer < n:
            raise InputError(f"Layer {layer!r} does not exist: this model has layers 0..{n - 1}. "
                             "Pick one of those in the layer menu.")
        return layer

    def _check_head(self, head: Any) -> int:
        n = self.n_heads
        if not isinstance(head, int) or not 0 <= head < n:
            raise InputError(f"Head {head!r} does not exist: each layer has query heads 0..{n - 1}. "
                             "Pick one of those (click a thumbnail).")
        return head

    def _check_view(self) -> None:
        self._check_layer(self.layer)
        self._check_head(self.head)
        for pair in self.heads:
            self._check_layer(pair[0])
            self._check_head(pair[1])

    def _patterns(self, layer: int) -> AttentionPatterns:
        """One layer's patterns of the current prompt (computed on first use, a few kept)."""
        if not self.prompt:
            raise InputError("There is no prompt yet; type one in the panel (or set panel.prompt).")
        layer = self._check_layer(layer)
        if layer in self._layers:
            self._layers.move_to_end(layer)
        else:
            self._layers[layer] = attention_patterns(self.bridge, self.prompt, layers=[layer])
            while len(self._layers) > KEEP_LAYERS:
                self._layers.popitem(last=False)
        return self._layers[layer]

    def views(self) -> list[tuple[int, int]]:
        """The heads drawn large: ``(layer, head)`` first, then the picked ``heads`` (at most 3)."""
        out: list[tuple[int, int]] = []
        for pair in [(self.layer, self.head), *self.heads]:
            if tuple(pair) not in out:
                out.append(tuple(pair))
        return out[:3]

    def _update_code(self) -> None:
        layers = sorted({layer for layer, _ in self.views()})
        lines = ["from workbench import attention_patterns",
                 f"patterns = attention_patterns(bridge, {self.prompt!r}, layers={layers})"]
        for layer, head in self.views():
            lines.append(f"patterns.head({layer}, {head})  # [query, key] attention of L{layer}H{head}")
        if 0 <= self.position < len(self.tokens):
            lines.append(f"patterns.head({self.layer}, {self.head})[{self.position}]  # where query "
                         f"{self.position} ({self.tokens[self.position]!r}) attends")
        self.code = "\n".join(lines)

    # -- fetches (the front end asks; benchmarks may call panel.fetch directly) ------------------
    def _fetch_head(self, layer: int, head: int) -> tuple[dict, list[bytes]]:
        pattern = self._patterns(layer).pattern[0, self._check_head(head)]  # [n, n]
        n = pattern.shape[-1]
        return ({"layer": layer, "head": head, "n": n, "dtype": "float16", "shape": [n * (n + 1) // 2]},
                [to_bytes(lower_triangle(pattern), "float16")])

    def _fetch_thumbs(self, layer: int) -> tuple[dict, list[bytes]]:
        pattern = self._patterns(layer).pattern[0]  # [n_heads, n, n]
        pooled, block = max_pool(pattern, THUMB_SIZE)  # [n_heads, m, m]
        m = pooled.shape[-1]
        thumbs = (pooled * 255).round().clamp(0, 255)
        return ({"layer": layer, "n": pattern.shape[-1], "size": m, "block": block, "dtype": "uint8",
                 "shape": [pattern.shape[0], m, m]}, [to_bytes(thumbs, "uint8")])

    def _fetch_scores(self) -> tuple[dict, list[bytes]]:
        if self._scores is None:
            with self.working("computing head scores"):
                n = max(2, min(50, (self.bridge.cfg.n_ctx - 1) // 2))
                scores = head_scores(self.bridge, n=n)
                self._scores = torch.stack([scores[k] for k in KINDS])  # [kinds, layers, heads]
        return ({"kinds": list(KINDS), "dtype": "float32", "shape": list(self._scores.shape)},
                [to_bytes(self._scores, "float32")])

    def _export_requests(self) -> list[dict]:
        """The current layer (thumbnails and every head), the other views' heads, the scores:
        each only where it can be computed (the page shows "no data" for the rest)."""
        out: list[dict] = []
        wanted = [(self.layer, h) for h in range(self.n_heads)]
        wanted += [v for v in self.views() if v not in wanted]
        for layer, head in wanted:
            with contextlib.suppress(Exception):
                self._patterns(layer)
                out.append({"kind": "head", "layer": layer, "head": self._check_head(head)})
        if out and out[0]["layer"] == self.layer:
            out.insert(0, {"kind": "thumbs", "layer": self.layer})
        with contextlib.suppress(Exception):
            self._fetch_scores()
            out.append({"kind": "scores"})
        return out

    # -- circuitsvis export -----------------------------------------------------------------------
    def to_circuitsvis(self, path: str | Path | None = None) -> Path:
        """Write circuitsvis's attention view of the current layer (all heads) to ``path``
        (default ``attention_L{layer}_circuitsvis.html`` in the working directory, i.e. next to
        the notebook) and return the path. The page inlines circuitsvis's own script (no CDN).
        circuitsvis sets each token as HTML, so the tokens are escaped first (:func:`_cv_token`)."""
        try:
            from circuitsvis.attention import attention_patterns as cv_attention
        except ImportError as err:
            raise ImportError("to_circuitsvis needs circuitsvis: pip install circuitsvis") from err
        patterns = self._patterns(self.layer)
        rendered = cv_attention(tokens=[_cv_token(t) for t in patterns.str_tokens],
                                attention=patterns.pattern[0])
        path = Path(path) if path is not None else Path(f"attention_L{self.layer}_circuitsvis.html")
        title = f"attention L{self.layer} (circuitsvis)"
        path.write_text(f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
                        f"</head><body>\n{_inert_props(rendered.local_src)}\n</body></html>\n",
                        encoding="utf-8")
        return path

    @guarded("writing circuitsvis HTML")
    def _action_circuitsvis(self) -> None:
        path = self.to_circuitsvis()
        self.notice = f"wrote {path}"


# shown as "⟨U+202E⟩", as the panels show them (js/common.js tokenText): invisible characters and
# those that change the text's direction
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f"
                        "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]")


def _cv_token(token: str) -> str:
    """A token for circuitsvis, which puts each token into its page as HTML (a button's
    innerHTML): markup escaped, so a token ``<img src=x onerror=...>`` is text there, and
    invisible or direction-changing characters shown as in the panels."""
    visible = _INVISIBLE.sub(lambda m: f"\u27e8U+{ord(m.group()):04X}\u27e9", token)
    return html.escape(visible, quote=False)


def _inert_props(page: str) -> str:
    """circuitsvis puts the tokens as JSON into its ``<script>``; a token like ``</script>`` would
    end the script early. Escape ``<`` inside that JSON (``\\u003c`` is the same string)."""
    start, end = page.rfind("CircuitsVis.render("), page.rfind("</script>")
    if start < 0 or end < start:
        return page
    return page[:start] + page[start:end].replace("<", "\\u003c") + page[end:]
