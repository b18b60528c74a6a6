"""gpt2.py against an independent implementation (Hugging Face transformers) on tiny random
checkpoints.

GPT-2 weights cannot be downloaded here, so the tests write small random checkpoints in the Hugging
Face layout, in both file formats, and check loading, logits, padding, the KV cache, sampling
log-probs and every kind of bad checkpoint.
"""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import gpt2
from gpt2 import GPT2, generate, left_pad, response_logprobs
from gpt2_kernels import token_logprobs
from machinery import amp

transformers = pytest.importorskip("transformers")

V = 50257
TINY_HF = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=V)


def make_hf_model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**TINY_HF, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    # make the LayerNorms and biases non-trivial, so a mix-up can't hide behind 1s and 0s
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_model()


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def checkpoint_dir(request, hf_model, tmp_path_factory):
    """The same random model saved in the Hugging Face layout, in each weights format."""
    d = tmp_path_factory.mktemp(request.param)
    hf_model.config.to_json_file(d / "config.json")
    # tied
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    if request.param == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(d / "model.safetensors"))
    else:
        torch.save(state, d / "pytorch_model.bin")
    return d


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return GPT2.from_pretrained(str(checkpoint_dir))


def hf_logits(hf, tokens, mask):
    """HF's logits for a left-padded batch; HF needs the position ids passed explicitly for that."""
    pos = (mask.long().cumsum(1) - mask.long()).clamp(min=0)
    ids = tokens.masked_fill(~mask, 0)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits


def prompts(seed=1, lengths=(7, 3, 12, 1)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def test_logits_match_transformers(model, hf_model):
    tokens, mask = left_pad(prompts())
    ours = model(tokens, mask)
    ref = hf_logits(hf_model, tokens, mask)
    diff = (ours - ref)[mask].abs().max().item()  # pads' own logits are meaningless in both
    assert diff <= 1e-4, diff
    # unpadded batch: no mask at all (the fast attention path)
    tokens = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        ref = hf_model(tokens).logits
    assert (model(tokens) - ref).abs().max().item() <= 1e-4


def test_greedy_matches_transformers(model, hf_model):
    tokens = torch.tensor(prompts(lengths=(9, 9)))
    ours, _ = generate(model, tokens, None, max_new_tokens=12, greedy=True)
    with torch.no_grad():
        ref = hf_model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[:, tokens.size(1) :]
    assert torch.equal(ours, ref)


def test_left_padding_invariance(model):
    seqs = prompts()
    tokens, mask = left_pad(seqs)
    batch_logits = model(tokens, mask)
    batch_greedy, _ = generate(model, tokens, mask, max_new_tokens=8, greedy=True)
    for i, s in enumerate(seqs):
        alone = model(torch.tensor([s]))[0]  # (T_i, V)
        torch.testing.assert_close(batch_logits[i, -len(s) :], alone, atol=1e-5, rtol=1e-5)
        alone_greedy, _ = generate(model, torch.tensor([s]), None, max_new_tokens=8, greedy=True)
        assert torch.equal(alone_greedy[0], batch_greedy[i])


def test_pad_id_value_is_irrelevant(model):
    tokens, mask = left_pad(prompts())
    other = tokens.masked_fill(~mask, 123)
    torch.testing.assert_close(model(tokens, mask)[mask], model(other, mask)[mask])


def test_kv_cache_matches_full_forward(model):
    tokens, mask = left_pad(prompts())
    B, T = tokens.shape
    extra = torch.randint(0, V, (B, 5))
    cache = gpt2.KVCache(model.config, B, T + 5, "cpu", torch.float32)
    with torch.no_grad():
        steps = [model.hidden_states(tokens, mask, cache)]
        for t in range(5):
            steps.append(
                model.hidden_states(extra[:, t : t + 1], torch.ones(B, 1, dtype=torch.bool), cache)
            )
        cached = torch.cat(steps, dim=1)  # (B, T + 5, C)
        full = model.hidden_states(
            torch.cat([tokens, extra], 1), torch.cat([mask, torch.ones(B, 5, dtype=torch.bool)], 1)
        )
    real = torch.cat([mask, torch.ones(B, 5, dtype=torch.bool)], 1)
    torch.testing.assert_close(cached[real], full[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampling_logprobs_equal_recomputed(model, temperature):
    tokens, mask = left_pad(prompts())
    g = torch.Generator().manual_seed(0)
    new, lp = generate(model, tokens, mask, max_new_tokens=10, temperature=temperature, generator=g)
    full = torch.cat([tokens, new], 1)
    full_mask = torch.cat([mask, torch.ones_like(new, dtype=torch.bool)], 1)
    with torch.no_grad():
        re_lp, ent, hidden = response_logprobs(model, full, full_mask, 10, temperature)
    torch.testing.assert_close(lp, re_lp, atol=1e-5, rtol=0)
    # the third output: the hidden state before each response token
    T = full.size(1)
    want = model.hidden_states(full, full_mask)[:, T - 11 : T - 1]
    torch.testing.assert_close(hidden, want, atol=1e-5, rtol=1e-5)
    assert (ent > 0).all()


@pytest.mark.parametrize("n", [1, 4])
def test_last_positions_match_transformers(model, hf_model, n):
    """hidden_states(last=n) runs the final block at the last n positions only: its logits there
    are transformers' (left-padded rows, one of them shorter than n), and its gradients are those
    of the full forward's last n positions, with and without activation checkpointing."""
    tokens, mask = left_pad(prompts())
    T = tokens.size(1)
    with torch.no_grad():
        h = model.hidden_states(tokens, mask, last=n)  # (B, n, C)
    assert h.shape == (tokens.size(0), n, model.config.n_embd)
    ref = hf_logits(hf_model, tokens, mask)[:, T - n :]
    real = mask[:, T - n :]
    torch.testing.assert_close((h @ model.lm_head_weight.T)[real], ref[real], atol=1e-4, rtol=1e-4)

    w = torch.randn(
        tokens.size(0), n, model.config.n_embd, generator=torch.Generator().manual_seed(3)
    )

    def grads(last, checkpoint):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpoint(checkpoint)
        try:
            out = model.hidden_states(tokens, mask, last=last)[:, -n:]
            (out * w).sum().backward()
        finally:
            model.set_grad_checkpoint(False)
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    full = grads(None, False)
    for checkpoint in (False, True):
        got = grads(n, checkpoint)
        for k in full:
            torch.testing.assert_close(got[k], full[k], atol=1e-5, rtol=1e-4, msg=k)
    model.zero_grad(set_to_none=True)
    # more positions than the sequence has: all of them; nonsense or a KV cache: refused
    with torch.no_grad():
        torch.testing.assert_close(
            model.hidden_states(tokens, mask, last=T + 5), model.hidden_states(tokens, mask)
        )
        for bad in (0, -1):
            with pytest.raises(ValueError, match="positive number"):
                model.hidden_states(tokens, mask, last=bad)
        cache = gpt2.KVCache(model.config, tokens.size(0), T, tokens.device, torch.float32)
        with pytest.raises(ValueError, match="KV cache"):
            model.hidden_states(tokens, mask, cache, last=1)


def test_sampling_seed_and_stop_token(model):
    tokens, mask = left_pad(prompts())
    a, _ = generate(model, tokens, mask, 6, generator=torch.Generator().manual_seed(5))
    b, _ = generate(model, tokens, mask, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # force a stop at step 1: use the greedy first token as the stop token
    g, lp = generate(model, tokens[:1], mask[:1], 6, greedy=True, stop_token=None)
    s, slp = generate(model, tokens[:1], mask[:1], 6, greedy=True, stop_token=g[0, 0].item())
    assert s.shape == (1, 1) and s[0, 0] == g[0, 0] and slp[0, 0] == lp[0, 0]


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(gpt2.filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it -> keep two
    assert torch.isinf(gpt2.filter_logits(logits, top_p=0.7)).tolist() == [
        [False, False, True, True]
    ]
    assert torch.isinf(gpt2.filter_logits(logits, top_p=0.4)).tolist() == [
        [False, True, True, True]
    ]


def test_presets_and_param_counts():
    # the published sizes (tied embeddings counted once)
    counts = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168}
    for name, n in counts.items():
        with torch.device("meta"):
            m = GPT2.from_config(name)
        assert sum(p.numel() for p in m.parameters()) == n
    with pytest.raises(ValueError, match="unknown preset"):
        GPT2.from_config("gpt5")


def test_tokenizer_round_trip():
    enc = gpt2.get_tokenizer()
    for text in [
        "héllo wörld — ünïcode",
        "emoji 🤖🎉 and 👩‍👩‍👧",
        "runs   of\t\twhitespace\n\n\n  end  ",
        "",
        "日本語のテキスト",
        "<|endoftext|> as plain text",
    ]:
        ids = enc.encode(text, disallowed_special=())
        assert enc.decode(ids) == text
    assert enc.encode("Hello world") == [15496, 995]  # GPT-2's published ids


# --------------------------------------------------------------------------------------------------
# Bad checkpoints: each gets a message naming the file or tensor


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_tensor(checkpoint_dir, tmp_path):
    d = copy_ckpt(checkpoint_dir, tmp_path / "c")
    if (d / "model.safetensors").exists():
        from safetensors.torch import load_file, save_file

        state = load_file(str(d / "model.safetensors"))
        del state["transformer.h.1.mlp.c_fc.weight"]
        save_file(state, str(d / "model.safetensors"))
    else:
        state = torch.load(d / "pytorch_model.bin", weights_only=True)
        del state["transformer.h.1.mlp.c_fc.weight"]
        torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight.*missing"):
        GPT2.from_pretrained(str(d))


def test_wrong_shape(checkpoint_dir, tmp_path):
    d = copy_ckpt(checkpoint_dir, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 32  # the config no longer matches the tensors
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"wte\.weight.*shape"):
        GPT2.from_pretrained(str(d))


def test_truncated_file(checkpoint_dir, tmp_path):
    d = copy_ckpt(checkpoint_dir, tmp_path / "c")
    f = next(p for p in d.iterdir() if p.suffix in (".safetensors", ".bin"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{f.name}.*(damaged|truncated)"):
        GPT2.from_pretrained(str(d))


def test_bin_is_not_unpickled_freely(tmp_path, checkpoint_dir):
    d = copy_ckpt(checkpoint_dir, tmp_path / "c")
    for p in d.glob("model.safetensors"):
        p.unlink()
    # arbitrary pickled objects are refused by weights_only
    torch.save({"x": object()}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        GPT2.from_pretrained(str(d))


def test_unknown_config(checkpoint_dir, tmp_path):
    d = copy_ckpt(checkpoint_dir, tmp_path / "c")
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(ValueError, match="config.json.*bert"):
        GPT2.from_pretrained(str(d))
    (d / "config.json").write_text(json.dumps({"n_head": 4}))
    with pytest.raises(ValueError, match="config.json.*n_layer"):
        GPT2.from_pretrained(str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json.*JSON"):
        GPT2.from_pretrained(str(d))


def test_missing_files_and_unknown_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT2.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text(json.dumps(TINY_HF))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        GPT2.from_pretrained(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no such model"):
        GPT2.from_pretrained("not-a-model-or-dir")


def test_cli_samples_every_prompt(checkpoint_dir, capsys):
    gpt2.main(
        [
            "--model",
            str(checkpoint_dir),
            "--prompt",
            "Hello",
            "--prompt",
            "A much longer prompt here",
            "--max-new-tokens",
            "5",
            "--greedy",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("=== ") == 2 and "A much longer prompt here" in out


def test_cli_samples_the_tiny_model_and_reads_special_text_as_text(capsys):
    """`python gpt2.py --model tiny` samples from the fitted tiny model; a prompt quoting
    <|endoftext|> is plain text; --help shows each default once."""
    gpt2.main(["--model", "tiny", "--prompt", "She said <|endoftext|>", "--max-new-tokens", "4",
               "--greedy", "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("=== 'She said <|endoftext|>'\nShe said <|endoftext|>")
    with pytest.raises(SystemExit):
        gpt2.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    prompt_help = help_text.split("--prompt PROMPT [PROMPT ...]")[-1].split("--max-new-tokens")[0]
    assert prompt_help.count("default") == 1, prompt_help


def test_kernels_on_match_kernels_off(checkpoint_dir):
    """The Triton kernels (interpreter on CPU) give the model the same logits, log-probs and
    gradients as PyTorch."""
    pytest.importorskip("triton")
    on = GPT2.from_pretrained(str(checkpoint_dir), use_kernels="on")
    off = GPT2.from_pretrained(str(checkpoint_dir), use_kernels="off")
    tokens, mask = left_pad(prompts(lengths=(9, 4, 1)))
    with torch.no_grad():
        torch.testing.assert_close(
            on(tokens, mask)[mask], off(tokens, mask)[mask], atol=1e-5, rtol=1e-5
        )
    grads = []
    for m in (on, off):
        lp, ent, _ = response_logprobs(m, tokens, mask, 3, temperature=0.7)
        (lp.sum() + 0.1 * ent.sum()).backward()
        grads.append(
            (lp.detach(), ent.detach(), m.transformer.h[0].attn.c_attn.weight.grad.clone())
        )
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_inverse_cdf_sampling_matches_probabilities():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25, 0.0]]).repeat(
        20_000, 1
    )
    draws = gpt2.sample_inverse_cdf(probs, torch.Generator().manual_seed(0)).view(20_000, 2)
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=5).float() / 20_000
        assert (freq[probs[row] == 0] == 0).all()  # zero-probability tokens are never drawn
        # ~4 standard errors at n = 20,000
        torch.testing.assert_close(freq, probs[row], atol=0.012, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_checkpoint_same_gradients(dtype):
    """Activation checkpointing on and off: the same loss and gradients on a left-padded batch,
    in fp32 and under bf16 autocast (the recompute must run under the same autocast as the
    forward, or its bf16 activations would differ). On CPU the recompute is the same ops on the
    same inputs, so the match is exact; checkpointing must also really recompute (each block runs
    twice)."""
    torch.manual_seed(0)
    model = GPT2(gpt2.GPT2Config(n_layer=3, n_head=2, n_embd=32, vocab_size=97, n_positions=32))
    tokens, mask = left_pad([[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]])
    calls = []  # block forwards run (module hooks do not fire on the recompute, so wrap forward)
    for block in model.transformer.h:
        block.forward = lambda *a, _f=block.forward: calls.append(1) or _f(*a)

    def grads(on: bool):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpoint(on)
        calls.clear()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            lp, ent, hidden = response_logprobs(model, tokens, mask, 2, temperature=0.7)
            loss = (lp * 1.3).sum() + ent.sum() + hidden.float().pow(2).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, len(calls)

    loss_off, g_off, calls_off = grads(False)
    loss_on, g_on, calls_on = grads(True)
    assert (calls_off, calls_on) == (3, 6)  # the recompute ran once per block
    assert torch.equal(loss_on, loss_off)
    for n in g_off:
        assert torch.equal(g_on[n], g_off[n]), n
    # no gradients wanted (rollout, reference model): no checkpointing, one run per block
    with torch.no_grad():
        calls.clear()
        model(tokens, mask)
        assert len(calls) == 3


def test_response_logprobs_under_bf16_autocast():
    """Under CPU bf16 autocast (the GPU's precision path): log-probs and entropy come back fp32,
    equal to log_softmax of the bf16 GEMM's logits upcast to fp32, and the gradients match
    autograd through that reference at bf16 tolerance (the trunk's backward runs bf16 GEMMs)."""
    torch.manual_seed(0)
    model = GPT2(gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=211, n_positions=32))
    tokens, mask = left_pad([[1, 2, 3, 4, 5], [7, 8, 9]])
    R, temp, w_lp = 2, 0.7, torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    with amp.autocast("cpu", "bf16"):
        lp, ent, _ = response_logprobs(model, tokens, mask, R, temp)
    assert lp.dtype == ent.dtype == torch.float32 and torch.isfinite(lp).all()
    (lp * w_lp).sum().add(ent.sum()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad(set_to_none=True)
    with amp.autocast("cpu", "bf16"):
        hidden = model.hidden_states(tokens, mask)
    T = tokens.size(1)
    h = hidden[:, T - R - 1 : T - 1].to(torch.bfloat16).float()
    logits = (h @ model.lm_head_weight.to(torch.bfloat16).float().T).to(torch.bfloat16)
    logp = F.log_softmax(logits.float() / temp, -1)  # (B, R, V)
    ref_lp = logp.gather(-1, tokens[:, T - R :, None])[..., 0]
    ref_ent = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    (ref_lp * w_lp).sum().add(ref_ent.sum()).backward()
    for n, p in model.named_parameters():
        err = (got[n] - p.grad).abs().max() / p.grad.abs().max()
        assert err < 2e-2, (n, err.item())  # bf16 keeps 8 bits: ~0.4% per rounding


def test_token_logprobs_bf16_gemm_fp32_math(logits_kept):
    """token_logprobs with bf16 hidden and an fp32 weight: the logits' GEMM runs in bf16, the
    rest in fp32, the same inside autocast or outside (so the backward, which runs outside
    autocast, recomputes the forward's logits); gradients against autograd through a bf16-rounded
    GEMM with fp32 everything else."""
    torch.manual_seed(2)
    N, C, Vs = 19, 16, 301
    h32, w = torch.randn(N, C), torch.randn(Vs, C, requires_grad=True)
    hb = h32.to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, Vs, (N,))
    adv = torch.randn(N)
    lp, ent = token_logprobs(
        hb, w, t, temperature=0.7, use_kernels="off", chunk=4, backward_chunk=4
    )
    with amp.autocast("cpu", "bf16"):
        lp_ac, ent_ac = token_logprobs(
            hb, w, t, temperature=0.7, use_kernels="off", chunk=4, backward_chunk=4
        )
    assert lp.dtype == ent.dtype == torch.float32
    assert torch.equal(lp, lp_ac) and torch.equal(ent, ent_ac)
    assert (lp.grad_fn.saved_tensors[-1] is not None) == logits_kept
    gh, gw = torch.autograd.grad((lp * adv).sum() + ent.sum(), (hb, w))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.float32

    def bf16(x):  # rounded to bf16 in the forward, fp32 straight through in the backward
        return x + (x.to(torch.bfloat16).float() - x).detach()

    hr = hb.detach().float().requires_grad_()
    wr = w.detach().clone().requires_grad_()
    logp = F.log_softmax(bf16(hr @ bf16(wr).T) / 0.7, -1)
    ref_lp, ref_ent = logp.gather(1, t[:, None])[:, 0], -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-5)
    rh, rw = torch.autograd.grad((ref_lp * adv).sum() + ref_ent.sum(), (hr, wr))
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-5)  # dW accumulates in fp32
    # dh multiplies by the fp32 weight (the reference: its bf16 rounding) and comes back in bf16
    assert (gh.float() - rh).abs().max() < 1e-2 * rh.abs().max()
    # 'auto' is fp32 on the CPU, bf16 on CUDA; unknown names are refused
    assert amp.resolve_precision("auto", "cpu") == "fp32"
    assert amp.resolve_precision("auto", "cuda") == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        amp.resolve_precision("fp16", "cpu")
