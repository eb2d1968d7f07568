"""Logit lens and composition panels without a browser: the buffers they send equal the analysis
results, front-end changes recompute, errors show in the panel, clicks move the shared selection,
and the HTML export carries the view's data."""

import base64

import numpy as np
import pytest
import torch
from widget_comm import front_end_sends, front_end_sets, number_lists, reply

import widgets.composition as composition_mod
import widgets.logit_lens as lens_mod
from widgets._selection import Selection
from widgets._transport import from_bytes
from widgets.composition import CompositionPanel
from widgets.logit_lens import LogitLensPanel
from workbench import Bridge
from workbench.composition import composition_scores
from workbench.head_scores import induction_scores, previous_token_scores, repeated_random_tokens
from workbench.lens import logit_lens
from workbench.toy import char_tokenizer, tiny_model

PROMPT = "abcab cab"
IOI = "When Mary and John went to the store, John gave a drink to"
F16 = dict(rtol=2e-3, atol=2e-4)  # float16 rounding of values in [0, ~10]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny 3-layer llama bridge for the interaction tests (fast; the families are covered by
    the ``bridge`` fixture in the equality tests)."""
    folder = tmp_path_factory.mktemp("lens_comp_llama")
    tiny_model("llama", n_layers=3).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return Bridge.from_pretrained(str(folder))


def arrays(meta, buffers):
    """Decode a fetch answer's buffers by its ``arrays`` listing."""
    return {a["name"]: from_bytes(b, a["dtype"], tuple(a["shape"]))
            for a, b in zip(meta["arrays"], buffers, strict=True)}


def lens_data(panel):
    meta, buffers = reply(panel, {"kind": "lens", "version": panel.version})
    assert "error" not in meta, meta
    return meta, arrays(meta, buffers)


def comp_data(panel):
    meta, buffers = reply(panel, {"kind": "scores", "version": panel.version})
    assert "error" not in meta, meta
    return meta, arrays(meta, buffers)


def assert_no_number_lists(panel):
    """State updates hold no number lists (``heads``, a selection of two pairs, excepted); fetch
    answers hold none but array shapes."""
    for update in panel.comm.updates():
        for path in number_lists(update):
            assert path == ".heads" and len(update["heads"]) <= 2, (path, update)
    for content, _ in panel.comm.custom():
        assert all(p.endswith(".shape") for p in number_lists(content)), content


# -- logit lens -------------------------------------------------------------------------------------
def test_lens_buffers_equal_the_analysis(bridge, comm):
    sites = ("resid_pre", "resid_mid", "resid_post")
    p = LogitLensPanel(bridge, PROMPT, sites=sites, k=3, target="a")
    assert p.error == "" and p.version > 0
    meta, a = lens_data(p)
    ref = logit_lens(bridge, PROMPT, sites=sites, k=3, target="a")
    assert meta["rows"] == ref.rows and meta["top_strs"] == ref.top_strs
    assert meta["str_tokens"] == ref.str_tokens and meta["target_str"] == "a"
    np.testing.assert_allclose(a["top_probs"].astype(np.float32), ref.top_probs.numpy(), **F16)
    np.testing.assert_allclose(a["entropy"].astype(np.float32), ref.entropy.numpy(), **F16)
    np.testing.assert_allclose(a["target_prob"].astype(np.float32), ref.target_prob.numpy(), **F16)
    assert a["target_rank"].tolist() == ref.target_rank.tolist()
    assert a["row_layers"].tolist() == ref.layers and a["positions"].tolist() == ref.positions
    assert a["top_probs"].dtype == np.float16
    # identity: the last layer's resid_post row is the model's own prediction
    with torch.no_grad():
        logits = bridge(PROMPT)[0]
    assert meta["rows"][-1] == f"{bridge.cfg.n_layers - 1}_post"
    top1 = [cell[0] for cell in meta["top_strs"][-1]]
    assert top1 == bridge.to_str_tokens(logits.argmax(-1), prepend_bos=False)
    np.testing.assert_allclose(a["top_probs"][-1, :, 0].astype(np.float32),
                               logits.softmax(-1).max(-1).values.numpy(), **F16)
    assert_no_number_lists(p)


def test_lens_front_end_changes_recompute(tiny, comm, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return logit_lens(*args, **kwargs)

    monkeypatch.setattr(lens_mod, "logit_lens", spy)
    p = LogitLensPanel(tiny, PROMPT)
    assert calls[-1] == dict(sites=("resid_post",), k=5, target=None)
    assert p.code.endswith(f"logit_lens(bridge, {PROMPT!r}, sites=('resid_post',), k=5)")
    v = p.version
    front_end_sets(p, sites=["resid_pre", "resid_post"])
    assert calls[-1]["sites"] == ("resid_pre", "resid_post") and p.version == v + 1
    assert len(p.result.rows) == 2 * tiny.cfg.n_layers and "sites=('resid_pre', 'resid_post')" in p.code
    front_end_sets(p, target=" ", k=2)
    assert calls[-1]["target"] == " " and calls[-1]["k"] == 2
    assert p.code.endswith("k=2, target=' ')")
    meta, a = lens_data(p)
    assert a["top_probs"].shape == (6, len(PROMPT) + 1, 2) and a["target_prob"].shape == (6, len(PROMPT) + 1)
    assert meta["target_str"] == " "
    front_end_sets(p, prompt="ab")
    assert lens_data(p)[1]["top_probs"].shape[1] == 3 and "'ab'" in p.code
    front_end_sets(p, colour_by="entropy")  # a view setting: no recomputation
    assert len(calls) == 5 and p.error == ""
    assert any("version" in u for u in p.comm.updates()) and any("code" in u for u in p.comm.updates())
    assert_no_number_lists(p)


def test_lens_errors_show_in_the_panel(tiny, comm):
    p = LogitLensPanel(tiny, PROMPT)
    v, code = p.version, p.code
    busy = []
    p.observe(lambda c: busy.append(c["new"]), names="busy")
    front_end_sets(p, target="ab")  # two characters: two tokens of the char tokenizer
    assert p.error.startswith("InputError: target: expected a string that is exactly one token")
    assert "'ab'" in p.error and "Clear the target box" in p.error
    assert p.version == v and p.code == code and busy == [True, False] and not p.busy
    front_end_sets(p, target="", error="")
    front_end_sets(p, sites=["resid_side"])
    assert "sites must be among" in p.error
    front_end_sets(p, sites=["resid_post"], k=0)
    assert "k must be in" in p.error
    front_end_sets(p, colour_by="rainbow")
    assert "colour_by: expected one of" in p.error
    front_end_sends(p, {"type": "action", "name": "select", "args": {"row": 99, "col": 0}})
    assert "expected a cell inside the heatmap" in p.error
    assert any(u.get("error", "").startswith("InputError") for u in p.comm.updates())


def test_lens_click_moves_the_selection(tiny, comm):
    sel = Selection()
    lens = LogitLensPanel(tiny, PROMPT, sites="all", selection=sel)
    other = LogitLensPanel(tiny, selection=sel)  # takes the shared prompt
    assert other.prompt == PROMPT and other.result is not None
    row = lens.result.rows.index("1_mid")
    front_end_sends(lens, {"type": "action", "name": "select", "args": {"row": row, "col": 4}})
    assert (sel.layer, sel.position) == (1, 4) and (other.layer, other.position) == (1, 4)
    assert {"layer": 1} in other.comm.updates() and {"position": 4} in other.comm.updates()
    front_end_sets(other, prompt="xyz")  # a prompt typed in one panel reruns the other
    assert lens.result.str_tokens[1:] == ["x", "y", "z"]


def test_lens_without_prompt_and_html_export(tiny, comm, tmp_path):
    p = LogitLensPanel(tiny)
    assert p.result is None and p.code == "" and p.error == ""
    assert reply(p, {"kind": "lens", "version": p.version})[0]["empty"] is True
    front_end_sets(p, prompt=PROMPT, target="c")
    page = p.to_html(tmp_path / "lens.html")
    _, buffers = reply(p, {"kind": "lens", "version": p.version})
    assert all(base64.b64encode(bytes(b)).decode() in page for b in buffers)
    assert '\\"kind\\":\\"lens\\"' in page or '"kind":"lens"' in page
    assert "http://" not in page and "https://" not in page and "heatmap(" in page


def test_lens_demo_model(demo, comm):
    p = LogitLensPanel(demo, IOI, sites="all", target=" Mary")
    meta, a = lens_data(p)
    assert meta["top_strs"][-1][-1][0] == " Mary"  # the IOI answer, at the last layer
    assert a["target_prob"][-1, -1] > 0.9 and a["target_prob"][0, -1] < 0.01
    scope = {"bridge": demo}
    exec(p.code, scope)  # copy as code reproduces the view
    assert torch.equal(scope["lens"].top_probs, p.result.top_probs)


# -- composition ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_composition_buffers_equal_the_analysis(bridge, comm, kind):
    p = CompositionPanel(bridge, kind=kind)
    meta, a = comp_data(p)
    ref = composition_scores(bridge, kind)
    n = bridge.cfg.n_layers * bridge.cfg.n_heads
    assert meta["labels"] == ref.labels and meta["labels"][1] == "L0H1" and meta["kind"] == kind
    assert a["matrix"].dtype == np.float16 and a["matrix"].shape == (n, n)
    np.testing.assert_allclose(a["matrix"].astype(np.float32), ref.matrix().numpy(), equal_nan=True, **F16)
    assert (a["valid"] == ref.valid.reshape(n, n).numpy()).all()
    assert p.code.endswith(f"composition_scores(bridge, kind={kind!r})")
    assert_no_number_lists(p)


def test_composition_front_end_changes_recompute(tiny, comm, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append((args[1:], kwargs))
        return composition_scores(*args, **kwargs)

    monkeypatch.setattr(composition_mod, "composition_scores", spy)
    p = CompositionPanel(tiny, kind="k")
    v = p.version
    front_end_sets(p, kind="v")
    assert calls[-1] == (("v",), {"baseline": False}) and p.version == v + 1
    assert p.code.endswith("composition_scores(bridge, kind='v')")
    front_end_sets(p, baseline=True)
    assert calls[-1] == (("v",), {"baseline": True}) and p.code.endswith("kind='v', baseline=True)")
    meta, a = comp_data(p)
    ref = composition_scores(tiny, "v", baseline=True)
    assert meta["baseline"] == pytest.approx(ref.baseline)
    np.testing.assert_allclose(a["matrix"].astype(np.float32), ref.matrix().numpy(), **F16)
    front_end_sets(p, threshold=0.05)  # a view setting: no recomputation
    n_calls = len(calls)
    front_end_sets(p, kind="k", baseline=False)  # seen before: no recomputation either
    assert len(calls) == n_calls and p.code.endswith("kind='k')")
    front_end_sets(p, kind="x")
    assert "kind: expected one of ('q', 'k', 'v')" in p.error and p.code.endswith("kind='k')")
    assert_no_number_lists(p)


def test_composition_click_selects_both_heads(tiny, comm):
    sel = Selection()
    comp = CompositionPanel(tiny, selection=sel)
    lens = LogitLensPanel(tiny, PROMPT, selection=sel)
    other = CompositionPanel(tiny, kind="q", selection=sel)
    H = tiny.cfg.n_heads
    click = {"type": "action", "name": "select", "args": {"sender": 0 * H + 1, "receiver": 2 * H + 3}}
    front_end_sends(comp, click)
    assert sel.heads == [(0, 1), (2, 3)] and (sel.layer, sel.head) == (2, 3)
    assert other.heads == [(0, 1), (2, 3)] and lens.layer == 2
    assert {"heads": [(0, 1), (2, 3)]} in other.comm.updates()
    front_end_sends(comp, {"type": "action", "name": "select", "args": {"sender": 2 * H, "receiver": 1 * H}})
    assert "not a composition pair" in comp.error and sel.heads == [(0, 1), (2, 3)]
    front_end_sends(comp, {"type": "action", "name": "select", "args": {"sender": 0, "receiver": 99}})
    assert "expected head indices in [0, 12)" in comp.error


def test_composition_html_export(tiny, comm, tmp_path):
    p = CompositionPanel(tiny, kind="q", threshold=0.1)
    page = p.to_html(tmp_path / "comp.html")
    _, buffers = reply(p, {"kind": "scores", "version": p.version})
    assert all(base64.b64encode(bytes(b)).decode() in page for b in buffers)
    assert '"threshold": 0.1' in page and "L2H3" in page and "https://" not in page


def test_composition_demo_model(demo, comm):
    """On the demo model the strongest K-composition into the strongest induction head comes
    from a previous-token head (docs/demo_model.md), as the panel shows it, and a click there
    selects that pair."""
    tokens = repeated_random_tokens(demo, n=50, batch=8, seed=0)
    prev, ind = previous_token_scores(demo, tokens).flatten(), induction_scores(demo, tokens).flatten()
    p = CompositionPanel(demo, kind="k")
    meta, a = comp_data(p)
    m = np.where(a["valid"] == 1, a["matrix"].astype(np.float32), -np.inf)
    r = int(ind.argmax())  # the panel's rows and columns are heads in (layer, head) order
    s = int(np.argmax(m[:, r]))
    assert ind[r] > 0.9 and prev[s] > 0.5, (meta["labels"][s], meta["labels"][r])
    H = demo.cfg.n_heads
    front_end_sends(p, {"type": "action", "name": "select", "args": {"sender": s, "receiver": r}})
    assert p.selection.heads == [divmod(s, H), divmod(r, H)] and p.error == ""
    scope = {"bridge": demo}
    exec(p.code, scope)
    assert torch.equal(scope["scores"].scores, p.result.scores)
