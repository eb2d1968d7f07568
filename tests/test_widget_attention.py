"""The attention panel without a browser: binary fetches decode to attention_patterns, the front
end's edits recompute, errors are shown, the selection links panels, long prompts travel as
lower triangles (never JSON number lists), and the exports carry the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from widget_comm import front_end_sends, front_end_sets, number_lists, reply

from widgets._base import _key
from widgets._selection import Selection
from widgets._transport import from_bytes
from widgets.attention import AttentionPanel, _inert_props
from workbench import Bridge, attention_patterns, head_scores
from workbench.head_scores import KINDS
from workbench.patterns import max_pool
from workbench.toy import char_tokenizer, tiny_config, tiny_model

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def tiny():
    return Bridge.from_hf(tiny_model("gpt2", n_layers=2, n_heads=4), char_tokenizer())


@pytest.fixture(scope="module")
def gqa():
    return Bridge.from_hf(tiny_model("llama", n_heads=4, n_kv_heads=2), char_tokenizer())


@pytest.fixture(scope="module")
def long_ctx():
    """A tiny llama whose context holds 1024 tokens."""
    cfg = tiny_config("llama", n_heads=4, n_kv_heads=2)
    cfg.max_position_embeddings = 1024
    torch.manual_seed(0)
    return Bridge.from_hf(AutoModelForCausalLM.from_config(cfg).eval(), char_tokenizer())


def full_from_triangle(meta, buffers):
    n = meta["n"]
    tri = from_bytes(buffers[0], "float16", (n * (n + 1) // 2,)).astype(np.float32)
    full = np.zeros((n, n), np.float32)
    full[np.tril_indices(n)] = tri
    return torch.from_numpy(full)


def test_head_fetch_decodes_to_attention_patterns(comm, tiny):
    p = AttentionPanel(tiny, PROMPT, layer=1, head=2)
    assert p.error == "" and p.tokens == tiny.to_str_tokens(PROMPT)
    expected = attention_patterns(tiny, PROMPT, layers=[1]).pattern[0]  # [heads, n, n]
    n = len(p.tokens)
    for head in range(tiny.cfg.n_heads):
        meta, buffers = reply(p, {"kind": "head", "layer": 1, "head": head})
        assert meta["n"] == n and meta["dtype"] == "float16" and meta["shape"] == [n * (n + 1) // 2]
        assert len(buffers) == 1 and len(buffers[0]) == 2 * n * (n + 1) // 2
        assert torch.allclose(full_from_triangle(meta, buffers), expected[head], atol=1e-3)
    assert not p.busy


def test_thumbnails_are_uint8_max_pooled(comm, tiny):
    p = AttentionPanel(tiny, PROMPT)
    meta, buffers = reply(p, {"kind": "thumbs", "layer": 0})
    n, heads = len(p.tokens), tiny.cfg.n_heads
    assert meta["shape"] == [heads, n, n] and meta["block"] == 1 and meta["dtype"] == "uint8"
    thumbs = from_bytes(buffers[0], "uint8", tuple(meta["shape"]))
    pattern = attention_patterns(tiny, PROMPT, layers=[0]).pattern[0]
    assert np.abs(thumbs.astype(np.float32) / 255 - pattern.numpy()).max() <= 0.5 / 255 + 1e-6
    front_end_sets(p, prompt="x" * 99)  # 100 tokens -> blocks of 2, 50 cells a side
    meta, buffers = reply(p, {"kind": "thumbs", "layer": 1})
    assert meta["shape"] == [heads, 50, 50] and meta["block"] == 2 and meta["n"] == 100
    pooled, _ = max_pool(attention_patterns(tiny, "x" * 99, layers=[1]).pattern[0], 64)
    thumbs = from_bytes(buffers[0], "uint8", (heads, 50, 50))
    assert np.array_equal(thumbs, (pooled * 255).round().numpy().astype(np.uint8))


def test_head_scores_come_once_as_float32(comm, tiny, monkeypatch):
    p = AttentionPanel(tiny, PROMPT)
    meta, buffers = reply(p, {"kind": "scores"})
    assert meta["kinds"] == list(KINDS) and meta["shape"] == [4, 2, 4]
    got = from_bytes(buffers[0], "float32", (4, 2, 4))
    ref = head_scores(tiny, n=50)
    for i, kind in enumerate(KINDS):
        assert np.allclose(got[i], ref[kind].numpy(), atol=1e-6)
    monkeypatch.setattr("widgets.attention.head_scores", lambda *a, **k: pytest.fail("recomputed"))
    assert reply(p, {"kind": "scores"})[1][0] == buffers[0] and not p.busy


def test_front_end_edits_recompute(comm, tiny):
    p = AttentionPanel(tiny, PROMPT)
    revision = p.revision
    assert "attention_patterns(bridge, 'the cat sat on the mat', layers=[0])" in p.code
    front_end_sets(p, layer=1, head=3)
    assert "layers=[1]" in p.code and "patterns.head(1, 3)" in p.code and p.error == ""
    assert list(p._layers) == [0, 1]  # the new layer was computed when it was picked
    front_end_sets(p, prompt="xyz")
    assert p.tokens == ["<bos>", "x", "y", "z"] and "'xyz'" in p.code and p.revision == revision + 1
    assert any(u.get("tokens") == ["<bos>", "x", "y", "z"] for u in p.comm.updates())
    meta, buffers = reply(p, {"kind": "head", "layer": 1, "head": 3})
    assert meta["n"] == 4
    front_end_sets(p, position=2)
    assert "patterns.head(1, 3)[2]  # where query 2 ('y') attends" in p.code
    ns = {"bridge": tiny}
    exec(p.code, ns)  # "copy as code" reproduces the view
    assert torch.equal(ns["patterns"].head(1, 3), attention_patterns(tiny, "xyz", layers=[1]).pattern[0, 3])


def test_bad_prompt_and_layer_show_errors(comm, tiny):
    p = AttentionPanel(tiny, PROMPT)
    front_end_sets(p, prompt="y" * 200)  # longer than the 128-token context
    assert "InputError" in p.error and "context is 128 tokens" in p.error and "Shorten" in p.error
    assert p.tokens == [] and not p.busy
    front_end_sets(p, error="", prompt=PROMPT)
    assert p.error == "" and len(p.tokens) == len(PROMPT) + 1
    front_end_sets(p, layer=9)
    assert "Layer 9 does not exist: this model has layers 0..1" in p.error
    meta, buffers = reply(p, {"kind": "head", "layer": 9, "head": 0})
    assert "Layer 9 does not exist" in meta["error"] and buffers == []
    front_end_sets(p, error="", layer=0, head=7)
    assert "Head 7 does not exist" in p.error and "0..3" in p.error
    front_end_sets(p, error="", head=0, heads=[[1, 5]])
    assert "Head 5 does not exist" in p.error


def test_selection_links_two_panels(comm, tiny):
    sel = Selection()
    a = AttentionPanel(tiny, PROMPT, selection=sel)
    b = AttentionPanel(tiny, selection=sel)
    assert b.prompt == PROMPT and b.tokens == a.tokens  # the prompt is shared too
    front_end_sets(a, layer=1, head=3)  # a thumbnail click in a
    assert (sel.layer, sel.head) == (1, 3) and (b.layer, b.head) == (1, 3)
    front_end_sets(b, heads=[[0, 1], [1, 2]])  # e.g. the composition panel picked a pair
    assert a.heads == [(0, 1), (1, 2)] and a.views() == [(1, 3), (0, 1), (1, 2)]
    assert "layers=[0, 1]" in a.code and "patterns.head(0, 1)" in a.code
    front_end_sets(a, position=4)
    assert b.position == 4 and sel.position == 4
    front_end_sets(b, prompt="abc")
    assert a.tokens == ["<bos>", "a", "b", "c"]
    c = AttentionPanel(tiny, PROMPT, layer=0, head=2, selection=Selection(layer=1, head=1))
    assert (c.layer, c.head) == (0, 2)  # given explicitly, they win over the selection's


def test_grouped_query_model_shows_every_query_head(comm, gqa):
    p = AttentionPanel(gqa, PROMPT, head=3)
    assert (p.n_heads, p.n_kv_heads) == (4, 2)
    meta, _ = reply(p, {"kind": "thumbs", "layer": 0})
    assert meta["shape"][0] == 4
    meta, buffers = reply(p, {"kind": "head", "layer": 0, "head": 3})
    expected = attention_patterns(gqa, PROMPT, layers=[0]).pattern[0, 3]
    assert torch.allclose(full_from_triangle(meta, buffers), expected, atol=1e-3)


def test_long_prompt_travels_as_a_lower_triangle(comm, long_ctx):
    text = "".join("abcdefghij klmnopqrstuvwxyz."[(7 * i) % 28] for i in range(1023))  # + BOS = 1024
    p = AttentionPanel(long_ctx, text)
    assert p.error == "" and len(p.tokens) == 1024
    n = 1024
    total = 0
    for head in range(long_ctx.cfg.n_heads):
        meta, buffers = reply(p, {"kind": "head", "layer": 1, "head": head})
        assert meta["shape"] == [n * (n + 1) // 2] and len(buffers[0]) == n * (n + 1)  # 2 bytes each
        total += len(buffers[0])
    assert total == 4 * n * (n + 1)
    meta, buffers = reply(p, {"kind": "thumbs", "layer": 1})
    assert meta["shape"] == [4, 64, 64] and meta["block"] == 16 and len(buffers[0]) == 4 * 64 * 64
    meta, buffers = reply(p, {"kind": "head", "layer": 1, "head": 0})
    ref = attention_patterns(long_ctx, text, layers=[1]).pattern[0, 0]
    assert torch.allclose(full_from_triangle(meta, buffers), ref, atol=1e-3)
    for update in p.comm.updates():  # state: only the [layer, head] pairs may be numbers
        assert [path for path in number_lists(update) if path != ".heads"] == [], update.keys()
    for content, _ in p.comm.custom():  # fetch answers: numbers travel in buffers, not JSON
        assert number_lists(content) in ([], [".shape"]) and len(content.get("shape", [])) <= 3


def test_to_html_embeds_the_esm_and_the_layer(comm, tiny):
    p = AttentionPanel(tiny, PROMPT, layer=1, head=0)
    front_end_sets(p, heads=[[0, 2]])
    page = p.to_html()
    assert "function attView(" in page and "export default { render }" in page
    for head in range(4):
        assert json.dumps(_key({"kind": "head", "layer": 1, "head": head})) in page
    assert json.dumps(_key({"kind": "head", "layer": 0, "head": 2})) in page  # the picked pair
    assert json.dumps(_key({"kind": "thumbs", "layer": 1})) in page
    assert json.dumps(_key({"kind": "scores"})) in page
    assert '"tokens": ["<bos>", "t", "h", "e"' in page
    assert "http://" not in page and "https://" not in page


def test_to_circuitsvis_writes_the_tokens(comm, tiny, tmp_path, monkeypatch):
    pytest.importorskip("circuitsvis")
    p = AttentionPanel(tiny, PROMPT, layer=1)
    path = p.to_circuitsvis(tmp_path / "cv.html")
    page = path.read_text()
    # circuitsvis sets each token as HTML: markup is escaped (then "<" inside its script made inert)
    assert '"tokens": ["&lt;bos&gt;", "t", "h", "e", " ", "c", "a", "t"' in page
    assert "AttentionPatterns" in page and "unpkg.com" not in page  # circuitsvis's script inlined
    monkeypatch.chdir(tmp_path)
    front_end_sends(p, {"type": "action", "name": "circuitsvis"})
    assert (tmp_path / "attention_L1_circuitsvis.html").exists() and p.error == ""
    assert p.notice == "wrote attention_L1_circuitsvis.html"


def test_inert_props_cannot_close_the_script():
    page = '<div/>\n<script>\nCircuitsVis.render("x", CircuitsVis.A, {"tokens": ["</script>"]})\n</script>'
    safe = _inert_props(page)
    assert safe.count("</script>") == 1 and '"\\u003c/script>"' in safe
