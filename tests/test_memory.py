"""The CPU memory policy for caches (workbench/memory.py): glibc keeps freed memory once a CPU
cache is taken, release_memory() hands it back, and the environment can opt out. Each check
runs in a fresh interpreter, since the policy is per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from workbench import memory

pytestmark = pytest.mark.skipif(not memory.supported(), reason="needs glibc (Linux)")

PRELUDE = textwrap.dedent("""
    import json, torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from workbench import Bridge, memory
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    def bridge():
        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
        return Bridge.from_hf(GPT2LMHeadModel(cfg).eval())
""")


def run(code: str, **env) -> str:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=full_env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_first_cpu_cache_turns_the_policy_on():
    assert run("""
        b = bridge()
        before = memory.keeps_freed_memory()
        b(torch.tensor([[1, 2, 3]]))
        after_forward = memory.keeps_freed_memory()
        b.run_with_cache(torch.tensor([[1, 2, 3]]))
        print(before, after_forward, memory.keeps_freed_memory())
    """) == "False False True"


def test_environment_opts_out():
    assert run("""
        b = bridge()
        b.run_with_cache(torch.tensor([[1, 2, 3]]))
        print(memory.keeps_freed_memory())
    """, WORKBENCH_KEEP_FREED_MEMORY="0") == "False"


def test_an_explicit_choice_is_kept():
    assert run("""
        memory.keep_freed_memory(False)
        bridge().run_with_cache(torch.tensor([[1, 2, 3]]))
        print(memory.keeps_freed_memory())
    """) == "False"


CACHE_RUNS = """
    import resource
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=512, n_positions=256)
    b = Bridge.from_hf(GPT2LMHeadModel(cfg).eval())
    tokens = torch.randint(0, 512, (4, 256))
    faults = []
    for _ in range(12):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        _, cache = b.run_with_cache(tokens)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
        nbytes = cache.nbytes()
        del cache
    held = rss()
    print(json.dumps([faults, nbytes, held, memory.release_memory()]))
"""


def test_repeated_caches_reuse_freed_pages_and_release_hands_them_back():
    # a 55 MB cache taken 12 times: by default glibc returns some of each dropped cache to the
    # kernel, and the next one is written into freshly faulted pages (how many varies, as glibc
    # adapts its thresholds); with the policy on, later caches reuse the dropped ones' pages
    import json
    off, nbytes, _, _ = json.loads(run(CACHE_RUNS, WORKBENCH_KEEP_FREED_MEMORY="0"))
    on, _, held, released = json.loads(run(CACHE_RUNS))
    page = 4096
    pages = nbytes // page
    # once settled, a cache costs (almost) no new page: under 5% of its pages per run
    assert sum(on[6:]) < 0.05 * 6 * pages, f"faults per run with the policy {on}, without {off}"
    assert held - released > nbytes / 2, "release_memory() did not hand the kept pages back"
