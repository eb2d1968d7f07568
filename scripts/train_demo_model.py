"""Train the embedded demo model (workbench/data/demo): a small Llama-style decoder with learned
previous-token heads, induction heads and an IOI circuit, on 2 CPU cores.

    .venv/bin/python scripts/train_demo_model.py                 # the shipped model
    .venv/bin/python scripts/train_demo_model.py --steps 50 --out /tmp/demo   # a quick try

Deterministic: every random choice comes from fixed seeds (corpus, tokenizer, init, batches), and
torch runs with 2 threads and deterministic algorithms. The corpus (workbench/demo_data.py) is
generated here, so no download is needed. Writes config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, training_log.json (loss curve, evaluation, timings) and the model card's
training curve (docs/img/demo_training_curve.svg).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import demo_data as dd  # noqa: E402

EOT = "<|endoftext|>"
DEFAULTS = dict(arch="llama", vocab=2048, ctx=256, d_model=128, n_layers=5, n_heads=8, batch=16,
                steps=7000, lr=2e-3, warmup=50, seed=0, mix=(0.30, 0.40, 0.30),
                rep_len=(8, 64), rep_times=(2, 4), ema=0.999, entity_share=0.3)


# -- corpus ---------------------------------------------------------------------------------------
def text_docs(rng: random.Random, n: int, mix: tuple[float, float, float],
              entity_share: float) -> list[str]:
    """``n`` text documents: stories and training-split IOI sentences in proportion ``mix[0] :
    mix[1]``, ``entity_share`` of the IOI sentences with words for people (``dd.ENTITY_WORDS``)
    (repeated-token documents are made later, from token ids)."""
    p_story = mix[0] / (mix[0] + mix[1])
    docs = []
    for _ in range(n):
        if rng.random() < p_story:
            docs.append(dd.story(rng))
        else:
            pool = dd.ENTITY_WORDS if rng.random() < entity_share else None
            docs.append(dd.ioi_prompt(rng, "train", pool=pool).full + ".")
    return docs


def train_tokenizer(docs: list[str], vocab: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``docs``; ``<|endoftext|>`` (id 0) is BOS, EOS and padding."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                   pad_token=EOT, unk_token=EOT, model_max_length=DEFAULTS["ctx"])
    words = [" " + w for w in dd.NAMES + dd.PLACES + dd.OBJECTS + dd.ANIMALS]
    multi = [w for w in words if len(fast.encode(w, add_special_tokens=False)) != 1]
    if multi:
        raise SystemExit(f"tokenizer: these words are not single tokens: {multi[:20]}; raise --vocab")
    return fast


def pack(docs_ids: list[list[int]], ctx: int, bos: int) -> torch.Tensor:
    """Rows of ``ctx`` tokens, each a run of whole ``[BOS, doc...]`` documents; the tail of a row
    is padded with ``-1`` (masked out of the loss). ``[rows, ctx]`` int64."""
    rows, cur = [], []
    for ids in docs_ids:
        piece = [bos] + ids[: ctx - 1]
        if len(cur) + len(piece) > ctx:
            rows.append(cur + [-1] * (ctx - len(cur)))
            cur = []
        cur += piece
    if cur:
        rows.append(cur + [-1] * (ctx - len(cur)))
    return torch.tensor(rows, dtype=torch.long)


def build_corpus(args, rng: random.Random):
    n_text = args.steps * args.batch * 10 // 2 + 2000
    docs = text_docs(rng, n_text, args.mix, args.entity_share)
    tokenizer = train_tokenizer(docs[:20000], args.vocab)
    enc = tokenizer(docs, add_special_tokens=False)["input_ids"]
    specials = set(tokenizer.all_special_ids)
    vocab_ids = [i for i in range(len(tokenizer)) if i not in specials]
    # repeated random-token documents: enough that they are mix[2] of all documents
    n_rep = int(len(enc) * args.mix[2] / (args.mix[0] + args.mix[1]))
    reps = [dd.repeated_tokens(rng, vocab_ids, rng.randint(*args.rep_len), rng.randint(*args.rep_times))
            for _ in range(n_rep)]
    all_docs = enc + reps
    rng.shuffle(all_docs)
    rows = pack(all_docs, args.ctx, tokenizer.bos_token_id)
    return tokenizer, rows, {"text_docs": len(enc), "repeat_docs": n_rep, "rows": len(rows)}


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, tokenizer, n_ioi: int = 200) -> dict:
    """The numbers the tests check, from the HF model directly (the bridge is tested elsewhere)."""
    model.eval()
    out: dict = {}
    bos = tokenizer.bos_token_id
    # induction: loss on the first vs second repeat of 50 random tokens
    gen = torch.Generator().manual_seed(1234)
    specials = set(tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
    seq = pool[torch.randint(len(pool), (16, 50), generator=gen)]
    toks = torch.cat([torch.full((16, 1), bos), seq, seq], 1)
    logits = model(toks).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, toks[:, 1:, None])[..., 0]
    out["repeat_loss_first"] = -lp[:, 1:50].mean().item()
    out["repeat_loss_second"] = -lp[:, 50:].mean().item()
    for split in ("train", "heldout"):
        prompts = dd.ioi_prompts(n_ioi, split=split, seed=99)
        diffs, top = [], 0
        for p in prompts:
            ids = torch.tensor([[bos] + tokenizer.encode(p.text, add_special_tokens=False)])
            last = model(ids).logits[0, -1]
            io = tokenizer.encode(p.io, add_special_tokens=False)[0]
            s = tokenizer.encode(p.s, add_special_tokens=False)[0]
            diffs.append((last[io] - last[s]).item())
            top += int(last.argmax().item() == io)
        out[f"ioi_{split}_logit_diff"] = sum(diffs) / len(diffs)
        out[f"ioi_{split}_top1"] = top / len(prompts)
    model.train()
    return out


# -- training curve plot (plain SVG, no plotting dependency) -------------------------------------
def curve_svg(steps: list[int], losses: list[float], evals: list[dict]) -> str:
    w, h, pad = 640, 320, 48
    x_max, y_max = max(steps), max(losses) * 1.05

    def xy(s, v):
        return pad + (w - 2 * pad) * s / x_max, h - pad - (h - 2 * pad) * v / y_max

    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, v) for s, v in zip(steps, losses, strict=True)))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>',
             f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">training step</text>',
             f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">'
             f'training loss (nats/token)</text>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">workbench-demo: '
             f'training loss; red: IOI held-out logit diff / 2</text>']
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        x, y = xy(x_max * frac, y_max * frac)
        parts.append(f'<text x="{x:.1f}" y="{h - pad + 16}" text-anchor="middle">{int(x_max * frac)}</text>')
        parts.append(f'<text x="{pad - 6}" y="{y:.1f}" text-anchor="end">{y_max * frac:.1f}</text>')
    if evals:
        ev = " ".join(f"{x:.1f},{y:.1f}" for x, y in
                      (xy(e["step"], max(0.0, min(y_max, e["ioi_heldout_logit_diff"] / 2))) for e in evals))
        parts.append(f'<polyline fill="none" stroke="#d62728" stroke-dasharray="4 3" points="{ev}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in DEFAULTS.items():
        if k == "mix":
            ap.add_argument("--mix", type=float, nargs=3, default=v,
                            help="stories, IOI, repeated-token document proportions")
        elif k.startswith("rep_"):
            ap.add_argument(f"--{k.replace('_', '-')}", type=int, nargs=2, default=v,
                            help="min and max (repeated-token documents)")
        else:
            ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ap.add_argument("--out", default=str(ROOT / "workbench" / "data" / "demo"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "demo_training_curve.svg"))
    ap.add_argument("--eval-every", type=int, default=500)
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.time()
    tokenizer, rows, corpus_stats = build_corpus(args, rng)
    print(f"corpus: {corpus_stats}, vocab {len(tokenizer)}, built in {time.time() - t0:.0f}s", flush=True)

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if args.arch == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.ctx, n_embd=args.d_model,
                            n_layer=args.n_layers, n_head=args.n_heads, n_inner=4 * args.d_model,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        model = GPT2LMHeadModel(config)
    elif args.arch == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=args.ctx,
                             hidden_size=args.d_model, num_hidden_layers=args.n_layers,
                             num_attention_heads=args.n_heads, num_key_value_heads=args.n_heads,
                             intermediate_size=(8 * args.d_model // 3 + 31) // 32 * 32,
                             tie_word_embeddings=True, **ids)
        model = LlamaForCausalLM(config)
    else:
        raise SystemExit(f"--arch must be gpt2 or llama, got {args.arch!r}")
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    # an exponential moving average of the weights is what ships (and what is evaluated): it is
    # much less sensitive to where the last steps happened to leave the weights
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema)) if args.ema else None
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(rows), generator=gen)
    log_steps, log_losses, evals = [], [], []
    t_train = time.time()
    running = None
    for step in range(args.steps):
        idx = order[(step * args.batch + torch.arange(args.batch)) % len(rows)]
        batch = rows[idx]
        inputs = batch.clamp(min=0)
        labels = batch.clone()
        labels[labels < 0] = -100
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=inputs, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % 10 == 0 or step == args.steps - 1:
            log_steps.append(step)
            log_losses.append(round(running, 4))
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            ev = evaluate(ema.module if ema is not None else model, tokenizer, n_ioi=100)
            ev["step"] = step + 1
            evals.append(ev)
            rate = (step + 1) * args.batch * args.ctx / (time.time() - t_train)
            print(f"step {step + 1}: loss {running:.3f}, {rate:.0f} tok/s, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in ev.items() if k != "step"), flush=True)

    if ema is not None:
        model = ema.module
    model.eval()
    final = evaluate(model, tokenizer, n_ioi=400)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "plot")},
           "parameters": n_params, "corpus": corpus_stats,
           "train_seconds": round(time.time() - t_train), "total_seconds": round(time.time() - t0),
           "torch": torch.__version__, "final_eval": final, "evals": evals,
           "curve": {"step": log_steps, "loss": log_losses}}
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    plot = Path(args.plot)
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot.write_text(curve_svg(log_steps, log_losses, evals))
    print(json.dumps(final, indent=1))
    print(f"wrote {out} and {plot} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
