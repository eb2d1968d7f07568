"""Panel benchmark: bytes sent to the browser, and the time from a click to the updated state.

1. **Attention payload.** A GPT-2-small-shaped random-init model (12 heads; the real GPT-2
   tokenizer, built offline) and a prompt of ``--seq`` tokens (512). The attention panel is
   driven as the browser drives it, through a recording comm: it fetches every head of one layer
   at full resolution, and, separately, what opening a layer costs (the thumbnails of all heads
   plus one large view). Every byte that crosses the comm is counted (binary buffers plus the
   JSON of each message). Compared with the raw float16 size of ``[12, seq, seq]`` and with the
   JSON that circuitsvis embeds for the same data (``attention.tolist()`` in its props).
   Target: at most 1.1x the raw float16 size.
2. **Patching click.** The patching panel on the embedded demo model with an IOI pair: the time
   from a click on a cell (the front end's message) to the updated result state, first click of
   a site and then the median over ``--clicks`` clicks. Target: under 150 ms on this CPU.

Writes benchmarks/results/panels.json.

    python benchmarks/bench_panels.py
    python benchmarks/bench_panels.py --seq 256 --clicks 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the recording comm of the widget tests

import comm as comm_pkg  # noqa: E402
import torch  # noqa: E402
from bench_overhead import gpt2_tokenizer  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from widget_comm import RecordingComm, front_end_sends  # noqa: E402

from workbench import Bridge  # noqa: E402

RESULTS = HERE / "results" / "panels.json"
BYTES_TARGET = 1.1  # x raw float16
CLICK_TARGET_MS = 150.0
WORDS = ("the cat sat on a mat and then it ran to the old red house near river where many birds "
         "were singing while children played with ball in garden after school every day").split()


def message_bytes(rec: RecordingComm, start: int = 0) -> tuple[int, int]:
    """(binary bytes, JSON bytes) of the messages recorded since ``start``."""
    binary = json_bytes = 0
    for _, data, buffers in rec.messages[start:]:
        binary += sum(memoryview(b).nbytes for b in buffers)
        json_bytes += len(json.dumps(data, default=str))
    return binary, json_bytes


def prompt_of(bridge: Bridge, seq: int) -> str:
    """A text whose tokenization (with BOS) is exactly ``seq`` tokens."""
    g = torch.Generator().manual_seed(0)
    words = [WORDS[0]]
    while bridge.to_tokens(" ".join(words)).shape[-1] < seq:
        words.append(WORDS[int(torch.randint(len(WORDS), (1,), generator=g))])
    while bridge.to_tokens(" ".join(words)).shape[-1] > seq:
        words.pop()
    return " ".join(words)


def attention_payload(seq: int, layer: int) -> dict:
    from widgets import AttentionPanel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    bridge = Bridge.from_hf(model, gpt2_tokenizer())
    prompt = prompt_of(bridge, seq)
    n = bridge.to_tokens(prompt).shape[-1]
    panel = AttentionPanel(bridge, prompt, layer=layer)
    rec = panel.comm
    n_heads = bridge.cfg.n_heads

    def fetch(request: dict) -> None:
        front_end_sends(panel, {"type": "fetch", "id": f"b{len(rec.messages)}", **request})

    start = len(rec.messages)
    for head in range(n_heads):
        fetch({"kind": "head", "layer": layer, "head": head})
    all_bin, all_json = message_bytes(rec, start)
    start = len(rec.messages)
    fetch({"kind": "thumbs", "layer": layer})
    fetch({"kind": "head", "layer": layer, "head": 0})
    open_bin, open_json = message_bytes(rec, start)
    if panel.error:
        raise SystemExit(f"attention panel error: {panel.error}")

    pattern = panel._layers[layer].pattern[0]  # [n_heads, n, n], what the fetches were cut from
    raw_f16 = pattern.numel() * 2
    raw_f32 = pattern.numel() * 4
    tokens = bridge.to_str_tokens(prompt)
    circuitsvis_json = len(json.dumps({"tokens": tokens, "attention": pattern.tolist()}))
    ours = all_bin + all_json
    return {"seq": n, "n_heads": n_heads, "layer": layer, "raw_float16_bytes": raw_f16,
            "raw_float32_bytes": raw_f32, "circuitsvis_json_bytes": circuitsvis_json,
            "ours_all_heads_bytes": ours, "ours_all_heads_binary": all_bin, "ours_all_heads_json": all_json,
            "ours_open_layer_bytes": open_bin + open_json,
            "ratio_to_raw_float16": ours / raw_f16, "ratio_circuitsvis_to_ours": circuitsvis_json / ours,
            "target": f"<= {BYTES_TARGET}x raw float16", "pass": ours / raw_f16 <= BYTES_TARGET}


def click_latency(n_clicks: int) -> dict:
    """Time from a click message on a patching cell to the updated state (the panel's ``cell``
    trait and the message that carries it), on the demo model with an IOI pair."""
    from widgets import PatchingPanel

    demo = Bridge.from_pretrained("workbench-demo")
    clean = "When Nora and Felix went to the garden, Felix gave a drink to"
    corrupted = "When Nora and Felix went to the garden, Nora gave a drink to"
    out = {"clicks": n_clicks, "sites": {}}
    for site in ("resid_pre", "z"):
        panel = PatchingPanel(demo, clean, corrupted=corrupted, answer=" Nora", wrong=" Felix", site=site)
        rows, cols = panel.exact_meta["rows"], panel.exact_meta["cols"]
        times = []
        for i in range(n_clicks + 1):
            args = {"row": i % rows, "col": (i * 7) % cols}
            t0 = time.perf_counter()
            front_end_sends(panel, {"type": "action", "name": "click", "args": args})
            times.append((time.perf_counter() - t0) * 1e3)
            if panel.error or panel.cell.get("row") != args["row"] or panel.cell.get("col") != args["col"]:
                raise SystemExit(f"click {args} did not update the state: error {panel.error!r}")
        out["sites"][site] = {"first_ms": times[0], "median_ms": statistics.median(times[1:]),
                              "max_ms": max(times[1:])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--clicks", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    comm_pkg.create_comm = lambda **kw: RecordingComm(**kw)

    out = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                       "threads": args.threads}}
    a = out["attention"] = attention_payload(args.seq, args.layer)
    print(f"\nAttention payload, {a['n_heads']} heads x {a['seq']} tokens (one layer):\n")
    print("| what | bytes | vs raw float16 |")
    print("|---|---:|---:|")
    for label, key in (("raw float16 [12, n, n]", "raw_float16_bytes"),
                       ("raw float32", "raw_float32_bytes"),
                       ("circuitsvis JSON (attention.tolist())", "circuitsvis_json_bytes"),
                       ("workbench, all heads at full resolution", "ours_all_heads_bytes"),
                       ("workbench, opening the layer (thumbnails + one head)", "ours_open_layer_bytes")):
        print(f"| {label} | {a[key]:,} | {a[key] / a['raw_float16_bytes']:.3f}x |")
    print(f"\nTarget <= {BYTES_TARGET}x raw float16: {'PASS' if a['pass'] else 'FAIL'} "
          f"({a['ratio_to_raw_float16']:.3f}x); circuitsvis sends {a['ratio_circuitsvis_to_ours']:.1f}x "
          "our bytes.")

    c = out["click"] = click_latency(args.clicks)
    print(f"\nPatching click on the demo model (median of {c['clicks']} clicks):\n")
    print("| site | first click ms | median ms | max ms | target |")
    print("|---|---:|---:|---:|---|")
    for site, r in c["sites"].items():
        print(f"| {site} | {r['first_ms']:.1f} | {r['median_ms']:.1f} | {r['max_ms']:.1f} | "
              f"< {CLICK_TARGET_MS:.0f} ms: {'PASS' if r['median_ms'] < CLICK_TARGET_MS else 'FAIL'} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
