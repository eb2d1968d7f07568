"""Panels under faults and abuse (no browser: the front end is played through the recording comm).

- **Faults in panel actions**: the module-call bomb of ``test_fault_injection.py`` goes off inside
  each panel action (caching, a layer or prompt change, the logit lens, a patching click, a sweep
  and the attribution estimate in their background thread), as an exception and as a
  ``KeyboardInterrupt``. Afterwards: no hook is attached anywhere, the weights are unchanged, the
  panel is not left busy, an exception is shown in its error area, no result of the old inputs is
  shown as the new inputs' (a failed prompt change leaves no stale cache, lens or grid), and the
  next action gives what a fresh panel gives.
- **Rapid clicks**: 50 clicks on different patching cells end showing the last click's cell.
- **Inputs changed during a sweep**: a new prompt cancels the running sweep; its result is dropped
  and a sweep on the new prompt runs after it.
- **Memory**: 200 panel updates grow the process's resident memory by less than 5% after a
  garbage collection, and closed panels (and what they computed) are freed.
"""

from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch
from conftest import hook_state
from test_fault_injection import Bomb, model_state
from widget_comm import front_end_sends, front_end_sets, reply

from widgets import (
    AttentionPanel,
    GenerationPanel,
    HookPicker,
    LogitLensPanel,
    PatchingPanel,
    Workbench,
)
from workbench import patch_cell, patch_sweep
from workbench.metrics import logit_diff

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
OTHER = "When Anna and Peter went to the park, Peter gave a book to"
OTHER_CORRUPTED = "When Anna and Peter went to the park, Anna gave a book to"
FAULTS = {"error": RuntimeError, "interrupt": KeyboardInterrupt}
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning",
                                        "ignore:For backward hooks:UserWarning")


def _action(panel, name, **args):
    front_end_sends(panel, {"type": "action", "name": name, "args": args})


def _head(panel, layer, head):
    meta, buffers = reply(panel, {"kind": "head", "layer": layer, "head": head})
    assert "error" not in meta, meta
    return {k: v for k, v in meta.items() if k != "id"}, bytes(buffers[0])


def _grid(panel, which):
    meta = getattr(panel, f"{which}_meta")
    _, buffers = reply(panel, {"kind": "values", "which": which, "version": meta["version"]})
    return bytes(buffers[0])


def _patching(demo):
    return PatchingPanel(demo, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John")


# Each case: make the panel (undisturbed), the action to fault, what the panel shows after the
# action (compared with a fresh panel's), and what must hold after a failed action.
def _picker_act(p):
    front_end_sets(p, prompt=OTHER)


def _attention_layer_act(p):
    front_end_sets(p, layer=3)


def _attention_prompt_act(p):
    front_end_sets(p, prompt=OTHER)


def _lens_act(p):
    front_end_sets(p, prompt=OTHER)


def _click_act(p):
    _action(p, "click", row=2, col=10)


def _sweep_act(p):
    _action(p, "run")
    p.wait(timeout=120)


def _attribution_act(p):
    front_end_sets(p, attribution=True)
    p.wait(timeout=120)


def _generation(demo):
    return GenerationPanel(demo, CLEAN, max_new_tokens=4)


def _generate_act(p):
    _action(p, "generate")
    p.wait(timeout=120)


def _generated(demo):
    p = _generation(demo)
    _generate_act(p)  # before any bomb: the fault goes off while inspecting a token
    return p


def _pick_act(p):
    front_end_sets(p, picked=2)


CASES = {
    "hook_picker_prompt": (lambda b: HookPicker(b, CLEAN, hooks=["blocks.1.hook_resid_post"]), _picker_act,
                           lambda p: (p.prompt, p.cached, {k: v.sum().item() for k, v in p.cache.items()}),
                           lambda p: p.cache is None and p.cached == []),
    "attention_layer": (lambda b: AttentionPanel(b, CLEAN, layer=1), _attention_layer_act,
                        lambda p: (p.layer, p.tokens, _head(p, 3, 2)), None),
    "attention_prompt": (lambda b: AttentionPanel(b, CLEAN, layer=1), _attention_prompt_act,
                         lambda p: (p.tokens, _head(p, 1, 2)), lambda p: p.tokens == []),
    "logit_lens_prompt": (lambda b: LogitLensPanel(b, CLEAN), _lens_act,
                          lambda p: (p.result.str_tokens, p.result.top_probs.sum().item()),
                          lambda p: p.result is None),
    "patching_click": (_patching, _click_act, lambda p: (p.cell["label"], p.cell["value"]), None),
    "patching_sweep": (_patching, _sweep_act,
                       lambda p: (p.exact_meta["n_done"], p.exact_meta["partial"], _grid(p, "exact")),
                       lambda p: p.result is None and p.exact_meta["n_done"] == 0),
    "patching_attribution": (_patching, _attribution_act,
                             lambda p: (p.attribution_meta.get("source"), _grid(p, "attribution")),
                             lambda p: p.attribution_result is None),
    "generation_run": (_generation, _generate_act, lambda p: (p.generated, p.finish),
                       lambda p: p.finish == "error"),
    "generation_pick": (_generated, _pick_act, lambda p: p.step_view["lens"], lambda p: p.step_view == {}),
}


@pytest.fixture(scope="module")
def panel_refs(demo):
    """Each case's view after its action, and the action's module-call count, on fresh panels."""
    import comm as comm_pkg
    from widget_comm import RecordingComm

    old, comm_pkg.create_comm = comm_pkg.create_comm, lambda **kw: RecordingComm(**kw)
    try:
        out = {}
        for name, (make, act, view, _) in CASES.items():
            p = make(demo)
            with Bomb() as counter:
                act(p)
            assert p.error == "", (name, p.error)
            out[name] = (view(p), counter.calls)
            p.close()
        return out
    finally:
        comm_pkg.create_comm = old


@pytest.mark.parametrize("frac", (0.0, 0.5, 1.0), ids=("first", "middle", "last"))
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("case", list(CASES))
def test_panel_actions_survive_faults(demo, comm, panel_refs, case, fault, frac):
    make, act, view, after_failure = CASES[case]
    want, n = panel_refs[case]
    p = make(demo)
    hooks_before, state_before = hook_state(demo.model), model_state(demo)
    at = 1 + round(frac * (n - 1))
    threaded = case in ("patching_sweep", "patching_attribution", "generation_run")
    with Bomb(at, FAULTS[fault]):
        if fault == "interrupt" and not threaded:  # a Ctrl-C reaches the kernel: it propagates
            with pytest.raises(KeyboardInterrupt):
                act(p)
        else:  # an exception (or anything raised in the background thread) is shown in the panel
            act(p)
            assert "injected fault" in p.error and "Traceback" in p.error_detail
    assert not p.busy and not getattr(p, "running", False)
    assert demo.attached_hooks() == [] and hook_state(demo.model) == hooks_before
    assert model_state(demo) == state_before
    if after_failure is not None:
        assert after_failure(p), "a result of the old inputs is still shown after a failed update"
    front_end_sets(p, error="")
    if case.endswith("_prompt"):  # the next user action: another prompt, then back
        front_end_sets(p, prompt=CLEAN)
        assert p.error == ""
        act(p)
    elif case == "attention_layer":
        front_end_sets(p, layer=0)
        act(p)
    elif case == "patching_attribution":  # the box stayed ticked: untick, tick again
        front_end_sets(p, attribution=False)
        act(p)
    elif case == "generation_pick":  # the same token again
        front_end_sets(p, picked=-1)
        act(p)
    else:
        act(p)
    assert p.error == ""
    assert view(p) == want
    p.close()


def test_fifty_rapid_clicks_end_on_the_last(demo, comm):
    """Clicks on 50 different cells, sent without waiting: each click's answer reaches the
    front end in order, and the last state it receives is the last click's."""
    p = _patching(demo)
    cells = [(layer, pos) for pos in range(5, 15) for layer in range(5)]
    assert len(cells) == 50
    p.comm.clear()
    for layer, pos in cells:
        _action(p, "click", row=layer, col=pos)
    assert p.error == ""
    shown = [u["cell"] for u in p.comm.updates() if "cell" in u]
    assert [(c["row"], c["col"]) for c in shown] == cells  # every answer, in click order, none stale
    layer, pos = cells[-1]
    ref = patch_cell(demo, CLEAN, CORRUPTED, site="resid_pre", layer=layer, position=pos,
                     metric=logit_diff(demo, " Mary", " John"))
    assert (p.cell["row"], p.cell["col"]) == (layer, pos) and p.cell["label"] == ref.label
    assert p.cell["value"] == pytest.approx(ref.value, abs=1e-5)
    assert (p.selection.layer, p.selection.position) == (layer, pos)
    p.close()


def test_new_prompt_during_a_sweep_cancels_it_and_the_next_sweep_uses_it(demo, comm):
    from widget_comm import hold_first_report

    p = _patching(demo)
    front_end_sets(p, batch_size=4)
    first, go = hold_first_report(p)
    _action(p, "run")
    assert first.wait(60) and p.running
    front_end_sets(p, prompt=OTHER, corrupted=OTHER_CORRUPTED, answer=" Anna", wrong=" Peter")
    go.set()
    assert p.wait(timeout=120) is None  # the old prompt's sweep: cancelled, its result dropped
    assert p.exact_meta["n_done"] == 0 and p.error == "" and not p.running
    _action(p, "run")
    result = p.wait(timeout=120)
    ref = patch_sweep(demo, OTHER, OTHER_CORRUPTED, site="resid_pre",
                      metric=logit_diff(demo, " Anna", " Peter"))
    assert not result.partial and result.labels == ref.labels
    torch.testing.assert_close(result.values, ref.values, rtol=1e-5, atol=1e-4)  # other batching
    p.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_repeated_updates_and_closed_panels_do_not_grow_memory(demo, comm):
    prompts = [CLEAN, OTHER, "The cat sat on the mat. The cat sat on the", "Alice met Bob. Alice"]

    def update(wb, i):
        step = i % 4
        if step == 0:
            front_end_sets(wb.attention, layer=i % 5, head=i % 4)
        elif step == 1:
            front_end_sets(wb.logit_lens, prompt=prompts[i % len(prompts)])
        elif step == 2:
            _action(wb.patching, "click", row=i % 5, col=1 + i % 13)
        else:
            front_end_sets(wb.hooks, hooks=[f"blocks.{i % 5}.hook_resid_post"])
        wb.patching.comm.clear()  # the recording comm keeps messages; a real comm does not
        for panel in wb.panels.values():
            panel.comm.clear()

    wb = Workbench(demo, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John")
    wb.patching.wait(timeout=120)
    for i in range(40):  # warm up: caches fill to their bounds
        update(wb, i)
    gc.collect()
    before = _rss()
    for i in range(200):
        update(wb, i)
    assert all(p.error == "" for p in wb.panels.values())
    gc.collect()
    grown = _rss() - before
    assert grown < 0.05 * before, f"resident memory grew by {grown / 2**20:.1f} MiB of {before / 2**20:.1f}"

    refs = []
    for prompt in prompts:  # closed panels are freed with what they computed
        other = Workbench(demo, prompt, corrupted=prompt, answer=" the", wrong=" a")
        other.patching.wait(timeout=120)
        refs += [weakref.ref(p) for p in other.panels.values()]
        refs.append(weakref.ref(other.hooks.cache) if other.hooks.cache is not None else None)
        other.close()
        del other
    gc.collect()
    alive = [r() for r in refs if r is not None and r() is not None]
    assert alive == [], f"closed panels still referenced: {[type(a).__name__ for a in alive]}"
    wb.close()
