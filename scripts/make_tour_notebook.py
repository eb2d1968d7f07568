"""Write and execute notebooks/tour.ipynb (the notebook `make demo` opens).

Until the embedded demo model lands, the tour runs on a tiny random-init GPT-2 built offline,
so it shows how the bridge works, not real circuits. Run: .venv/bin/python scripts/make_tour_notebook.py
"""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

CELLS = [
    ("md", "# Tour of the workbench bridge\n\nThe bridge wraps a HuggingFace causal LM in "
           "TransformerLens-named hook points without re-implementing it. This tour runs on a "
           "tiny random-init GPT-2 built offline (the trained demo model comes next), so the "
           "numbers are noise, but every call is the real one."),
    ("code", "from workbench import Bridge\nfrom workbench.toy import char_tokenizer, tiny_model\n\n"
             "bridge = Bridge.from_hf(tiny_model('gpt2'), char_tokenizer())\n"
             "# with weights on disk: Bridge.from_pretrained('gpt2') or a save_pretrained folder\n"
             "bridge"),
    ("md", "## Which hooks exist, and what they cost"),
    ("code", "for name in bridge.hook_names()[:14]:\n"
             "    info = bridge.hook_info(name, seq_len=32)\n"
             "    print(f'{name:34s} {str(info.shape):42s} {info.bytes_per_token:6d} B/token')"),
    ("md", "## Run with a cache"),
    ("code", "prompt = 'When Mary and John went to the store, John gave a drink to'\n"
             "logits, cache = bridge.run_with_cache(prompt)\n"
             "print(logits.shape, len(cache), 'cached activations')\n"
             "print(bridge.to_str_tokens(prompt)[:8])\n"
             "cache['pattern', 0].shape  # [batch, n_heads, query_pos, key_pos]"),
    ("md", "## Identities you can check\n\nThe residual stream after a block is what came in plus "
           "what attention and the MLP wrote."),
    ("code", "L = 1\n"
             "resid = cache['resid_pre', L] + cache['attn_out', L] + cache['mlp_out', L]\n"
             "(resid - cache['resid_post', L]).abs().max()"),
    ("md", "## Intervene with a hook\n\nZero-ablate head 2 of layer 0 and see how much the "
           "next-token loss moves."),
    ("code", "def ablate_head(z, hook, head=2):\n"
             "    z[:, :, head] = 0  # z: [batch, pos, n_heads, d_head]\n"
             "    return z\n\n"
             "clean = bridge(prompt, return_type='loss')\n"
             "ablated = bridge.run_with_hooks(prompt, return_type='loss',\n"
             "                                fwd_hooks=[('blocks.0.attn.hook_z', ablate_head)])\n"
             "print(f'loss {clean.item():.4f} -> {ablated.item():.4f}')\n"
             "bridge.attached_hooks()  # nothing left attached"),
]


def build(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md"
                else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(Path(__file__).resolve().parents[1] / "notebooks" / "tour.ipynb")
