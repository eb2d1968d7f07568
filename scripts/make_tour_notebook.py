"""Write and execute notebooks/tour.ipynb (the notebook `make demo` opens).

The tour runs on the embedded demo model (workbench/data/demo, trained by
scripts/train_demo_model.py), offline. Run: .venv/bin/python scripts/make_tour_notebook.py
"""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

CELLS = [
    ("md", "# Tour of the workbench\n\nThe bridge wraps a HuggingFace causal LM in "
           "TransformerLens-named hook points without re-implementing it. This tour runs offline "
           "on the embedded demo model: a 4-layer Llama-style model trained on this repo's own "
           "synthetic corpus (see `docs/demo_model.md`), small enough to run anywhere and trained "
           "long enough to have previous-token heads, induction heads and an indirect-object-"
           "identification (IOI) circuit."),
    ("code", "import torch\n\nfrom workbench import Bridge\n\n"
             "bridge = Bridge.from_pretrained('workbench-demo')  # or a hub name / save_pretrained folder\n"
             "bridge"),
    ("md", "## The workbench\n\nAll panels over one prompt, linked: click a head pair in the "
           "composition map to open both heads in the attention view; click a logit-lens cell "
           "to pick a layer and position; in the patching panel, press *run sweep* (it runs in the "
           "background, with a progress bar and cancel), then click any cell to patch it alone and "
           "see the tokens that rose and fell. Every panel has *copy as code* (the Python call "
           "behind the view) and PNG/HTML export. Reference: `docs/panels.md`."),
    ("code", "from widgets import Workbench\n\n"
             "wb = Workbench(bridge,\n"
             "               prompt='When Nora and Felix went to the garden, Felix gave a drink to',\n"
             "               corrupted='When Nora and Felix went to the garden, Nora gave a drink to',\n"
             "               answer=' Nora', wrong=' Felix')\n"
             "wb"),
    ("md", "The panels are plain Python objects too: their state is in traits, and their results "
           "are the analyses' results."),
    ("code", "print(wb.selection)\n"
             "print(wb.logit_lens.code)\n"
             "wb.composition.result.top(3)"),
    ("md", "## Which hooks exist, and what they cost\n\nThe hook picker above shows the same "
           "thing as a tree; here it is as text."),
    ("code", "for name in bridge.hook_names()[:14]:\n"
             "    info = bridge.hook_info(name, seq_len=32)\n"
             "    print(f'{name:34s} {str(info.shape):42s} {info.bytes_per_token:6d} B/token')"),
    ("md", "## What does the model predict?\n\nAn IOI sentence with names the model never saw "
           "in an IOI sentence during training."),
    ("code", "prompt = 'When Nora and Felix went to the garden, Felix gave a drink to'\n"
             "logits = bridge(prompt)\n"
             "probs = logits[0, -1].softmax(-1)\n"
             "top = probs.topk(5)\n"
             "for p, i in zip(top.values, top.indices, strict=True):\n"
             "    print(f'{bridge.to_string(i)!r:12} {p.item():.3f}')\n"
             "io, s = bridge.to_single_token(' Nora'), bridge.to_single_token(' Felix')\n"
             "print('logit difference IO - S:', (logits[0, -1, io] - logits[0, -1, s]).item())"),
    ("md", "## Run with a cache"),
    ("code", "logits, cache = bridge.run_with_cache(prompt)\n"
             "print(logits.shape, len(cache), 'cached activations')\n"
             "print(bridge.to_str_tokens(prompt))\n"
             "cache['pattern', 0].shape  # [batch, n_heads, query_pos, key_pos]"),
    ("md", "## Identities you can check\n\nThe residual stream after a block is what came in plus "
           "what attention and the MLP wrote."),
    ("code", "L = 1\n"
             "resid = cache['resid_pre', L] + cache['attn_out', L] + cache['mlp_out', L]\n"
             "(resid - cache['resid_post', L]).abs().max()"),
    ("md", "## Induction heads\n\nOn a random token sequence repeated once, an induction head "
           "attends from each token of the repeat to the token that followed its first "
           "occurrence. The score is that attention weight, averaged (see "
           "`workbench.head_scores`)."),
    ("code", "import plotly.express as px\n\n"
             "from workbench.head_scores import (\n"
             "    induction_scores,\n    previous_token_scores,\n    repeated_random_tokens,\n)\n\n"
             "rep = repeated_random_tokens(bridge, n=40, batch=8)\n"
             "ind = induction_scores(bridge, rep)\n"
             "prev = previous_token_scores(bridge, rep)\n"
             "fig = px.imshow(torch.stack([prev, ind]).numpy(), facet_col=0, zmin=0, zmax=1,\n"
             "                labels=dict(x='head', y='layer', color='score'),\n"
             "                color_continuous_scale='Blues')\n"
             "titles = ['previous-token score', 'induction score']\n"
             "for a, t in zip(fig.layout.annotations, titles, strict=True):\n"
             "    a.text = t\n"
             "fig.show()\n"
             "layer, head = divmod(int(ind.argmax()), bridge.cfg.n_heads)\n"
             "print(f'strongest induction head: L{layer}H{head} ({ind.max():.2f})')"),
    ("md", "## Intervene with a hook\n\nZero-ablate that induction head and watch the loss on "
           "the repeated half go up."),
    ("code", "def ablate(z, hook):\n"
             "    z[:, :, head] = 0  # z: [batch, pos, n_heads, d_head]\n"
             "    return z\n\n"
             "def repeat_loss(**kw):\n"
             "    per_tok = bridge.run_with_hooks(rep, return_type='loss', loss_per_token=True, **kw)\n"
             "    return per_tok[:, 40:].mean().item()  # predictions inside the repeat\n\n"
             "print(f'loss on the repeat: {repeat_loss():.3f} -> '\n"
             "      f'{repeat_loss(fwd_hooks=[(f\"blocks.{layer}.attn.hook_z\", ablate)]):.3f} '\n"
             "      f'with L{layer}H{head} ablated')\n"
             "bridge.attached_hooks()  # nothing left attached"),
]


def build(path: Path, cells: list[tuple[str, str]]) -> None:
    """Write ``cells`` (("md" | "code", source) pairs) to ``path`` and execute it in place."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md"
                else nbformat.v4.new_code_cell(src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(Path(__file__).resolve().parents[1] / "notebooks" / "tour.ipynb", CELLS)
