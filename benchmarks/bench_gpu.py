"""GPU benchmark (issue 8): a real-sized model in bfloat16 on one GPU, and spread over every GPU.

Weights are random (nothing can be downloaded) in a real architecture's shape: Llama-3-8B (the
default) or Gemma-2-9B. For each sequence length, contenders are interleaved (each repetition
runs each one once), after one warm-up; medians of N repetitions:

- ``hf``: the raw HF forward with its default attention (SDPA), no hooks;
- ``bridge``: the bridge's plain forward (no hooks: the SDPA path);          target <= 1.05 x hf
- ``hf_eager``: the raw HF forward with eager attention;
- ``cache``: ``run_with_cache`` with every hook point, cached on the GPU;   target <= 1.3 x hf_eager
- peak GPU memory of ``cache`` minus the bytes its cache holds on the GPU, against
  ``hf_eager``'s peak: target <= 1.0 (no more than HF plus the cache itself). Where the
  all-hook cache would not fit on the GPU (Llama-3-8B at 4k tokens: 84 GiB, estimated before
  running), it is streamed to pinned host memory instead (or, without the host memory, cached
  without ``attn_scores``); the table says which;
- a residual-stream patching sweep (``resid_pre``, every layer x the last 64 positions of a
  clean/corrupted pair that differ in one token, ``--sweep-seq`` tokens long): cells per second.

With more than one GPU the model is also spread with ``device_map="auto"`` and measured again.
Writes benchmarks/results/gpu.json and prints a markdown table.

    python benchmarks/bench_gpu.py                        # llama3-8b, bf16, seq 1024 and 4096
    python benchmarks/bench_gpu.py --config gemma2-9b --seq 1024
    python benchmarks/bench_gpu.py --smoke                # a tiny model on the CPU: the script runs
                                                          # (writes nothing; tests/test_devices.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig  # noqa: E402

from workbench import Bridge, patch_sweep  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
TARGETS = {"bridge/hf": 1.05, "cache/hf_eager": 1.3, "extra_peak/hf_eager_peak": 1.0}
CONFIGS = {
    "llama3-8b": lambda: LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "gemma2-9b": lambda: Gemma2Config(
        hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
        num_key_value_heads=8, head_dim=256, vocab_size=256000, max_position_embeddings=8192,
        query_pre_attn_scalar=256, sliding_window=4096),
    "tiny": lambda: LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=103,
                                max_position_embeddings=512),
}


def build(config_name: str, dtype: torch.dtype, device: str, device_map=None):
    """A random-init model of the named shape, made directly on ``device`` (or spread)."""
    torch.manual_seed(0)
    config = CONFIGS[config_name]()
    if device_map is None:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:  # spread: build on the CPU, then dispatch with accelerate
        from accelerate import dispatch_model, infer_auto_device_map

        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        placement = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
        model = dispatch_model(model, placement)
    return model.eval()


@contextlib.contextmanager
def attention(model, implementation: str):
    """Run the model with another attention implementation, then restore the bridge's."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def peak(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    return sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))


def host_available() -> int | None:
    """Bytes of host memory available (Linux), or None."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def cache_plan(bridge: Bridge, seq: int, device: str) -> tuple[str, dict]:
    """Where the all-hook cache of one ``seq``-token prompt can go, from the estimate made before
    running (``bridge.cache_bytes``): on the GPU when it fits in 90% of the free memory, else
    streamed to page-locked host memory when that fits in 80% of what the host has, else on the
    GPU without ``hook_attn_scores`` (the pre-softmax copy of every pattern). Returns a label and
    the ``run_with_cache`` keyword arguments."""
    need = bridge.cache_bytes((1, seq))
    if not device.startswith("cuda") or need < 0.9 * torch.cuda.mem_get_info(device)[0]:
        return f"all hooks, on {device}", {}
    host = host_available()
    if host is not None and need < 0.8 * host:
        return "all hooks, streamed to pinned CPU memory", {"device": "cpu", "pin_memory": True}
    return "all hooks but attn_scores, on the GPU", {"names_filter": lambda n: "attn_scores" not in n}


def measure(bridge: Bridge, seq: int, reps: int, device: str) -> dict:
    model = bridge.model
    tokens = torch.randint(0, bridge.cfg.d_vocab, (1, seq), device=device)
    mode, cache_kwargs = cache_plan(bridge, seq, device)
    runs = {
        "hf": lambda: _with(model, "sdpa", lambda: model(tokens, use_cache=False)),
        "bridge": lambda: bridge(tokens),
        "hf_eager": lambda: _with(model, "eager", lambda: model(tokens, use_cache=False)),
        "cache": lambda: bridge.run_with_cache(tokens, **cache_kwargs),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    peaks: dict[str, int | None] = {}
    cache_bytes = None
    with torch.inference_mode():
        for rep in range(reps + 1):  # the first is a warm-up
            for name, run in runs.items():
                peak_reset(device)
                start = time.perf_counter()
                out = run()
                sync(device)
                took = time.perf_counter() - start
                if name == "cache":
                    cache_bytes = out[1].nbytes()
                peaks[name] = peak(device)
                del out
                if rep:
                    times[name].append(took)
    med = {k: statistics.median(v) for k, v in times.items()}
    on_gpu = "device" not in cache_kwargs  # a cache on the host takes no GPU memory
    row = {"seq": seq, "cache_mode": mode, "median_s": med, "cache_bytes": cache_bytes, "peak_bytes": peaks,
           "bridge/hf": med["bridge"] / med["hf"], "cache/hf_eager": med["cache"] / med["hf_eager"]}
    if peaks["cache"] is not None:
        held = cache_bytes if on_gpu else 0
        row["extra_peak/hf_eager_peak"] = (peaks["cache"] - held) / peaks["hf_eager"]
    return row


def _with(model, implementation: str, fn):
    with attention(model, implementation):
        return fn()


def sweep_rate(bridge: Bridge, seq: int, device: str) -> dict:
    """Cells per second of a resid_pre sweep over every layer and the last 64 positions."""
    clean = torch.randint(0, bridge.cfg.d_vocab, (1, seq), device=device)
    corrupted = clean.clone()
    corrupted[0, seq // 2] = (corrupted[0, seq // 2] + 1) % bridge.cfg.d_vocab
    positions = {p: p for p in range(max(0, seq - 64), seq)}  # the last 64 positions
    target = int(clean[0, -1])

    def metric(logits):
        return logits[:, -1].float().log_softmax(-1)[:, target]

    start = time.perf_counter()
    result = patch_sweep(bridge, clean, corrupted, site="resid_pre", metric=metric, positions=positions)
    sync(device)
    took = time.perf_counter() - start
    cells = int(result.values.numel())
    return {"seq": seq, "cells": cells, "seconds": took, "cells_per_s": cells / took}


def table(rows: list[dict], label: str) -> str:
    lines = [f"**{label}**", "", "| seq | hf (s) | bridge (s) | bridge/hf | hf eager (s) | cache (s) "
             "| cache/hf eager | extra peak / hf eager peak | cache (GiB) | cache kept |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m = r["median_s"]
        extra = r.get("extra_peak/hf_eager_peak")
        lines.append(f"| {r['seq']} | {m['hf']:.4f} | {m['bridge']:.4f} | {r['bridge/hf']:.3f} | "
                     f"{m['hf_eager']:.4f} | {m['cache']:.4f} | {r['cache/hf_eager']:.3f} | "
                     f"{'n/a' if extra is None else f'{extra:.3f}'} | {r['cache_bytes'] / 2**30:.2f} | "
                     f"{r['cache_mode']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="llama3-8b", choices=sorted(CONFIGS))
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sweep-seq", type=int, default=128)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU, float32, seq 64")
    args = ap.parse_args()
    if args.smoke:
        config, dtype, device, seqs, reps, sweep_seq = "tiny", torch.float32, "cpu", [64], 2, 16
    elif not torch.cuda.is_available():
        raise SystemExit("No CUDA GPU: run with --smoke to check the script on the CPU.")
    else:
        config, dtype, device, seqs, reps, sweep_seq = (args.config, torch.bfloat16, "cuda:0",
                                                        args.seq, args.reps, args.sweep_seq)
    out = {"config": config, "dtype": str(dtype), "device": device, "torch": torch.__version__,
           "platform": platform.platform(), "targets": TARGETS, "runs": {}}
    layouts = [("one device", None)]
    if device.startswith("cuda") and torch.cuda.device_count() > 1:
        layouts.append((f"device_map='auto' over {torch.cuda.device_count()} GPUs", "auto"))
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif device.startswith("cuda"):
        out["gpus"] = [torch.cuda.get_device_name(0)]
    for label, device_map in layouts:
        bridge = Bridge.from_hf(build(config, dtype, device, device_map))
        rows = [measure(bridge, s, reps, device) for s in seqs]
        rate = sweep_rate(bridge, sweep_seq, device)
        out["runs"][label] = {"rows": rows, "sweep": rate}
        print(table(rows, f"{config}, {dtype}, {label}"))
        print(f"\nresid_pre sweep, seq {rate['seq']}: {rate['cells']} cells in {rate['seconds']:.2f} s "
              f"({rate['cells_per_s']:.1f} cells/s)\n")
        del bridge
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.smoke:
        return  # a check that the script runs; its numbers mean nothing
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
