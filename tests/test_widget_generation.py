"""The generation panel without a browser: streamed tokens equal ``bridge.generate``, steering
from the panel equals a :class:`~workbench.Steering` hook, a click on a token shows the logit lens
and attention of the step that chose it (equal to the analyses on that prefix), cancel stops."""

import threading

import torch
from widget_comm import front_end_sends, front_end_sets, reply

from widgets._transport import from_bytes
from widgets.generation import GenerationPanel
from workbench import Steering, attention_patterns, logit_lens

PROMPT = "When Anna and Peter went to the park, Peter gave a book to"
POSITIVE = ("When Mary and John went to the store, John gave a drink to | "
            "Then Mary and John walked home, and John gave a gift to")
NEGATIVE = ("When John and Mary went to the store, Mary gave a drink to | "
            "Then John and Mary walked home, and Mary gave a gift to")


def action(panel, name, **args):
    front_end_sends(panel, {"type": "action", "name": name, "args": args})


def generate(panel):
    action(panel, "generate")
    return panel.wait(timeout=60)


def test_streamed_tokens_equal_generate(demo, comm):
    p = GenerationPanel(demo, PROMPT, max_new_tokens=6)
    busy = []
    p.observe(lambda c: busy.append((c["new"], p.running)), names="busy")
    out = generate(p)
    assert busy[-2:] == [(True, True), (False, False)]  # busy for the whole run, not only its start
    ref = demo.generate(PROMPT, 6)
    assert out == demo.to_str_tokens(ref.new_tokens[0], prepend_bos=False)
    assert p.prompt_tokens == demo.to_str_tokens(PROMPT) and p.error == ""
    assert p.finish in ("end of text", "length") and not p.running and not p.busy
    grew = [len(u["generated"]) for u in p.comm.updates() if "generated" in u]
    assert grew[-len(out):] == list(range(1, len(out) + 1))  # one token at a time, as they came
    assert torch.equal(p.sequence, ref.tokens)
    assert "bridge.generate(" in p.code


def test_steering_slider_equals_a_steering_hook(demo, comm):
    p = GenerationPanel(demo, PROMPT, max_new_tokens=3)
    front_end_sets(p, steer_layer=4, steer_positive=POSITIVE, steer_negative=NEGATIVE, steer_scale=4.0)
    out = generate(p)
    steer = Steering.from_prompts(demo, "blocks.4.hook_resid_post", [s.strip() for s in POSITIVE.split("|")],
                                  [s.strip() for s in NEGATIVE.split("|")], scale=4.0)
    ref = demo.generate(PROMPT, 3, fwd_hooks=[steer.hook])
    assert "".join(out) == ref.text[0] and out[0] == " Mary"
    assert "Steering.from_prompts(bridge, 'blocks.4.hook_resid_post'" in p.code
    front_end_sets(p, steer_scale=0.0)  # off again: the model's own answer
    assert generate(p)[0] != " Mary"
    front_end_sets(p, steer_scale=2.0, steer_negative=" | ")
    action(p, "generate")
    assert "Steering needs negative prompts" in p.error and not p.running


def test_click_shows_the_step_that_chose_the_token(demo, comm):
    p = GenerationPanel(demo, PROMPT, max_new_tokens=4)
    out = generate(p)
    front_end_sets(p, picked=1, layer=2)
    view = p.step_view
    prefix = p.sequence[:, :p.sequence.shape[1] - len(out) + 1]  # what the step saw
    lens = logit_lens(demo, prefix, sites="resid_post", positions=[prefix.shape[1] - 1], k=5)
    assert view["index"] == 1 and view["token"] == out[1] and view["position"] == prefix.shape[1]
    assert view["keys"] == demo.to_str_tokens(prefix[0]) and view["query"] == view["keys"][-1]
    assert [r["layer"] for r in view["lens"]] == list(range(demo.cfg.n_layers))
    assert [s for s, _ in view["lens"][-1]["top"]] == lens.top_strs[-1][0]
    assert view["lens"][-1]["top"][0][0] == out[1]  # the last layer's top-1 is the token chosen
    meta, buffers = reply(p, {"kind": "step_attention", "index": 1, "layer": 2, "run": view["run"]})
    assert "error" not in meta and meta["shape"] == [demo.cfg.n_heads, prefix.shape[1]]
    row = torch.from_numpy(from_bytes(buffers[0], "float16", tuple(meta["shape"])).astype("float32"))
    want = attention_patterns(demo, prefix, layers=[2]).pattern[0, :, -1, :]
    torch.testing.assert_close(row, want, rtol=1e-3, atol=1e-3)
    meta, _ = reply(p, {"kind": "step_attention", "index": 1, "layer": 2, "run": view["run"] - 1})
    assert "earlier generation" in meta["error"]
    front_end_sets(p, picked=99)
    assert "was not generated" in p.error


def test_cancel_stops_after_the_current_step(demo, comm, monkeypatch):
    p = GenerationPanel(demo, PROMPT, max_new_tokens=40)
    front_end_sets(p, do_sample=True, temperature=2.0)  # no end of text in sight
    first, go = threading.Event(), threading.Event()
    real = p._work

    def slow_work(stream):
        def held():
            for i, step in enumerate(stream):
                yield step
                if i == 1:
                    first.set()
                    go.wait(30)
        real(held())
    monkeypatch.setattr(p, "_work", slow_work)
    action(p, "generate")
    assert first.wait(30) and p.running
    action(p, "cancel")
    go.set()
    out = p.wait(timeout=30)
    assert 2 <= len(out) < 40 and p.finish == "cancelled" and not p.running
    assert demo.attached_hooks() == []


def test_errors_are_shown(demo, comm):
    p = GenerationPanel(demo, "", max_new_tokens=4)
    action(p, "generate")
    assert "no prompt yet" in p.error
    front_end_sets(p, error="", prompt=PROMPT, max_new_tokens=100000)
    action(p, "generate")
    assert "exceed the model's context" in p.error
    front_end_sets(p, error="", max_new_tokens=3, steer_layer=9, steer_scale=1.0)
    action(p, "generate")
    assert "steer_layer 9 does not exist" in p.error


def test_html_export_has_the_step(demo, comm, tmp_path):
    p = GenerationPanel(demo, PROMPT, max_new_tokens=3)
    generate(p)
    front_end_sets(p, picked=0)
    page = p.to_html(tmp_path / "gen.html")
    assert "step_attention" in page and (tmp_path / "gen.html").exists()
