"""What every panel shares: an error area that keeps errors, a busy indicator, "copy as code",
lazy binary fetches, and export of the current view (PNG from the browser, standalone HTML).

A panel is an ``anywidget.AnyWidget`` whose traits are the source of truth. Its front end is one
ESM module: ``js/common.js`` (shared helpers) followed by the panel's own file, joined here.

Messages between the front end and Python (``content["type"]``):

- ``"fetch"`` (front end -> Python, with an ``id``): ask for data drawn lazily, per layer or
  head. Python answers ``{"type": "data", "id": ..., **meta}`` with binary buffers, or
  ``{"type": "data", "id": ..., "error": "..."}``.
- ``"action"`` (front end -> Python): a button, e.g. ``{"type": "action", "name": "run"}``;
  runs ``self._action_<name>(**args)``.
- ``"png"`` (front end -> Python, one buffer): the current view as PNG, the answer to
  :meth:`Panel.save_png` (the browser also offers it as a download).
- ``"export_html"`` (front end -> Python): Python answers ``{"type": "html", "name": ...}`` with
  the standalone page as one buffer, which the browser downloads.

Errors raised in a callback (a method decorated with :func:`guarded`) never vanish: they land in
the ``error`` trait (shown in the panel
until the user dismisses it) with the traceback in ``error_detail``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import json
import re
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import anywidget
import traitlets
from traitlets import Bool, Unicode

from ._selection import Selection

JS_DIR = Path(__file__).resolve().parent / "js"


_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_lock(bridge: Any) -> threading.RLock:
    """The lock of ``bridge``'s model shared by every panel on it: a patching sweep holds it in
    its background thread (it attaches hooks and swaps blocks for each pass), and any other
    panel's work on the model, on the kernel thread, takes it without waiting or is refused."""
    lock = _MODEL_LOCKS.get(bridge)
    if lock is None:
        lock = _MODEL_LOCKS[bridge] = threading.RLock()
    return lock


def esm(panel_file: str) -> str:
    """One ESM module: the shared helpers, then the panel's own code (which exports render)."""
    return (JS_DIR / "common.js").read_text() + "\n" + (JS_DIR / panel_file).read_text()


def guarded(status: str) -> Callable:
    """Decorate an observer or action: while it runs the panel is busy with ``status``; an
    exception it raises is shown in the panel's error area instead of being lost."""
    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(self: Panel, *args: Any, **kwargs: Any) -> Any:
            self._check_open()  # raised, not shown: a closed panel shows nothing
            try:
                with self.working(status):
                    return fn(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown in the panel, with its traceback
                self.report(exc)
                return None
        return wrapper
    return deco


def _key(request: dict) -> str:
    """The lookup key of a fetch request (id dropped, keys sorted; the same as common.js's)."""
    return json.dumps({k: request[k] for k in sorted(request) if k not in ("id", "type")},
                      separators=(",", ":"))


class Panel(anywidget.AnyWidget):
    """Base class of the panels; not shown on its own.

    Subclasses set ``_esm = esm("<file>.js")``, ``_linked`` (trait names shared through the
    :class:`Selection`), and implement ``_fetch_<kind>(**args) -> (meta, buffers)`` for lazy data
    and ``_action_<name>(**args)`` for buttons."""

    _css = (JS_DIR / "common.css").read_text()
    _linked: ClassVar[tuple[str, ...]] = ()
    _title: ClassVar[str] = "panel"
    _locks_model: ClassVar[bool] = True  # False: the panel coordinates with model_lock itself
    # seconds a panel waits for the model while a background job (a patching sweep, or the
    # patching panel's attribution estimate, usually a second or two) holds it, before refusing
    model_wait_s: ClassVar[float] = 10.0
    _closed = False  # set by close()

    error = Unicode("").tag(sync=True)
    error_detail = Unicode("").tag(sync=True)
    busy = Bool(False).tag(sync=True)
    status = Unicode("").tag(sync=True)
    code = Unicode("").tag(sync=True)

    def __init__(self, bridge: Any, *, selection: Selection | None = None, **kwargs: Any) -> None:
        self._bridge = bridge
        self.selection = selection if selection is not None else Selection()
        self._png_path: Path | None = None
        self.last_png: bytes | None = None
        super().__init__(**kwargs)
        self._links = [traitlets.link((self.selection, name), (self, name)) for name in self._linked]
        self.on_msg(self._on_custom)

    @property
    def bridge(self) -> Any:
        return self._bridge

    def close(self) -> None:
        """Close the view and let go of the shared selection (a closed panel, with what it
        computed, is then freed even while other panels on the same selection live on)."""
        for link in getattr(self, "_links", ()):  # (also from __del__ of a failed __init__)
            link.unlink()
        self._links = []
        super().close()
        self._closed = True

    def _check_open(self) -> None:
        """A ValueError once the panel is closed (its work would reach no view)."""
        if self._closed:
            name = type(self).__name__
            raise ValueError(f"This {name} was closed (panel.close()), so it no longer computes or "
                             f"shows anything; got a call on it anyway. Create a new panel: "
                             f"{name}(bridge, prompt).")

    # -- errors and busy state --------------------------------------------------------------------
    @contextlib.contextmanager
    def working(self, status: str) -> Iterator[None]:
        """``with panel.working("running"): ...``: busy with ``status`` while inside (nested
        uses keep the outer status when they end), holding the model (:func:`model_lock`;
        waiting up to ``model_wait_s`` while a background job holds it, then refused);
        exceptions propagate."""
        lock = model_lock(self._bridge) if self._bridge is not None and self._locks_model else None
        if lock is not None and not lock.acquire(timeout=self.model_wait_s):
            raise RuntimeError(f"The model is busy with a background job, a patching sweep or a "
                               f"generation (still after {self.model_wait_s:g} s); wait for it or cancel "
                               "it in its panel, then try again.")
        outer = self.busy
        self.status = status
        self.busy = True
        try:
            yield
        finally:
            if not outer:
                self.busy = False
                self.status = ""
            if lock is not None:
                lock.release()

    def report(self, exc: BaseException) -> None:
        """Show ``exc`` in the error area (it stays until dismissed in the panel)."""
        self.error_detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.error = f"{type(exc).__name__}: {exc}"

    # -- messages ---------------------------------------------------------------------------------
    def _on_custom(self, _widget: Any, content: dict, buffers: list) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            if kind == "fetch":
                self._answer_fetch(content)
            elif kind == "action":
                name = str(content.get("name", ""))
                method = getattr(self, f"_action_{name}", None)
                if method is None:
                    raise ValueError(f"{type(self).__name__} has no action {name!r}.")
                method(**content.get("args", {}))
            elif kind == "png":
                self._receive_png(bytes(buffers[0]) if buffers else b"")
            elif kind == "export_html":
                name = f"{self._title}.html"
                self.send({"type": "html", "name": name}, [self.to_html().encode()])
            else:
                raise ValueError(f"unknown message from the front end: {content!r}")
        except Exception as exc:  # noqa: BLE001 - a front-end request must never fail silently
            self.report(exc)

    def _answer_fetch(self, request: dict) -> None:
        try:
            meta, buffers = self.fetch(request)
        except Exception as exc:
            self.send({"type": "data", "id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"})
            raise
        self.send({"type": "data", "id": request.get("id"), **meta}, buffers)

    def fetch(self, request: dict) -> tuple[dict, list[bytes]]:
        """Answer a front-end data request ``{"kind": ..., **args}``: ``(meta, buffers)``."""
        self._check_open()
        args = {k: v for k, v in request.items() if k not in ("id", "type", "kind")}
        method = getattr(self, f"_fetch_{request.get('kind')}", None)
        if method is None:
            raise ValueError(f"{type(self).__name__} cannot fetch {request.get('kind')!r}.")
        return method(**args)

    # -- export -----------------------------------------------------------------------------------
    def save_png(self, path: str | Path) -> None:
        """Ask the front end for the current view as PNG and write it to ``path`` when it
        arrives (a displayed panel is needed; the file appears a moment later)."""
        self._png_path = Path(path)
        self.send({"type": "request_png"})

    def _receive_png(self, data: bytes) -> None:
        if not data.startswith(b"\x89PNG"):
            raise ValueError(f"expected PNG bytes from the front end, got {len(data)} bytes "
                             f"starting {data[:8]!r}.")
        self.last_png = data
        if self._png_path is not None:
            self._png_path.write_bytes(data)
            self._png_path = None

    def _export_requests(self) -> list[dict]:
        """The fetches a standalone HTML export answers in advance (the current view's)."""
        return []

    def to_html(self, path: str | Path | None = None) -> str:
        """The current view as one standalone HTML page (no server, no network): the panel's
        own front end with the current state and the data the view needs embedded. Writes it
        to ``path`` when given; returns the page."""
        state, binary = {}, {}
        for name in self.keys:
            if name.startswith("_") or name in ("layout", "tabbable", "tooltip", "busy", "status"):
                continue
            value = getattr(self, name)
            if isinstance(value, (bytes, bytearray, memoryview)):
                binary[name] = base64.b64encode(bytes(value)).decode()
            else:
                state[name] = value
        state["_static"] = True
        state["busy"], state["status"] = False, ""
        fetches = {}
        for request in self._export_requests():
            meta, buffers = self.fetch(request)
            fetches[_key(request)] = {"meta": {"type": "data", **meta},
                                      "buffers": [base64.b64encode(b).decode() for b in buffers]}
        page = (JS_DIR / "standalone.html").read_text()
        for slot, value in (("STATE", state), ("BINARY", binary), ("FETCHES", fetches),
                            ("ESM", self._esm), ("CSS", self._css)):
            page = page.replace(f"/*{slot}*/null", _script_json(value))
        page = page.replace("<!--TITLE-->", html.escape(f"{self._title} (workbench export)"))
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page


def _script_json(value: Any) -> str:
    """JSON safe to place inside ``<script>``: no ``</script>`` or ``<!--`` can close it."""
    text = json.dumps(value, default=_jsonable)
    return re.sub(r"<(/|!)", lambda m: "\\u003c" + m.group(1), text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot embed {type(value).__name__} in an HTML export")
