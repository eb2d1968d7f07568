"""notebooks/01_attention_and_induction.ipynb: patterns, head scores, induction, ablation."""

from ._cells import code, md

CELLS = [
    md("""
        # Attention and induction heads

        A head's attention pattern says, for every query (destination) position, how it spreads
        one unit of attention over the key (source) positions up to itself. This notebook reads
        the demo model's patterns, scores every head on repeated random tokens (previous-token and
        induction heads, Olsson et al. 2022), shows induction at work on repeated text, and
        ablates heads to see which ones the model needs to continue a repeat. Reference:
        [`docs/analyses.md`](../docs/analyses.md); the panel is described in
        [`docs/panels.md`](../docs/panels.md).
    """),
    code("""
        import plotly.express as px
        import torch

        from workbench import Bridge, attention_patterns, head_scores
        from workbench.head_scores import induction_scores, repeated_random_tokens

        bridge = Bridge.from_pretrained('workbench-demo')
        cfg = bridge.cfg
        prompt = 'When Nora and Felix went to the garden, Felix gave a drink to'
        print(bridge)
    """),
    md("""
        ## The patterns of one prompt

        `attention_patterns` runs the prompt once, keeping only `blocks.{L}.attn.hook_pattern`,
        and returns a labelled result on the CPU. Two things hold for every causal model: each
        query's weights sum to 1, and nothing attends to a later position.
    """),
    code("""
        pats = attention_patterns(bridge, prompt)  # all layers
        print(tuple(pats.pattern.shape), '= [layers, heads, query_pos, key_pos]')
        row_sums = pats.pattern.sum(-1)
        assert torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-5)
        assert (pats.pattern.triu(diagonal=1) == 0).all()

        # the same tensors the bridge's hook points give
        _, cache = bridge.run_with_cache(prompt, names_filter=lambda name: name.endswith('hook_pattern'))
        for L in range(cfg.n_layers):
            torch.testing.assert_close(pats.pattern[L], cache['pattern', L][0])

        # the strongest edges from the last token, over all heads
        pats.to_dataframe().query('query == query.max()').nlargest(5, 'weight')
    """),
    code("""
        labels = [f'{i}:{t}' for i, t in enumerate(pats.str_tokens)]
        L = 1
        fig = px.imshow(pats.pattern[L].numpy(), facet_col=0, facet_col_wrap=2, zmin=0, zmax=1,
                        x=labels, y=labels, color_continuous_scale='Blues', height=700,
                        labels=dict(x='key', y='query', color='attention'))
        for a in fig.layout.annotations:
            a.text = f'L{L}H{a.text.split("=")[1]}'
        fig.show()
    """),
    md("""
        ## Scoring every head

        On random tokens nothing but position and repetition can steer attention, so
        `head_scores` runs the model once on `[BOS, r_1..r_n, r_1..r_n]` (8 sequences, n = 50) and
        reads four mean attention weights per head:

        - **previous-token**: from position i to i - 1;
        - **induction**: from each token of the second copy to the token right *after* its first
          occurrence (the token that should come next);
        - **duplicate-token**: to the first occurrence itself;
        - **first-token**: to position 0 (a resting place, an "attention sink").
    """),
    code("""
        scores = head_scores(bridge)
        fig = px.imshow(torch.stack([scores[k] for k in scores.scores]).numpy(), facet_col=0, zmin=0, zmax=1,
                        color_continuous_scale='Blues', labels=dict(x='head', y='layer', color='score'))
        for a, k in zip(fig.layout.annotations, scores.scores, strict=True):
            a.text = k
        fig.show()
        print(scores.classify(0.4))
        assert scores['previous_token'].max() > 0.5 and scores['induction'].max() > 0.5
        scores.to_dataframe().round(2)
    """),
    md("""
        ### The induction score by hand

        The score is a plain average over the cached patterns: query positions `n+1 .. 2n`, key
        position `q - n + 1`.
    """),
    code("""
        n = 50
        rep = repeated_random_tokens(bridge, n=n, batch=8, seed=0)  # what head_scores ran: [8, 1 + 2n]
        assert torch.equal(rep[:, 1:n + 1], rep[:, n + 1:])
        _, cache = bridge.run_with_cache(rep, names_filter=lambda name: name.endswith('hook_pattern'))
        q = torch.arange(n + 1, 2 * n + 1)
        by_hand = torch.stack([cache['pattern', L][:, :, q, q - n + 1].mean(dim=(0, 2))
                               for L in range(cfg.n_layers)])
        torch.testing.assert_close(by_hand, scores['induction'])
        (top_label, top_score), = scores.top('induction', 1)
        layer, head = (int(x) for x in top_label[1:].split('H'))  # 'L3H3' -> 3, 3
        print(f'strongest induction head: {top_label} ({top_score:.2f})')
    """),
    md("""
        ## Induction at work

        The first copy of a random sequence is unpredictable (about ln(vocabulary size) nats per
        token); the second copy is easy for a model with induction heads.
    """),
    code("""
        with torch.no_grad():
            # [batch, 2n]: the loss of predicting token i + 1 at position i
            per_token = bridge(rep, return_type='loss', loss_per_token=True)
        first, second = per_token[:, :n].mean().item(), per_token[:, n:].mean().item()
        print(f'loss on the first copy {first:.2f} nats/token, on the second {second:.2f} '
              f'(ln vocab = {torch.tensor(cfg.d_vocab).log():.2f})')
        assert second < first / 2
        px.line(per_token.mean(0).numpy(), labels=dict(index='position', value='loss (nats)'),
                title='per-token loss, mean over 8 sequences').show()
    """),
    md("""
        The strongest induction head on one of those sequences: an off-diagonal stripe, n - 1 to
        the left of the diagonal, in the second half.
    """),
    code("""
        one = attention_patterns(bridge, rep[0], layers=[layer]).head(layer, head)  # [query, key]
        px.imshow(one.numpy(), zmin=0, zmax=1, color_continuous_scale='Blues',
                  labels=dict(x='key', y='query', color='attention'),
                  title=f'{top_label} on one repeated random sequence').show()
        stripe = one[q, q - n + 1]
        print(f'mean attention on the stripe: {stripe.mean():.2f}')
        torch.testing.assert_close(stripe.mean(), induction_scores(bridge, rep[:1])[layer, head])
    """),
    md("""
        ## Ablation: which heads does the repeat need?

        Zero the output of one head (`hook_z`, `[batch, pos, n_heads, d_head]`) and measure the
        loss on the second copy again. Induction needs two steps: a previous-token head writes
        "the token before me was A" into each position, and an induction head in a later layer
        looks for the position whose previous token matches its own token. Knocking out either
        step hurts.
    """),
    code("""
        def zero_heads(heads):
            \"\"\"Forward hooks that zero the outputs of the (layer, head) pairs in `heads`.\"\"\"
            def hook(z, hook):  # z: [batch, pos, n_heads, d_head]
                layer = int(hook.name.split('.')[1])
                for L, H in heads:
                    if L == layer:
                        z[:, :, H] = 0
                return z
            return [(f'blocks.{L}.attn.hook_z', hook) for L in sorted({L for L, _ in heads})]


        @torch.no_grad()
        def repeat_loss(heads=()):
            per_token = bridge.run_with_hooks(rep, fwd_hooks=zero_heads(heads), return_type='loss',
                                              loss_per_token=True)
            return per_token[:, n:].mean().item()


        base = repeat_loss()
        increase = torch.tensor([[repeat_loss([(L, H)]) - base for H in range(cfg.n_heads)]
                                 for L in range(cfg.n_layers)])
        px.imshow(increase.numpy(), color_continuous_scale='Reds', labels=dict(x='head', y='layer',
                  color='loss increase'), title='loss on the repeat: increase when one head is zeroed').show()

        induction_heads = [(L, H) for L in range(cfg.n_layers) for H in range(cfg.n_heads)
                           if scores['induction'][L, H] > 0.5]
        all_off = repeat_loss(induction_heads)
        print(f'loss on the repeat {base:.3f}; '
              f'with every induction head ({induction_heads}) zeroed: {all_off:.3f}')
        assert all_off > 2 * base + 1
        assert bridge.attached_hooks() == []  # run_with_hooks detached them
    """),
    md("""
        ## The attention panel

        Every head of a layer as a thumbnail with its scores, large views of the chosen head and
        of picked heads, and a token strip: hover a query to see where it attends, or a key to see
        who attends to it. On a sentence written twice, the induction head's stripe shows up on
        real text.
    """),
    code("""
        from widgets import AttentionPanel

        text = 'Nora found a blue key in the old barn, and Felix hid it under a red stone.'
        repeated = text + ' ' + text
        panel = AttentionPanel(bridge, repeated, layer=layer, head=head)
        panel
    """),
    code("""
        assert panel.tokens == bridge.to_str_tokens(repeated) and panel.error == ''
        (prev_label, _), = scores.top('previous_token', 1)
        panel.heads = [tuple(int(x) for x in prev_label[1:].split('H'))]  # also show the previous-token head
        panel.position = len(panel.tokens) - 4  # pin a query, as a click on it does
        print(panel.views())
        print(panel.code)

        ns = {'bridge': bridge}
        exec(panel.code, ns)  # "copy as code" reproduces the view
        torch.testing.assert_close(ns['patterns'].head(layer, head),
                                   attention_patterns(bridge, repeated, layers=[layer]).head(layer, head))
    """),
    md("""
        And the model uses it: on the second copy of the sentence its top prediction is mostly
        the next word of the first copy.
    """),
    code("""
        tokens = bridge.to_tokens(repeated)  # [1, pos]
        with torch.no_grad():
            hit = bridge(tokens)[0, :-1].argmax(-1) == tokens[0, 1:]  # [pos - 1]: top-1 correct?
        half = len(bridge.to_str_tokens(text)) - 1  # predictions of the first copy's tokens
        acc_first, acc_second = hit[:half].float().mean().item(), hit[half + 1:].float().mean().item()
        print(f'top-1 accuracy: first copy {acc_first:.0%}, second copy {acc_second:.0%}')
        assert acc_second > acc_first
    """),
]
