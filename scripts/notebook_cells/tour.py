"""notebooks/00_tour.ipynb: every panel on the demo model, then the bridge's basics."""

from ._cells import code, md

CELLS = [
    md("""
        # Tour of the workbench

        The bridge wraps a HuggingFace causal LM in TransformerLens-named hook points without
        re-implementing it; the panels draw the workbench's analyses in JupyterLab. This tour runs
        offline on the embedded demo model: a 5-layer Llama-style model trained on this repo's own
        synthetic corpus (see [`docs/demo_model.md`](../docs/demo_model.md)), small enough to run
        anywhere and trained long enough to have previous-token heads, induction heads and an
        indirect-object-identification (IOI) circuit.

        The tutorials after this one take each part in turn:

        - [`01_attention_and_induction`](01_attention_and_induction.ipynb): attention patterns,
          head scores, induction on repeated tokens, ablation;
        - [`02_logit_lens_and_dla`](02_logit_lens_and_dla.ipynb): the logit lens and direct logit
          attribution;
        - [`03_composition`](03_composition.ipynb): weights, `FactoredMatrix` QK/OV circuits,
          composition scores;
        - [`04_patching_ioi`](04_patching_ioi.ipynb): finding the demo model's IOI circuit by
          activation, attribution and path patching;
        - [`05_your_own_model`](05_your_own_model.ipynb): hub names, local folders, dtype, GPU,
          `device_map`, weight processing.

        Every notebook checks what it shows with `assert`s, and the test suite executes all of
        them headless.
    """),
    code("""
        import torch

        from workbench import Bridge

        bridge = Bridge.from_pretrained('workbench-demo')  # or a hub name / save_pretrained folder
        bridge
    """),
    md("""
        ## The workbench

        All panels over one prompt, linked: click a head pair in the composition map to open both
        heads in the attention view; click a logit-lens cell to pick a layer and position; in the
        patching panel, press *run sweep* (it runs in the background, with a progress bar and
        cancel), then click any cell to patch it alone and see the tokens that rose and fell. Every
        panel has *copy as code* (the Python call behind the view) and PNG/HTML export. Reference:
        [`docs/panels.md`](../docs/panels.md).

        The prompt is an IOI sentence with names the model never saw in an IOI sentence during
        training; the corrupted prompt swaps the second subject, so the right answer flips.
    """),
    code("""
        from widgets import Workbench

        prompt = 'When Nora and Felix went to the garden, Felix gave a drink to'
        corrupted = 'When Nora and Felix went to the garden, Nora gave a drink to'
        wb = Workbench(bridge, prompt=prompt, corrupted=corrupted, answer=' Nora', wrong=' Felix')
        wb
    """),
    md("""
        ## What each panel shows

        The panels are plain Python objects too: their state is in traits (what the front end
        reads and writes), and their results are the analyses' frozen results. Setting a trait from
        Python does what the matching click does. A panel never raises from a callback: an error
        shows in the panel and in `panel.error`, so the checks below also assert it is empty.
    """),
    code("""
        str_tokens = bridge.to_str_tokens(prompt)
        n_tok = len(str_tokens)
        print(wb.selection)
        assert wb.selection.tokens == str_tokens
        assert all(panel.error == '' for panel in wb.panels.values())
    """),
    md("""
        ### Hook picker

        Every hook point of the model as a tree (model / `blocks.L` / component / hook) with a
        search box, each hook's shape and the memory it takes for this prompt. Ticking hooks runs
        the prompt and caches them; the picked names are shared with the other panels and your
        code (`wb.selection.hooks`).
    """),
    code("""
        picker = wb.hooks
        picker.hooks = ['blocks.1.attn.hook_pattern', 'blocks.1.hook_resid_post']  # what ticking them does
        for name, tensor in picker.cache.items():
            print(f'{name:28s} {tuple(tensor.shape)}')
        assert picker.cache['blocks.1.attn.hook_pattern'].shape == (1, bridge.cfg.n_heads, n_tok, n_tok)
        assert wb.selection.hooks == picker.hooks and picker.error == ''
        print(picker.code)  # "copy as code"
    """),
    md("""
        ### Attention

        Every head of the chosen layer as a thumbnail, with its previous-token, induction,
        duplicate-token and first-token scores; large views of the chosen head and of picked heads;
        hover a query token to see where it attends. Choosing a head moves the shared selection.
    """),
    code("""
        att = wb.attention
        att.layer, att.head = 1, 3
        assert (wb.selection.layer, wb.selection.head) == (1, 3)  # linked
        assert att.tokens == str_tokens and att.error == ''
        print(att.code)
    """),
    md("""
        ### Logit lens

        The final norm and unembedding applied to the residual stream after each block: the top
        token per (layer, position), coloured by its probability. The last row is the model's own
        prediction: the indirect object, ' Nora'.
    """),
    code("""
        lens = wb.logit_lens.result
        print([row[-1][0] for row in lens.top_strs], '<- top token at the last position, per layer')
        assert lens.top_strs[-1][-1][0] == ' Nora'
        lens.to_dataframe().tail(4)
    """),
    md("""
        ### Composition

        How much each head's queries (Q), keys (K) or values (V) read what an earlier head wrote,
        for every pair of heads. Clicking a pair opens both heads in the attention panel; here we
        set the same trait a click sets.
    """),
    code("""
        comp = wb.composition
        sender, receiver, score = comp.result.top(1)[0]
        print(f'strongest {comp.kind.upper()}-composition: {sender} -> {receiver} ({score:.3f})')
        # labels like 'L2H0' -> (2, 0)
        pair = [tuple(int(x) for x in label[1:].split('H')) for label in (sender, receiver)]
        comp.heads = pair
        comp.layer, comp.head = pair[1]
        assert wb.attention.heads == pair  # the attention panel now shows both heads large
        comp.result.top(3)
    """),
    md("""
        ### Patching

        Clean and corrupted prompts with their tokens and alignment, the metric
        (`logit(' Nora') - logit(' Felix')`), a site, and what a sweep will cost. *Run* sweeps
        every cell in a background thread; a click patches one cell alone. From Python:
        `run()` starts the sweep and `wait()` joins it.
    """),
    code("""
        patching = wb.patching
        print(patching.cost)
        patching.run()
        result = patching.wait(timeout=120)
        print(result)
        s2 = str_tokens.index(' Felix', 5)  # the second subject: the one token the prompts differ in
        # patching the clean embedding of that token into the corrupted run makes it the clean run
        assert abs(result.values[0, s2] - result.clean_value) < 1e-4
        cell = patching.click(layer=2, position=n_tok - 1)  # what a click on a cell does
        print(cell)
        assert wb.selection.position == n_tok - 1 and patching.error == ''
        cell.to_dataframe().head(6)
    """),
    md("""
        ### Generation

        Generate from the prompt with the tokens streamed as they come (greedy, or sampled with a
        temperature), steer with a direction added to a layer's residual stream (prompts to steer
        towards and away from, separated by `|`, and a scale slider), and click a generated token
        to see the step that chose it: each layer's logit lens at that position and its attention
        over the sequence so far. From Python: `generate()` starts it, `wait()` joins it,
        `pick(i)` is the click.
    """),
    code("""
        gen = wb.generation
        gen.max_new_tokens = 4
        gen.generate()
        print(gen.wait(timeout=60), gen.finish)
        gen.pick(0)  # why this token? the last layer's top candidates at the step that chose it
        print([token for token, p in gen.step_view['lens'][-1]['top']])
        assert gen.step_view['lens'][-1]['top'][0][0] == gen.generated[0] == ' Nora'
        assert gen.error == ''
    """),
    md("""
        ## The bridge underneath

        Everything a panel shows is a plain function of `workbench`, usable from a script. The rest
        of this tour is the bridge itself: hook points, caching and interventions.

        ### Which hooks exist, and what they cost
    """),
    code("""
        for name in bridge.hook_names()[:14]:
            info = bridge.hook_info(name, seq_len=32)
            print(f'{name:34s} {str(info.shape):42s} {info.bytes_per_token:6d} B/token')
    """),
    md("""
        ### What does the model predict?
    """),
    code("""
        logits = bridge(prompt)  # [batch, pos, d_vocab]
        probs = logits[0, -1].softmax(-1)
        top = probs.topk(5)
        for p, i in zip(top.values, top.indices, strict=True):
            print(f'{bridge.to_string(i)!r:12} {p.item():.3f}')
        io, s = bridge.to_single_token(' Nora'), bridge.to_single_token(' Felix')
        print('logit difference IO - S:', (logits[0, -1, io] - logits[0, -1, s]).item())
        assert top.indices[0] == io  # the indirect object is the top prediction
    """),
    md("""
        ### Run with a cache
    """),
    code("""
        logits, cache = bridge.run_with_cache(prompt)
        print(logits.shape, len(cache), 'cached activations')
        cache['pattern', 0].shape  # [batch, n_heads, query_pos, key_pos]
    """),
    md("""
        ### An identity you can check

        The residual stream after a block is what came in plus what attention and the MLP wrote.
    """),
    code("""
        for L in range(bridge.cfg.n_layers):
            resid = cache['resid_pre', L] + cache['attn_out', L] + cache['mlp_out', L]
            torch.testing.assert_close(resid, cache['resid_post', L], rtol=1e-5, atol=1e-5)
        print('resid_post == resid_pre + attn_out + mlp_out in every layer')
    """),
    md("""
        ### Intervene with a hook

        A hook is a function of the activation and the hook point; what it returns replaces the
        activation. Zero-ablate the strongest induction head (see `01_attention_and_induction`)
        and watch the loss on a repeated random sequence go up: the model can no longer copy from
        the first half.
    """),
    code("""
        from workbench.head_scores import induction_scores, repeated_random_tokens

        rep = repeated_random_tokens(bridge, n=40, batch=8)  # [batch, 1 + 2 * 40]
        ind = induction_scores(bridge, rep)  # [n_layers, n_heads]
        layer, head = divmod(int(ind.argmax()), bridge.cfg.n_heads)
        print(f'strongest induction head: L{layer}H{head} ({ind.max():.2f})')


        def ablate(z, hook):
            z[:, :, head] = 0  # z: [batch, pos, n_heads, d_head]
            return z


        def repeat_loss(**kw):
            per_tok = bridge.run_with_hooks(rep, return_type='loss', loss_per_token=True, **kw)
            return per_tok[:, 40:].mean().item()  # predictions inside the repeat


        clean_loss = repeat_loss()
        ablated_loss = repeat_loss(fwd_hooks=[(f'blocks.{layer}.attn.hook_z', ablate)])
        print(f'loss on the repeat: {clean_loss:.3f} -> {ablated_loss:.3f} with L{layer}H{head} ablated')
        assert ablated_loss > clean_loss
        assert bridge.attached_hooks() == []  # temporary hooks never stay attached
    """),
    md("""
        ### Generate with hooks, and steer

        `bridge.generate` decodes token by token with the model's key-value cache (greedy by
        default, equal to HF's `generate`); `bridge.generate_stream` yields each token as it comes.
        Hooks fire on every step: first on the whole prompt, then on one new position per step
        (K/V hooks see the new token's keys; patterns are `[batch, heads, 1, keys so far]`).
    """),
    code("""
        shapes = []
        out = bridge.generate(prompt, 4, fwd_hooks=[
            ('blocks.0.hook_resid_pre', lambda x, hook: shapes.append(tuple(x.shape)))])
        print(repr(out.text[0]), out.finish_reason, shapes)
        assert shapes[0] == (1, n_tok, bridge.cfg.d_model) and set(shapes[1:]) == {(1, 1, bridge.cfg.d_model)}
        for step in bridge.generate_stream('Alice met Bob. Alice', 4):
            print(step.step, repr(step.strs[0]))
    """),
    md("""
        A steering vector is a direction added to an activation at every step. Here: the mean
        final residual of IOI prompts whose answer is ' Mary' minus that of the same prompts
        with the names swapped (answer ' John'). Added to a prompt about Anna and Peter, it pulls
        the answer towards ' Mary' as the scale grows. The same `Steering` works in runs
        (`run_with_hooks`) and in patching (`with bridge.hooks(fwd_hooks=[steer.hook])`).
    """),
    code("""
        from workbench import Steering

        towards = ['When Mary and John went to the store, John gave a drink to',
                   'Then Mary and John walked home, and John gave a gift to']
        away = [p.replace('Mary', '@').replace('John', 'Mary').replace('@', 'John') for p in towards]
        steer = Steering.from_prompts(bridge, 'blocks.4.hook_resid_post', towards, away)
        other = 'When Anna and Peter went to the park, Peter gave a book to'
        for scale in (0, 1, 2, 4):
            out = bridge.generate(other, 3, fwd_hooks=[steer.scaled(scale).hook])
            print(f'scale {scale}: {out.text[0]!r}')
        assert bridge.generate(other, 3, fwd_hooks=[steer.scaled(4).hook]).text[0].startswith(' Mary')
    """),
]
