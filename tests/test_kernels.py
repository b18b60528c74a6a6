"""Property tests of the Triton kernels (gpt2_kernels/) against PyTorch, of the kernels' PyTorch
paths, and of the dispatch between them.

On a machine without CUDA the kernels run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton), which executes the kernel code on CPU tensors,
one program at a time. The interpreter cannot do bf16 arithmetic, so bf16 is covered by the
ahead-of-time compile test (tests/test_kernels_aot.py) only. Criteria: fp32 within ~1e-5 of the
fp32 reference; fp16 no worse than 2× PyTorch's own fp16 error against the fp32 reference
(FlashAttention's test criterion); no NaN; exactly zero output and gradient at padding.

References: attention is checked against the model's own PyTorch path
(gpt2_kernels.torch_attention); log-probs against token_logprobs_reference below, the textbook
full-logits computation (in fp64 where the tests need ground truth), which lives here because no
product code needs it.
Run: python -m pytest -q tests/test_kernels.py   (about a minute on 2 CPU cores)
"""

import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpt2_kernels
from gpt2_kernels import torch_attention, torch_token_logprobs
from gpt2_kernels.triton_attention import attention
from gpt2_kernels.triton_logprobs import token_logprobs

# The interpreter is slow (~0.1-0.7 s per attention call): few, derandomized examples, no deadline.
FEW = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
FEWER = settings(
    max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------
# attention


def _left_pad_mask(starts, T):
    """(B, T) bool mask with row b real from starts[b] on (starts[b] = T: a fully padded row)."""
    return torch.arange(T, device=DEVICE)[None, :] >= torch.tensor(starts, device=DEVICE)[:, None]


def _attention_lowp(q, k, v, attention_mask):
    """PyTorch's own low-precision attention: matmuls in the input dtype, softmax in fp32 (as
    SDPA's math path)."""
    T, D = q.shape[-2:]
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # (B, H, T, T) in q's dtype
    visible = (
        torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        & attention_mask.bool()[:, None, None, :]
    )
    probs = (
        torch.softmax(scores.float().masked_fill(~visible, float("-inf")), -1)
        .nan_to_num(0.0)
        .to(q.dtype)
    )
    return probs @ v


@st.composite
def attention_cases(draw):
    B = draw(st.integers(1, 3))
    H = draw(st.integers(1, 2))
    T = draw(st.sampled_from([1, 2, 17, 63, 64, 65, 127, 128, 129]))
    D = draw(st.sampled_from([32, 64]))
    # starts: no padding, one pad, a single real token (T-1), a fully padded row (T), or anywhere
    starts = [
        draw(st.one_of(st.sampled_from([0, 1, T - 1, T]), st.integers(0, T))) for _ in range(B)
    ]
    starts = [min(s, T) for s in starts]
    seed = draw(st.integers(0, 2**16))
    return B, H, T, D, starts, seed


def _run_attention(fn, q, k, v, mask, do):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    o = fn(q, k, v, mask)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    return o, dq, dk, dv


@FEW
@given(attention_cases())
def test_attention_fp32_matches_reference(case):
    B, H, T, D, starts, seed = case
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g, device=DEVICE) for _ in range(4))
    mask = _left_pad_mask(starts, T)
    got = _run_attention(attention, q, k, v, mask, do)
    want = _run_attention(torch_attention, q, k, v, mask, do)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(a).all(), f"{name} has NaN/inf"
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    # padding: query rows before start output 0 and get zero dq; padded keys get zero dk, dv
    # (exactly)
    pad = ~mask  # (B, T)
    for name, a in zip(("out", "dq", "dk", "dv"), got):
        assert (a.permute(0, 2, 1, 3)[pad] == 0).all(), f"{name} is nonzero at a padded position"


@FEWER
@given(attention_cases())
def test_attention_fp16_within_twice_torch_fp16_error(case):
    B, H, T, D, starts, seed = case
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g, device=DEVICE).half() for _ in range(4))
    mask = _left_pad_mask(starts, T)
    got = _run_attention(attention, q, k, v, mask, do)  # fp16 kernel
    # fp32 truth
    ref = _run_attention(torch_attention, q.float(), k.float(), v.float(), mask, do.float())
    # PyTorch doing the same in fp16
    torch_lowp = _run_attention(_attention_lowp, q, k, v, mask, do)
    for name, a, r, t in zip(("out", "dq", "dk", "dv"), got, ref, torch_lowp):
        assert a.dtype == torch.float16 and torch.isfinite(a).all(), (
            f"{name}: dtype {a.dtype} or NaN/inf"
        )
        err = (a.float() - r).abs().max().item()
        torch_err = (t.float() - r).abs().max().item()
        # 2x PyTorch's own fp16 error, plus a floor of a few fp16 ulps at 1.0 for cases where torch
        # is exact
        assert err <= 2 * torch_err + 2e-3, (
            f"{name}: kernel fp16 error {err:.2e} vs torch fp16 error {torch_err:.2e}"
        )


def test_attention_noncontiguous_inputs_and_no_mask():
    # q, k, v as views of a fused (B, T, 3, H, D) projection, the layout GPT-2's c_attn produces
    B, T, H, D = 2, 70, 2, 32
    qkv = torch.randn(
        B, T, 3, H, D, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(1)
    )
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, T, D), non-contiguous
    assert not q.is_contiguous()
    torch.testing.assert_close(attention(q, k, v), torch_attention(q, k, v), atol=2e-5, rtol=1e-4)
    # and a unit-stride-free layout (D not innermost) is copied by the wrapper, not misread
    qt = q.contiguous().transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(attention(qt, k, v), torch_attention(q, k, v), atol=2e-5, rtol=1e-4)


def test_attention_deterministic_and_right_padding_harmless():
    B, H, T, D = 2, 2, 129, 64
    g = torch.Generator(device=DEVICE).manual_seed(2)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g, device=DEVICE) for _ in range(4))
    mask = _left_pad_mask([3, 40], T)
    first = _run_attention(attention, q, k, v, mask, do)
    second = _run_attention(attention, q, k, v, mask, do)
    for a, b in zip(first, second):
        assert torch.equal(a, b), "two identical runs differ: the backward must be deterministic"
    # trailing zeros (right padding after a response) may only change outputs at those positions
    right = mask.clone()
    right[:, -5:] = False
    o = attention(q, k, v, right)
    o_ref = torch_attention(q, k, v, right)
    torch.testing.assert_close(o[..., :-5, :], o_ref[..., :-5, :], atol=2e-5, rtol=1e-4)


def test_attention_fp32_gpu_tiles(monkeypatch):
    # the interpreter normally runs the 16-bit tile tables; this runs the small fp32 GPU tiles
    # (32x32, 16x32, 32x16)
    import importlib

    attn_module = importlib.import_module("gpt2_kernels.triton_attention")
    monkeypatch.setattr(attn_module, "_tiles_fp32", lambda dtype: dtype == torch.float32)
    B, H, T, D = 2, 1, 45, 32
    g = torch.Generator(device=DEVICE).manual_seed(5)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g, device=DEVICE) for _ in range(4))
    mask = _left_pad_mask([0, 19], T)
    for a, b in zip(
        _run_attention(attention, q, k, v, mask, do),
        _run_attention(torch_attention, q, k, v, mask, do),
    ):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_attention_rejects_bad_input():
    q = torch.randn(1, 1, 8, 32, device=DEVICE)
    with pytest.raises(ValueError, match="attention_mask must be"):
        attention(q, q, q, torch.ones(1, 7, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="head dim"):
        attention(*(torch.randn(1, 1, 8, 48, device=DEVICE),) * 3)
    if DEVICE == "cpu":
        holey = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 1]], dtype=torch.bool)
        with pytest.raises(ValueError, match="hole"):
            attention(q, q, q, holey)


# --------------------------------------------------------------------------------------------------
# token log-probs and entropy


def token_logprobs_reference(hidden, weight, targets, temperature=1.0):
    """The tests' ground truth: logp[i] = log softmax(hidden[i] · Wᵀ / τ)[targets[i]] and the
    entropy of that distribution, from the full (N, V) logits.

    hidden (N, d), weight (V, d), targets (N,) long in [0, V). fp64 inputs are computed in fp64,
    everything else in fp32.
    """
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden.to(dtype) @ weight.to(dtype).t() / temperature  # (N, V)
    logp_all = torch.log_softmax(logits, dim=-1)  # (N, V)
    logp = logp_all.gather(-1, targets[:, None].long()).squeeze(-1)  # (N,)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N,)
    return logp, entropy


@st.composite
def logprob_cases(draw):
    N = draw(st.sampled_from([1, 7, 63, 64, 65, 130]))
    d = draw(st.sampled_from([32, 64]))
    V = draw(st.sampled_from([1000, 1777, 2049, 3001]))
    temperature = draw(st.sampled_from([1.0, 0.7, 1.5]))
    # None: the default (one chunk at these sizes)
    vocab_chunk = draw(st.sampled_from([None, 384, 1024]))
    peaked = draw(st.booleans())  # copy hidden rows into W so some softmaxes are nearly one-hot
    grads = draw(st.sampled_from(["both", "logp", "entropy"]))
    seed = draw(st.integers(0, 2**16))
    return N, d, V, temperature, vocab_chunk, peaked, grads, seed


def _make_logprob_inputs(N, d, V, peaked, seed, dtype=torch.float32):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    hidden = torch.randn(N, d, generator=g, device=DEVICE)
    weight = torch.randn(V, d, generator=g, device=DEVICE) * 0.5
    targets = torch.randint(0, V, (N,), generator=g, device=DEVICE)
    targets[0] = V - 1  # the last vocab entry, in the ragged tail of the last chunk
    if peaked:
        # huge target logits: p(y) -> 1, entropy -> 0
        weight[targets[: N // 2]] = hidden[: N // 2] * 2.0
    g_logp = torch.randn(N, generator=g, device=DEVICE)
    g_ent = torch.randn(N, generator=g, device=DEVICE)
    return hidden.to(dtype), weight.to(dtype), targets, g_logp, g_ent


def _run_logprobs(fn, hidden, weight, targets, temperature, g_logp, g_ent, grads="both", **kw):
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    logp, ent = fn(hidden, weight, targets, temperature, **kw)
    loss = {
        "both": (logp * g_logp).sum() + (ent * g_ent).sum(),
        "logp": (logp * g_logp).sum(),
        "entropy": (ent * g_ent).sum(),
    }[grads]
    dh, dw = torch.autograd.grad(loss, (hidden, weight))
    return logp, ent, dh, dw


@FEW
@given(logprob_cases())
def test_token_logprobs_fp32_matches_reference(case):
    N, d, V, temperature, vocab_chunk, peaked, grads, seed = case
    hidden, weight, targets, g_logp, g_ent = _make_logprob_inputs(N, d, V, peaked, seed)
    got = _run_logprobs(
        token_logprobs,
        hidden,
        weight,
        targets,
        temperature,
        g_logp,
        g_ent,
        grads,
        vocab_chunk=vocab_chunk,
    )
    want = _run_logprobs(
        token_logprobs_reference, hidden, weight, targets, temperature, g_logp, g_ent, grads
    )
    truth = _run_logprobs(
        token_logprobs_reference,
        hidden.double(),
        weight.double(),
        targets,
        temperature,
        g_logp.double(),
        g_ent.double(),
        grads,
    )
    for name, a, b, t in zip(("logp", "entropy", "dhidden", "dweight"), got, want, truth):
        assert torch.isfinite(a).all(), f"{name} has NaN/inf"
        # against an fp64 ground truth: within 1e-5 relative to the tensor's scale, or no worse than
        # 2x PyTorch's own fp32 error (sums of ~1000 terms in a different order differ by a few
        # ulps)
        err = (a.double() - t).abs().max().item()
        torch_err = (b.double() - t).abs().max().item()
        scale = max(1.0, t.abs().max().item())
        assert err <= max(1e-5 * scale, 2 * torch_err), (
            f"{name}: fp32 error {err:.2e} (scale {scale:.1f}) vs torch fp32 error {torch_err:.2e}"
        )


@FEWER
@given(logprob_cases())
def test_token_logprobs_fp16_within_twice_torch_fp16_error(case):
    N, d, V, temperature, vocab_chunk, peaked, grads, seed = case
    hidden, weight, targets, g_logp, g_ent = _make_logprob_inputs(
        N, d, V, peaked, seed, torch.float16
    )

    def torch_fp16(h, w, y, t):  # the naive path in fp16: fp16 logits, log_softmax in fp32
        logp_all = torch.log_softmax((h @ w.t()).float() / t, -1)
        return logp_all.gather(-1, y[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)

    got = _run_logprobs(
        token_logprobs,
        hidden,
        weight,
        targets,
        temperature,
        g_logp,
        g_ent,
        grads,
        vocab_chunk=vocab_chunk,
    )
    ref = _run_logprobs(
        token_logprobs_reference,
        hidden.float(),
        weight.float(),
        targets,
        temperature,
        g_logp,
        g_ent,
        grads,
    )
    lowp = _run_logprobs(torch_fp16, hidden, weight, targets, temperature, g_logp, g_ent, grads)
    for name, a, r, t in zip(("logp", "entropy", "dhidden", "dweight"), got, ref, lowp):
        assert torch.isfinite(a).all(), f"{name} has NaN/inf"
        err = (a.float() - r).abs().max().item()
        torch_err = (t.float() - r).abs().max().item()
        assert err <= 2 * torch_err + 1e-3, (
            f"{name}: kernel fp16 error {err:.2e} vs torch fp16 error {torch_err:.2e}"
        )
    assert got[2].dtype == torch.float16 and got[3].dtype == torch.float16


def test_token_logprobs_gpt2_vocab_and_determinism():
    # the real vocab size (50257, odd, not a multiple of any block), in the default chunking, and
    # repeat runs
    N, d, V = 6, 32, 50257
    hidden, weight, targets, g_logp, g_ent = _make_logprob_inputs(N, d, V, True, 3)
    first = _run_logprobs(token_logprobs, hidden, weight, targets, 1.0, g_logp, g_ent)
    want = _run_logprobs(token_logprobs_reference, hidden, weight, targets, 1.0, g_logp, g_ent)
    for name, a, b in zip(("logp", "entropy", "dhidden", "dweight"), first, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    second = _run_logprobs(token_logprobs, hidden, weight, targets, 1.0, g_logp, g_ent)
    for a, b in zip(first, second):
        assert torch.equal(a, b), "two identical runs differ"


def test_token_logprobs_mixed_dtypes_and_bad_input():
    # fp16 hidden with an fp32 master weight (autocast-style): dW comes back in fp32
    hidden, weight, targets, g_logp, g_ent = _make_logprob_inputs(9, 32, 1000, False, 4)
    logp, ent, dh, dw = _run_logprobs(
        token_logprobs, hidden.half(), weight, targets, 1.0, g_logp, g_ent
    )
    assert dh.dtype == torch.float16 and dw.dtype == torch.float32
    ref = token_logprobs_reference(hidden.half().float(), weight.half().float(), targets)
    torch.testing.assert_close(logp, ref[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="targets must be"):
        token_logprobs(hidden, weight, targets[:-1])
    if DEVICE == "cpu":
        bad = targets.clone()
        bad[0] = 50259  # OpenAI's padding id: outside the vocab
        with pytest.raises(ValueError, match="padding ids"):
            token_logprobs(hidden, weight, bad)


def test_vocab_chunk_size_bounds_extra_memory():
    from gpt2_kernels.triton_logprobs import CHUNK_ELEMENTS, vocab_chunk_size

    for N in (1, 64, 12288, 65536):
        vc = vocab_chunk_size(N, 50257)
        assert vc % 128 == 0 and 128 <= vc <= 50304
        assert N * vc <= max(CHUNK_ELEMENTS, N * 128)  # one chunk of logits, whatever N and V


# --------------------------------------------------------------------------------------------------
# the PyTorch path of the log-probs (token chunks, hand-written backward)


def _kept_logp(out):
    """The (N, V) log p the forward kept for the backward, or None."""
    return out.grad_fn.saved_tensors[-1]


# chunks of 8 rows, or one chunk of 64 holding all 37 (the forward's logits and the kept log p are
# then stored (V, N), transposed), with a backward in chunks of 8 or 64
@pytest.mark.parametrize("chunk, backward_chunk", [(8, 8), (64, 8), (64, 64)])
def test_token_logprobs_chunked_matches_naive(logits_kept, chunk, backward_chunk):
    torch.manual_seed(0)
    N, C, Vs = 37, 16, 1001
    h = torch.randn(N, C, requires_grad=True)
    w = torch.randn(Vs, C, requires_grad=True)
    t = torch.randint(0, Vs, (N,))
    lp, ent = gpt2_kernels.token_logprobs(
        h, w, t, temperature=0.7, use_kernels="off", chunk=chunk, backward_chunk=backward_chunk
    )
    logp = F.log_softmax(h @ w.T / 0.7, -1)
    ref_lp, ref_ent = logp.gather(1, t[:, None])[:, 0], -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(ent, ref_ent)
    assert (_kept_logp(lp) is not None) == logits_kept
    if logits_kept:
        torch.testing.assert_close(_kept_logp(lp), logp)
    g1 = torch.autograd.grad((lp * 1.3 + ent).sum(), (h, w), retain_graph=True)
    again = torch.autograd.grad((lp * 1.3 + ent).sum(), (h, w))  # the backward wrote nothing saved
    assert all(torch.equal(a, b) for a, b in zip(g1, again))
    g2 = torch.autograd.grad((ref_lp * 1.3 + ref_ent).sum(), (h, w))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_token_logprobs_gradients_of_each_output_alone_match_fp64(logits_kept):
    """The hand-written backward with only log-probs in the loss (PPO's case) and with only
    entropy, against autograd through log_softmax in fp64; then a weight that needs no gradient
    (dW skipped)."""
    torch.manual_seed(1)
    N, C, Vs = 23, 8, 517
    h64, w64 = torch.randn(N, C, dtype=torch.float64), torch.randn(Vs, C, dtype=torch.float64)
    t = torch.randint(0, Vs, (N,))
    adv = torch.randn(N, dtype=torch.float64)
    for pick in (0, 1):
        h, w = h64.float().requires_grad_(), w64.float().requires_grad_()
        out = gpt2_kernels.token_logprobs(
            h, w, t, temperature=0.7, use_kernels="off", chunk=5, backward_chunk=5
        )
        assert (_kept_logp(out[pick]) is not None) == logits_kept
        g = torch.autograd.grad((out[pick] * adv.float()).sum(), (h, w))
        hr, wr = h64.clone().requires_grad_(), w64.clone().requires_grad_()
        logp = F.log_softmax(hr @ wr.T / 0.7, -1)
        ref = (logp.gather(1, t[:, None])[:, 0], -(logp.exp() * logp).sum(-1))[pick]
        g_ref = torch.autograd.grad((ref * adv).sum(), (hr, wr))
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-4)
    h = h64.float().requires_grad_()
    # weight without grad: dW is skipped
    lp, _ = gpt2_kernels.token_logprobs(
        h, w64.float(), t, use_kernels="off", chunk=7, backward_chunk=7
    )
    (gh,) = torch.autograd.grad(lp.sum(), h)
    assert torch.isfinite(gh).all() and gh.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# dispatch: which path runs, the fallback under 'auto', and life without triton

ROOT = Path(__file__).resolve().parent.parent


def _qkv_mask(D, T=9, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    q, k, v = (torch.randn(2, 2, T, D, generator=g, device=DEVICE) for _ in range(3))
    return q, k, v, _left_pad_mask([0, 3], T)


def test_package_runs_the_triton_path_when_on_and_pytorch_when_off():
    q, k, v, mask = _qkv_mask(32)
    assert torch.equal(
        gpt2_kernels.attention(q, k, v, mask, use_kernels="on"), attention(q, k, v, mask)
    )
    assert torch.equal(
        gpt2_kernels.attention(q, k, v, mask, use_kernels="off"), torch_attention(q, k, v, mask)
    )
    hidden, weight, targets, _, _ = _make_logprob_inputs(7, 32, 1000, False, 0)
    for mode, fn in (("on", token_logprobs), ("off", torch_token_logprobs)):
        got = gpt2_kernels.token_logprobs(hidden, weight, targets, 0.7, use_kernels=mode)
        for a, b in zip(got, fn(hidden, weight, targets, 0.7)):
            assert torch.equal(a, b)
    if DEVICE == "cpu":  # 'auto' on CPU tensors is the PyTorch path
        assert torch.equal(gpt2_kernels.attention(q, k, v, mask), torch_attention(q, k, v, mask))
    with pytest.raises(ValueError, match="use_kernels must be"):
        gpt2_kernels.attention(q, k, v, mask, use_kernels="yes")


@pytest.fixture
def pretend_gpu(monkeypatch):
    """'auto' treats every tensor as a GPU tensor (the kernels then run under the interpreter), with
    no fallback reported yet; counts the calls that reach each Triton function."""
    import gpt2_kernels.triton_attention as ta
    import gpt2_kernels.triton_logprobs as tlp

    monkeypatch.setattr(gpt2_kernels, "_on_gpu", lambda t: True)
    monkeypatch.setattr(gpt2_kernels, "_reported", set())
    calls = {"attention": 0, "token_logprobs": 0}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kw):
            calls[name] += 1
            return real(*args, **kw)

        monkeypatch.setattr(module, name, wrapper)

    counted(ta, "attention")
    counted(tlp, "token_logprobs")
    return calls


def _fallback_messages(caught, text):
    return [str(w.message) for w in caught if text in str(w.message)]


@pytest.mark.parametrize("D", [8, 24])
def test_auto_falls_back_on_unsupported_head_dim_once_and_on_refuses(pretend_gpu, D):
    q, k, v, mask = _qkv_mask(D)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [gpt2_kernels.attention(q, k, v, mask, use_kernels="auto") for _ in range(3)]
    said = _fallback_messages(caught, f"head dim {D}")
    assert len(said) == 1 and "PyTorch path" in said[0], [str(w.message) for w in caught]
    assert pretend_gpu["attention"] == 0, "an unsupported head dim reached the kernel"
    for o in outs:
        assert torch.equal(o, torch_attention(q, k, v, mask))
    with pytest.raises(ValueError, match=f"head dim D={D} unsupported"):
        gpt2_kernels.attention(q, k, v, mask, use_kernels="on")
    # a supported head dim under the same conditions does run the kernel, and says nothing
    q, k, v, mask = _qkv_mask(32)
    before = pretend_gpu["attention"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = gpt2_kernels.attention(q, k, v, mask, use_kernels="auto")
    assert pretend_gpu["attention"] == before + 1 and not _fallback_messages(caught, "falls back")
    torch.testing.assert_close(got, torch_attention(q, k, v, mask), atol=2e-5, rtol=1e-4)


def test_auto_fallback_in_the_model_matches_off(pretend_gpu):
    """A GPT-2 whose heads are 8 wide: 'auto' runs PyTorch in every layer, equal to 'off', and
    says so once for the whole model."""
    import gpt2

    cfg = gpt2.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=100, n_positions=16)
    torch.manual_seed(0)
    auto = gpt2.GPT2.from_config(cfg).to(DEVICE)
    off = gpt2.GPT2.from_config(gpt2.dataclasses.replace(cfg, use_kernels="off")).to(DEVICE)
    off.load_state_dict(auto.state_dict())
    tokens, mask = gpt2.left_pad([[5, 6, 7, 8], [9, 10]], device=DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = auto(tokens, mask)
            lp, ent, _ = gpt2.response_logprobs(auto, tokens, mask, 2)
    assert len(_fallback_messages(caught, "head dim 8")) == 1
    assert pretend_gpu["attention"] == 0
    assert pretend_gpu["token_logprobs"] == 2  # the LM head has no head-dim limit: kernel
    assert torch.equal(got, off(tokens, mask))
    want_lp, want_ent, _ = gpt2.response_logprobs(off, tokens, mask, 2)
    torch.testing.assert_close(lp, want_lp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=2e-5, rtol=1e-5)


def test_auto_falls_back_on_unsupported_logprob_dtype_once(pretend_gpu):
    hidden, weight, targets, _, _ = _make_logprob_inputs(7, 32, 1000, False, 1, torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [gpt2_kernels.token_logprobs(hidden, weight, targets, 0.7) for _ in range(3)]
    assert len(_fallback_messages(caught, "torch.float64")) == 1
    assert pretend_gpu["token_logprobs"] == 0
    want = torch_token_logprobs(hidden, weight, targets, 0.7)
    for got in outs:
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="fp32/fp16/bf16"):
        gpt2_kernels.token_logprobs(hidden, weight, targets, 0.7, use_kernels="on")


def test_auto_without_triton_falls_back_once_and_on_refuses(pretend_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt2_kernels.triton_attention", None)  # its import now fails
    q, k, v, mask = _qkv_mask(32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert torch.equal(
                gpt2_kernels.attention(q, k, v, mask), torch_attention(q, k, v, mask)
            )
    assert len(_fallback_messages(caught, "triton is not installed")) == 1
    with pytest.raises(ImportError, match="needs triton"):
        gpt2_kernels.attention(q, k, v, mask, use_kernels="on")


def test_gpt2_runs_where_triton_cannot_be_imported():
    """A CPU user without triton: importing gpt2 and gpt2_kernels, the forward, log-probs with their
    gradient and sampling all work, and use_kernels='on' says what is missing."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # every `import triton` now raises ImportError
        import torch
        import gpt2, gpt2_kernels
        cfg = gpt2.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16)
        model = gpt2.GPT2.from_config(cfg)
        tokens, mask = gpt2.left_pad([[1, 2, 3, 4], [5, 6]])
        logits = model(tokens, mask)
        lp, ent, _ = gpt2.response_logprobs(model, tokens, mask, 2)
        lp.sum().backward()
        new, new_lp = gpt2.generate(model, tokens, mask, max_new_tokens=3)
        assert torch.isfinite(logits).all() and torch.isfinite(lp).all() and new.shape == (2, 3)
        assert model.transformer.wte.weight.grad.abs().sum() > 0
        assert not any(m.startswith("gpt2_kernels.triton") for m in sys.modules)
        try:
            gpt2_kernels.token_logprobs(
                torch.randn(3, 8), torch.randn(10, 8), torch.zeros(3).long(), use_kernels="on"
            )
        except ImportError as e:
            assert "needs triton" in str(e), e
        else:
            raise AssertionError("use_kernels='on' ran without triton")
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
