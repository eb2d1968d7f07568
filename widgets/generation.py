"""The generation panel: type a prompt, stream the model's tokens, click one to see why it came.

Generation runs :func:`workbench.generation.generate_stream` in a background thread (holding the
model, like a patching sweep), so tokens appear as they come and "cancel" stops it after the
current step. A **steering** row adds a direction to ``blocks.{steer_layer}.hook_resid_post`` at
every step: the mean residual of the ``|``-separated positive prompts minus that of the negative
ones (:meth:`workbench.steering.Steering.from_prompts`), times the slider's ``steer_scale``.

Clicking generated token ``i`` shows the step that chose it (under the same steering): the logit
lens of the position before it (each layer's ``resid_post`` read through the final norm and
unembedding: top tokens and probabilities) and layer ``layer``'s attention of that position over
the sequence so far (``[n_heads, pos]``, fetched as a float16 buffer with
``{"kind": "step_attention", "index": i, "layer": L}``).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from traitlets import Bool, Dict, Float, Int, List, Unicode

from workbench.errors import InputError
from workbench.generation import generate_stream
from workbench.lens import logit_lens
from workbench.patterns import attention_patterns
from workbench.steering import Steering

from ._base import Panel, esm, guarded, model_lock
from ._patching_job import BackgroundJob
from ._selection import Selection
from ._transport import to_bytes

LENS_K = 5


class GenerationPanel(Panel):
    """Streamed generation with per-token inspection and a steering slider (see the module doc).

    ``panel.sequence`` holds the last generation's tokens ``[1, prompt_pos + n_new]``;
    ``panel.steering`` the :class:`~workbench.steering.Steering` in use (None when off)."""

    _esm = esm("generation.js")
    _title = "generation"
    _linked = ("prompt", "layer")

    prompt = Unicode("").tag(sync=True)
    max_new_tokens = Int(20).tag(sync=True)
    do_sample = Bool(False).tag(sync=True)
    temperature = Float(1.0).tag(sync=True)
    seed = Int(0).tag(sync=True)
    steer_layer = Int(-1).tag(sync=True)  # -1: no steering
    steer_positive = Unicode("").tag(sync=True)
    steer_negative = Unicode("").tag(sync=True)
    steer_scale = Float(0.0).tag(sync=True)
    n_layers = Int(0).tag(sync=True)
    prompt_tokens = List(Unicode()).tag(sync=True)
    generated = List(Unicode()).tag(sync=True)
    finish = Unicode("").tag(sync=True)
    running = Bool(False).tag(sync=True)
    picked = Int(-1).tag(sync=True)
    layer = Int(0).tag(sync=True)
    step_view = Dict().tag(sync=True)

    def __init__(self, bridge: Any, prompt: str = "", *, max_new_tokens: int = 20,
                 selection: Selection | None = None, **kwargs: Any) -> None:
        self._job = BackgroundJob(on_progress=lambda done, total: None, on_error=self.report,
                                  on_done=self._on_done, lock=model_lock(bridge))
        self._steering: tuple[tuple, Steering] | None = None
        self._run_hooks: list = []  # the hooks the shown tokens were generated under
        self._generation = 0
        self._view_lock = threading.RLock()
        self.sequence: torch.Tensor | None = None
        super().__init__(bridge, selection=selection, max_new_tokens=max_new_tokens,
                         n_layers=bridge.cfg.n_layers, **kwargs)
        if prompt:
            self.prompt = prompt  # after linking: the given prompt wins over the selection's
        self.observe(self._on_inputs, names=["prompt", "steer_layer", "steer_positive", "steer_negative",
                                             "steer_scale", "do_sample", "temperature", "seed",
                                             "max_new_tokens"])
        self.observe(self._on_pick, names=["picked", "layer"])
        self._update_code()

    # -- steering ---------------------------------------------------------------------------------
    @property
    def steering(self) -> Steering | None:
        """The steering in use, built (and kept) from the steering traits; None when off."""
        if self.steer_layer < 0 or self.steer_scale == 0:
            return None
        n = self.bridge.cfg.n_layers
        if self.steer_layer >= n:
            raise InputError(f"steer_layer {self.steer_layer} does not exist: this model has layers "
                             f"0..{n - 1} (or -1 for no steering).")
        pos, neg = (_prompts(text, which) for text, which in ((self.steer_positive, "positive"),
                                                               (self.steer_negative, "negative")))
        key = (self.steer_layer, pos, neg)
        if self._steering is None or self._steering[0] != key:
            self._steering = (key, Steering.from_prompts(
                self.bridge, f"blocks.{self.steer_layer}.hook_resid_post", pos, neg))
        return self._steering[1].scaled(self.steer_scale)

    def _hooks(self) -> list:
        steer = self.steering
        return [] if steer is None else [steer.hook]

    # -- generating -------------------------------------------------------------------------------
    def generate(self) -> None:
        """Start generating in the background (returns at once); :meth:`wait` joins it."""
        self._start()

    def cancel(self) -> None:
        """Stop after the current step; the tokens so far stay."""
        self._job.cancel()

    def wait(self, timeout: float | None = None) -> list[str]:
        """Join the running generation; returns the generated token strings."""
        self._job.wait(timeout)
        return list(self.generated)

    def _start(self) -> None:
        self._check_open()
        try:
            with self.working("preparing the generation"):  # (builds the steering: runs the model)
                if self._job.running:
                    raise InputError("Generation is already running: cancel it (or wait for it) first.")
                if not self.prompt:
                    raise InputError("There is no prompt yet: type one in the panel (or set panel.prompt).")
                hooks = self._hooks()  # built here, so a bad steering setting is reported at once
                options = dict(do_sample=self.do_sample, temperature=self.temperature,
                               seed=self.seed if self.do_sample else None, fwd_hooks=hooks)
                stream = generate_stream(self.bridge, self.prompt, self.max_new_tokens, **options)
        except Exception as exc:  # noqa: BLE001 - shown in the panel, with its traceback
            self.report(exc)
            return
        self._generation += 1
        self._run_hooks = hooks
        self.sequence = self.bridge.to_tokens(self.prompt)
        self.prompt_tokens = self.bridge.to_str_tokens(self.prompt)
        self.generated, self.finish, self.picked, self.step_view = [], "", -1, {}
        self.running = self.busy = True
        self.status = "generating"
        self._job.start(self._work, stream)

    def _work(self, stream: Any) -> None:
        """In the job's thread, holding the model: one step at a time, shown as it comes."""
        try:
            for step in stream:
                if self._job.cancelled:  # (a new prompt cancels too)
                    self.finish = "cancelled"
                    return
                with self._view_lock:
                    self.sequence = torch.cat([self.sequence, step.tokens[:, None]], dim=1)
                    self.generated = [*self.generated, step.strs[0]]
                if bool(step.finished[0]):
                    self.finish = "end of text"
                    return
            self.finish = "length"
        except BaseException:
            self.finish = "error"  # the tokens so far are shown as cut short, never as complete
            raise
        finally:
            stream.close()

    def _on_done(self) -> None:
        self.running = self.busy = False
        self.status = ""
        self._update_code()

    def _on_inputs(self, change: dict) -> None:
        if self._job.running and change["name"] == "prompt":
            self.cancel()  # the shown tokens belong to the old prompt
        self._update_code()

    def _update_code(self) -> None:
        steer = ""
        if self.steer_layer >= 0 and self.steer_scale:
            steer = (f"steer = Steering.from_prompts(bridge, 'blocks.{self.steer_layer}.hook_resid_post', "
                     f"{_safe_split(self.steer_positive)!r}, {_safe_split(self.steer_negative)!r}, "
                     f"scale={self.steer_scale!r})\n")
        sample = (f", do_sample=True, temperature={self.temperature!r}, seed={self.seed!r}"
                  if self.do_sample else "")
        hooks = ", fwd_hooks=[steer.hook]" if steer else ""
        self.code = (f"{steer}out = bridge.generate({self.prompt!r}, {self.max_new_tokens}{sample}{hooks})\n"
                     "out.text[0]")

    # -- inspecting a token -----------------------------------------------------------------------
    def pick(self, index: int) -> None:
        """Show the step that generated token ``index`` (0 = the first new token)."""
        self.picked = index

    @guarded("inspecting the step")
    def _on_pick(self, _change: dict) -> None:
        if self.picked < 0:
            self.step_view = {}
            return
        with self._view_lock:
            seq, index = self._prefix(self.picked)
            with self.bridge.hooks(fwd_hooks=self._run_hooks):
                lens = logit_lens(self.bridge, seq, sites="resid_post", positions=[seq.shape[1] - 1],
                                  k=LENS_K)
            rows = [{"layer": layer, "top": [[s, float(p)] for s, p in zip(lens.top_strs[r][0],
                                                                        lens.top_probs[r, 0].tolist(),
                                                                        strict=True)]}
                    for r, layer in enumerate(lens.layers)]
            token = self.generated[index]
            self.step_view = {"index": index, "token": token, "position": seq.shape[1],
                              "query": lens.str_tokens[-1], "keys": self.bridge.to_str_tokens(seq[0]),
                              "lens": rows,
                              "layer": self.layer, "n_heads": self.bridge.cfg.n_heads,
                              "run": self._generation}

    def _prefix(self, index: Any) -> tuple[torch.Tensor, int]:
        """The tokens the step that chose generated token ``index`` saw ``[1, pos]``."""
        n = len(self.generated)
        if (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n
                or self.sequence is None):
            raise InputError(f"Token {index!r} was not generated: pick one of the {n} generated tokens "
                             f"(0..{n - 1}).")
        stop = self.sequence.shape[1] - n + index
        return self.sequence[:, :stop], index

    def _fetch_step_attention(self, index: int, layer: int,
                              run: int | None = None) -> tuple[dict, list[bytes]]:
        """Layer ``layer``'s pattern of the step's query over the keys so far, ``[n_heads, pos]``
        (``run``: the generation the request is about; an older one is refused)."""
        if run is not None and run != self._generation:
            raise InputError("That token belongs to an earlier generation; click a token of the current one.")
        with self._view_lock:
            seq, _ = self._prefix(index)
        n = self.bridge.cfg.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise InputError(f"Layer {layer!r} does not exist: this model has layers 0..{n - 1}.")
        with self.working("computing attention"), self.bridge.hooks(fwd_hooks=self._run_hooks):
            row = attention_patterns(self.bridge, seq, layers=[layer]).pattern[0, :, -1, :]
        return ({"index": index, "layer": layer, "shape": list(row.shape), "dtype": "float16"},
                [to_bytes(row, "float16")])

    def _action_generate(self) -> None:
        self._start()

    def _action_cancel(self) -> None:
        self.cancel()

    def _export_requests(self) -> list[dict]:
        view = self.step_view
        if not view:
            return []
        return [{"kind": "step_attention", **{k: view[k] for k in ("index", "layer", "run")}}]

    def close(self) -> None:
        self._job.cancel()
        super().close()


def _safe_split(text: str) -> list[str]:
    return [p.strip() for p in text.split("|") if p.strip()]


def _prompts(text: str, which: str) -> tuple[str, ...]:
    prompts = tuple(_safe_split(text))
    if not prompts:
        raise InputError(f"Steering needs {which} prompts: type one or more, separated by '|' (e.g. "
                         "'I love this | What a joy'), or set the scale to 0.")
    return prompts
