"""notebooks/03_composition.ipynb: weights, FactoredMatrix QK/OV circuits, composition scores."""

from ._cells import code, md

CELLS = [
    md("""
        # Weights, QK/OV circuits and composition

        A head does two things (Elhage et al. 2021): its **QK circuit** `W_Q W_K^T` decides where
        it attends, its **OV circuit** `W_V W_O` decides what it writes once it has attended. A
        later head *composes* with an earlier one when it reads what that head wrote: through its
        queries (Q-composition), its keys (K-composition) or its values (V-composition). An
        induction head is the classic case: its keys read a previous-token head's output. This
        notebook reads the demo model's weights in TransformerLens's shapes, works with the
        circuits as `FactoredMatrix` objects, and scores every pair of heads. Reference:
        [`docs/analyses.md`](../docs/analyses.md).
    """),
    code("""
        import plotly.express as px
        import torch

        from workbench import Bridge, FactoredMatrix, composition_scores, head_scores
        from workbench.composition import composition_scores_from_weights

        bridge = Bridge.from_pretrained('workbench-demo')
        cfg = bridge.cfg
        scores = head_scores(bridge)


        def head_of(label):
            \"\"\"'L2H0' -> (2, 0)\"\"\"
            layer, head = label[1:].split('H')
            return int(layer), int(head)


        prev_head = head_of(scores.top('previous_token', 1)[0][0])
        ind_head = head_of(scores.top('induction', 1)[0][0])
        print('strongest previous-token head', prev_head, ' strongest induction head', ind_head)
    """),
    md("""
        ## Weights in TransformerLens's shapes

        Read from the HF modules through each family's declared layout (never guessed from
        shapes), in the row-vector convention `x @ W`. Grouped-query models have `W_K`/`W_V`
        expanded per query head.
    """),
    code("""
        L, H, D, d_head = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head
        for name in ['W_E', 'W_Q', 'W_K', 'W_V', 'W_O', 'W_in', 'W_out', 'W_U']:
            print(f'{name:5s} {tuple(getattr(bridge, name).shape)}')
        assert bridge.W_Q.shape == (L, H, D, d_head) and bridge.W_O.shape == (L, H, d_head, D)
        assert bridge.W_U.shape == (D, cfg.d_vocab)
    """),
    md("""
        ## `FactoredMatrix`: circuits without materialising them

        `bridge.QK` and `bridge.OV` are `[n_layers, n_heads, d_model, d_model]` products kept as
        their two `[d_model, d_head]` / `[d_head, d_model]` factors. Indexing picks heads, `.AB`
        materialises, `.S` gives singular values from two small QRs and a `d_head x d_head` SVD,
        `.norm()` is the Frobenius norm, `.eigenvalues` are `BA`'s (the non-zero ones of `AB`),
        and `@` with a tensor or another factored matrix stays factored.
    """),
    code("""
        pl, ph = prev_head
        ov = bridge.OV[pl, ph]  # the previous-token head's OV circuit
        qk = bridge.QK[ind_head]  # the induction head's QK circuit
        print(ov)
        torch.testing.assert_close(ov.AB, bridge.W_V[pl, ph] @ bridge.W_O[pl, ph])
        torch.testing.assert_close(qk.AB, bridge.W_Q[ind_head] @ bridge.W_K[ind_head].T)
        assert torch.linalg.matrix_rank(ov.AB) <= d_head  # a d_model x d_model matrix of rank <= d_head
        torch.testing.assert_close(ov.S, torch.linalg.svdvals(ov.AB)[:d_head], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ov.norm(), torch.linalg.matrix_norm(ov.AB), rtol=1e-4, atol=1e-5)
        dense = torch.linalg.eigvals(ov.AB).abs().sort(descending=True).values[:d_head]
        torch.testing.assert_close(ov.eigenvalues.abs().sort(descending=True).values, dense,
                                   rtol=1e-3, atol=1e-4)
        print('top singular values:', [round(v, 3) for v in ov.S[:5].tolist()])
    """),
    md("""
        Products stay factored: the OV circuit in token space, `W_E @ OV @ W_U`
        (`[d_vocab, d_vocab]`, what attending to token *a* does to the logit of token *b*), keeps
        a `d_head` inner dimension, so its spectrum costs nothing.
    """),
    code("""
        full_ov = bridge.W_E @ ov @ bridge.W_U
        assert isinstance(full_ov, FactoredMatrix) and full_ov.mdim == d_head
        print(full_ov)
        print('its largest singular values:', [round(v, 2) for v in full_ov.S[:3].tolist()])
    """),
    md("""
        ## Composition scores

        The score of a sender head into a receiver head is
        `||W_A W_B||_F / (||W_A||_F ||W_B||_F)`, with `W_A` the sender's OV circuit and `W_B`
        the receiver's QK circuit (Q-composition), its transpose (K-composition) or its OV
        circuit (V-composition). Even random matrices of these shapes score about
        `1 / sqrt(d_model)` on average, so `baseline=True` subtracts what random matrices get:
        above 0 means above chance.
    """),
    code("""
        comp = composition_scores(bridge, 'k', baseline=True)
        labels = comp.labels
        fig = px.imshow(comp.matrix().numpy(), x=labels, y=labels, color_continuous_scale='RdBu',
                        color_continuous_midpoint=0,
                        labels=dict(x='later head (reads)', y='earlier head (writes)',
                                    color='K-comp - baseline'))
        fig.show()
        print(f'random baseline subtracted: {comp.baseline:.3f}')
        comp.top(5)
    """),
    md("""
        ### One score by hand

        The previous-token head's OV circuit times the induction head's transposed QK circuit: the
        "virtual weight" through which the induction head's keys read what the previous-token head
        wrote. Every product here stays factored.
    """),
    code("""
        def score(W_A, W_B):
            return ((W_A @ W_B).norm() / (W_A.norm() * W_B.norm())).item()


        by_hand = {'q': score(ov, qk), 'k': score(ov, qk.T), 'v': score(ov, bridge.OV[ind_head])}
        for kind, value in by_hand.items():
            raw = composition_scores(bridge, kind)
            assert abs(raw.scores[(*prev_head, *ind_head)].item() - value) < 1e-4
        assert abs(comp.scores[(*prev_head, *ind_head)].item() - (by_hand['k'] - comp.baseline)) < 1e-4
        print({kind: round(v - comp.baseline, 3) for kind, v in by_hand.items()}, '(minus the baseline)')

        # the induction head's keys read the previous-token head: K-composition, above chance and
        # stronger than its Q- and V-composition with the same head
        assert by_hand['k'] > comp.baseline and by_hand['k'] > max(by_hand['q'], by_hand['v'])
    """),
    md("""
        ### What the scores do not depend on

        A circuit can be split between its two factors in many ways (`W_V c` and `W_O / c` give
        the same OV), and a receiver's queries can be rescaled: the scores see only the products'
        directions.
    """),
    code("""
        W_Q, W_K, W_V, W_O = bridge.W_Q, bridge.W_K, bridge.W_V, bridge.W_O
        raw = composition_scores(bridge, 'k')
        moved = composition_scores_from_weights(W_Q * 2.0, W_K, W_V * 3.0, W_O / 3.0, 'k')
        torch.testing.assert_close(moved.scores, raw.scores, rtol=1e-4, atol=1e-5)
        print('unchanged')
    """),
    md("""
        ## The composition panel, linked to the attention panel

        The panel shows all Q/K/V scores of every head pair with a threshold slider and baseline
        subtraction. A click on a pair sets the shared selection's `heads`, and an attention
        panel on the same selection opens both heads large. Here both panels share a `Selection`
        (the `Workbench` does this for all of its panels), and we set the trait a click sets.
    """),
    code("""
        import ipywidgets

        from widgets import AttentionPanel, CompositionPanel, Selection

        text = 'Nora found a blue key in the old barn, and Felix hid it under a red stone.'
        selection = Selection(prompt=text + ' ' + text)
        comp_panel = CompositionPanel(bridge, kind='k', baseline=True, selection=selection)
        attn_panel = AttentionPanel(bridge, selection=selection)
        ipywidgets.VBox([comp_panel, attn_panel])
    """),
    code("""
        assert comp_panel.error == '' and attn_panel.error == ''
        assert comp_panel.result.top(3) == comp.top(3)
        comp_panel.heads = [prev_head, ind_head]  # what a click on that pair does: both heads,
        comp_panel.layer, comp_panel.head = ind_head  # and the receiver becomes the focused head
        assert attn_panel.heads == [prev_head, ind_head]  # the attention panel follows
        print(attn_panel.views())
        comp_panel.kind = 'v'
        assert comp_panel.result.kind == 'v'
        print(comp_panel.code)
    """),
]
