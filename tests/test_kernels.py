"""Property tests of the Triton kernels (kernels/) against their plain-PyTorch references.

On a machine without CUDA they run under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton), which executes the kernel code on CPU tensors,
one program at a time. The interpreter cannot do bf16 arithmetic, so bf16 is covered by the
ahead-of-time compile test (tests/test_kernels_aot.py) only. Criteria (kernels-notes §5): fp32
within ~1e-5 of the fp32 reference; fp16 no worse than 2× PyTorch's own fp16 error against the fp32
reference (FlashAttention's test criterion); no NaN; exactly zero output and gradient at padding.
Run: python -m pytest -q tests/test_kernels.py   (about a minute on 2 CPU cores)
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from kernels import (
    attention,
    attention_reference,
    kl_k1,
    kl_k3,
    token_logprobs,
    token_logprobs_reference,
)

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
    want = _run_attention(attention_reference, q, k, v, mask, do)
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
    ref = _run_attention(attention_reference, q.float(), k.float(), v.float(), mask, do.float())
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
    torch.testing.assert_close(
        attention(q, k, v), attention_reference(q, k, v), atol=2e-5, rtol=1e-4
    )
    # and a unit-stride-free layout (D not innermost) is copied by the wrapper, not misread
    qt = q.contiguous().transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(
        attention(qt, k, v), attention_reference(q, k, v), atol=2e-5, rtol=1e-4
    )


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
    o_ref = attention_reference(q, k, v, right)
    torch.testing.assert_close(o[..., :-5, :], o_ref[..., :-5, :], atol=2e-5, rtol=1e-4)


def test_attention_fp32_gpu_tiles(monkeypatch):
    # the interpreter normally runs the 16-bit tile tables; this runs the small fp32 GPU tiles
    # (32x32, 16x32, 32x16)
    import importlib

    attn_module = importlib.import_module("kernels.attention")
    monkeypatch.setattr(attn_module, "_tiles_fp32", lambda dtype: dtype == torch.float32)
    B, H, T, D = 2, 1, 45, 32
    g = torch.Generator(device=DEVICE).manual_seed(5)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g, device=DEVICE) for _ in range(4))
    mask = _left_pad_mask([0, 19], T)
    for a, b in zip(
        _run_attention(attention, q, k, v, mask, do),
        _run_attention(attention_reference, q, k, v, mask, do),
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
    from kernels.logprobs import CHUNK_ELEMENTS, vocab_chunk_size

    for N in (1, 64, 12288, 65536):
        vc = vocab_chunk_size(N, 50257)
        assert vc % 128 == 0 and 128 <= vc <= 50304
        assert N * vc <= max(CHUNK_ELEMENTS, N * 128)  # one chunk of logits, whatever N and V


# --------------------------------------------------------------------------------------------------
# KL estimators, against hand-worked numbers


def test_kl_k1_k3_hand_worked():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    ref = torch.tensor([-1.0, -1.0, -1.5, -3.0 + 1e-6])
    # k1 = logp - ref
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([0.0, -1.0, 1.0, -1e-6]))
    # k3 = e^δ - δ - 1 with δ = ref - logp: δ = 0 -> 0; δ = 1 -> e - 2; δ = -1 -> 1/e; δ = 1e-6 ->
    # δ²/2 = 5e-13
    k3 = kl_k3(logp, ref)
    torch.testing.assert_close(k3[:3], torch.tensor([0.0, math.e - 2.0, math.exp(-1.0)]))
    assert (k3 >= 0).all()
    d = (ref[3] - logp[3]).double()
    # expm1 keeps tiny δ accurate
    torch.testing.assert_close(k3[3].double(), d * d / 2, rtol=0.05, atol=0.0)


def test_package_exports():
    assert kernels.attention is attention and kernels.token_logprobs is token_logprobs
    assert callable(kernels.attention_reference) and callable(kernels.token_logprobs_reference)
