"""notebooks/02_logit_lens_and_dla.ipynb: the logit lens and direct logit attribution."""

from ._cells import code, md

CELLS = [
    md("""
        # The logit lens and direct logit attribution

        Two ways to read the residual stream in the vocabulary's terms. The **logit lens** applies
        the model's final norm and unembedding to the residual stream after each block: what would
        the model predict if it stopped there? **Direct logit attribution** (DLA) splits the final
        residual stream into what each head, MLP and the embedding wrote, and measures how much
        each part pushes the answer's logit up against a wrong answer's. Both run on the demo
        model's IOI prompt. Reference: [`docs/analyses.md`](../docs/analyses.md).
    """),
    code("""
        import plotly.express as px
        import torch

        from workbench import Bridge, direct_logit_attribution, logit_lens

        bridge = Bridge.from_pretrained('workbench-demo')
        cfg = bridge.cfg
        prompt = 'When Nora and Felix went to the garden, Felix gave a drink to'
        io, s = ' Nora', ' Felix'  # indirect object (the answer) and subject
    """),
    md("""
        ## The logit lens

        Rows are residual sites in forward order (`"2_pre"`, `"2_mid"`, `"2_post"`, ...), columns
        are positions. Only the top-k tokens and a target's statistics are kept, never the full
        `[rows, pos, d_vocab]` logits.
    """),
    code("""
        lens = logit_lens(bridge, prompt, sites='all', target=io, k=5)
        print(lens.rows)
        fig = px.imshow(lens.target_prob.numpy(), zmin=0, zmax=1, aspect='auto',
                        x=[f'{i}:{t}' for i, t in enumerate(lens.str_tokens)], y=lens.rows,
                        labels=dict(x='position', y='residual site', color=f'P({io!r})'),
                        color_continuous_scale='Blues', title=f'logit lens: probability of {io!r}')
        fig.show()
        assert lens.top_strs[-1][-1][0] == io  # the model's answer is the indirect object
        first = next(r for r, rank in zip(lens.rows, lens.target_rank[:, -1], strict=True) if rank == 0)
        print(f'{io!r} is the top token at the last position from row {first} on')
        lens.to_dataframe().query('position == position.max()')[
            ['row', 'top1', 'top1_prob', 'target_prob', 'target_rank', 'entropy']]
    """),
    md("""
        ### Identities

        The last row is the model itself: its top-k tokens, probabilities and entropy are the
        model's softmax. A block's `resid_pre` is the previous block's `resid_post`, so those rows
        agree. And a middle row is nothing more than the final norm and unembedding applied by hand
        to the cached residual stream (the demo model uses RMSNorm).
    """),
    code("""
        with torch.no_grad():
            logits = bridge(prompt)[0]  # [pos, d_vocab]
        probs = logits.softmax(-1)
        top = probs.topk(5, dim=-1)
        assert lens.rows[-1] == f'{cfg.n_layers - 1}_post'
        assert torch.equal(lens.top_tokens[-1], top.indices)
        torch.testing.assert_close(lens.top_probs[-1], top.values)
        torch.testing.assert_close(lens.entropy[-1], -(probs * probs.log()).sum(-1))

        for L in range(cfg.n_layers - 1):
            a, b = lens.rows.index(f'{L}_post'), lens.rows.index(f'{L + 1}_pre')
            assert torch.equal(lens.top_tokens[a], lens.top_tokens[b])

        _, cache = bridge.run_with_cache(prompt)
        resid = cache['resid_post', 1][0]  # [pos, d_model]
        norm_weight = bridge.model.model.norm.weight  # HF's own final RMSNorm
        normed = resid * torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + cfg.eps) * norm_weight
        by_hand = (normed @ bridge.W_U).softmax(-1)  # [pos, d_vocab]
        torch.testing.assert_close(lens.top_probs[lens.rows.index('1_post')], by_hand.topk(5, dim=-1).values)
        print('the last row is the model; 1_post is norm + unembedding of resid_post 1')
    """),
    md("""
        ## Direct logit attribution

        The final residual stream at the last position is a sum: token embedding + every head's
        `z_h @ W_O[h]` + every layer's output bias + every MLP's output. Each part goes through the
        final norm with the norm's *cached* scale from the real run (so the parts stay additive)
        and then onto `W_U[:, IO] - W_U[:, S]`. The parts add up to the model's own logit
        difference, plus the constant terms no component owns (`bias_term`: the final norm's bias
        and the unembedding's bias, both absent in the demo model).
    """),
    code("""
        dla = direct_logit_attribution(bridge, prompt, io, s)
        diff = logits[-1, bridge.to_single_token(io)] - logits[-1, bridge.to_single_token(s)]
        parts = dla.values.sum(0) + dla.bias_term  # [batch]
        print(f'logit diff {dla.logit_diff.item():.3f}; sum of parts {parts.item():.3f}')
        torch.testing.assert_close(dla.logit_diff[0], diff)
        torch.testing.assert_close(parts, dla.logit_diff, rtol=1e-4, atol=1e-4)
        fig = px.imshow(dla.by_head().numpy(), color_continuous_scale='RdBu', color_continuous_midpoint=0,
                        labels=dict(x='head', y='layer', color='logit diff'),
                        title='direct effect of each head on logit(IO) - logit(S)')
        fig.show()
        print({k: [round(float(x), 2) for x in v.reshape(-1)] for k, v in dla.by_layer().items()})
        dla.top(6)
    """),
    md("""
        ### The same numbers from the cache

        `ActivationCache` has TransformerLens's decompositions: `stack_head_results` gives each
        head's output, `logit_attrs` scales a stack by the final norm's cached scale and projects
        it on the logit direction. Same answer per head.
    """),
    code("""
        stack, labels = cache.stack_head_results(pos_slice=-1, return_labels=True)  # [heads, batch, d_model]
        per_head = cache.logit_attrs(stack, bridge.to_single_token(io), bridge.to_single_token(s),
                                     pos_slice=-1)  # [heads, batch]
        torch.testing.assert_close(per_head[:, 0], dla.by_head().flatten(), rtol=1e-4, atol=1e-5)
        print(labels[:4], '...')
    """),
    md("""
        ### Over a batch of prompts

        Several IOI prompts with held-out names, of different lengths (the bridge pads them and
        DLA reads each prompt's last real token). The identity holds prompt by prompt.
    """),
    code("""
        prompts = [
            'When Nora and Felix went to the garden, Felix gave a drink to',
            'When Greta and Miles went to the market, Miles gave a book to',
            'Yesterday Hazel and Rufus cleaned the kitchen. Rufus offered a cup to',
            'As Felix and Greta left the park, Greta threw a ball to',
        ]
        answers, wrongs = [' Nora', ' Greta', ' Hazel', ' Felix'], [' Felix', ' Miles', ' Rufus', ' Greta']
        batch = direct_logit_attribution(bridge, prompts, answers, wrongs)
        parts = batch.values.sum(0) + batch.bias_term  # [batch]
        torch.testing.assert_close(parts, batch.logit_diff, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batch.values[:, 0], dla.values[:, 0], rtol=1e-4, atol=1e-4)  # same prompt
        print('logit diff per prompt:', [round(v, 2) for v in batch.logit_diff.tolist()])
        batch.to_dataframe().sort_values('contribution').iloc[[0, 1, -2, -1]]
    """),
    md("""
        ## The logit lens panel

        A (residual site x position) heatmap labelled with the top token, coloured by its
        probability, by a target token's probability or by the entropy; hover a cell for the
        top-k. A click on a cell sets the shared selection's layer and position.
    """),
    code("""
        from widgets import LogitLensPanel

        panel = LogitLensPanel(bridge, prompt, sites='all', target=io)
        panel
    """),
    code("""
        assert panel.error == '' and panel.result.top_strs == lens.top_strs
        panel.target = s  # the panel recomputes
        assert panel.result.target_str == s
        panel.colour_by = 'entropy'
        print(panel.code)

        ns = {'bridge': bridge}
        exec(panel.code, ns)  # "copy as code" gives the same result
        assert ns['lens'].top_strs == panel.result.top_strs
        assert torch.equal(ns['lens'].target_rank, panel.result.target_rank)
    """),
]
