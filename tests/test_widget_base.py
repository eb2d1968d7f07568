"""The panel base: errors stay visible, busy state, fetch protocol, PNG and HTML export."""

import json
import re

import pytest
import torch
from traitlets import Int, Unicode
from widget_comm import front_end_sends, front_end_sets, reply

from widgets._base import Panel, _key, guarded
from widgets._selection import Selection
from widgets._transport import from_bytes, lower_triangle, to_bytes


class Echo(Panel):
    """A minimal panel: its fetch returns a float16 ramp; setting ``n`` < 0 raises."""

    _esm = "function render({model, el}) { frame(model, el, 'echo'); }\nexport default { render };"
    _title = "echo"
    _linked = ("layer",)
    layer = Int(0).tag(sync=True)
    n = Int(3).tag(sync=True)
    label = Unicode("").tag(sync=True)

    def __init__(self, bridge=None, **kw):
        super().__init__(bridge, **kw)
        self.observe(self._on_n, names="n")

    @guarded("recomputing")
    def _on_n(self, change):
        if change["new"] < 0:
            raise ValueError(f"n must be >= 0, got {change['new']}")
        self.label = f"n={change['new']}"

    def _fetch_ramp(self, n):
        return {"shape": [n], "dtype": "float16"}, [to_bytes(torch.arange(n) / 2)]

    def _action_double(self, by=2):
        self.n *= by

    def _export_requests(self):
        return [{"kind": "ramp", "n": self.n}]


def test_error_in_observer_is_shown_and_stays(comm):
    p = Echo()
    front_end_sets(p, n=-1)
    assert p.error == "ValueError: n must be >= 0, got -1"
    assert "Traceback" in p.error_detail and "_on_n" in p.error_detail
    assert not p.busy and p.status == ""
    front_end_sets(p, n=4)  # a later success does not hide the error: only dismissing does
    assert p.label == "n=4" and p.error.startswith("ValueError")
    front_end_sets(p, error="", error_detail="")
    assert p.error == ""
    assert any(u.get("error", "").startswith("ValueError") for u in p.comm.updates())


def test_busy_while_running(comm):
    p = Echo()
    seen = []
    p.observe(lambda c: seen.append((c["new"], p.status)), names="busy")
    front_end_sets(p, n=5)
    assert seen == [(True, "recomputing"), (False, "recomputing")] and p.status == ""


def test_fetch_answers_with_binary_buffers(comm):
    p = Echo()
    meta, buffers = reply(p, {"kind": "ramp", "n": 4})
    assert meta["shape"] == [4] and meta["type"] == "data"
    assert from_bytes(buffers[0], "float16", (4,)).tolist() == [0, 0.5, 1, 1.5]
    meta, buffers = reply(p, {"kind": "nope"})
    assert "cannot fetch 'nope'" in meta["error"] and buffers == []
    assert "cannot fetch 'nope'" in p.error


def test_actions_and_unknown_messages(comm):
    p = Echo()
    front_end_sends(p, {"type": "action", "name": "double", "args": {"by": 3}})
    assert p.n == 9
    front_end_sends(p, {"type": "action", "name": "explode"})
    assert "has no action 'explode'" in p.error
    front_end_sends(p, {"type": "weird"})
    assert "unknown message" in p.error


def test_png_round_trip(comm, tmp_path):
    p = Echo()
    p.save_png(tmp_path / "view.png")
    assert p.comm.custom()[-1][0] == {"type": "request_png"}
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    front_end_sends(p, {"type": "png"}, [png])
    assert (tmp_path / "view.png").read_bytes() == png and p.last_png == png
    front_end_sends(p, {"type": "png"}, [b"GIF89a"])
    assert "expected PNG bytes" in p.error


def test_html_export_is_standalone_and_escaped(comm, tmp_path):
    p = Echo(label="</script><script>alert(1)</script>")
    page = p.to_html(tmp_path / "echo.html")
    assert (tmp_path / "echo.html").read_text() == page
    assert "</script><script>alert" not in page  # state cannot close the script element
    assert "http://" not in page and "https://" not in page  # no network at view time
    assert json.dumps(_key({"kind": "ramp", "n": 3})) in page and "frame(model, el, 'echo')" in page
    assert len(re.findall(r"/\*(STATE|BINARY|FETCHES|ESM|CSS)\*/null", page)) == 0
    front_end_sends(p, {"type": "export_html"})
    content, buffers = p.comm.custom()[-1]
    assert content == {"type": "html", "name": "echo.html"}
    assert bytes(buffers[0]).startswith(b"<!doctype html>")


def test_linked_traits_follow_the_selection(comm):
    sel = Selection()
    a, b = Echo(selection=sel), Echo(selection=sel)
    front_end_sets(a, layer=2)
    assert sel.layer == 2 and b.layer == 2


def test_transport_helpers():
    x = torch.arange(9.0).reshape(3, 3)
    assert lower_triangle(x).tolist() == [0, 3, 4, 6, 7, 8]
    with pytest.raises(ValueError, match="square"):
        lower_triangle(torch.zeros(2, 3))
    assert len(to_bytes(torch.zeros(5), "uint8")) == 5
    with pytest.raises(ValueError, match="dtype must be"):
        to_bytes(torch.zeros(2), "float64")
