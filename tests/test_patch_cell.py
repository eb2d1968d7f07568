"""Single-cell patching (CellPatcher / patch_cell) equals the sweep's cell and a plain hooked run;
the cost estimate plans the engine's passes without running the sweep."""

import pytest
import torch
from conftest import no_torch_hooks

import workbench.cell_patch as patch_cell_module
import workbench.patch_engine as engine
from workbench import InputError
from workbench.cell_patch import CellPatch, CellPatcher, patch_cell
from workbench.metrics import kl_to, logit_diff
from workbench.patch_cost import CostEstimate, estimate_cost
from workbench.patching import patch_sweep, prepare_patching

CLEAN = ["Mary&J", "Anna&B"]
CORRUPTED = ["John&J", "Bert&B"]
TOL = dict(atol=1e-5, rtol=0)
SUFFIX = {"resid_pre": "hook_resid_pre", "z": "attn.hook_z", "pattern": "attn.hook_pattern"}
CASES = [("resid_pre", "pos"), ("z", "head"), ("z", "head_pos"), ("pattern", "head")]


@pytest.fixture
def sharp(bridge):
    """Scaled-up weights make every cell's effect large next to the tolerance; the metric is the
    logit difference of the tokens the corruption moves most."""
    with torch.no_grad():
        for p in bridge.model.parameters():
            if p.ndim >= 2:  # (3-D: stacked expert weights)
                p.mul_(4.0)
    diff = (bridge(CLEAN)[:, -1] - bridge(CORRUPTED)[:, -1]).mean(0)
    return bridge, logit_diff(bridge, int(diff.argmax()), int(diff.argmin()))


@torch.no_grad()
def naive_logits(bridge, site, layer, position, head, direction="denoise"):
    """The reference: one full forward with the cell written by a plain hook ``[batch, pos, V]``."""
    clean, corrupted = bridge.to_tokens(CLEAN), bridge.to_tokens(CORRUPTED)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    name = f"blocks.{layer}.{SUFFIX[site]}"
    _, cache = bridge.run_with_cache(source, names_filter=[name])
    pos = slice(None) if position is None else position

    def fn(act, hook):
        act, src = act.clone(), cache[name]
        if site == "resid_pre":
            act[:, pos] = src[:, pos]
        elif site == "pattern":
            act[:, head, pos] = src[:, head, pos]
        else:
            act[:, pos, head] = src[:, pos, head]
        return act
    return bridge.run_with_hooks(base, fwd_hooks=[(name, fn)])


def cells_of(result, site, index):
    """``(kwargs for patch, sweep per_prompt [batch])`` for every cell of a sweep result."""
    n_layers, n_pos = result.values.shape[0], len(result.positions)
    for L in range(n_layers):
        if index == "pos":
            for p in range(n_pos):
                yield dict(site=site, layer=L, position=p), result.per_prompt[L, p]
        for h in range(result.values.shape[-1] if index != "pos" else 0):
            if index == "head":
                yield dict(site=site, layer=L, head=h), result.per_prompt[L, h]
            else:
                for p in range(n_pos):
                    yield dict(site=site, layer=L, position=p, head=h), result.per_prompt[L, p, h]


@pytest.mark.parametrize(("site", "index"), CASES, ids=[f"{s}-{i}" for s, i in CASES])
def test_cell_equals_sweep_and_naive_patch(sharp, site, index):
    bridge, metric = sharp
    sweep = patch_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=metric)
    patcher = CellPatcher(bridge, CLEAN, CORRUPTED, metric=metric)
    checked = 0
    for i, (kw, expected) in enumerate(cells_of(sweep, site, index)):
        if index == "head_pos" and i % 3:
            continue  # a third of the cells keeps the test short
        cell = patcher.patch(**kw)
        torch.testing.assert_close(cell.per_prompt, expected, **TOL)
        assert cell.value == pytest.approx(float(expected.mean()), abs=1e-5)
        if i % 6 == 0:  # a plain hooked forward: same metric, same logits at the read position
            ref = naive_logits(bridge, site, kw["layer"], kw.get("position"), kw.get("head"))
            torch.testing.assert_close(cell.per_prompt, metric(ref), **TOL)
            torch.testing.assert_close(cell.logits, ref[:, -1:], **TOL)
            checked += 1
    assert checked > 0 and sweep.values.std() > 1e-2
    assert (cell.clean_value, cell.corrupted_value) == (sweep.clean_value, sweep.corrupted_value)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)
    assert len(bridge.model.get_submodule(bridge.adapter.blocks)) == bridge.cfg.n_layers


def test_noise_direction_and_read_positions(sharp):
    bridge, metric = sharp
    cell = patch_cell(bridge, CLEAN, CORRUPTED, site="z", layer=-1, position=3, head=1, metric=metric,
                      direction="noise")
    ref = naive_logits(bridge, "z", bridge.cfg.n_layers - 1, 3, 1, direction="noise")
    torch.testing.assert_close(cell.per_prompt, metric(ref), **TOL)
    assert cell.layer == bridge.cfg.n_layers - 1 and cell.direction == "noise"
    # a metric reading two positions: logits at both; a metric reading all: the last one only
    kl = patch_cell(bridge, CLEAN, CORRUPTED, site="resid_pre", layer=1, position=2,
                    metric=kl_to(positions=(3, -1)))
    ref = naive_logits(bridge, "resid_pre", 1, 2, None)
    assert kl.read_positions == (3, 6) and kl.logits.shape == (2, 2, bridge.cfg.d_vocab)
    torch.testing.assert_close(kl.logits, ref[:, [3, 6]], **TOL)
    every = patch_cell(bridge, CLEAN, CORRUPTED, site="resid_pre", layer=1, position=2,
                       metric=lambda logits: logits[:, 2:].sum((1, 2)))
    assert every.read_positions == (6,) and every.logits.shape == (2, 1, bridge.cfg.d_vocab)
    torch.testing.assert_close(every.logits, ref[:, -1:], **TOL)


def test_every_position_at_layer_0_is_the_clean_run(sharp):
    bridge, metric = sharp
    cell = patch_cell(bridge, CLEAN, CORRUPTED, site="resid_pre", layer=0, metric=metric)
    assert cell.position is None and cell.label == "resid_pre L0"
    torch.testing.assert_close(cell.per_prompt, cell.clean_per, **TOL)
    assert cell.normalized == pytest.approx(1.0, abs=1e-5)


def test_rose_and_fell_tokens(sharp):
    bridge, metric = sharp
    for by in ("logprob", "logit"):
        cell = patch_cell(bridge, CLEAN, CORRUPTED, site="resid_pre", layer=1, position=1,
                          metric=metric, k=4, by=by)
        patched = naive_logits(bridge, "resid_pre", 1, 1, None)[0, -1]
        with torch.no_grad():
            base = bridge(CORRUPTED)[0, -1]
        if by == "logprob":
            patched, base = patched.log_softmax(-1), base.log_softmax(-1)
        delta = patched - base
        torch.testing.assert_close(cell.rose.delta, delta.topk(4).values, **TOL)
        torch.testing.assert_close(cell.fell.delta, -(-delta).topk(4).values, **TOL)
        torch.testing.assert_close(cell.rose.base, base[cell.rose.ids], **TOL)
        assert cell.rose.delta[0] > 0 > cell.fell.delta[0]
        assert cell.rose.tokens == tuple(bridge.tokenizer.decode([i]) for i in cell.rose.ids.tolist())
    df = cell.to_dataframe()
    assert list(df.columns) == ["change", "rank", "token_id", "token", "delta", "base", "patched"]
    assert list(df["change"]) == ["rose"] * 4 + ["fell"] * 4 and list(df["rank"][:4]) == [0, 1, 2, 3]
    assert df["delta"][0] == pytest.approx(float(cell.rose.delta[0]))
    assert cell.label == "resid_pre L1 @ 1:M/J" and "resid_pre L1 @ 1:M/J; denoise" in repr(cell)
    assert isinstance(cell, CellPatch)


def test_patcher_prepares_each_site_once(sharp, monkeypatch):
    bridge, metric = sharp
    calls = []
    original = patch_cell_module.prepare_patching

    def counting(*args, **kwargs):
        calls.append(args[3].name)
        return original(*args, **kwargs)
    monkeypatch.setattr(patch_cell_module, "prepare_patching", counting)
    patcher = CellPatcher(bridge, CLEAN, CORRUPTED, metric=metric)
    for L in range(bridge.cfg.n_layers):
        patcher.patch(site="resid_pre", layer=L, position=2)
        patcher.patch(site="z", layer=L, head=0)
    assert calls == ["resid_pre", "z"] and "prepared: resid_pre, z" in repr(patcher)
    entries = bridge.add_hook("blocks.0.hook_mlp_out", lambda act, hook: act * 0.5)
    try:  # the user's hook changes the runs: the site is prepared again, and the hook counts
        hooked = patcher.patch(site="resid_pre", layer=1, position=2)
        ref = naive_logits(bridge, "resid_pre", 1, 2, None)
    finally:
        bridge.remove_hooks(entries)
    assert calls == ["resid_pre", "z", "resid_pre"]
    torch.testing.assert_close(hooked.per_prompt, metric(ref), **TOL)
    prep = prepare_patching(bridge, CLEAN, CORRUPTED, "z", metric)
    again = patch_cell(bridge, None, None, site="z", layer=1, head=2, prepared=prep)
    torch.testing.assert_close(again.per_prompt, patcher.patch(site="z", layer=1, head=2).per_prompt,
                               **TOL)
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


def test_aligned_positions(sharp):
    bridge, metric = sharp
    align = {0: 0, 4: 2, 5: 3, 6: 4}
    sweep = patch_sweep(bridge, ["Mary&J"], ["Jo&J"], site="resid_pre", metric=metric, positions=align)
    patcher = CellPatcher(bridge, ["Mary&J"], ["Jo&J"], metric=metric, positions=align)
    cell = patcher.patch(site="resid_pre", layer=1, position=5)
    torch.testing.assert_close(cell.per_prompt, sweep.per_prompt[1, 2], **TOL)
    with pytest.raises(InputError, match=r"aligned clean positions \[0, 4, 5, 6\]"):
        patcher.patch(site="resid_pre", layer=1, position=2)


def test_bad_input(sharp):
    bridge, metric = sharp
    n, h = bridge.cfg.n_layers, bridge.cfg.n_heads
    patcher = CellPatcher(bridge, CLEAN, CORRUPTED, metric=metric)
    for kw, match in (
            (dict(site="resid", layer=0), "Unknown patching site 'resid'. Valid sites: resid_pre"),
            (dict(site="resid_pre", layer=n), rf"Layer {n} does not exist: this model has layers 0..{n - 1}"),
            (dict(site="resid_pre", layer=1.0), "layer must be an int"),
            (dict(site="resid_pre", layer=0, position=7), r"valid positions are 0..6 \(or -7..-1"),
            (dict(site="resid_pre", layer=0, position=-8), "Position -8 does not exist"),
            (dict(site="resid_pre", layer=0, head=0), "has no heads"),
            (dict(site="z", layer=0), rf"patched per head: pass head=0..{h - 1}"),
            (dict(site="z", layer=0, head=h), rf"Head {h} does not exist at site 'z': valid heads are 0"),
            (dict(site="z", layer=0, head=0, position="3"), "position must be an int")):
        with pytest.raises(InputError, match=match):
            patcher.patch(**kw)
    for kw, match in ((dict(direction="up"), "direction"), (dict(k=0), "k must be at least 1"),
                      (dict(by="prob"), "by must be 'logprob' or 'logit'")):
        with pytest.raises(InputError, match=match):
            CellPatcher(bridge, CLEAN, CORRUPTED, metric=metric, **kw)
    with pytest.raises(InputError, match="different lengths"):
        patch_cell(bridge, "Mary&J", "Jo&J", site="resid_pre", layer=0, metric=metric)
    with pytest.raises(InputError, match="needs a metric"):
        patch_cell(bridge, CLEAN, CORRUPTED, site="resid_pre", layer=0)
    prep = prepare_patching(bridge, CLEAN, CORRUPTED, "z", metric)
    with pytest.raises(InputError, match="made for site 'z'"):
        patch_cell(bridge, None, None, site="resid_pre", layer=0, prepared=prep)
    with pytest.raises(InputError, match="direction 'denoise'"):
        patch_cell(bridge, None, None, site="z", layer=0, head=0, prepared=prep, direction="noise")
    assert bridge.attached_hooks() == [] and no_torch_hooks(bridge.model)


# -- cost estimate -------------------------------------------------------------------------------
def test_estimate_plans_the_engine_passes(sharp, monkeypatch):
    bridge, metric = sharp
    runs = []
    monkeypatch.setattr(engine, "run_chunk", lambda *a: runs.append(1))
    estimates = {}
    plans = [("resid_pre", "pos", None), ("resid_pre", "pos", 1), ("resid_pre", "pos", 5),
             ("z", "head", None), ("z", "head", 3), ("z", "head_pos", None), ("z", "head_pos", 7),
             ("z", "head_pos", 1000), ("pattern", "head", 2), ("k", "head_pos", None),
             ("k", "head_pos", 10)]
    for site, index, size in plans:
        estimates[site, index, size] = estimate_cost(bridge, CLEAN, CORRUPTED, site=site, index=index,
                                                     batch_size=size)
    assert runs == []  # no patched pass ran
    monkeypatch.undo()
    for (site, index, size), est in estimates.items():
        r = patch_sweep(bridge, CLEAN, CORRUPTED, site=site, index=index, metric=metric, batch_size=size,
                        skip_unchanged=False)  # the estimate cannot know which cells change nothing
        assert est.n_forward == r.n_forward and est.n_cells == r.values.numel(), (site, index, size)
        assert est.site == site and est.index == index and isinstance(est, CostEstimate)
        assert 0 < est.work <= est.work_unskipped and est.seconds > 0 and est.peak_bytes > 0
    one = estimates["resid_pre", "pos", 1]
    assert one.batch_size == 1 and one.rows_per_pass == 2 and one.work < one.work_unskipped
    assert one.summary() == str(one)
    assert str(one).startswith(f"{bridge.cfg.n_layers * 7} cells in {bridge.cfg.n_layers * 7} passes, ~")
    peaks = [estimate_cost(bridge, CLEAN, site="z", index="head_pos", batch_size=s).peak_bytes
             for s in (1, 2, 4, 8, 16, 32)]
    assert peaks == sorted(peaks) and peaks[-1] > peaks[0]
    sub = estimate_cost(bridge, CLEAN, site="z", layers=[0], heads=[1, 2], metric_positions=None)
    assert sub.n_cells == 2


def test_estimate_bad_input(sharp):
    bridge, _ = sharp
    n = bridge.cfg.n_layers
    for kw, match in ((dict(site="mlp"), "Unknown patching site"),
                      (dict(site="resid_pre", layers=[n]), f"Layer {n} does not exist"),
                      (dict(site="z", heads=[99]), "Head 99 does not exist"),
                      (dict(site="z", index="pos"), "index 'pos' is not valid"),
                      (dict(site="resid_pre", batch_size=0), "batch_size"),
                      (dict(site="resid_pre", metric_positions=(7,)), r"metric_positions \[7\]"),
                      (dict(site="resid_pre", metric_positions=()), "at least one position")):
        with pytest.raises(InputError, match=match):
            estimate_cost(bridge, CLEAN, CORRUPTED, **kw)
    with pytest.raises(InputError, match="different lengths"):
        estimate_cost(bridge, "Mary&J", "Jo&J", site="resid_pre")
    with pytest.raises(InputError, match="padding"):
        estimate_cost(bridge, ["Mary&J", "Jo"], site="resid_pre")


def test_demo_model_click(demo):
    """The demo model: a click on the name position moves the answer's logit difference."""
    clean = "When Nora and Felix went to the garden, Felix gave a drink to"
    corrupted = "When Nora and Felix went to the garden, Nora gave a drink to"
    patcher = CellPatcher(demo, clean, corrupted, metric=logit_diff(demo, " Nora", " Felix"), k=5)
    cell = patcher.patch(site="resid_pre", layer=0, position=10)
    assert cell.corrupted_value < 0 < cell.clean_value
    assert cell.value == pytest.approx(cell.clean_value, abs=1e-4)  # the only differing token
    assert cell.label == "resid_pre L0 @ 10:␣Felix/␣Nora" and len(cell.rose.tokens) == 5
    assert bool((cell.rose.delta > 0).all()) and bool((cell.fell.delta < 0).all())
