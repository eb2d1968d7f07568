"""Fault injection across every public entry point that attaches hooks.

A *bomb* is a global PyTorch module hook (forward, or full backward for the entry points that
differentiate) that raises at its k-th call: somewhere inside a run, a cache, a sweep, a cell
patch, while the bridge's own hooks are attached. For each entry point the number of module calls
``N`` is counted first; the bomb then goes off at the first call, at the last, and at three
seeded random calls in between, once raising an exception and once a ``KeyboardInterrupt``.
Sweeps are also cancelled through their progress callback at the same fractions.

After every fault:

- no hook is left on any HF module (its own ``_forward_hooks``, ``_forward_pre_hooks``,
  ``_backward_hooks``, ... dicts, compared key by key with the state before) nor globally, and
  ``bridge.attached_hooks()`` is empty;
- the model's weights are unchanged (a SHA-256 over every parameter and buffer), as are its
  ``requires_grad`` flags, its ``.grad`` fields, ``training`` and the grad mode;
- nothing half-done is presented as complete: the entry point raised (so no result came back),
  or a cancelled sweep came back ``partial`` with NaN exactly where it did not reach and the
  reached cells equal to the full sweep's;
- the same call (on the same stateful object where there is one, e.g. a ``CellPatcher`` whose
  first preparation was interrupted) then gives exactly the result of an undisturbed run.

Panels get the same treatment in ``test_panel_actions_survive_faults``.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import torch
from conftest import hook_state
from torch.nn.modules import module as nn_module

from workbench import (
    Cancelled,
    CellPatcher,
    attention_patterns,
    attribution_sweep,
    direct_logit_attribution,
    head_scores,
    logit_lens,
    patch_cell,
    patch_sweep,
    path_patch,
    path_patch_sweep,
)
from workbench.metrics import logit_diff

# generation: bridge.generate / generate_stream (with hooks, a KV cache, return_cache)

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
PROMPT = "The cat sat on the mat. The cat sat on the"
_RNG = random.Random(9)
FRACTIONS = (0.0, *sorted(_RNG.uniform(0.05, 0.95) for _ in range(3)), 1.0)
FAULTS = {"error": RuntimeError, "interrupt": KeyboardInterrupt}
# a global full backward hook makes PyTorch warn about modules whose outputs are not tensors
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning",
                                        "ignore:For backward hooks:UserWarning")


# -- the entry points ------------------------------------------------------------------------------
def _metric(b):
    return logit_diff(b, " Mary", " John")


def _z_ablation(z, hook):
    z[:, :, 0] = 0
    return z


def _make_entries():
    """name -> (fn(bridge, state) -> tensors, differentiates). ``state`` is a per-test dict where
    a stateful object lives across the faulted call and the recovery call."""

    def patcher(b, state):
        if "patcher" not in state:
            state["patcher"] = CellPatcher(b, CLEAN, CORRUPTED, metric=_metric(b))
        p = state["patcher"]
        return (torch.tensor([p.patch(site="resid_pre", layer=2, position=10).value,
                              p.patch(site="z", layer=3, head=1).value]),)

    def cache_bwd(b, state):
        _, cache = b.run_with_cache(PROMPT, names_filter=lambda n: "resid" in n, incl_bwd=True,
                                    return_type="loss")
        return tuple(cache[k] for k in sorted(cache.keys()))

    def ctx(b, state):
        with b.hooks(fwd_hooks=[("blocks.1.attn.hook_z", _z_ablation)]):
            return (b(PROMPT),)

    def stream(b, state):  # a steered stream, consumed step by step
        steer = ("blocks.2.hook_resid_post", lambda a, hook: a + 0.5)
        return (torch.stack([s.logits for s in b.generate_stream([PROMPT, "The cat"], 4, stop_at_eos=False,
                                                                  fwd_hooks=[steer])]),)

    return {
        "forward": (lambda b, s: (b(PROMPT),), False),
        "generate": (lambda b, s: (b.generate(CLEAN, 5, stop_at_eos=False, fwd_hooks=[
            ("blocks.1.attn.hook_v", _z_ablation)], return_cache=True).cache["resid_post", 3],), False),
        "generate_stream": (stream, False),
        "forward_batch_padded": (lambda b, s: (b([PROMPT, "The cat"]),), False),
        "stop_at_layer": (lambda b, s: (b(PROMPT, stop_at_layer=3),), False),
        "run_with_hooks": (lambda b, s: (b.run_with_hooks(
            PROMPT, fwd_hooks=[("blocks.1.attn.hook_z", _z_ablation),
                               ("blocks.0.hook_resid_post", lambda x, hook: x * 0.5)]),), False),
        "hooks_context": (ctx, False),
        "run_with_cache": (lambda b, s: tuple(
            v for _, v in sorted(b.run_with_cache(PROMPT)[1].items())), False),
        "run_with_cache_bwd": (cache_bwd, True),
        "logit_lens": (lambda b, s: (logit_lens(b, PROMPT, sites="all").top_probs,), False),
        "direct_logit_attribution": (lambda b, s: (
            direct_logit_attribution(b, CLEAN, " Mary", " John").values,), False),
        "attention_patterns": (lambda b, s: (attention_patterns(b, PROMPT).pattern,), False),
        "head_scores": (lambda b, s: tuple(head_scores(b, n=12, batch=2).scores.values()), False),
        "patch_sweep_resid": (lambda b, s: (patch_sweep(
            b, CLEAN, CORRUPTED, site="resid_pre", metric=_metric(b), batch_size=16).values,), False),
        "patch_sweep_heads": (lambda b, s: (patch_sweep(
            b, CLEAN, CORRUPTED, site="z", metric=_metric(b), batch_size=4).values,), False),
        "patch_cell": (lambda b, s: (torch.tensor(patch_cell(
            b, CLEAN, CORRUPTED, site="mlp_out", layer=1, position=10, metric=_metric(b)).value),), False),
        "cell_patcher": (patcher, False),
        "path_patch": (lambda b, s: (torch.tensor(path_patch(
            b, CLEAN, CORRUPTED, senders=[(0, 1)], receivers=[(3, 0)], metric=_metric(b)).value),), False),
        "path_patch_sweep": (lambda b, s: (path_patch_sweep(
            b, CLEAN, CORRUPTED, receivers=None, metric=_metric(b), batch_size=8).values,), False),
        "attribution_sweep": (lambda b, s: (attribution_sweep(
            b, CLEAN, CORRUPTED, site="resid_pre", metric=_metric(b)).values,), True),
    }


ENTRIES = _make_entries()


# -- what must not change --------------------------------------------------------------------------
def model_state(bridge) -> dict:
    """Weights (a digest), flags and modes that an interrupted computation could leave changed."""
    digest = hashlib.sha256()
    for name, t in [*bridge.model.named_parameters(), *bridge.model.named_buffers()]:
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    params = list(bridge.model.parameters())
    return {"weights": digest.hexdigest(), "requires_grad": [p.requires_grad for p in params],
            "grads": [p.grad is None for p in params], "training": bridge.model.training,
            "grad_enabled": torch.is_grad_enabled(), "attn": bridge.model.config._attn_implementation}


def assert_unchanged(bridge, hooks_before: dict, state_before: dict) -> None:
    assert bridge.attached_hooks() == []
    assert hook_state(bridge.model) == hooks_before
    assert model_state(bridge) == state_before
    assert not bridge._state.mid_delta  # no per-run scratch survives the run


def assert_same(got: tuple, want: tuple) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)  # bit for bit


# -- the bombs -------------------------------------------------------------------------------------
class Bomb:
    """Counts module calls (forward, or backward with ``backward=True``) and raises ``exc`` at
    call ``at`` (never when ``at`` is None: counting only)."""

    def __init__(self, at: int | None = None, exc: type[BaseException] = RuntimeError,
                 backward: bool = False) -> None:
        self.at, self.exc, self.calls = at, exc, 0
        register = (nn_module.register_module_full_backward_hook if backward
                    else nn_module.register_module_forward_hook)
        self.handle = register(self)

    def __call__(self, module, *_):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc(f"injected fault at module call {self.at} ({type(module).__name__})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def count_calls(fn, bridge, backward: bool) -> int:
    with Bomb(backward=backward) as counter:
        fn(bridge, {})
    return counter.calls


@pytest.fixture(scope="module")
def references(demo):
    """Each entry point's undisturbed result and its forward/backward module-call counts."""
    torch.manual_seed(0)
    out = {}
    for name, (fn, bwd) in ENTRIES.items():
        result = fn(demo, {})
        n_fwd = count_calls(fn, demo, backward=False)
        n_bwd = count_calls(fn, demo, backward=True) if bwd else 0
        out[name] = (result, n_fwd, n_bwd)
    return out


def _faulted(demo, references, entry: str, fault: str, frac: float, backward: bool) -> None:
    fn, _ = ENTRIES[entry]
    want, n_fwd, n_bwd = references[entry]
    n = n_bwd if backward else n_fwd
    assert n > 0, f"{entry} made no module calls to interrupt"
    at = 1 + round(frac * (n - 1))
    hooks_before, state_before = hook_state(demo.model), model_state(demo)
    state: dict = {}
    with Bomb(at, FAULTS[fault], backward=backward) as bomb:
        with pytest.raises(FAULTS[fault], match="injected fault"):
            fn(demo, state)
    assert bomb.calls >= at
    assert_unchanged(demo, hooks_before, state_before)
    assert_same(fn(demo, state), want)  # the same call (and object) works as if nothing happened
    assert_unchanged(demo, hooks_before, state_before)


@pytest.mark.parametrize("frac", FRACTIONS, ids=lambda f: f"at{f:.3f}")
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("entry", list(ENTRIES))
def test_forward_fault_leaves_nothing_behind(demo, references, entry, fault, frac):
    _faulted(demo, references, entry, fault, frac, backward=False)


BACKWARD = [name for name, (_, bwd) in ENTRIES.items() if bwd]


@pytest.mark.parametrize("frac", FRACTIONS, ids=lambda f: f"at{f:.3f}")
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("entry", BACKWARD)
def test_backward_fault_leaves_nothing_behind(demo, references, entry, fault, frac):
    _faulted(demo, references, entry, fault, frac, backward=True)


# -- cancelled and interrupted sweeps --------------------------------------------------------------
SWEEPS = {
    "patch_sweep": lambda b, progress: patch_sweep(b, CLEAN, CORRUPTED, site="resid_pre", metric=_metric(b),
                                                   batch_size=8, progress=progress),
    "patch_sweep_heads": lambda b, progress: patch_sweep(b, CLEAN, CORRUPTED, site="z", metric=_metric(b),
                                                         batch_size=4, progress=progress),
    "path_patch_sweep": lambda b, progress: path_patch_sweep(b, CLEAN, CORRUPTED, receivers=None,
                                                             metric=_metric(b), batch_size=4,
                                                             progress=progress),
}
STOPS = ("return_false", "raise_cancelled", "interrupt")


@pytest.mark.parametrize("frac", FRACTIONS[1:-1], ids=lambda f: f"at{f:.3f}")
@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("sweep", list(SWEEPS))
def test_cancelled_sweep_is_marked_partial(demo, sweep, stop, frac):
    run = SWEEPS[sweep]
    full = run(demo, None)
    reports: list[int] = []
    run(demo, lambda done, total: reports.append(total) is None)
    total = reports[0]
    at = max(1, round(frac * total))
    hooks_before, state_before = hook_state(demo.model), model_state(demo)

    def progress(done, total):
        if done >= at:
            if stop == "return_false":
                return False
            raise Cancelled("stop") if stop == "raise_cancelled" else KeyboardInterrupt("stop")
        return True

    if stop == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            run(demo, progress)
        assert_unchanged(demo, hooks_before, state_before)
        return
    part = run(demo, progress)
    assert_unchanged(demo, hooks_before, state_before)
    reached = ~part.values.isnan()
    assert part.partial and 0 < part.n_done < total, (part.n_done, total)
    assert torch.equal(part.values[reached], full.values[reached])
    assert int(reached.sum()) < int((~full.values.isnan()).sum())  # something was left undone
    assert not full.partial
