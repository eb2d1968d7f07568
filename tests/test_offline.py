"""No network from the library: with every socket connection and name lookup blocked (and
recorded), loading a local model, every analysis, every panel action and every export work, and
nothing tried to connect. Only ``Bridge.from_pretrained`` of a hub name the caller asks for may
reach the network (through transformers), and that is not exercised here."""

from __future__ import annotations

import socket

import pytest
from widget_comm import front_end_sends, front_end_sets, reply

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a name or open a connection is recorded and refused."""
    attempts: list[str] = []

    def refuse(what):
        def blocked(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise OSError(f"network blocked by the test: {what}")
        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    # the library's own code paths, not the hub client's offline switch, are what is tested
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return attempts


def test_blocked_network_sees_no_attempt(no_network):
    with pytest.raises(OSError, match="network blocked"):  # the block itself works
        socket.create_connection(("example.org", 80))
    assert no_network == ["create_connection(('example.org', 80),)"]


def test_every_panel_and_analysis_without_network(no_network, comm, tmp_path):
    from widgets import Workbench
    from workbench import (
        Bridge,
        attribution_sweep,
        composition_scores,
        direct_logit_attribution,
        head_scores,
        logit_lens,
        patch_sweep,
    )
    from workbench.metrics import logit_diff

    demo = Bridge.from_pretrained("workbench-demo")
    folder = tmp_path / "saved"
    demo.model.save_pretrained(folder)
    demo.tokenizer.save_pretrained(folder)
    bridge = Bridge.from_pretrained(str(folder))  # a local folder: the hub is never asked
    metric = logit_diff(bridge, " Mary", " John")
    bridge.run_with_cache(CLEAN)
    logit_lens(bridge, CLEAN, sites="all", target=" Mary")
    direct_logit_attribution(bridge, CLEAN, " Mary", " John")
    head_scores(bridge, n=10, batch=2)
    composition_scores(bridge, "k", baseline=True, n_baseline=4)
    patch_sweep(bridge, CLEAN, CORRUPTED, site="z", metric=metric)
    attribution_sweep(bridge, CLEAN, CORRUPTED, site="resid_pre", metric=metric)

    wb = Workbench(bridge, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John")
    wb.patching.wait(timeout=120)
    front_end_sets(wb.hooks, hooks=["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"])
    front_end_sets(wb.attention, layer=2, head=1)
    reply(wb.attention, {"kind": "head", "layer": 2, "head": 1})
    reply(wb.attention, {"kind": "scores"})
    front_end_sets(wb.logit_lens, sites=["resid_pre", "resid_post"], target=" Mary")
    front_end_sends(wb.logit_lens, {"type": "action", "name": "select", "args": {"row": 1, "col": 3}})
    front_end_sets(wb.composition, kind="v")
    front_end_sends(wb.patching, {"type": "action", "name": "click", "args": {"row": 1, "col": 10}})
    front_end_sends(wb.patching, {"type": "action", "name": "run", "args": {}})
    wb.patching.wait(timeout=120)
    front_end_sets(wb.patching, attribution=True)
    wb.patching.wait(timeout=120)
    front_end_sets(wb.generation, max_new_tokens=4, steer_layer=2, steer_positive="Mary",
                   steer_negative="John", steer_scale=1.0)
    front_end_sends(wb.generation, {"type": "action", "name": "generate", "args": {}})
    wb.generation.wait(timeout=120)
    front_end_sets(wb.generation, picked=0)
    reply(wb.generation, {"kind": "step_attention", "index": 0, "layer": 1})
    for name, panel in wb.panels.items():
        panel.to_html(tmp_path / f"{name}.html")
        front_end_sends(panel, {"type": "export_html"})
    pytest.importorskip("circuitsvis")
    wb.attention.to_circuitsvis(tmp_path / "cv.html")
    assert [p.error for p in wb.panels.values()] == [""] * len(wb.panels)
    assert not wb.patching.result.partial and wb.patching.attribution_result is not None
    assert wb.generation.step_view["index"] == 0 and len(wb.generation.generated) >= 1
    assert wb.hooks.cache is not None and wb.patching.cell["label"].startswith("resid_pre L1 @ 10")
    assert no_network == [], f"the library tried the network: {no_network}"
    wb.close()
