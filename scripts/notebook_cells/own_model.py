"""notebooks/05_your_own_model.ipynb: hub names, local folders, GPU, dtype, device_map, offloading,
sizing a cache before loading, processing."""

from ._cells import code, md

CELLS = [
    md("""
        # Your own model

        Everything in the other notebooks works on any supported HuggingFace causal LM: the
        bridge loads hub names and local `save_pretrained` folders through one code path (the
        embedded demo model is just a folder inside the package). This notebook shows the loading
        options: hub names, local folders, an already-loaded model, dtype, a GPU, several GPUs
        with `device_map`, and TransformerLens-style weight processing.

        Cells that need the **network** or a **GPU** are marked so in their heading and check for
        it first: without it they print what they skipped, so the notebook runs offline on a CPU
        (as the test suite runs it, with `HF_HUB_OFFLINE=1`).
    """),
    code("""
        import os
        import tempfile
        from pathlib import Path

        import torch

        from workbench import Bridge, logit_lens

        ONLINE = os.environ.get('HF_HUB_OFFLINE') != '1'  # make demo and make test set HF_HUB_OFFLINE=1
        CUDA = torch.cuda.is_available()
        N_GPUS = torch.cuda.device_count()
        prompt = 'When Nora and Felix went to the garden, Felix gave a drink to'
        print(f'network allowed: {ONLINE}; CUDA: {CUDA} ({N_GPUS} GPUs); torch {torch.__version__}')
    """),
    md("""
        ## A checkpoint by hub name (needs the network, or the checkpoint in your HF cache)

        `Bridge.from_pretrained(name)` takes what `AutoModelForCausalLM.from_pretrained` takes:
        a hub name such as `'gpt2'`, `'EleutherAI/pythia-160m'` or `'meta-llama/Llama-3.2-1B'`
        (gated: log in with `huggingface-cli login` first), `revision=` for a commit or branch,
        and `trust_remote_code=` (never turned on for you). Supported families for now: GPT-2,
        Llama-style and GPT-NeoX.
    """),
    code("""
        name = 'gpt2'
        hub = None
        if ONLINE:
            try:
                hub = Bridge.from_pretrained(name)
            except OSError as err:  # no network and not in the local cache
                print(f'skipped: could not load {name!r} ({str(err).splitlines()[0]})')
        else:
            print(f'skipped: HF_HUB_OFFLINE=1, not loading {name!r} from the hub')

        if hub is not None:
            lens = logit_lens(hub, 'The Eiffel Tower is in the city of', k=3)
            print(hub)
            print('top predictions:', lens.top_strs[-1][-1])
            assert lens.top_probs.shape[-1] == 3
    """),
    md("""
        ## A local folder

        Anything written with `save_pretrained` (the model and, ideally, its tokenizer) loads the
        same way, offline. Here a tiny random-init GPT-2-style model with a character tokenizer
        from `workbench.toy` (the test suite's models). Its layer norms start at 1; we give them
        some variety first, so that the weight processing below has something to fold.
    """),
    code("""
        from workbench.toy import char_tokenizer, tiny_model

        folder = Path(tempfile.mkdtemp()) / 'tiny-gpt2'
        model = tiny_model('gpt2', n_layers=2, d_model=64, n_heads=4)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if '.ln_' in param_name:
                    param.add_(0.2 * torch.randn_like(param))
        model.save_pretrained(folder)
        char_tokenizer().save_pretrained(folder)
        print(sorted(p.name for p in folder.iterdir()))

        tiny = Bridge.from_pretrained(str(folder))
        print(tiny)
    """),
    md("""
        The bridge runs the HF module tree as it is, so its logits are the model's own. Check it
        against a plain `transformers` load of the same folder with eager attention:
    """),
    code("""
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation='eager').eval()
        tokens = tiny.to_tokens('hello world')  # [1, pos]: one token per character, after <bos>
        with torch.no_grad():
            torch.testing.assert_close(tiny(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)
        print(tiny.to_str_tokens('hello world'))
    """),
    md("""
        An already-loaded model wraps with `Bridge.from_hf(model, tokenizer)`. Hook names mean the
        same tensor on every family, or are absent there: a Llama-style model has no
        `hook_pos_embed` (rotary positions) but a gated MLP, and on a grouped-query model
        `hook_k`/`hook_v` have `n_kv_heads` heads unless you ask for them per query head.
    """),
    code("""
        gqa = Bridge.from_hf(tiny_model('llama', n_kv_heads=1), char_tokenizer())
        print(gqa)
        print('names only one of them has:', sorted(set(tiny.hook_names()) ^ set(gqa.hook_names())))
        _, cache = gqa.run_with_cache('abc', names_filter='blocks.0.attn.hook_k')
        assert cache['k', 0].shape[2] == gqa.cfg.n_kv_heads == 1  # [batch, pos, n_kv_heads, d_head]
        gqa.ungroup_grouped_query_attention = True
        _, cache = gqa.run_with_cache('abc', names_filter='blocks.0.attn.hook_k')
        assert cache['k', 0].shape[2] == gqa.cfg.n_heads  # expanded per query head
    """),
    md("""
        A model type without an adapter is discovered from its module tree and checked on a probe
        prompt when its attention goes through transformers' attention interface (it then loads
        with an `UnverifiedFamilyWarning`). MPT computes attention itself, so it is refused, and
        the error says what is missing and what is supported:
    """),
    code("""
        from transformers import MptConfig

        from workbench import UnsupportedModelError

        mpt = AutoModelForCausalLM.from_config(MptConfig(
            d_model=32, n_layers=1, n_heads=2, vocab_size=50))
        try:
            Bridge.from_hf(mpt)
        except UnsupportedModelError as err:
            print(err)
        else:
            raise AssertionError('expected UnsupportedModelError')
    """),
    md("""
        ## dtype

        Weights load in float32 unless you pass `dtype=`. Half precision halves the memory of
        the weights and of every cached activation; the answers barely move.
    """),
    code("""
        demo = Bridge.from_pretrained('workbench-demo')
        half = Bridge.from_pretrained('workbench-demo', dtype=torch.bfloat16)
        assert half.cfg.dtype == torch.bfloat16
        with torch.no_grad():
            full_logits, half_logits = demo(prompt)[0, -1], half(prompt)[0, -1].float()
        print(f'max |logit change| in bfloat16: {(full_logits - half_logits).abs().max():.3f}')
        assert half_logits.argmax() == full_logits.argmax()
        _, cache = half.run_with_cache(prompt, names_filter='blocks.0.hook_resid_post')
        assert cache['resid_post', 0].dtype == torch.bfloat16
    """),
    md("""
        ## One GPU (needs CUDA)

        `device='cuda'` moves the model after loading. `run_with_cache(..., device='cpu')` moves
        each activation to the CPU as it is made, so long prompts do not fill the GPU. The
        analyses and panels work unchanged: they compute where the model is and return results on
        the CPU.
    """),
    code("""
        if CUDA:
            gpu = Bridge.from_pretrained('workbench-demo', device='cuda', dtype=torch.bfloat16)
            logits, cache = gpu.run_with_cache(prompt, names_filter=lambda n: n.endswith('hook_resid_post'),
                                               device='cpu')
            assert logits.device.type == 'cuda' and cache['resid_post', 0].device.type == 'cpu'
            lens = logit_lens(gpu, prompt)
            assert lens.top_strs[-1][-1][0] == ' Nora'
            print(gpu.cfg.device, 'top prediction:', lens.top_strs[-1][-1][0])
        else:
            print('skipped: no CUDA device '
                  '(Bridge.from_pretrained(name, device="cuda", dtype=torch.bfloat16))')
    """),
    md("""
        ## Several GPUs: `device_map` (needs 2 or more GPUs)

        A model too large for one GPU loads across several with accelerate's `device_map`
        (`'auto'`, `'balanced'`, or an explicit `{module: device}` dict); the hooks follow the
        modules wherever they sit. (`device=` and `device_map=` are exclusive.) On one device,
        `device_map='cpu'` takes the same code path, which is what runs here without GPUs.
    """),
    code("""
        if N_GPUS >= 2:
            spread = Bridge.from_pretrained('workbench-demo', device_map='auto')
            print(getattr(spread.model, 'hf_device_map', None))
            with torch.no_grad():
                spread_logits = spread(prompt)[0, -1].float().cpu()
            torch.testing.assert_close(spread_logits, full_logits, rtol=1e-3, atol=1e-3)
        else:
            print(f'skipped: {N_GPUS} GPU(s); Bridge.from_pretrained(name, device_map="auto") spreads the '
                  'blocks over several')
        on_cpu = Bridge.from_pretrained('workbench-demo', device_map='cpu')
        with torch.no_grad():
            torch.testing.assert_close(on_cpu(prompt)[0, -1], full_logits)
    """),
    md("""
        ## Less memory than weights: offload to the CPU or disk

        With `max_memory` below the model's size, accelerate keeps what fits and offloads the rest
        (to the CPU, or to `offload_folder` on disk); each offloaded layer's weights are loaded
        for its forward only. Every analysis gives the same numbers, only slower. Here the demo
        model gets 3 MB of memory, so most of its blocks stay on disk:
    """),
    code("""
        offload_dir = tempfile.mkdtemp()
        offloaded = Bridge.from_pretrained('workbench-demo', device_map='auto', max_memory={'cpu': 3_000_000},
                                           offload_folder=offload_dir)
        placed = offloaded.model.hf_device_map
        print({where: sum(v == where for v in placed.values()) for where in set(placed.values())},
              '(modules per place)')
        with torch.no_grad():
            torch.testing.assert_close(offloaded(prompt)[0, -1], full_logits)
        print('top prediction with offloaded weights:', logit_lens(offloaded, prompt).top_strs[-1][-1][0])
    """),
    md("""
        ## Will it fit? Size a cache before loading anything

        A model built on PyTorch's `meta` device has every shape and no weights, so it is made
        in milliseconds at any size. Wrapped in a bridge it lists its hooks and says how much a
        `run_with_cache` would hold (`cache_bytes`), before a single weight is downloaded. Here a
        Llama-3-8B-shaped config (no download: the config is written out):
    """),
    code("""
        from collections import Counter

        from transformers import AutoModelForCausalLM, LlamaConfig

        from workbench.memory import human_bytes

        llama3_8b = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                max_position_embeddings=8192)
        with torch.device('meta'):
            shell = Bridge.from_hf(AutoModelForCausalLM.from_config(llama3_8b, dtype=torch.bfloat16))
        for n_tokens in (1024, 4096):
            print(f'{n_tokens} tokens, every hook:', human_bytes(shell.cache_bytes((1, n_tokens))))
        kinds = {name.split('.')[-1] for name in shell.hook_names()}
        by_kind = Counter({k: shell.cache_bytes((1, 4096), lambda n, k=k: n.endswith('.' + k) or n == k)
                           for k in kinds})
        print('largest at 4096 tokens:', [(k, human_bytes(v)) for k, v in by_kind.most_common(3)])
        resid_only = shell.cache_bytes((1, 4096), lambda n: n.endswith('hook_resid_post'))
        print('only resid_post at 4096 tokens:', human_bytes(resid_only))
    """),
    md("""
        The attention scores and patterns are most of it. `run_with_cache(...,
        memory_budget='auto')` compares the estimate with the memory free where the cache goes
        and refuses, naming the sizes, instead of running out of memory; the hook picker always
        does. A fixed budget in bytes works the same way:
    """),
    code("""
        from workbench import InputError

        try:
            demo.run_with_cache(prompt, memory_budget=100_000)
        except InputError as err:
            print(err)
        _, cache = demo.run_with_cache(prompt, memory_budget='auto')
        print('fits:', human_bytes(cache.nbytes()))
    """),
    md("""
        ## Weight processing

        As TransformerLens's processed models do, and off by default: `fold_ln` moves each norm's
        weight (and bias) into the layers that read it; `center_writing_weights` (LayerNorm models)
        removes the mean over `d_model` from every weight that writes to the residual stream;
        `center_unembed` removes the mean over the vocabulary from `W_U` (softmax ignores it);
        `fold_value_biases` moves the value biases into the output bias. The model's predictions
        do not change. Details: [`docs/analyses.md`](../docs/analyses.md).
    """),
    code("""
        processed = Bridge.from_pretrained(str(folder), fold_ln=True, center_writing_weights=True,
                                           center_unembed=True, fold_value_biases=True)
        print(processed.processing)
        with torch.no_grad():
            before, after = tiny(tokens).log_softmax(-1), processed(tokens).log_softmax(-1)
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
        assert torch.allclose(processed.W_U.mean(-1), torch.zeros(1), atol=1e-5)  # centred unembedding
        ln = processed.model.transformer.h[0].ln_1
        assert torch.equal(ln.weight, torch.ones_like(ln.weight))  # folded into W_Q, W_K, W_V
        print('same predictions after processing')
    """),
    md("""
        On an RMSNorm model (like the demo model) centring would change the outputs, so it is
        skipped with a warning, and `bridge.processing` says what was applied:
    """),
    code("""
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            folded = Bridge.from_pretrained('workbench-demo', fold_ln=True, center_writing_weights=True)
        print(folded.processing)
        print([str(w.message)[:90] + '...' for w in caught])
        assert folded.processing == ('fold_ln',)
        with torch.no_grad():
            torch.testing.assert_close(folded(prompt)[0, -1], full_logits, rtol=1e-4, atol=1e-4)
    """),
    md("""
        From here, every notebook in this folder runs on your bridge: replace
        `Bridge.from_pretrained('workbench-demo')` with your model and pick prompts it can do.
    """),
]
