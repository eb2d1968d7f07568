"""notebooks/04_patching_ioi.ipynb: find the demo model's IOI circuit by patching."""

from ._cells import code, md

CELLS = [
    md("""
        # Finding the IOI circuit by patching

        In "When Nora and Felix went to the garden, Felix gave a drink to" the model should answer
        the indirect object (IO) ' Nora', not the subject (S) ' Felix'. The corrupted prompt
        differs in one token, the second subject, so its right answer flips to ' Felix'.
        **Activation patching** runs the corrupted prompt with one activation (a *cell*: a layer
        and position, or a head) taken from the clean run, and asks how much of the clean
        behaviour comes back. Sweeping every cell of a site locates the information; attribution
        patching estimates the same sweep from one backward pass; path patching asks which path
        out of a head carries the effect. The names are held out of the demo model's IOI training
        data. Reference: [`docs/patching.md`](../docs/patching.md).
    """),
    code("""
        import plotly.express as px
        import torch

        from workbench import (
            Bridge,
            CellPatcher,
            attention_patterns,
            attribution_sweep,
            estimate_cost,
            patch_sweep,
            path_patch,
            path_patch_sweep,
        )
        from workbench.metrics import logit_diff

        bridge = Bridge.from_pretrained('workbench-demo')
        cfg = bridge.cfg
        clean = 'When Nora and Felix went to the garden, Felix gave a drink to'
        corrupted = 'When Nora and Felix went to the garden, Nora gave a drink to'
        io, s = ' Nora', ' Felix'
        metric = logit_diff(bridge, io, s)  # logits [batch, pos, d_vocab] -> [batch], at the last position
    """),
    md("""
        ## The two prompts
    """),
    code("""
        clean_str, corrupted_str = bridge.to_str_tokens(clean), bridge.to_str_tokens(corrupted)
        differ = [i for i, (a, b) in enumerate(zip(clean_str, corrupted_str, strict=True)) if a != b]
        s2 = differ[0]
        n_pos = len(clean_str)
        print(f'{n_pos} tokens; they differ only at position {s2}: {clean_str[s2]!r} / {corrupted_str[s2]!r}')
        assert differ == [s2]

        with torch.no_grad():
            clean_logits, corrupted_logits = bridge(clean), bridge(corrupted)
        clean_value, corrupted_value = metric(clean_logits).item(), metric(corrupted_logits).item()
        print(f'logit(IO) - logit(S): clean {clean_value:.2f}, corrupted {corrupted_value:.2f}')
        assert clean_logits[0, -1].argmax() == bridge.to_single_token(io)  # IO is the top prediction
        assert clean_value > 0 > corrupted_value
    """),
    md("""
        ## What a sweep will cost

        `estimate_cost` plans a sweep without running it (cells, batched forward passes, memory,
        seconds). It is an upper bound: the engine also skips cells whose clean activation equals
        the corrupted one bit for bit (every position before the second subject), since patching
        them changes nothing.
    """),
    code("""
        print(estimate_cost(bridge, clean, corrupted, site='resid_pre').summary())
    """),
    md("""
        ## Where is the information? The residual stream, position by position

        Denoising: run the corrupted prompt and put back the clean residual stream at one
        (layer, position). `values` is `[n_layers, n_pos]` (TransformerLens's layout);
        `normalized()` maps the corrupted run to 0 and the clean run to 1.
    """),
    code("""
        resid = patch_sweep(bridge, clean, corrupted, site='resid_pre', metric=metric)
        print(resid)
        fig = px.imshow(resid.normalized().numpy(), x=list(resid.labels[1]), y=list(resid.labels[0]),
                        color_continuous_scale='RdBu', color_continuous_midpoint=0, aspect='auto',
                        labels=dict(x='position', y='layer (resid_pre)', color='recovered'))
        fig.show()
        rec = resid.normalized()
        # before the first block the residual stream is the embedding: patching the one differing
        # token makes the corrupted run the clean run, and every other position changes nothing
        assert abs(rec[0, s2].item() - 1) < 1e-4
        assert rec[0, :s2].abs().max() < 1e-6
        # by the last layer, the information sits at the final position, where the answer is read
        assert rec[-1].argmax() == n_pos - 1
        moved = [L for L in range(cfg.n_layers) if rec[L].argmax() == n_pos - 1][0]
        print(f'the information moves from position {s2} to the last position before block {moved}')
    """),
    md("""
        ### Checks

        Patching the clean run into itself changes nothing, and one cell of the (batched,
        skipping) sweep equals a patch written by hand with `run_with_hooks`.
    """),
    code("""
        same = patch_sweep(bridge, clean, clean, site='resid_pre', metric=metric)
        assert torch.allclose(same.values, torch.full_like(same.values, same.clean_value), atol=1e-4)

        _, clean_cache = bridge.run_with_cache(clean, names_filter=lambda n: n.endswith('hook_resid_pre'))
        L, pos = moved, n_pos - 1


        def put_clean(resid, hook):  # resid: [batch, pos, d_model]
            resid[:, pos] = clean_cache[hook.name][:, pos]
            return resid


        with torch.no_grad():
            patched = bridge.run_with_hooks(corrupted, fwd_hooks=[(f'blocks.{L}.hook_resid_pre', put_clean)])
        assert abs(metric(patched).item() - resid.values[L, pos].item()) < 1e-4
        print('clean into clean: unchanged; cell by hand == cell of the sweep')
    """),
    md("""
        ## Which layer's attention moves it, and which head?

        `attn_out` by (layer, position), then `z` by head: each head's output over all positions.
        The answer is read at the last position, so we follow the layer whose attention output
        there matters most, and its strongest head.
    """),
    code("""
        attn = patch_sweep(bridge, clean, corrupted, site='attn_out', metric=metric)
        heads = patch_sweep(bridge, clean, corrupted, site='z', metric=metric)  # [n_layers, n_heads]
        fig = px.imshow(heads.normalized().numpy(), color_continuous_scale='RdBu',
                        color_continuous_midpoint=0, labels=dict(x='head', y='layer', color='recovered'),
                        title="patching each head's output (z), clean into corrupted")
        fig.show()
        first_layer, first_head = divmod(int(heads.values.argmax()), cfg.n_heads)
        print(f'strongest head overall: L{first_layer}H{first_head} '
              f'({heads.normalized()[first_layer, first_head]:.0%})')
        print(f'attn_out at the last position, per layer: {attn.normalized()[:, -1].numpy().round(2)}')
        top_layer = int(attn.normalized()[:, -1].argmax())  # the layer that moves it to the last position
        top_head = int(heads.values[top_layer].argmax())
        best = heads.normalized()[top_layer, top_head].item()
        print(f'its strongest head: L{top_layer}H{top_head}, recovering {best:.0%} of the logit difference')
        assert attn.normalized()[top_layer, -1] > 0.5 and best > 0.5  # one head carries most of it
    """),
    md("""
        By position too (`index='head_pos'`, `[n_layers, n_pos, n_heads]`), and what the head
        attends to from the last position:
    """),
    code("""
        by_pos = patch_sweep(bridge, clean, corrupted, site='z', index='head_pos', metric=metric,
                             layers=[top_layer])
        print(by_pos.normalized()[0, :, top_head].numpy().round(2))
        assert by_pos.normalized()[0, :, top_head].argmax() == n_pos - 1

        where = attention_patterns(bridge, clean, layers=[top_layer]).head(top_layer, top_head)[-1]
        print(f'from the last position L{top_layer}H{top_head} attends to {int(where.argmax())} '
              f'({clean_str[int(where.argmax())]!r}) with weight {where.max():.2f}')
        assert where.argmax() == s2  # it reads the second subject
    """),
    md("""
        ## Attribution patching: the sweep from one backward pass

        `attribution_sweep` estimates every cell as `metric(base) + (a_clean - a_base) .
        dmetric/da`: one clean forward, one corrupted forward and one backward pass, whatever the
        number of cells. `exact=True` runs the exact sweep beside it.
    """),
    code("""
        est = attribution_sweep(bridge, clean, corrupted, site='z', metric=metric, exact=True)
        print(est)
        torch.testing.assert_close(est.exact_values, heads.values)
        print(f'correlation with the exact sweep over heads: {est.correlation:.3f}')
        assert est.correlation > 0.9
        fig = px.scatter(x=heads.values.flatten().numpy(), y=est.values.flatten().numpy(),
                         labels=dict(x='exact patch', y='attribution estimate'), title='z by head')
        fig.show()
        resid_est = attribution_sweep(bridge, clean, corrupted, site='resid_pre', metric=metric)
        print('resid_pre: the same layout as the exact sweep', tuple(resid_est.values.shape))
    """),
    md("""
        ## One cell at a time

        `CellPatcher` prepares a site once (clean and corrupted runs) and then patches single
        cells in milliseconds: what the patching panel does on a click. It also reports the tokens
        whose log-probability rose and fell the most.
    """),
    code("""
        patcher = CellPatcher(bridge, clean, corrupted, metric=metric)
        cell = patcher.patch(site='z', layer=top_layer, head=top_head)
        print(cell)
        assert abs(cell.value - heads.values[top_layer, top_head].item()) < 1e-4
        whole = patcher.patch(site='resid_pre', layer=0, position=s2)
        assert abs(whole.value - clean_value) < 1e-4  # the corrupted run became the clean run
        cell.to_dataframe().head(8)
    """),
    md("""
        ## Path patching: straight to the logits, or through later heads?

        `path_patch` takes the senders' outputs from the clean run, freezes every other head to
        the corrupted run (MLPs recompute), and lets the change reach only the chosen receivers:
        later heads' queries, keys or values, or the logits directly (`receivers=None`).
    """),
    code("""
        direct = path_patch(bridge, clean, corrupted, senders=[(top_layer, top_head)], receivers=None,
                            metric=metric)
        later = [(L, h) for L in range(top_layer + 1, cfg.n_layers) for h in range(cfg.n_heads)]
        through = path_patch(bridge, clean, corrupted, senders=[(top_layer, top_head)], receivers=later,
                             receiver_input='qkv', metric=metric)
        span = clean_value - corrupted_value
        print(f'L{top_layer}H{top_head} -> logits: {(direct.value - corrupted_value) / span:.0%} recovered; '
              f'-> the q/k/v of later heads: {(through.value - corrupted_value) / span:.0%}')
        assert direct.value > through.value  # its effect goes straight to the logits
    """),
    md("""
        A check: for a head in the last layer there is no later head, so its path to the logits is
        its whole effect, equal to activation patching its output.
    """),
    code("""
        # every head as a sender, straight to the logits: [n_layers, n_heads]
        to_logits = path_patch_sweep(bridge, clean, corrupted, receivers=None, metric=metric)
        torch.testing.assert_close(to_logits.values[-1], heads.values[-1], rtol=1e-4, atol=1e-4)
        fig = px.imshow(((to_logits.values - corrupted_value) / span).numpy(), color_continuous_scale='RdBu',
                        color_continuous_midpoint=0, labels=dict(x='head', y='layer', color='recovered'),
                        title="each head's path to the logits")
        fig.show()
    """),
    md("""
        ## The patching panel

        The two tokenizations with their alignment, the metric tokens, a site picker, the cost of
        a sweep, *run* with a progress bar and *cancel* (the sweep runs in a background thread),
        the heatmap, attribution patching beside the exact sweep, and a click on a cell patches
        it alone. From Python, `run()` starts a sweep, `wait()` joins it and `click()` patches a
        cell.
    """),
    code("""
        from widgets import PatchingPanel

        panel = PatchingPanel(bridge, clean, corrupted=corrupted, answer=io, wrong=s)
        panel.site = 'z'
        panel
    """),
    code("""
        panel.run()
        result = panel.wait(timeout=120)
        torch.testing.assert_close(result.values, heads.values)
        panel.attribution = True  # attribution patching beside the exact sweep (in the background)
        panel.wait(timeout=120)
        print(panel.compare)
        clicked = panel.click(layer=top_layer, head=top_head)
        assert abs(clicked.value - cell.value) < 1e-4 and panel.error == ''
        print(panel.code)
    """),
]
