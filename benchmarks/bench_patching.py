"""Patching benchmark: a resid_pre (layer, position) sweep, workbench vs TransformerLens 4.x.

GPT-2-small-shaped random-init model (GPT2Config defaults, seed 0), float32, CPU, 2 threads
(``--threads``). One
clean/corrupted pair of random tokens (batch 1, ``--seq`` tokens; the corrupted prompt differs
at a few positions), metric: the logit difference of the two tokens the corruption moves most
at the last position. Contenders, interleaved per repetition, median of ``--reps``:

- ``workbench patch_sweep``: the batched engine, default settings (automatic batch size,
  skipping of earlier blocks, prefix positions and unread unembeddings);
- ``workbench one-at-a-time``: the same function with ``batch_size=1`` and every skip off;
- ``workbench attribution_sweep``: attribution patching's estimate of the same sweep (if
  ``workbench.attribution_patching`` exists; an approximation, so its diff is informational);
- ``TL get_act_patch_resid_pre``: ``transformer_lens.patching`` on a TL 4.x
  ``TransformerBridge`` of the same weights (its clean cache run included).

It also prints :func:`~workbench.patch_cost.estimate_cost`'s forecast of the default sweep next
to the measured time, and the per-click time of :class:`~workbench.patch_cell.CellPatcher` on the
demo model (first click of a site, then the median over ``--clicks`` clicks).

Each contender's time covers the whole call including its clean/corrupted runs. Writes
benchmarks/results/patching.json.

    python benchmarks/bench_patching.py                 # seq 32, 3 reps
    python benchmarks/bench_patching.py --seq 16 --reps 1 --no-tl
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # TL's per-cell progress bar
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_overhead import gpt2_tokenizer, make_tl  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from workbench import Bridge, patch_sweep  # noqa: E402
from workbench.metrics import logit_diff  # noqa: E402
from workbench.patch_cost import estimate_cost  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "patching.json"
TARGET = 10.0  # at least this many times faster than TL
N_CORRUPTED = 3  # positions where the corrupted prompt differs


def prompts(seq: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random clean tokens ``[1, seq]`` and a corrupted copy differing at a few positions."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, vocab, (1, seq), generator=g)
    corrupted = clean.clone()
    where = torch.randperm(seq - 1, generator=g)[:N_CORRUPTED] + 1
    shift = 1 + torch.randint(0, vocab - 1, (len(where),), generator=g)
    corrupted[0, where] = (clean[0, where] + shift) % vocab
    return clean, corrupted


def contenders(bridge, tl, clean, corrupted, metric, batch_sizes: list[int]) -> dict:
    """name -> (run() -> (values [n_layers, seq], patched passes, unpatched runs), note)."""
    def ours():
        r = patch_sweep(bridge, clean, corrupted, site="resid_pre", metric=metric)
        return r.values, r.n_forward, 2

    def naive():
        r = patch_sweep(bridge, clean, corrupted, site="resid_pre", metric=metric, batch_size=1,
                        skip_blocks=False, reuse_prefix=False, skip_unchanged=False)
        return r.values, r.n_forward, 2

    out = {"workbench patch_sweep": (ours, "default settings"),
           "workbench one-at-a-time": (naive, "batch_size=1, every skip off")}
    for size in batch_sizes:
        def sized(size=size):
            r = patch_sweep(bridge, clean, corrupted, site="resid_pre", metric=metric, batch_size=size)
            return r.values, r.n_forward, 2
        out[f"workbench patch_sweep batch_size={size}"] = (sized, "informational")
    try:
        from workbench.attribution_patching import attribution_sweep

        def attribution():
            r = attribution_sweep(bridge, clean, corrupted, site="resid_pre", metric=metric)
            return r.values, r.n_forward, None
        out["workbench attribution_sweep"] = (attribution, "an estimate: 2 forwards + 1 backward")
    except ImportError as err:
        out["workbench attribution_sweep"] = (None, f"n/a: {err}")
    if tl is not None:
        import transformer_lens.patching as tlp

        def tl_sweep():
            with torch.no_grad():
                _, clean_cache = tl.run_with_cache(clean)
                values = tlp.get_act_patch_resid_pre(tl, corrupted, clean_cache,
                                                     lambda logits: metric(logits).mean())
            return values.float().cpu(), values.numel(), 1
        out["TL get_act_patch_resid_pre"] = (tl_sweep, "")
    return out


def clicks(n_clicks: int) -> dict:
    """Per-click time of CellPatcher on the demo model: the first click of a site (it prepares
    the site), then the median and max of ``n_clicks`` clicks over resid_pre cells and z heads."""
    from workbench.cell_patch import CellPatcher

    demo = Bridge.from_pretrained("workbench-demo")
    clean = "When Nora and Felix went to the garden, Felix gave a drink to"
    corrupted = "When Nora and Felix went to the garden, Nora gave a drink to"
    patcher = CellPatcher(demo, clean, corrupted, metric=logit_diff(demo, " Nora", " Felix"))
    n_pos, n_layers, n_heads = len(demo.to_tokens(clean)[0]), demo.cfg.n_layers, demo.cfg.n_heads
    out = {}
    order = range(n_clicks)
    for site, cells in (("resid_pre", [dict(layer=i % n_layers, position=i % n_pos) for i in order]),
                        ("z", [dict(layer=i % n_layers, head=i % n_heads) for i in order])):
        t0 = time.perf_counter()
        patcher.patch(site=site, **cells[0])
        first = time.perf_counter() - t0
        times = []
        for cell in cells:
            t0 = time.perf_counter()
            patcher.patch(site=site, **cell)
            times.append(time.perf_counter() - t0)
        out[site] = {"first_ms": first * 1e3, "median_ms": statistics.median(times) * 1e3,
                     "max_ms": max(times) * 1e3, "clicks": n_clicks}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=32, help="prompt length in tokens")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument("--no-tl", action="store_true", help="skip TransformerLens")
    ap.add_argument("--batch-sizes", default="",
                    help="extra rows: patch_sweep at these batch sizes (e.g. 16,32)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--clicks", type=int, default=60, help="CellPatcher clicks timed on the demo model")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config()).eval()
    bridge = Bridge.from_hf(copy.deepcopy(base).eval(), gpt2_tokenizer())
    tl, tl_reason = (None, "--no-tl") if args.no_tl else make_tl(base)
    del base
    gc.collect()
    clean, corrupted = prompts(args.seq, bridge.cfg.d_vocab)
    with torch.no_grad():
        diff = bridge(clean)[0, -1] - bridge(corrupted)[0, -1]
    metric = logit_diff(bridge, int(diff.argmax()), int(diff.argmin()))
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    runs = contenders(bridge, tl, clean, corrupted, metric, sizes)
    estimate = estimate_cost(bridge, clean, corrupted, site="resid_pre")

    times: dict[str, list[float]] = {k: [] for k, (fn, _) in runs.items() if fn is not None}
    results: dict[str, tuple] = {}
    for rep in range(args.reps):
        for name in times:
            gc.collect()
            t0 = time.perf_counter()
            results[name] = runs[name][0]()
            times[name].append(time.perf_counter() - t0)
        done = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
        print(f"[rep {rep + 1}/{args.reps}: {done}]", flush=True)

    ours = results["workbench patch_sweep"][0]
    tl_name = "TL get_act_patch_resid_pre"
    tl_s = statistics.median(times[tl_name]) if tl_name in times else None
    rows = []
    for name, (fn, note) in runs.items():
        if fn is None:
            rows.append({"contender": name, "seconds": None, "note": note})
            continue
        values, patched, unpatched = results[name]
        s = statistics.median(times[name])
        rows.append({"contender": name, "seconds": s, "all_seconds": times[name],
                     "speedup_vs_tl": tl_s / s if tl_s else None,
                     "forward_passes": patched, "unpatched_runs": unpatched,
                     "max_abs_diff_vs_ours": float((values.float() - ours).abs().max()), "note": note})

    print(f"\nresid_pre sweep, GPT-2 small shape (random init), seq {args.seq}, batch 1, "
          f"{ours.numel()} cells, {torch.get_num_threads()} threads, median of {args.reps}")
    print(f"metric range over cells: {float(ours.min()):.3f} .. {float(ours.max()):.3f}\n")
    print("| contender | seconds | speed-up vs TL | forward passes | max abs diff vs ours | note |")
    print("|---|---:|---:|---|---:|---|")
    for r in rows:
        if r["seconds"] is None:
            print(f"| {r['contender']} | n/a | | | | {r['note']} |")
            continue
        speed = f"{r['speedup_vs_tl']:.1f}x" if r["speedup_vs_tl"] else "-"
        passes = (f"{r['forward_passes']} + 1 backward" if r["unpatched_runs"] is None
                  else f"{r['forward_passes']} + {r['unpatched_runs']} unpatched")
        print(f"| {r['contender']} | {r['seconds']:.2f} | {speed} | {passes} | "
              f"{r['max_abs_diff_vs_ours']:.2e} | {r['note']} |")
    verdict = None
    if tl_s is not None:
        ratio = tl_s / statistics.median(times["workbench patch_sweep"])
        verdict = ratio >= TARGET
        print(f"\nworkbench patch_sweep vs TL: {ratio:.1f}x (target >= {TARGET:.0f}x) -> "
              f"{'PASS' if verdict else 'FAIL'}")
    else:
        print(f"\nTL rows: n/a ({tl_reason})")
    ours_s = statistics.median(times["workbench patch_sweep"])
    print(f"estimate_cost before the sweep: {estimate} (measured {ours_s:.2f} s)")
    click = clicks(args.clicks) if args.clicks > 0 else None
    for site, c in (click or {}).items():
        print(f"CellPatcher on the demo model, {site}: first click {c['first_ms']:.1f} ms (prepares the "
              f"site), then median {c['median_ms']:.1f} ms, max {c['max_ms']:.1f} ms, {c['clicks']} clicks")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "python": platform.python_version(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "model": "GPT2Config() random init, seed 0, float32, CPU",
        "sweep": {"site": "resid_pre", "seq": args.seq, "batch": 1, "cells": ours.numel(),
                  "corrupted_positions": N_CORRUPTED, "reps": args.reps},
        "tl": "ok" if tl is not None else f"n/a: {tl_reason}",
        "target_speedup_vs_tl": TARGET, "pass": verdict, "rows": rows,
        "estimate": {"summary": str(estimate), "seconds": estimate.seconds, "n_forward": estimate.n_forward,
                     "peak_bytes": estimate.peak_bytes, "measured_seconds": ours_s},
        "clicks_demo_model": click}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
