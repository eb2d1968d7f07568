"""A catalogue of bad inputs: each one gets a clear error, and the kernel stays usable after it.

Every row of ``CASES`` provokes one mistake a notebook user makes, through the public API (the
bridge, the cache, the analyses, the metrics) or through a panel played as the browser plays it
(``tests/widget_comm.py``): wrong input types, empty and too-long prompts, token ids outside the
vocabulary, unknown hook names and patching sites, hook functions returning the wrong shape, the
wrong type, values on the meta device or NaN, clean/corrupted prompts of different lengths,
strings that are not one token, bad options (layers, heads, positions, ``k``, budgets, masks,
``return_type``, ``stop_at_layer``, ``names_filter``), bad selections sent from the front end,
and calls on closed panels. For each row the test proves three things:

1. the error has the documented type (the package's ``WorkbenchError`` subclasses, or the
   built-in ``TypeError`` / ``ValueError`` where the API documents one) and, for a panel, it is
   shown in the panel's ``error`` area instead of being raised from the callback;
2. its message says what came and what was expected or how to fix it (each row carries at least
   two regular expressions on the message, e.g. the offending value and the fix);
3. the kernel is still usable afterwards (``kernel_still_usable``, after every row): no hook
   function is attached to any bridge, every HF module holds as many PyTorch hooks as before the
   catalogue, a fixed prompt gives logits equal bit for bit to the ones computed before it,
   autograd is in its default mode, no panel holds the model; and a panel answers the next valid
   input (its ``recover`` step) with no error.

What is *not* an error is pinned down below the catalogue: a hook's NaN flows on through a
plain forward pass (the analyses refuse non-finite results, naming the hooks attached: the
logit lens, DLA, attention patterns, activation and attribution patching), and a hook returning
another dtype is converted to the activation's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import hook_state
from widget_comm import front_end_sends, front_end_sets, reply

from widgets import AttentionPanel, CompositionPanel, HookPicker, LogitLensPanel, PatchingPanel, Workbench
from widgets._base import model_lock
from workbench import (
    Bridge,
    CellPatcher,
    HookNameError,
    HookShapeError,
    InputError,
    TokenizerError,
    attention_patterns,
    attribution_sweep,
    composition_scores,
    direct_logit_attribution,
    estimate_cost,
    head_scores,
    logit_lens,
    patch_cell,
    patch_sweep,
    path_patch,
)
from workbench.metrics import logit_diff
from workbench.patterns import max_pool
from workbench.toy import char_tokenizer, tiny_model

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
SHORT = "When Mary and John went to the store"  # fewer tokens than CLEAN
LONG = "a " * 300  # 302 tokens (BOS, 300 x "a", a final space): past the demo model's context of 256
N_POS = 15  # CLEAN's tokens, BOS included
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning",
                                        "ignore:For backward hooks:UserWarning",
                                        "ignore:Token indices sequence length:UserWarning")


# -- the bridges, and what "still usable" compares against -----------------------------------------
@dataclass
class Env:
    """The bridges the cases run on: the demo model (5-layer Llama-style, context 256), a tiny
    GPT-2 (learned position embeddings, context 128) and the same GPT-2 without a tokenizer."""

    demo: Bridge
    gpt2: Bridge
    bare: Bridge
    panels: list = field(default_factory=list)

    def panel(self, cls, *args, **kwargs):
        """A panel on the demo model, closed after the case."""
        p = cls(self.demo, *args, **kwargs)
        self.panels.append(p)
        return p

    def metric(self):
        return logit_diff(self.demo, " Mary", " John")


@dataclass(frozen=True)
class Reference:
    tokens: torch.Tensor
    logits: torch.Tensor
    hooks: dict


@pytest.fixture(scope="module")
def env(demo):
    gpt2 = Bridge.from_hf(tiny_model("gpt2", n_layers=2), char_tokenizer())
    bare = Bridge.from_hf(tiny_model("gpt2", n_layers=2), None)
    return Env(demo, gpt2, bare)


@pytest.fixture(scope="module")
def references(env):
    """Each bridge's logits on a fixed prompt and every hook PyTorch holds for its modules, before
    any case."""
    refs = []
    fixed = ((env.demo, env.demo.to_tokens(CLEAN)), (env.gpt2, torch.tensor([[0, 5, 17, 42, 9]])),
             (env.bare, torch.tensor([[0, 3, 3, 60]])))
    for bridge, tokens in fixed:
        assert bridge.attached_hooks() == []
        with torch.no_grad():
            refs.append((bridge, Reference(tokens, bridge(tokens), hook_state(bridge.model))))
    return refs


def _model_free(bridge) -> bool:
    """Whether another thread can take the model's panel lock (no panel left it held)."""
    got = []

    def take():
        lock = model_lock(bridge)
        if lock.acquire(timeout=5):
            lock.release()
            got.append(True)
    t = threading.Thread(target=take)
    t.start()
    t.join(10)
    return got == [True]


@pytest.fixture
def kernel_still_usable(env, references, comm):
    """After the case: panels closed, no hook left anywhere, logits bit for bit as before."""
    env.panels.clear()
    yield
    for p in env.panels:
        if hasattr(p, "wait"):
            p.wait(timeout=60)
        p.close()
    env.panels.clear()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for bridge, ref in references:
        assert bridge.attached_hooks() == []
        assert hook_state(bridge.model) == ref.hooks
        with torch.no_grad():
            assert torch.equal(bridge(ref.tokens), ref.logits)
    assert _model_free(env.demo)


# -- the catalogue --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """``provoke(env)`` raises (API rows) or returns the panel showing the error (panel rows);
    ``patterns`` must all match the message; ``recover`` then feeds a valid input (a panel row
    gets the panel, an API row the env) and checks it works."""

    id: str
    provoke: Callable[[Env], Any]
    exc: type[BaseException]
    patterns: tuple[str, ...]
    panel: bool = False
    recover: Callable[[Any], None] | None = None


def nan_hook(x, hook):
    return x * float("nan")


def tokens_of(env, n: int, value: int = 7) -> torch.Tensor:
    return torch.full((1, n), value, dtype=torch.long)


def cache_of(env):
    return env.demo.run_with_cache(CLEAN, names_filter="blocks.0.attn.hook_pattern")[1]


def with_hook(env, name, fn, call):
    with env.demo.hooks(fwd_hooks=[(name, fn)]):
        return call()


def hooked(name: str, fn: Callable) -> Callable[[Env], Any]:
    """A run of CLEAN with ``fn`` on ``name``."""
    return lambda env: env.demo.run_with_hooks(CLEAN, fwd_hooks=[(name, fn)])


def sweep(env, **kwargs):
    args = dict(site="resid_pre", metric=env.metric())
    args.update(kwargs)
    return patch_sweep(env.demo, CLEAN, CORRUPTED, **args)


API = [
    # -- wrong input types, empty and too-long prompts, ids outside the vocabulary ------------------
    Case("input_int", lambda env: env.demo(5), InputError,
         (r"got int", r"a string, a list of strings or a token tensor")),
    Case("input_none", lambda env: env.demo(None), InputError,
         (r"got NoneType", r"a string, a list of strings or a token tensor")),
    Case("input_dict", lambda env: env.demo({"prompt": CLEAN}), InputError,
         (r"got dict", r"a string, a list of strings or a token tensor")),
    Case("input_list_of_ints", lambda env: env.demo([464, 3290, 318]), InputError,
         (r"Prompt 0 is a int \(464\)", r"expected str", r"integer tensor instead: torch\.tensor")),
    Case("input_float_token_tensor", lambda env: env.demo(torch.tensor([[3.0, 4.0]])), InputError,
         (r"integer tensor; got torch\.float32", r"tokens\.long\(\)")),
    Case("input_3d_token_tensor", lambda env: env.demo(torch.zeros(1, 2, 3, dtype=torch.long)), InputError,
         (r"got shape \(1, 2, 3\)", r"non-empty \[batch, pos\] tensor")),
    Case("input_tokens_on_meta", lambda env: env.demo(torch.zeros(1, 3, dtype=torch.long, device="meta")),
         InputError, (r"meta device", r"pass real ids")),
    Case("empty_string", lambda env: env.demo(""), InputError,
         (r"Prompt 0 is the empty string", r"expected some text", r"pass a token tensor")),
    Case("empty_list", lambda env: env.demo([]), InputError,
         (r"empty list of prompts", r"expected at least one string")),
    Case("empty_string_in_batch", lambda env: env.demo([CLEAN, ""]), InputError,
         (r"Prompt 1 is the empty string", r"expected some text")),
    Case("zero_length_tensor", lambda env: env.demo(torch.zeros(1, 0, dtype=torch.long)), InputError,
         (r"got shape \(1, 0\)", r"non-empty \[batch, pos\]")),
    Case("too_long_tokens", lambda env: env.demo(tokens_of(env, 257)), InputError,
         (r"257 tokens long", r"context is 256 tokens", r"Shorten the prompt")),
    Case("too_long_text", lambda env: env.demo(LONG), InputError,
         (r"302 tokens long", r"context is 256 tokens", r"Shorten the prompt")),
    Case("too_long_text_gpt2_learned_positions", lambda env: env.gpt2("a" * 200), InputError,
         (r"201 tokens long", r"context is 128 tokens", r"Shorten")),
    Case("token_id_negative", lambda env: env.demo(torch.tensor([[1, -1, 5]])), InputError,
         (r"from -1 to 5", r"\[0, 1610\] \(the vocabulary\)", r"tokenizer matches the model")),
    Case("token_id_past_vocab", lambda env: env.demo(torch.tensor([[1, 1611]])), InputError,
         (r"from 1 to 1611", r"\[0, 1610\]", r"tokenizer matches the model")),
    Case("text_without_tokenizer", lambda env: env.bare("abc"), TokenizerError,
         (r"needs a tokenizer, and this bridge has none", r"Bridge\.from_hf\(model, tokenizer\)")),
    Case("padding_side", lambda env: env.demo.to_tokens([CLEAN, SHORT], padding_side="middle"), InputError,
         (r"got 'middle'", r"'left' or 'right'")),
    # -- forward options ----------------------------------------------------------------------------
    Case("attention_mask_wrong_shape",
         lambda env: env.demo(env.demo.to_tokens(CLEAN), attention_mask=torch.ones(1, 3)), InputError,
         (r"shape \(1, 3\)", r"expected the tokens' shape \(1, 15\)")),
    Case("attention_mask_not_binary",
         lambda env: env.demo(env.demo.to_tokens(CLEAN), attention_mask=torch.full((1, N_POS), 0.5)),
         InputError, (r"got values \[0\.5\]", r"1 \(real token\) and 0 \(padding\)", r"to_tokens pad")),
    Case("attention_mask_row_all_padding",
         lambda env: env.demo(env.demo.to_tokens([CLEAN, CLEAN]),
                              attention_mask=torch.tensor([[1] * N_POS, [0] * N_POS])),
         InputError, (r"rows without a real token: 1", r"at least one 1 per prompt")),
    Case("attention_mask_with_text", lambda env: env.demo(CLEAN, attention_mask=torch.ones(1, N_POS)),
         InputError, (r"attention_mask is built from text", r"only with token ids")),
    Case("return_type", lambda env: env.demo(CLEAN, return_type="probs"), ValueError,
         (r"got 'probs'", r"'logits', 'loss', 'both' or None")),
    Case("loss_of_one_token", lambda env: env.demo(tokens_of(env, 1), return_type="loss"), InputError,
         (r"at least 2 tokens", r"got 1")),
    Case("stop_at_layer_out_of_range", lambda env: env.demo(CLEAN, stop_at_layer=99), InputError,
         (r"got 99", r"int in \[-5, 5\]")),
    Case("stop_at_layer_not_int", lambda env: env.demo(CLEAN, stop_at_layer="2"), InputError,
         (r"got '2'", r"int in \[-5, 5\]")),
    Case("stop_at_layer_bool", lambda env: env.demo(CLEAN, stop_at_layer=True), InputError,
         (r"got True", r"int in \[-5, 5\]")),
    # -- hook names and hook functions --------------------------------------------------------------
    Case("hook_name_typo", hooked("blocks.0.attn.hook_patern", nan_hook), HookNameError,
         (r"No hook point named 'blocks\.0\.attn\.hook_patern'",
          r"Closest valid names: blocks\.0\.attn\.hook_pattern", r"bridge\.hook_names\(\)")),
    Case("hook_layer_out_of_range", hooked("blocks.9.hook_resid_pre", nan_hook), HookNameError,
         (r"Layer 9 is out of range", r"layers 0\.\.4", r"Closest valid names: blocks\.4\.hook_resid_pre")),
    Case("hook_absent_on_this_family", hooked("hook_pos_embed", nan_hook), HookNameError,
         (r"'hook_pos_embed'", r"rotary position embeddings")),
    Case("hook_name_not_a_string", lambda env: env.demo.add_hook(3, nan_hook), HookNameError,
         (r"got int", r"a string or a predicate")),
    Case("hook_fn_not_callable", lambda env: env.demo.add_hook("blocks.0.hook_resid_pre", 3), TypeError,
         (r"must be callable", r"got int")),
    Case("hook_spec_not_a_pair", lambda env: env.demo.run_with_hooks(CLEAN, fwd_hooks=["blocks.0.hook_z"]),
         TypeError, (r"\(name_or_predicate, fn\) pair", r"got 'blocks\.0\.hook_z'")),
    Case("hook_predicate_matches_nothing", hooked(lambda name: name.endswith("hook_nope"), nan_hook),
         HookNameError, (r"matched no hook point", r"bridge\.hook_names\(\)")),
    Case("hook_direction", lambda env: env.demo.add_hook("blocks.0.hook_resid_pre", nan_hook, dir="backward"),
         ValueError, (r"got 'backward'", r"'fwd' or 'bwd'")),
    Case("hook_returns_wrong_shape", hooked("blocks.0.hook_resid_pre", lambda x, hook: x[:, :-1]),
         HookShapeError, (r"'blocks\.0\.hook_resid_pre' returned shape \(1, 14, 128\)",
                          r"expected \(1, 15, 128\)", r"same shape")),
    Case("hook_returns_list", hooked("blocks.1.attn.hook_pattern", lambda x, hook: x.tolist()),
         HookShapeError, (r"'blocks\.1\.attn\.hook_pattern' returned list",
                          r"expected a tensor of shape \(1, 8, 15, 15\) or None")),
    Case("hook_returns_meta_tensor",
         hooked("blocks.0.hook_mlp_out", lambda x, hook: torch.empty_like(x, device="meta")),
         HookShapeError, (r"'blocks\.0\.hook_mlp_out' returned a tensor on the meta device",
                          r"expected one on cpu", r"Return the \(modified\) tensor")),
    Case("hook_raises", hooked("blocks.0.hook_resid_pre", lambda x, hook: x / 0 + {}), TypeError,
         (r"unsupported operand", r"raised inside a hook function on 'blocks\.0\.hook_resid_pre'")),
    # -- caching --------------------------------------------------------------------------------
    Case("names_filter_int", lambda env: env.demo.run_with_cache(CLEAN, names_filter=3), TypeError,
         (r"got int", r"None, a hook name, a list of names or a predicate")),
    Case("names_filter_list_of_ints", lambda env: env.demo.run_with_cache(CLEAN, names_filter=[0, 1]),
         HookNameError, (r"got int 0", r"strings such as 'blocks\.0\.hook_resid_pre'")),
    Case("names_filter_unknown_name",
         lambda env: env.demo.run_with_cache(CLEAN, names_filter=["blocks.0.hook_resid_pree"]),
         HookNameError, (r"'blocks\.0\.hook_resid_pree'", r"Closest valid names: blocks\.0\.hook_resid_pre")),
    Case("memory_budget_exceeded", lambda env: env.demo.run_with_cache(CLEAN, memory_budget=100_000),
         InputError, (r"would hold [\d.]+ KiB \(\d+ hook points for 1 prompt\(s\) of 15 tokens\)",
                      r"memory budget is 97\.7 KiB", r"names_filter=", r"raise memory_budget")),
    Case("memory_budget_negative", lambda env: env.demo.run_with_cache(CLEAN, memory_budget=-1), InputError,
         (r"got -1", r"positive number of bytes")),
    Case("cache_device_typo", lambda env: env.demo.run_with_cache(CLEAN, device="cuda0"), InputError,
         (r"got 'cuda0'", r"must name a torch device \('cpu', 'cuda', 'cuda:1'")),
    Case("cache_device_meta", lambda env: env.demo.run_with_cache(CLEAN, device="meta"), InputError,
         (r"device='meta' would keep only the activations' shapes", r"cache to 'cpu'", r"cache_bytes")),
    Case("incl_bwd_without_scalar", lambda env: env.demo.run_with_cache(CLEAN, incl_bwd=True), InputError,
         (r"must be a scalar", r"return_type='loss'")),
    Case("cache_layer_out_of_range", lambda env: cache_of(env)["pattern", 7], HookNameError,
         (r"Layer 7 out of range for a model with 5 layers", r"use 0\.\.4, or -5\.\.-1")),
    Case("cache_negative_layer_out_of_range", lambda env: cache_of(env)["pattern", -9], HookNameError,
         (r"Layer -9 out of range", r"use 0\.\.4, or -5\.\.-1")),
    Case("cache_layer_not_int", lambda env: cache_of(env)["pattern", "0"], HookNameError,
         (r"got '0'", r"must be an int \(e\.g\. \('pattern', 0\)\)")),
    Case("cache_key_int", lambda env: cache_of(env)[3], HookNameError,
         (r"got 3", r"a name or \(name, layer\[, layer_type\]\)")),
    Case("cache_name_not_cached", lambda env: cache_of(env)["pattern", 1], HookNameError,
         (r"'blocks\.1\.attn\.hook_pattern' is not in this cache", r"names_filter")),
    Case("cache_remove_batch_dim_of_two",
         lambda env: env.demo.run_with_cache([CLEAN, CORRUPTED], names_filter="hook_embed",
                                             remove_batch_dim=True),
         InputError, (r"batch size 1; 'hook_embed' has shape \(2, 15, 128\)", r"Run one prompt")),
    # -- tokens ---------------------------------------------------------------------------------------
    Case("single_token_of_two", lambda env: env.demo.to_single_token(" Mary and"), TokenizerError,
         (r"' Mary and' is 2 tokens, not one: \[' Mary', ' and'\]", r"mind the leading space")),
    Case("single_token_of_int", lambda env: env.demo.to_single_token(5), TokenizerError,
         (r"got 5", r"non-empty string that is one token", r"token id needs no conversion")),
    Case("single_token_of_empty", lambda env: env.demo.to_single_token(""), TokenizerError,
         (r"got ''", r"non-empty string")),
    Case("token_position_absent", lambda env: env.demo.get_token_position(" dog", CLEAN), InputError,
         (r"' dog' \(id \d+\) does not occur", r"15 tokens are \['<\|endoftext\|>', 'When'",
          r"Pick one of those")),
    Case("token_position_mode", lambda env: env.demo.get_token_position(" Mary", CLEAN, mode="middle"),
         ValueError, (r"not 'middle'", r"'first' or 'last'")),
    # -- analyses -----------------------------------------------------------------------------------
    Case("patterns_head_of_layer_not_computed",
         lambda env: attention_patterns(env.demo, CLEAN, layers=[0]).head(3, 0), InputError,
         (r"Layer 3 is not in these patterns \(layers \[0\]\)", r"layers=\[3\]")),
    Case("patterns_head_out_of_range", lambda env: attention_patterns(env.demo, CLEAN, layers=[0]).head(0, 8),
         InputError, (r"Head 8 does not exist", r"heads are 0\.\.7")),
    Case("patterns_layer_out_of_range", lambda env: attention_patterns(env.demo, CLEAN, layers=[9]),
         InputError, (r"Layer 9 does not exist", r"layers 0\.\.4 \(or -5\.\.-1")),
    Case("patterns_batch", lambda env: attention_patterns(env.demo, [CLEAN, CORRUPTED]), InputError,
         (r"got a batch of 2", r"Pass a single string")),
    Case("lens_k_negative", lambda env: logit_lens(env.demo, CLEAN, k=-1), InputError,
         (r"got -1", r"k must be in \[1, d_vocab=1611\]")),
    Case("lens_position_out_of_range", lambda env: logit_lens(env.demo, CLEAN, positions=[100]), InputError,
         (r"positions \[100\] do not exist", r"0\.\.14 \(or -15\.\.-1")),
    Case("lens_positions_not_ints", lambda env: logit_lens(env.demo, CLEAN, positions=["a"]), InputError,
         (r"got \['a'\]", r"list of ints")),
    Case("lens_unknown_site", lambda env: logit_lens(env.demo, CLEAN, sites="resid"), InputError,
         (r"got \['resid'\]", r"among \('resid_pre', 'resid_mid', 'resid_post'\) or 'all'")),
    Case("lens_target_not_one_token", lambda env: logit_lens(env.demo, CLEAN, target=" Mary and"),
         TokenizerError, (r"' Mary and' is 2 tokens", r"one token")),
    Case("lens_nan_from_hook",
         lambda env: with_hook(env, "blocks.2.hook_resid_pre", nan_hook, lambda: logit_lens(env.demo, CLEAN)),
         InputError, (r"logit lens came out NaN or inf", r"non-finite from 'blocks\.2\.hook_resid_post'",
                      r"attached at blocks\.2\.hook_resid_pre", r"reset_hooks")),
    Case("dla_answer_not_one_token",
         lambda env: direct_logit_attribution(env.demo, CLEAN, " Mary and", " John"), TokenizerError,
         (r"' Mary and' is 2 tokens", r"mind the leading space")),
    Case("dla_position_out_of_range",
         lambda env: direct_logit_attribution(env.demo, CLEAN, " Mary", " John", position=40), InputError,
         (r"got 40", r"\[-15, 15\) for 15 tokens")),
    Case("composition_kind", lambda env: composition_scores(env.demo, "x"), InputError,
         (r"got 'x'", r"pass kind='q', 'k' or 'v'")),
    Case("head_scores_negative_n", lambda env: head_scores(env.demo, n=-1), InputError,
         (r"got -1", r"int in \[1, 127\]", r"context of 256")),
    Case("max_pool_size_zero", lambda env: max_pool(torch.zeros(1, 4, 4), max_size=0), InputError,
         (r"got 0", r"max_size must be >= 1")),
    # -- patching and metrics -----------------------------------------------------------------------
    Case("patch_unknown_site", lambda env: sweep(env, site="resid_pro"), InputError,
         (r"Unknown patching site 'resid_pro'", r"Valid sites: resid_pre")),
    Case("patch_lengths_differ", lambda env: patch_sweep(env.demo, CLEAN, SHORT, site="resid_pre",
                                                          metric=env.metric()), InputError,
         (r"different lengths \(15 vs 9 tokens\)", r"corrupted: \['<\|endoftext\|>'",
          r"positions=\{clean_pos: corrupted_pos")),
    Case("patch_batch_sizes_differ", lambda env: patch_sweep(env.demo, [CLEAN, CLEAN], CORRUPTED,
                                                              site="resid_pre", metric=env.metric()),
         InputError, (r"clean has 2 prompts and corrupted 1", r"one corrupted prompt per clean prompt")),
    Case("patch_metric_none", lambda env: sweep(env, metric=None), InputError,
         (r"got NoneType", r"a Metric or a function of logits")),
    Case("patch_metric_returns_scalar", lambda env: sweep(env, metric=lambda logits: logits[:, -1, 0].mean()),
         InputError, (r"returned shape \(\); expected \[1\]", r"Drop the final \.mean\(\)")),
    Case("patch_index_for_site", lambda env: sweep(env, index="head"), InputError,
         (r"index 'head' is not valid for site 'resid_pre'", r"valid: pos")),
    Case("patch_layer_out_of_range", lambda env: sweep(env, layers=[7]), InputError,
         (r"Layer 7 does not exist", r"layers 0\.\.4")),
    Case("patch_head_out_of_range", lambda env: sweep(env, site="z", heads=[99]), InputError,
         (r"Head 99 does not exist at site 'z'", r"valid heads are 0\.\.7")),
    Case("patch_batch_size_negative", lambda env: sweep(env, batch_size=-1), InputError,
         (r"got -1", r"positive int \(cells per forward pass\)")),
    Case("patch_memory_budget_negative", lambda env: sweep(env, memory_budget=-5), InputError,
         (r"got -5", r"positive number of bytes")),
    Case("patch_direction", lambda env: sweep(env, direction="up"), InputError,
         (r"got 'up'", r"'denoise' \(clean into corrupted\) or 'noise'")),
    Case("patch_nan_from_hook",
         lambda env: with_hook(env, "blocks.2.hook_resid_pre", nan_hook, lambda: sweep(env)), InputError,
         (r"metric logit_diff on the clean run came out NaN or inf", r"attached at blocks\.2\.hook_resid_pre",
          r"finite values")),
    Case("dla_nan_from_hook",
         lambda env: with_hook(env, "blocks.2.hook_resid_pre", nan_hook,
                               lambda: direct_logit_attribution(env.demo, CLEAN, " Mary", " John")),
         InputError, (r"logit difference came out NaN or inf", r"attached at blocks\.2\.hook_resid_pre")),
    Case("patterns_nan_from_hook",
         lambda env: with_hook(env, "blocks.1.attn.hook_attn_scores", nan_hook,
                               lambda: attention_patterns(env.demo, CLEAN)),
         InputError, (r"attention patterns came out NaN or inf",
                      r"attached at blocks\.1\.attn\.hook_attn_scores")),
    Case("attribution_nan_from_hook",
         lambda env: with_hook(env, "blocks.2.hook_resid_pre", nan_hook,
                               lambda: attribution_sweep(env.demo, CLEAN, CORRUPTED, site="resid_pre",
                                                         metric=env.metric())),
         InputError, (r"on the clean run came out NaN or inf", r"attached at blocks\.2\.hook_resid_pre")),
    Case("patch_cell_position_out_of_range",
         lambda env: patch_cell(env.demo, CLEAN, CORRUPTED, site="resid_pre", layer=1, position=50,
                                metric=env.metric()),
         InputError, (r"Position 50 does not exist", r"0\.\.14 \(or -15\.\.-1")),
    Case("cell_patcher_lengths_differ",  # at construction, not at the first click
         lambda env: CellPatcher(env.demo, CLEAN, SHORT, metric=env.metric()),
         InputError, (r"different lengths \(15 vs 9 tokens\)", r"Make them the same length")),
    Case("patch_attribution_lengths_differ",
         lambda env: attribution_sweep(env.demo, CLEAN, SHORT, site="resid_pre", metric=env.metric()),
         InputError, (r"different lengths \(15 vs 9 tokens\)", r"Make them the same length")),
    Case("path_patch_receiver_before_sender",
         lambda env: path_patch(env.demo, CLEAN, CORRUPTED, senders=[(2, 0)], receivers=[(1, 0)],
                                metric=env.metric()),
         InputError, (r"L1H0 do not", r"Valid receivers are in layers 3\.\.4")),
    Case("estimate_cost_batch_size", lambda env: estimate_cost(env.demo, CLEAN, CORRUPTED, site="resid_pre",
                                                                batch_size=0),
         InputError, (r"got 0", r"positive int")),
    Case("metric_answer_not_one_token", lambda env: logit_diff(env.demo, " Mary and", " John"),
         TokenizerError, (r"' Mary and' is 2 tokens", r"mind the leading space")),
    Case("metric_token_id_past_vocab", lambda env: logit_diff(env.demo, 10**6, " John"), InputError,
         (r"got \[1000000\]", r"answer: token ids must be in \[0, 1611\)")),
]


# -- panels: the error shows in the panel, and the next valid input works ---------------------------
def act(panel, name, **args):
    front_end_sends(panel, {"type": "action", "name": name, "args": args})


def then_lens_works(prompt=CORRUPTED):
    def check(p):
        front_end_sets(p, prompt=prompt, target="", k=5)
        assert p.result is not None and p.result.str_tokens == p.bridge.to_str_tokens(prompt)
    return check


def then_attention_works(p):
    front_end_sets(p, prompt=CORRUPTED, layer=1, head=2)
    meta, buffers = reply(p, {"kind": "head", "layer": 1, "head": 2})
    assert "error" not in meta and meta["n"] == N_POS and len(buffers[0]) == 2 * N_POS * (N_POS + 1) // 2


def then_patching_works(p):
    front_end_sets(p, prompt=CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John", direction="denoise")
    act(p, "click", row=1, col=2)
    assert p.cell["label"] == "resid_pre L1 @ 2:␣Mary"


def lens_panel(env, **change):
    p = env.panel(LogitLensPanel, CLEAN)
    front_end_sets(p, **change)
    return p


def attention_panel(env, **change):
    p = env.panel(AttentionPanel, CLEAN, layer=1)
    front_end_sets(p, **change)
    return p


def patching_panel(env):
    return env.panel(PatchingPanel, CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong=" John")


def lens_panel_nan(env):
    p = env.panel(LogitLensPanel, CLEAN)
    with env.demo.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", nan_hook)]):
        front_end_sets(p, prompt=CORRUPTED)
    return p


def lens_select_outside(env):
    p = env.panel(LogitLensPanel, CLEAN)
    act(p, "select", row=99, col=0)
    return p


def then_lens_selects(p):
    act(p, "select", row=1, col=2)
    assert (p.layer, p.position) == (1, 2)


def attention_fetch_bad_layer(env):
    p = env.panel(AttentionPanel, CLEAN)
    meta, _ = reply(p, {"kind": "head", "layer": 9, "head": 0})
    assert "Layer 9 does not exist" in meta["error"]  # the front end's request is answered too
    return p


def hook_picker_unknown(env):
    p = env.panel(HookPicker, CLEAN)
    front_end_sets(p, hooks=["blocks.0.hook_nope", "blocks.0.hook_resid_pre"])
    assert p.hooks == ["blocks.0.hook_resid_pre"]  # the known one is kept and cached
    return p


def then_picker_works(p):
    front_end_sets(p, prompt=CORRUPTED, hooks=["blocks.1.hook_resid_post"])
    assert p.cache["blocks.1.hook_resid_post"].shape == (1, N_POS, 128)


def composition_select_bad(env):
    p = env.panel(CompositionPanel)
    act(p, "select", sender=0, receiver=999)
    return p


def then_composition_works(p):
    front_end_sets(p, kind="q")
    act(p, "select", sender=0, receiver=9)  # L0H0 -> L1H1
    assert p.result.kind == "q" and p.heads == [(0, 0), (1, 1)]


def patching_with(**change):
    def make(env):
        p = patching_panel(env)
        front_end_sets(p, **change)
        return p
    return make


def patching_mismatch(env):
    p = patching_with(corrupted=SHORT)(env)
    assert "different lengths (15 vs 9 tokens" in p.alignment  # shown beside the prompts at once
    act(p, "run")
    return p


def patching_then_run(**change):
    """A bad input, then the run button: the error still names the bad input."""
    def make(env):
        p = patching_with(**change)(env)
        act(p, "run")
        return p
    return make


def patching_then_click(**change):
    def make(env):
        p = patching_with(**change)(env)
        act(p, "click", row=1, col=2)
        return p
    return make


def patching_click(**where):
    def make(env):
        p = patching_panel(env)
        act(p, "click", **where)
        return p
    return make


PANELS = [
    Case("lens_panel_prompt_too_long", lambda env: lens_panel(env, prompt=LONG), InputError,
         (r"302 tokens long", r"context is 256 tokens", r"Shorten"), True, then_lens_works()),
    Case("lens_panel_target_not_one_token", lambda env: lens_panel(env, target=" Mary and"), InputError,
         (r"got ' Mary and'", r"' Mary and' is 2 tokens", r"Clear the target box"), True,
         then_lens_works()),
    Case("lens_panel_k_negative", lambda env: lens_panel(env, k=-2), InputError,
         (r"got -2", r"k must be in \[1, d_vocab=1611\]"), True, then_lens_works()),
    Case("lens_panel_unknown_site", lambda env: lens_panel(env, sites=["resid"]), InputError,
         (r"got \['resid'\]", r"among \('resid_pre'"), True,
         lambda p: (front_end_sets(p, sites=["resid_pre"]), then_lens_works()(p))),
    Case("lens_panel_select_outside_heatmap", lens_select_outside, ValueError,
         (r"got \(99, 0\)", r"a cell inside the heatmap \(5, 15\)"), True, then_lens_selects),
    Case("lens_panel_colour_by", lambda env: lens_panel(env, colour_by="rainbow"), ValueError,
         (r"got 'rainbow'", r"pick top, target or entropy"), True, then_lens_works()),
    Case("lens_panel_nan_from_hook", lens_panel_nan, InputError,
         (r"NaN or inf", r"attached at blocks\.1\.hook_mlp_out"), True, then_lens_works(CLEAN)),
    Case("attention_panel_layer_from_front_end", lambda env: attention_panel(env, layer=9), InputError,
         (r"Layer 9 does not exist", r"layers 0\.\.4", r"Pick one of those"), True, then_attention_works),
    Case("attention_panel_head_from_front_end", lambda env: attention_panel(env, head=99), InputError,
         (r"Head 99 does not exist", r"query heads 0\.\.7", r"click a thumbnail"), True,
         then_attention_works),
    Case("attention_panel_pair_from_front_end", lambda env: attention_panel(env, heads=[(1, 2), (7, 0)]),
         InputError, (r"Layer 7 does not exist", r"Pick one of those"), True,
         lambda p: (front_end_sets(p, heads=[]), then_attention_works(p))),
    Case("attention_panel_fetch_bad_layer", attention_fetch_bad_layer, InputError,
         (r"Layer 9 does not exist", r"layers 0\.\.4"), True, then_attention_works),
    Case("attention_panel_prompt_too_long", lambda env: attention_panel(env, prompt=LONG), InputError,
         (r"302 tokens long", r"Shorten"), True, then_attention_works),
    Case("hook_picker_unknown_hook", hook_picker_unknown, ValueError,
         (r"unknown hook names \['blocks\.0\.hook_nope'\]", r"bridge\.hook_names\(\)"), True,
         then_picker_works),
    Case("hook_picker_prompt_too_long",
         lambda env: (lambda p: (front_end_sets(p, prompt=LONG), p)[1])(
             env.panel(HookPicker, CLEAN, hooks=["blocks.0.hook_resid_pre"])),
         InputError, (r"302 tokens long", r"Shorten"), True, then_picker_works),
    Case("composition_panel_kind",
         lambda env: (lambda p: (front_end_sets(p, kind="x"), p)[1])(env.panel(CompositionPanel)),
         ValueError, (r"got 'x'", r"pick q, k or v"), True, then_composition_works),
    Case("composition_panel_select_outside", composition_select_bad, ValueError,
         (r"got \(0, 999\)", r"head indices in \[0, 40\)"), True, then_composition_works),
    Case("patching_panel_answer_not_one_token", patching_with(answer=" Mary and"), TokenizerError,
         (r"answer token must be a single token", r"' Mary and' is 2 tokens", r"mind the leading space"),
         True, then_patching_works),
    Case("patching_panel_same_answer_and_wrong", patching_with(wrong=" Mary"), InputError,
         (r"are the same \(' Mary'\)", r"Pick two different tokens"), True, then_patching_works),
    Case("patching_panel_mismatched_corrupted", patching_mismatch, InputError,
         (r"different lengths \(15 vs 9 tokens", r"make them the same length", r"align the \d+ matching"),
         True, then_patching_works),
    Case("patching_panel_direction_then_run", patching_then_run(direction="up"), InputError,
         (r"got 'up'", r"'denoise' \(clean into corrupted\) or 'noise'"), True, then_patching_works),
    Case("patching_panel_unknown_site_then_click", patching_then_click(site="resid_pro"), InputError,
         (r"Unknown patching site 'resid_pro'", r"Valid sites: resid_pre"), True,
         lambda p: (front_end_sets(p, site="resid_pre"), then_patching_works(p))),
    Case("patching_panel_click_layer_from_front_end", patching_click(layer=9, position=2), InputError,
         (r"Layer 9 does not exist", r"layers 0\.\.4"), True, then_patching_works),
    Case("patching_panel_click_outside_grid", patching_click(row=99, col=0), InputError,
         (r"Cell \(99, 0\) is outside the 5 x 15 grid", r"rows 0\.\.4, columns 0\.\.14"), True,
         then_patching_works),
    Case("patching_panel_prompt_too_long", patching_with(prompt=LONG), InputError,
         (r"302 tokens long", r"Shorten"), True, then_patching_works),
]


# -- closed panels: a call raises (nothing would show it) ------------------------------------------
def closed(make: Callable[[Env], Any], call: Callable[[Any], Any]) -> Callable[[Env], Any]:
    def provoke(env):
        p = make(env)
        p.close()
        call(p)
    return provoke


def then_a_new_lens_works(env):
    then_lens_works()(env.panel(LogitLensPanel, CLEAN))


CLOSED = [
    Case("closed_lens_panel_prompt", closed(lambda env: env.panel(LogitLensPanel, CLEAN),
                                            lambda p: setattr(p, "prompt", CORRUPTED)),
         ValueError, (r"This LogitLensPanel was closed",
                      r"Create a new panel: LogitLensPanel\(bridge, prompt\)"),
         recover=then_a_new_lens_works),
    Case("closed_attention_panel_fetch", closed(lambda env: env.panel(AttentionPanel, CLEAN),
                                                lambda p: p.fetch({"kind": "head", "layer": 0, "head": 0})),
         ValueError, (r"This AttentionPanel was closed", r"Create a new panel")),
    Case("closed_patching_panel_click", closed(patching_panel, lambda p: p.click(row=1, col=2)),
         ValueError, (r"This PatchingPanel was closed", r"Create a new panel: PatchingPanel")),
    Case("closed_patching_panel_run", closed(patching_panel, lambda p: p.run()),
         ValueError, (r"This PatchingPanel was closed", r"no longer computes")),
    Case("closed_composition_panel_kind", closed(lambda env: env.panel(CompositionPanel),
                                                 lambda p: setattr(p, "kind", "q")),
         ValueError, (r"This CompositionPanel was closed", r"Create a new panel")),
    Case("closed_workbench_panel", closed(
        lambda env: Workbench(env.demo, CLEAN, panels=("hooks", "logit_lens")),
        lambda wb: setattr(wb.logit_lens, "k", 3)),
         ValueError, (r"This LogitLensPanel was closed", r"Create a new panel"),
         recover=then_a_new_lens_works),
]

CASES = API + PANELS + CLOSED


def test_the_catalogue_is_a_table_of_at_least_40_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    assert len(PANELS) + len(CLOSED) >= 10
    for c in CASES:  # what came, and what was expected or the fix: at least two checks each
        assert len(c.patterns) >= 2, c.id
        assert not c.panel or c.recover is not None, c.id


def _message(err: BaseException) -> str:
    return "\n".join([str(err), *getattr(err, "__notes__", [])])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env, kernel_still_usable):
    if case.panel:
        panel = case.provoke(env)
        kind, _, message = panel.error.partition(": ")
        assert kind == case.exc.__name__, panel.error
        assert "Traceback" in panel.error_detail and not panel.busy
    else:
        with pytest.raises(BaseException) as info:
            case.provoke(env)
        assert type(info.value) is case.exc, f"{type(info.value).__name__}: {info.value}"
        message = _message(info.value)
    for pattern in case.patterns:
        assert re.search(pattern, message), f"{pattern!r} not in:\n{message}"
    if case.recover is not None:
        if case.panel:
            front_end_sets(panel, error="")  # dismissed, as in the panel
            case.recover(panel)
            assert panel.error == "", panel.error
        else:
            case.recover(env)


# -- what is not an error ---------------------------------------------------------------------------
def test_nan_from_a_hook_flows_through_a_plain_run(env, kernel_still_usable):
    """Hook outputs are not checked in a forward pass (documented in workbench.hook_points): NaN
    reaches the logits, and only the analyses (rows lens_nan_from_hook, patch_nan_from_hook)
    refuse it."""
    logits = env.demo.run_with_hooks(CLEAN, fwd_hooks=[("blocks.2.hook_resid_pre", nan_hook)])
    assert logits.isnan().all()


def test_a_hook_returning_another_dtype_is_converted(env, kernel_still_usable):
    """A float64 (or float16) result is cast back to the activation's dtype: the run equals one
    with the same values in float32."""
    def double(x, hook):
        return (x * 2).double()

    def half_then_back(x, hook):
        return x.half()
    out = env.demo.run_with_hooks(CLEAN, fwd_hooks=[("blocks.1.hook_resid_pre", double)])
    ref = env.demo.run_with_hooks(CLEAN, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: x * 2)])
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    out = env.demo.run_with_hooks(CLEAN, fwd_hooks=[("blocks.1.hook_resid_pre", half_then_back)])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
