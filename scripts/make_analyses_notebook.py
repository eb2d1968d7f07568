"""Write and execute notebooks/analyses.ipynb: one section per analysis, on the demo model.

Run: .venv/bin/python scripts/make_analyses_notebook.py (offline; about a minute on 2 cores).
"""

from pathlib import Path

from make_tour_notebook import build

PROMPT = "When Nora and Felix went to the garden, Felix gave a drink to"

CELLS = [
    ("md", "# Analyses\n\nEach section runs one analysis of `workbench` on the embedded demo model "
           "(4 layers x 4 heads, trained on this repo's synthetic corpus; see `docs/demo_model.md`) "
           "and checks the identity that makes it trustworthy. Every analysis returns a frozen, "
           "labelled result with `.to_dataframe()`; the panels draw exactly these results. "
           "Reference: `docs/analyses.md`."),
    ("code", "import plotly.express as px\nimport torch\n\n"
             "from workbench import (\n    Bridge,\n    composition_scores,\n"
             "    direct_logit_attribution,\n    head_scores,\n    logit_lens,\n)\n\n"
             "bridge = Bridge.from_pretrained('workbench-demo')\n"
             f"prompt = {PROMPT!r}\n"
             "io, s = ' Nora', ' Felix'  # indirect object (the answer) and subject"),
    ("md", "## Weights and circuits\n\nWeights come in TransformerLens's shapes, read from the HF "
           "modules by each family's declared layout. `QK` and `OV` are `FactoredMatrix` objects: "
           "products of the `[d_model, d_head]` factors, never materialised unless you ask "
           "(`.AB`)."),
    ("code", "print('W_Q', tuple(bridge.W_Q.shape), ' W_O', tuple(bridge.W_O.shape), ' W_U', "
             "tuple(bridge.W_U.shape))\n"
             "ov = bridge.OV[3, 3]  # one head's OV circuit, d_model x d_model, rank <= d_head\n"
             "print(ov)\n"
             "print('top singular values:', [round(v, 3) for v in ov.S[:5].tolist()])\n"
             "print('Frobenius norm:', round(float(ov.norm()), 3), '==', "
             "round(float(torch.linalg.matrix_norm(ov.AB)), 3))"),
    ("md", "## Weight processing\n\nOpt-in, as in TransformerLens: fold each norm's weight into "
           "the layer that reads it, and (LayerNorm models) centre the weights that write to the "
           "residual stream. The demo model uses RMSNorm, so only folding applies. The logits do "
           "not change."),
    ("code", "processed = Bridge.from_pretrained('workbench-demo', fold_ln=True)\n"
             "print(processed.processing)\n"
             "print('max |logit change|:', float((processed(prompt) - bridge(prompt)).abs().max()))"),
    ("md", "## Logit lens\n\nApply the final norm and unembedding to the residual stream after "
           "each block: what would the model predict if it stopped there? The last row is the "
           "model's own prediction."),
    ("code", "lens = logit_lens(bridge, prompt, sites='all', target=io, k=3)\n"
             "fig = px.imshow(lens.target_prob.numpy(), zmin=0, zmax=1, aspect='auto',\n"
             "                x=[f'{i}:{t}' for i, t in enumerate(lens.str_tokens)], y=lens.rows,\n"
             "                labels=dict(x='position', y='residual site', color=f'P({io!r})'),\n"
             "                color_continuous_scale='Blues', title=f'logit lens: probability of {io!r}')\n"
             "fig.show()\n"
             "lens.to_dataframe().query('position == position.max()')[\n"
             "    ['row', 'top1', 'top1_prob', 'target_prob', 'target_rank']]"),
    ("md", "## Direct logit attribution\n\nHow much each head, MLP and embedding writes directly "
           "toward `IO - S`, through the final norm with its cached scale. The contributions add "
           "up to the model's logit difference (minus bias terms; the demo model has none)."),
    ("code", "dla = direct_logit_attribution(bridge, prompt, io, s)\n"
             "print('logit diff', round(float(dla.logit_diff[0]), 3), ' sum of parts',\n"
             "      round(float(dla.values.sum() + dla.bias_term[0]), 3))\n"
             "fig = px.imshow(dla.by_head().numpy(), color_continuous_scale='RdBu',\n"
             "                color_continuous_midpoint=0,\n"
             "                labels=dict(x='head', y='layer', color='logit diff'),\n"
             "                title='direct effect of each head on logit(IO) - logit(S)')\n"
             "fig.show()\n"
             "dla.top(6)"),
    ("md", "## Head scores\n\nOne run on repeated random tokens gives four scores per head: "
           "previous-token, induction, duplicate-token and first-token (attention sink)."),
    ("code", "scores = head_scores(bridge)\n"
             "fig = px.imshow(torch.stack([scores[k] for k in scores.scores]).numpy(), facet_col=0,\n"
             "                zmin=0, zmax=1, color_continuous_scale='Blues',\n"
             "                labels=dict(x='head', y='layer', color='score'))\n"
             "for a, k in zip(fig.layout.annotations, scores.scores, strict=True):\n"
             "    a.text = k\n"
             "fig.show()\n"
             "scores.classify(0.4)"),
    ("md", "## Composition scores\n\nHow much a later head's queries (Q), keys (K) or values (V) "
           "read what an earlier head wrote: the Frobenius-norm ratio of the circuits paper, here "
           "corrected by the score random matrices of the same shapes would get. An induction "
           "head's keys read the previous-token head's output: K-composition."),
    ("code", "comp = composition_scores(bridge, 'k', baseline=True)\n"
             "labels = comp.labels\n"
             "fig = px.imshow(comp.matrix().numpy(), x=labels, y=labels, color_continuous_scale='RdBu',\n"
             "                color_continuous_midpoint=0,\n"
             "                labels=dict(x='later head (reads)', y='earlier head (writes)',\n"
             "                            color='K-comp - baseline'))\n"
             "fig.show()\n"
             "prev_head = scores.top('previous_token', 1)[0][0]\n"
             "ind_head = scores.top('induction', 1)[0][0]\n"
             "print('previous-token head', prev_head, ' induction head', ind_head)\n"
             "comp.top(5)"),
]


if __name__ == "__main__":
    build(Path(__file__).resolve().parents[1] / "notebooks" / "analyses.ipynb", CELLS)
