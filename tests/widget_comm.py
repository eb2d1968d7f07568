"""Widget tests without a browser: a comm that records what Python sends to the front end, and
helpers that play the front end (``set_state`` as the browser would, custom messages).

Use the ``comm`` fixture of ``tests/conftest.py``: every widget created while it is active gets
a :class:`RecordingComm`; ``panel.comm.messages`` then lists what went to the browser.
"""

from __future__ import annotations

import threading
from typing import Any

from comm.base_comm import BaseComm


class RecordingComm(BaseComm):
    """Records every message (``(msg_type, data, buffers)``) instead of sending it."""

    def __init__(self, **kwargs: Any) -> None:
        self.messages: list[tuple[str, dict, list]] = []
        super().__init__(**kwargs)

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None, buffers: Any = None,
                    **keys: Any) -> None:
        self.messages.append((msg_type, data or {}, list(buffers or [])))

    # -- what the tests read ------------------------------------------------------------------
    def custom(self) -> list[tuple[dict, list]]:
        """Custom messages sent by ``widget.send(content, buffers)``: ``[(content, buffers)]``."""
        return [(d["content"], b) for t, d, b in self.messages
                if t == "comm_msg" and d.get("method") == "custom"]

    def updates(self) -> list[dict]:
        """State updates sent to the front end (``{trait: value}``, buffers left out)."""
        return [d["state"] for t, d, _ in self.messages if t == "comm_msg" and d.get("method") == "update"]

    def sent_bytes(self) -> int:
        """Binary bytes sent so far (buffers of every message)."""
        return sum(len(memoryview(b).cast("B")) for _, _, bs in self.messages for b in bs)

    def clear(self) -> None:
        self.messages.clear()


def front_end_sets(widget: Any, **state: Any) -> None:
    """Change traits as the browser does (a comm ``update`` message), not as Python would."""
    widget.set_state(state)


def front_end_sends(widget: Any, content: dict, buffers: list | None = None) -> None:
    """A custom message from the browser (``model.send(content, buffers)`` in the ESM)."""
    widget._handle_custom_msg(content, buffers or [])


def reply(widget: Any, request: dict) -> tuple[dict, list]:
    """Send a fetch request as the browser does and return Python's answer ``(meta, buffers)``."""
    request = {"type": "fetch", "id": f"t{len(widget.comm.messages)}", **request}
    before = len(widget.comm.custom())
    front_end_sends(widget, request)
    answers = [(c, b) for c, b in widget.comm.custom()[before:] if c.get("id") == request["id"]]
    assert len(answers) == 1, f"expected one answer to {request}, got {answers}"
    return answers[0]


def number_lists(value: Any, path: str = "") -> list[str]:
    """Paths of lists holding numbers anywhere inside ``value`` (JSON-like): tensors must travel
    as binary buffers, so a panel's state and answers should have none (beyond small shapes)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in number_lists(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [path]
        return [p for v in value for p in number_lists(v, path + "[]")]
    return []


def hold_first_report(panel):
    """Block the sweep's thread inside its first progress report until ``go`` is set; ``first``
    is set once it got there. The test (the kernel thread) meanwhile plays the front end."""
    first, go = threading.Event(), threading.Event()

    def hold(_change):
        if threading.current_thread() is not threading.main_thread() and not first.is_set():
            first.set()
            assert go.wait(60)
    panel.observe(hold, names="progress")
    return first, go
