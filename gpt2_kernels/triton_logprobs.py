"""Per-token log-probs and entropy of softmax(hidden · Wᵀ / temperature) without the N×V logits,
as a Triton kernel.

What is fused. The naive way (N tokens, d hidden, V = 50257 vocab)
    logits = H @ Wᵀ                       # write N·V (bf16: 2 B, or fp32 after the upcast: 4 B)
    logp_all = log_softmax(logits / τ)    # read N·V, write N·V (fp32), ~3 passes inside the op
    logp = logp_all.gather(targets)       # read N
    entropy = -(exp(logp_all) · logp_all).sum(-1)   # read N·V, write N·V twice more
keeps several N×V tensors alive for the backward. At N = 512·24 = 12288 tokens one fp32 N×V tensor
is 2.47 GB, and autograd keeps about three of them (logits, log-softmax, probabilities), ~7 GB, with
the same again in gradients during the backward.

Here the vocabulary is processed in column chunks of Vc entries (Vc ≈ 2²⁵/N, a multiple of 128, so
a chunk is about 128 MB of fp32 whatever N and V; for N ≤ 262144):
  forward, per chunk: Z_c = H @ W_cᵀ in fp32 (cuBLAS, bf16/fp16 inputs with fp32 output), then
    the Triton kernel _logprob_fwd_chunk folds Z_c into four running per-token statistics, an
    online log-sum-exp: max m, s = Σ e^{z−m}, t = Σ e^{z−m}(z − m) (entropy), and the target
    logit z_y. logp = z_y − lse, entropy = log s − t/s, with lse = m + log s. Saved for the
    backward: H, W, targets and two floats per token (lse, entropy); never the logits.
  backward, per chunk: recompute Z_c (one extra GEMM), the Triton kernel _logprob_bwd_chunk turns
    it in place into
        G_c = ∂L/∂Z_c = [g_logp·(1[j=y] − p_j) − g_ent·p_j·(z_j − lse + entropy)] / τ,
    then dW_c = G_cᵀ H (written once, complete: each vocab row belongs to one chunk) and
    dH += G_c W_c (fp32 accumulator of N·d floats).
Memory: one chunk (N·Vc fp32 + N·Vc in the input dtype) + N·d fp32, instead of ~3·N·V fp32. Traffic
over the logits: forward writes and reads each element once (fp32); backward writes/reads it once in
fp32 and once in bf16, against the naive ~8 fp32 passes. Compute: 4 GEMMs (logits, recomputed
logits, dH, dW) against the naive 3. Every element of every output is produced by one program or one
GEMM in a fixed order, so forward and backward are deterministic. Vocab sizes that are not a
multiple of the block (50257) are handled by masking the last chunk's tail.

Based on: the online softmax of Milakov & Gimelshein (2018); the chunked "selective log-prob" of
Liger-Kernel and verl's fused log-prob + entropy (running max, sum and Σ e·z), reworked here to
chunk the VOCABULARY instead of the tokens so that dW needs no cross-chunk accumulator.

Use it through gpt2_kernels.token_logprobs(hidden, weight, targets, temperature, use_kernels),
which picks this kernel or the PyTorch path (gpt2_kernels/pytorch.py); importing this module
imports triton.

Shape letters: N tokens, d hidden size, V vocab, Vc vocab columns per chunk.
"""

import os

import torch
import triton
import triton.language as tl

# logits elements per vocab chunk (128 MB in fp32): the whole extra memory of the forward
CHUNK_ELEMENTS = 1 << 25
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unsupported(hidden, weight):
    """Why this kernel cannot run on hidden and weight (a dtype it does not cover), or None if it
    can. gpt2_kernels.token_logprobs falls back to PyTorch on these under use_kernels='auto'."""
    if hidden.dtype not in KERNEL_DTYPES:
        return f"hidden dtype {hidden.dtype} is not fp32, fp16 or bf16"
    if not weight.dtype.is_floating_point:
        return f"weight dtype {weight.dtype} is not a float type"
    return None


# --------------------------------------------------------------------------------------------------
# Triton kernels: a row-wise online log-sum-exp over one vocab chunk, and the in-place logits
# gradient


@triton.jit
def _logprob_fwd_chunk(
    # (N, Vc) fp32 logits of this vocab chunk, row stride stride_zn, unit column stride
    Z,
    # (N,) int64 target token ids (global vocab index)
    TARGETS,
    # (N,) fp32 running state, read and updated in place: max, Σe^{z−m}, Σe^{z−m}(z−m), z_y
    M,
    S,
    TS,
    ZY,
    # row stride of Z
    stride_zn,
    # number of tokens; columns in this chunk; global vocab index of column 0
    N,
    vc,
    v0,
    # 1 / temperature, applied to every logit
    inv_temp,
    # token rows per program; columns per inner step
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    row_ok = rows < N
    m = tl.load(M + rows, mask=row_ok, other=float("-inf"))
    s = tl.load(S + rows, mask=row_ok, other=0.0)
    ts = tl.load(TS + rows, mask=row_ok, other=0.0)
    zy = tl.load(ZY + rows, mask=row_ok, other=0.0)
    # target column inside this chunk (may be outside it)
    y = tl.load(TARGETS + rows, mask=row_ok, other=-1) - v0
    z_row = Z + rows.to(tl.int64)[:, None] * stride_zn  # int64: N·Vc can exceed 2³¹
    for c0 in range(0, vc, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)  # (BLOCK_V,)
        ok = row_ok[:, None] & (cols[None, :] < vc)  # the last chunk of V = 50257 ends mid-block
        # (BLOCK_R, BLOCK_V)
        z = tl.load(z_row + cols[None, :], mask=ok, other=float("-inf")) * inv_temp
        # 1. new running max, with a safe value for rows that have seen nothing (padding rows past
        #    N)
        m_new = tl.maximum(m, tl.max(z, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        # 2. rescale the old sums to the new max: s' = αs, t' = α(t + (m − m')s) since
        #    e^{z−m'}(z−m') = α e^{z−m}(z−m+m−m')
        alpha = tl.exp(m - m_safe)
        m_old = tl.where(s > 0.0, m, m_safe)  # avoids (−inf)·0 for rows with no history
        ts = alpha * (ts + (m_old - m_safe) * s)
        s = alpha * s
        # 3. add this block
        shifted = z - m_safe[:, None]  # (BLOCK_R, BLOCK_V), −inf on masked columns
        e = tl.exp(shifted)  # masked columns: exp(−inf) = 0
        s += tl.sum(e, 1)
        ts += tl.sum(e * tl.where(ok, shifted, 0.0), 1)  # never 0·(−inf)
        # at most one column matches in all of V; `ok` matters: a target
        hit = ok & (cols[None, :] == y[:, None])
        # in the next chunk can fall on a masked column past vc here
        zy += tl.sum(tl.where(hit, z, 0.0), 1)
        m = m_new
    tl.store(M + rows, m, mask=row_ok)
    tl.store(S + rows, s, mask=row_ok)
    tl.store(TS + rows, ts, mask=row_ok)
    tl.store(ZY + rows, zy, mask=row_ok)


@triton.jit
def _logprob_bwd_chunk(
    # (N, Vc) fp32 recomputed logits of this chunk (input)
    Z,
    # (N, Vc) output gradient w.r.t. the raw logits, in the GEMM dtype; may alias Z (fp32)
    G,
    # (N,) int64 target ids
    TARGETS,
    # (N,) fp32 log-sum-exp of the tempered logits and entropy, from the forward
    LSE,
    ENT,
    # (N,) fp32 upstream gradients of logp and entropy
    GLOGP,
    GENT,
    # row strides of Z and G
    stride_zn,
    stride_gn,
    # tokens; columns in this chunk; global vocab index of column 0
    N,
    vc,
    v0,
    # 1 / temperature
    inv_temp,
    # rows per program; columns per program
    BLOCK_R: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    ok = row_ok[:, None] & (cols[None, :] < vc)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    ent = tl.load(ENT + rows, mask=row_ok, other=0.0)
    g_logp = tl.load(GLOGP + rows, mask=row_ok, other=0.0)
    g_ent = tl.load(GENT + rows, mask=row_ok, other=0.0)
    y = tl.load(TARGETS + rows, mask=row_ok, other=-1) - v0
    z = (
        tl.load(Z + rows.to(tl.int64)[:, None] * stride_zn + cols[None, :], mask=ok, other=0.0)
        * inv_temp
    )
    logp = z - lse[:, None]  # (BLOCK_R, BLOCK_V) log p_j
    p = tl.exp(logp)
    onehot = tl.where(cols[None, :] == y[:, None], 1.0, 0.0)
    # ∂logp_y/∂z_j = 1[j=y] − p_j ;  ∂entropy/∂z_j = −p_j (log p_j + entropy) ;  ∂z/∂logit = 1/τ
    g = (g_logp[:, None] * (onehot - p) - g_ent[:, None] * p * (logp + ent[:, None])) * inv_temp
    tl.store(
        G + rows.to(tl.int64)[:, None] * stride_gn + cols[None, :],
        g.to(G.dtype.element_ty),
        mask=ok,
    )


# --------------------------------------------------------------------------------------------------
# Block sizes. GPU: small row tiles keep many programs in flight over a memory-bound pass; checked
# for spills and shared memory by tests/test_kernels_aot.py. Interpreter: big tiles, because its
# cost is per program and per op.


def fwd_config():
    """(BLOCK_R, BLOCK_V, num_warps) of _logprob_fwd_chunk on a GPU."""
    return 4, 1024, 4


def bwd_config():
    """(BLOCK_R, BLOCK_V, num_warps) of _logprob_bwd_chunk on a GPU."""
    return 8, 512, 4


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs():
    if _interpreting():
        return (64, 1024, 1), (64, 1024, 1)
    return fwd_config(), bwd_config()


def _mm_f32(a, b):
    """a @ bᵀ with an fp32 result: bf16/fp16 GEMMs on CUDA keep fp32 output (torch ≥ 2.8), else
    upcast first."""
    if a.dtype == torch.float32:
        return a @ b.t()
    if a.is_cuda:
        try:
            return torch.mm(a, b.t(), out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # older torch without out_dtype
            pass
    return a.float() @ b.float().t()


def vocab_chunk_size(N, V):
    """Columns per vocab chunk: about CHUNK_ELEMENTS / N logits, a multiple of 128 (≥ 128, ≤ V
    rounded up)."""
    vc = max(128, (CHUNK_ELEMENTS // max(N, 1)) // 128 * 128)
    return min(vc, triton.cdiv(V, 128) * 128)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, vocab_chunk):
        N, d = hidden.shape
        V = weight.shape[0]
        # GEMMs run in hidden's dtype
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        dev = hidden.device
        m = torch.full((N,), float("-inf"), dtype=torch.float32, device=dev)  # (N,) running max
        s = torch.zeros(N, dtype=torch.float32, device=dev)  # (N,) Σ e^{z−m}
        ts = torch.zeros(N, dtype=torch.float32, device=dev)  # (N,) Σ e^{z−m}(z−m)
        zy = torch.zeros(N, dtype=torch.float32, device=dev)  # (N,) target logit / τ
        (BR, BV, warps), _ = _configs()
        for v0 in range(0, V, vocab_chunk):
            # (N, Vc) fp32, the only N×Vc tensor alive
            z = _mm_f32(hidden, w[v0 : v0 + vocab_chunk])
            _logprob_fwd_chunk[(triton.cdiv(N, BR),)](
                z,
                targets,
                m,
                s,
                ts,
                zy,
                z.stride(0),
                N,
                z.shape[1],
                v0,
                1.0 / temperature,
                BLOCK_R=BR,
                BLOCK_V=BV,
                num_warps=warps,
            )
            del z
        log_s = torch.log(s)
        lse = m + log_s  # (N,)
        logp = zy - lse  # (N,)
        entropy = log_s - ts / s  # (N,)  = lse − E_p[z]
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.vocab_chunk = temperature, vocab_chunk
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        N, d = hidden.shape
        V = weight.shape[0]
        vocab_chunk = ctx.vocab_chunk
        w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
        dev = hidden.device
        g_logp = (
            torch.zeros(N, dtype=torch.float32, device=dev)
            if g_logp is None
            else g_logp.float().contiguous()
        )
        g_ent = (
            torch.zeros(N, dtype=torch.float32, device=dev)
            if g_ent is None
            else g_ent.float().contiguous()
        )
        # (N, d) fp32 accumulator over chunks
        d_hidden = torch.zeros(N, d, dtype=torch.float32, device=dev)
        d_weight = torch.empty(V, d, dtype=weight.dtype, device=dev)  # (V, d) each row written once
        # G in the GEMM dtype; for fp32 the kernel overwrites the logits in place
        g_buf = (
            None
            if hidden.dtype == torch.float32
            else torch.empty(N, min(vocab_chunk, V), dtype=hidden.dtype, device=dev)
        )
        _, (BR, BV, warps) = _configs()
        for v0 in range(0, V, vocab_chunk):
            w_c = w[v0 : v0 + vocab_chunk]  # (Vc, d)
            z = _mm_f32(hidden, w_c)  # (N, Vc) fp32, recomputed
            vc = z.shape[1]
            g = z if g_buf is None else g_buf[:, :vc]  # (N, Vc)
            _logprob_bwd_chunk[(triton.cdiv(N, BR), triton.cdiv(vc, BV))](
                z,
                g,
                targets,
                lse,
                entropy,
                g_logp,
                g_ent,
                z.stride(0),
                g.stride(0),
                N,
                vc,
                v0,
                1.0 / ctx.temperature,
                BLOCK_R=BR,
                BLOCK_V=BV,
                num_warps=warps,
            )
            if weight.dtype == g.dtype:
                # (Vc, d), rows of W are contiguous: no temporary
                torch.mm(g.t(), hidden, out=d_weight[v0 : v0 + vc])
            else:  # e.g. an fp32 master weight with bf16 activations
                d_weight[v0 : v0 + vc] = _mm_f32(g.t(), hidden.t())
            d_hidden += _mm_f32(g, w_c.t())
            del z, g
        return d_hidden.to(hidden.dtype), d_weight, None, None, None


def token_logprobs(hidden, weight, targets, temperature=1.0, vocab_chunk=None):
    """Per-token log π(y) and entropy of softmax(hidden · Wᵀ / temperature), never building the
    (N, V) logits.

    hidden (N, d) fp32/fp16/bf16; weight (V, d) the LM head (GPT-2: the tied token embedding), any
    float dtype (the GEMMs run in hidden's dtype, dW comes back in weight's dtype); targets (N,)
    integer ids in [0, V). Returns (logprobs (N,), entropy (N,)) in fp32, both differentiable
    w.r.t. hidden and weight. vocab_chunk: columns per chunk (default: about 2²⁵ / N logits, a
    multiple of 128).
    """
    where = "(gpt2_kernels/triton_logprobs.py)"
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            "gpt2_kernels.token_logprobs: hidden must be (N, d) and weight (V, d); got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)} {where}"
        )
    if targets.shape != (hidden.shape[0],):
        raise ValueError(
            f"gpt2_kernels.token_logprobs: targets must be (N,) = ({hidden.shape[0]},); got "
            f"{tuple(targets.shape)} {where}"
        )
    if hidden.dtype not in KERNEL_DTYPES or not weight.dtype.is_floating_point:
        raise ValueError(
            "gpt2_kernels.token_logprobs: hidden must be fp32/fp16/bf16, "
            f"got {hidden.dtype} {where}"
        )
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(
            f"gpt2_kernels.token_logprobs: hidden, weight, targets are on different devices {where}"
        )
    if not hidden.is_cuda and not _interpreting():
        raise RuntimeError(
            "gpt2_kernels.token_logprobs: CPU tensors need TRITON_INTERPRET=1 set before the "
            f"kernels are imported; use use_kernels='auto' or 'off' on CPU instead {where}"
        )
    if not temperature > 0:
        raise ValueError(
            f"gpt2_kernels.token_logprobs: temperature must be > 0, got {temperature} {where}"
        )
    N, V = hidden.shape[0], weight.shape[0]
    if not targets.is_cuda and N > 0 and (targets.min() < 0 or targets.max() >= V):
        # (on CUDA this check would cost a host sync per call; an out-of-range id there gives
        # logp = −lse)
        raise ValueError(
            f"gpt2_kernels.token_logprobs: targets must lie in [0, {V}); got ids in "
            f"[{int(targets.min())}, {int(targets.max())}]: replace padding ids (e.g. 50259) first "
            f"{where}"
        )
    vocab_chunk = vocab_chunk_size(N, V) if vocab_chunk is None else int(vocab_chunk)
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    return _TokenLogprobs.apply(
        hidden, weight, targets.long().contiguous(), float(temperature), vocab_chunk
    )
