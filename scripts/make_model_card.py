"""Write docs/demo_model.md, the demo model's card, from the shipped weights and training log.

Every number in the card is measured here (through the Bridge) or read from
workbench/data/demo/training_log.json, so the card stays true when the model is retrained.

    .venv/bin/python scripts/make_model_card.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import Bridge  # noqa: E402
from workbench.demo_data import (  # noqa: E402
    FILLER_PROB,
    HELDOUT_NAMES,
    HELDOUT_TEMPLATES,
    NAMES,
    OBJECTS,
    PLACES,
    TRAIN_ENDINGS,
    TRAIN_FILLERS,
    TRAIN_OPENINGS,
    TRAIN_TEMPLATES,
    ioi_prompts,
    ioi_tokens,
)
from workbench.head_scores import (  # noqa: E402
    duplicate_token_scores,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from workbench.loading import DEMO_DIR  # noqa: E402


@torch.inference_mode()
def ioi_heads(bridge, n=200):
    """Per-head mean direct logit attribution to logit(IO) - logit(S) at the last position and
    mean attention from the last position to the IO and to the (second) S token; plus the
    model's mean logit difference and top-1 accuracy. Held-out names and templates."""
    prompts = ioi_prompts(n, split="heldout", seed=11)
    toks, io, s = ioi_tokens(bridge, prompts)
    logits, cache = bridge.run_with_cache(toks)
    last = logits[:, -1]
    diff = (last.gather(1, io[:, None]) - last.gather(1, s[:, None]))[:, 0]
    stack = cache.stack_head_results(pos_slice=-1)
    dla = cache.logit_attrs(stack, io, s, pos_slice=-1).mean(-1)
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    att_io = torch.zeros(L, H)
    att_s = torch.zeros(L, H)
    for b in range(len(prompts)):
        io_pos = (toks[b] == io[b]).nonzero()[0, 0]
        s_pos = (toks[b] == s[b]).nonzero()[-1, 0]
        for layer in range(L):
            pat = cache["pattern", layer][b, :, -1]
            att_io[layer] += pat[:, io_pos] / len(prompts)
            att_s[layer] += pat[:, s_pos] / len(prompts)
    dec, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
    parts = dict(zip(labels, cache.logit_attrs(dec, io, s, pos_slice=-1).mean(-1).tolist(), strict=True))
    pred = last.argmax(-1)
    names = {bridge.to_single_token(" " + n) for n in NAMES}
    errors = {"the subject S": int((pred == s).sum()),
              "another name": sum(int(p) in names and p != a and p != b
                                  for p, a, b in zip(pred, io, s, strict=True)),
              "a non-name token": sum(int(p) not in names for p in pred)}
    by_template = {}
    for i, p in enumerate(prompts):
        by_template.setdefault(HELDOUT_TEMPLATES[p.template], []).append(float(pred[i] == io[i]))
    return {"dla": dla.reshape(L, H), "att_io": att_io, "att_s": att_s, "parts": parts,
            "logit_diff": diff.mean().item(), "top1": (pred == io).float().mean().item(),
            "errors": errors, "n": len(prompts),
            "by_template": {t: sum(v) / len(v) for t, v in by_template.items()}}


ARCH = {
    "llama": "`LlamaForCausalLM` (rotary positions, RMSNorm, SwiGLU MLP, tied embeddings)",
    "gpt2": "`GPT2LMHeadModel` (learned positions, LayerNorm, GELU MLP, tied embeddings)",
}


EOT = "`<\\|endoftext\\|>`"
SUM_NOTE = {"RMS": "they sum to the logit difference because the final RMSNorm has no bias",
            "LN": "they sum to the logit difference minus the final LayerNorm's bias term"}


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def head_label(scores, n_heads):
    layer, head = divmod(int(scores.argmax()), n_heads)
    return f"L{layer}H{head}"


def role(prev, ind, dup, dla, att_io, att_s):
    roles = []
    if prev > 0.4:
        roles.append("previous-token")
    if ind > 0.4:
        roles.append("induction")
    if dup > 0.4:
        roles.append("duplicate-token")
    if dla > 0.5 and att_io > 0.3:
        roles.append("name mover (copies the IO name)")
    elif dla > 0.5 and att_s > 0.3:
        roles.append("S suppression (attends to S, lowers its logit)")
    elif dla < -0.5:
        roles.append("pushes toward S (negative)")
    return ", ".join(roles) or "-"


def main() -> None:
    torch.manual_seed(0)
    bridge = Bridge.from_pretrained("workbench-demo")
    log = json.loads((DEMO_DIR / "training_log.json").read_text())
    cfg = bridge.cfg
    rep = repeated_random_tokens(bridge, n=50, batch=16, seed=3)
    with torch.inference_mode():
        ind = induction_scores(bridge, rep)
        prev = previous_token_scores(bridge, rep)
        dup = duplicate_token_scores(bridge, rep)
        per_tok = bridge(rep, return_type="loss", loss_per_token=True)
    first, second = per_tok[:, 1:50].mean().item(), per_tok[:, 50:].mean().item()
    ioi = ioi_heads(bridge)
    a = log["args"]
    size_mb = (DEMO_DIR / "model.safetensors").stat().st_size / 2**20

    rows = []
    for layer in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            vals = (prev[layer, h].item(), ind[layer, h].item(), dup[layer, h].item(),
                    ioi["dla"][layer, h].item(), ioi["att_io"][layer, h].item(),
                    ioi["att_s"][layer, h].item())
            rows.append(f"| L{layer}H{h} | {vals[0]:.2f} | {vals[1]:.2f} | {vals[2]:.2f} | "
                        f"{vals[3]:+.2f} | {vals[4]:.2f} | {vals[5]:.2f} | "
                        f"{role(*vals)} |")

    card = f"""# The embedded demo model (`workbench-demo`)

A small Llama-style decoder trained on this machine's 2 CPU cores on a corpus generated in this
repo, so that `make demo` and the tests run offline on a model whose heads really do something:
previous-token heads, induction heads and an indirect-object-identification (IOI) circuit, all
learned, none planted. This card is written by `scripts/make_model_card.py` from the shipped
weights; every number below is measured.

```python
from workbench import Bridge
bridge = Bridge.from_pretrained("workbench-demo")           # offline, any device/dtype:
bridge = Bridge.from_pretrained("workbench-demo", device="cuda", dtype=torch.bfloat16)
```

The files (HF format, loads with plain `transformers`, no custom code) are in
`workbench/data/demo/`: `config.json`, `model.safetensors` ({size_mb:.1f} MiB), `tokenizer.json`,
`tokenizer_config.json`, `training_log.json`.

## Config

| | |
|---|---|
| architecture | {ARCH.get(cfg.model_type, cfg.model_type)} |
| layers / heads / d_head | {cfg.n_layers} / {cfg.n_heads} / {cfg.d_head} |
| d_model / d_mlp | {cfg.d_model} / {cfg.d_mlp} |
| vocabulary | {cfg.d_vocab} (byte-level BPE trained on the corpus; {EOT} = id 0 is BOS, EOS, padding) |
| context | {cfg.n_ctx} tokens |
| parameters | {log["parameters"] / 1e6:.2f} M |

## Training data

Generated by `workbench/demo_data.py` from word lists written for this repo (no external text,
so the provenance is that file and the licence is the repo's). Documents, shuffled and packed into
rows of {a["ctx"]} tokens, each starting with BOS:

- **stories** ({a["mix"][0]:.0%} of documents): 3 to 8 simple sentences about 2 or 3 characters
  ({len(NAMES)} first names, {len(PLACES)} places, {len(OBJECTS)} objects, animals, adjectives).
- **IOI sentences** ({a["mix"][1]:.0%}): one of {len(TRAIN_OPENINGS)} openings, in
  {FILLER_PROB:.0%} of them a name-free filler sentence ({len(TRAIN_FILLERS)} kinds), and one of
  {len(TRAIN_ENDINGS)} endings ({len(TRAIN_TEMPLATES)} frames, many thousands of sentences once
  places, objects and adjectives are filled in), such as "When Mary and John went to the store,
  John gave a drink to Mary", in both name orders (ABBA and BABA), with the
  {len(NAMES) - len(HELDOUT_NAMES)} training names only.
- **repeated random tokens** ({a["mix"][2]:.0%}): 8 to 64 tokens drawn uniformly from the
  vocabulary, repeated 2 to 4 times.

Held out of IOI training, for evaluation: {len(HELDOUT_NAMES)} names ({", ".join(HELDOUT_NAMES[:6])}, ...;
they still occur in stories, so the model knows them as words) and {len(HELDOUT_TEMPLATES)}
templates that never occur in training (e.g. "{HELDOUT_TEMPLATES[0]}").

Corpus: {log["corpus"]["text_docs"]:,} text documents and {log["corpus"]["repeat_docs"]:,}
repeated-token documents in {log["corpus"]["rows"]:,} rows.

## Training

    .venv/bin/python scripts/train_demo_model.py

AdamW (lr {a["lr"]}, betas 0.9/0.95, weight decay 0.1 on matrices), {a["warmup"]} warm-up steps
then cosine decay to 5%, batch {a["batch"]} x {a["ctx"]} tokens, {a["steps"]} steps
({a["steps"] * a["batch"] * a["ctx"] / 1e6:.1f} M tokens), seed {a["seed"]}, 2 threads, deterministic
algorithms. It took {log["train_seconds"] / 60:.0f} minutes of training ({log["total_seconds"] / 60:.0f} in
all) with torch {log["torch"]} on 2 CPU cores.

![training curve](img/demo_training_curve.svg)

Blue: training loss (smoothed); red, dashed: held-out IOI logit difference / 2, measured every
{a.get("eval_every", 500)} steps.

## What it does (held-out evaluation)

| measure | value |
|---|---:|
| loss on 50 random tokens, first occurrence | {first:.2f} nats/token |
| loss on the same 50 tokens repeated | {second:.2f} nats/token ({second / first:.0%} of the first) |
| IOI, held-out names and templates: mean logit(IO) - logit(S) | {ioi["logit_diff"]:.2f} |
| IOI, held-out: IO is the top prediction | {ioi["top1"]:.0%} |
| strongest induction head | {head_label(ind, cfg.n_heads)} ({ind.max():.2f}) |
| strongest previous-token head | {head_label(prev, cfg.n_heads)} ({prev.max():.2f}) |

Where the IOI logit difference comes from (direct logit attribution of each residual-stream
component at the last position, mean over the same 200 held-out prompts;
{SUM_NOTE[cfg.normalization_type]}):

| component | {" | ".join(ioi["parts"])} |
|---|{"---:|" * len(ioi["parts"])}
| logit(IO) - logit(S) | {" | ".join(f"{v:+.2f}" for v in ioi["parts"].values())} |

## Heads

Scores (see `workbench.head_scores`): **previous-token** = mean attention from position i to
i-1; **induction** = on BOS + 50 random tokens repeated once, mean attention from each token of
the repeat to the token after its first occurrence; **duplicate-token** = the same sequences,
attention to the first occurrence itself. **IOI DLA** = the head's direct contribution (through
the final norm's scale and weight, and the unembedding) to logit(IO) - logit(S) at the last position,
mean over 200 held-out IOI prompts; **END->IO / END->S** = attention from the last position to
the IO token and to the second S token. Roles are a rough reading of those numbers (thresholds
in `scripts/make_model_card.py`), a starting point for your own analysis, not a verdict.

| head | prev-token | induction | duplicate | IOI DLA | END->IO | END->S | reading |
|---|---:|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}

## Limits

The targets for IOI on held-out names and held-out templates are a logit difference above 2
({met(ioi["logit_diff"] > 2)}: {ioi["logit_diff"]:.2f}) and the IO as the top prediction at
least 80% of the time ({met(ioi["top1"] >= 0.8)}: {ioi["top1"]:.0%}); `tests/test_demo_model.py`
checks both. Of the {ioi["n"]} held-out prompts, the top prediction is
{", ".join(f"{k} in {v}" for k, v in ioi["errors"].items())}; accuracy by held-out template:

| held-out template | IO top-1 |
|---|---:|
{chr(10).join(f"| {t} | {v:.0%} |" for t, v in ioi["by_template"].items())}

It is a toy: the stories are a small grammar, so the model knows little English beyond it, and
its circuits are cleaner (and fewer) than GPT-2's. Use it to learn the tools and check that an
analysis behaves, then run the same notebook on a real model.
"""
    out = ROOT / "docs" / "demo_model.md"
    out.write_text(card)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
