"""Fused causal self-attention with a key-padding mask for left-padded batches (FlashAttention-2
style, in Triton).

What is fused. The naive attention of one (batch, head)
    S = Q Kᵀ · sm_scale       # read Q, K (2·T·D), write S (T·T)
    P = softmax(mask(S))      # read S, write P (T·T) (plus a mask tensor, and fp32 upcasts)
    O = P V                   # read P, V (T·T + T·D), write O (T·D)
moves about 4·T² + 4·T·D elements through memory and keeps the T×T matrix P alive for the backward,
which reads P, dO, V again and writes dP, dS (another ~6·T² elements). With T = 1024, B·H = 96 that
is 96·1024² · 2 B = 201 MB of fp16 per P-sized tensor per layer. This kernel keeps a BLOCK_M × D
tile of Q on chip, streams K and V tiles through an online softmax (running row max m, running sum
l), and writes only O (T·D) and one float per row, the log-sum-exp (T). Memory traffic is O(T·D ·
T/BLOCK_M) for re-reading K, V instead of O(T²), and the extra memory is O(T), not O(T²). The
backward recomputes P tile by tile from Q, K and the saved log-sum-exp (FlashAttention-2):
    1. delta_i = rowsum(dO_i ⊙ O_i)                          (_attn_bwd_delta, one read of O and dO)
    2. one program per KEY block: loop over query blocks, dV += Pᵀ dO, dK += dSᵀ Q
       (_attn_bwd_dkdv)
    3. one program per QUERY block: loop over key blocks, dQ += dS K                (_attn_bwd_dq)
with dS = P ⊙ (dP − delta), dP = dO Vᵀ. Every output element is written by exactly one program, so
there are no atomics and the backward is deterministic (bitwise reproducible run to run).

Padding. A left-padded row b has its first real token at start[b] (number of leading zeros in
attention_mask). Key j is visible to query i iff start[b] ≤ j ≤ i. Query rows i < start[b] see no
key: their output is 0 (never NaN, thanks to a "safe max" that replaces a row max of -inf by 0),
their stored log-sum-exp is +inf so that the backward recomputes p = 0 for them, and they receive
zero gradient. Key blocks that lie entirely in the padding are never loaded (the key loops start at
the block that contains start[b]). Zeros AFTER the first real token (right padding) are treated as
real keys: under causal attention they can only influence outputs at or after themselves, so the
outputs of every real token before them are exactly those of the masked reference.

Based on: FlashAttention-2 (Dao, 2023) and the Triton tutorial 06-fused-attention (exp2 domain,
causal staging: unmasked off-diagonal blocks, masked diagonal blocks); the key-padding/seqlen
handling follows Tri Dao's flash_attn_triton.py. Our own code, written for triton 3.6-3.9 (raw
pointer arithmetic; no block pointers, no tensor descriptors).

Use it through gpt2_kernels.attention(q, k, v, attention_mask, use_kernels), which picks this kernel
or the PyTorch path (gpt2_kernels/pytorch.py); importing this module imports triton. Checks:
python -m pytest -q tests/test_kernels.py (CPU, Triton interpreter) and tests/test_kernels_aot.py
(compiles for sm_80 and sm_90 without a GPU).

Shape letters: B batch, H heads, T sequence length, D head dim.
"""

import math
import os

import torch
import triton
import triton.language as tl

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unsupported(q, k, v):
    """Why this kernel cannot run q, k, v (a shape or dtype it does not cover), or None if it can.
    gpt2_kernels.attention falls back to PyTorch on these under use_kernels='auto'."""
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of {SUPPORTED_HEAD_DIMS}"
    if q.dtype not in KERNEL_DTYPES:
        return f"dtype {q.dtype} is not fp32, fp16 or bf16"
    return None


# --------------------------------------------------------------------------------------------------
# Triton kernels. All work in the exp2 domain: qk_scale = sm_scale·log2(e) is folded into the scores
# once, so every exponential is the hardware ex2 and the saved log-sum-exp is in base 2.


@triton.jit
def _attn_fwd_inner(
    # running state (BLOCK_M, D), (BLOCK_M,), (BLOCK_M,); the Q tile
    acc,
    l_i,
    m_i,
    q,
    # K, V pointers of this (b, h), and their strides along T and D
    k_base,
    v_base,
    stride_kt,
    stride_kd,
    stride_vt,
    stride_vd,
    # query rows of this tile; first real key; sequence length; sm_scale·log2 e
    offs_m,
    start,
    T,
    qk_scale,
    # key range [lo, hi) visited by this call, multiples of BLOCK_N
    lo,
    hi,
    # True: apply the causal + padding + bounds mask (diagonal blocks, the block holding start)
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n  # (BLOCK_N,) key positions
        # 1. load Kᵀ (D, BLOCK_N) and V (BLOCK_N, D); only masked blocks can run past T
        kt_ptrs = k_base + cols[None, :] * stride_kt + offs_d[:, None] * stride_kd
        v_ptrs = v_base + cols[:, None] * stride_vt + offs_d[None, :] * stride_vd
        if MASKED:
            kt = tl.load(kt_ptrs, mask=cols[None, :] < T, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < T, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        # 2. scores in base-2 units
        if FP32_DOT:
            s = tl.dot(q, kt, input_precision="ieee") * qk_scale  # (BLOCK_M, BLOCK_N)
        else:
            s = tl.dot(q, kt) * qk_scale
        if MASKED:
            visible = (
                (cols[None, :] <= offs_m[:, None]) & (cols[None, :] >= start) & (cols[None, :] < T)
            )
            s = tl.where(visible, s, float("-inf"))
        # 3. online softmax; the "safe max" keeps rows that have seen no key yet at m = -inf without
        #    NaN
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])  # masked entries: exp2(-inf) = 0
        # rescales the old state when the max grows (0 while m_i = -inf)
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        # 4. accumulate P V in fp32; P goes to the input dtype for the tensor-core dot (as FA2 does)
        if FP32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    # (B, H, T, D) inputs of any strides; O the output (B, H, T, D), contiguous
    Q,
    K,
    V,
    O,
    # (B·H, T) fp32 output: base-2 log-sum-exp of each query row (+inf for rows that see no key)
    LSE,
    # (B,) int32: index of the first real token of each sequence
    START,
    # Q, K, V, O strides
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    # number of heads; sequence length; sm_scale · log2(e)
    H,
    T,
    qk_scale,
    # query rows per program
    BLOCK_M: tl.constexpr,
    # keys per inner step (BLOCK_M must be a multiple of it)
    BLOCK_N: tl.constexpr,
    # D, a power of two
    HEAD_DIM: tl.constexpr,
    # True for fp32 inputs: exact (ieee) dots instead of TF32
    FP32_DOT: tl.constexpr,
):
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "the unmasked stage must start on a key-tile boundary")
    pid_m = tl.program_id(0)  # which query block
    pid_bh = tl.program_id(1)  # which (batch, head)
    b = pid_bh // H
    h = pid_bh % H
    start = tl.load(START + b)
    # int64 base offsets: B·H·T·D can exceed 2³¹ for large batches
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    o_base = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query positions
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_base + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
        mask=offs_m[:, None] < T,
        other=0.0,
    )  # (BLOCK_M, D), stays on chip

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max (base 2)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # running unnormalised output

    # Key ranges (all multiples of BLOCK_N). Blocks before `lo` are pure padding and never loaded.
    lo = (start // BLOCK_N) * BLOCK_N  # block holding the first real key
    mid_lo = tl.cdiv(start, BLOCK_N) * BLOCK_N  # first block with no padding key
    hi = tl.minimum(m0 + BLOCK_M, T)  # causal: no key after the last query of this tile
    # stage A: the block that holds `start` (part padding), masked; only if it lies before the
    # diagonal
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kt,
        stride_kd,
        stride_vt,
        stride_vd,
        offs_m,
        start,
        T,
        qk_scale,
        lo,
        tl.minimum(mid_lo, m0),
        True,
        BLOCK_N,
        HEAD_DIM,
        FP32_DOT,
    )
    # stage B: fully visible off-diagonal blocks, no mask needed (every key < m0 ≤ every query,
    # every key ≥ start)
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kt,
        stride_kd,
        stride_vt,
        stride_vd,
        offs_m,
        start,
        T,
        qk_scale,
        mid_lo,
        m0,
        False,
        BLOCK_N,
        HEAD_DIM,
        FP32_DOT,
    )
    # stage C: the diagonal blocks, masked (causal triangle, padding, and the end of the sequence)
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        k_base,
        v_base,
        stride_kt,
        stride_kd,
        stride_vt,
        stride_vd,
        offs_m,
        start,
        T,
        qk_scale,
        tl.maximum(m0, lo),
        hi,
        True,
        BLOCK_N,
        HEAD_DIM,
        FP32_DOT,
    )

    # normalise once; rows that saw no key (l = 0) output 0 and get lse = +inf so the backward
    # recomputes p = 0
    seen = l_i > 0.0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(
        o_base + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od,
        o.to(O.dtype.element_ty),
        mask=offs_m[:, None] < T,
    )
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=offs_m < T)


@triton.jit
def _attn_bwd_delta(
    # (B, H, T, D) forward output (contiguous) and its gradient (any strides)
    O,
    DO,
    # (B·H, T) fp32 output: rowsum(dO ⊙ O)
    DELTA,
    # O and dO strides
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dod,
    # number of heads; sequence length
    H,
    T,
    # rows per program; D
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < T
    o = tl.load(
        O
        + b.to(tl.int64) * stride_ob
        + h.to(tl.int64) * stride_oh
        + offs_m[:, None] * stride_ot
        + offs_d[None, :] * stride_od,
        mask=row_ok,
        other=0.0,
    )
    do = tl.load(
        DO
        + b.to(tl.int64) * stride_dob
        + h.to(tl.int64) * stride_doh
        + offs_m[:, None] * stride_dot
        + offs_d[None, :] * stride_dod,
        mask=row_ok,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)  # (BLOCK_M,)
    tl.store(DELTA + pid_bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv_inner(
    # accumulators (BLOCK_N, D); the K, V tiles
    dk,
    dv,
    k,
    v,
    # row pointers of this (b, h): Q, dO, log-sum-exp, delta
    q_base,
    do_base,
    lse_base,
    delta_base,
    # Q and dO strides along T and D
    stride_qt,
    stride_qd,
    stride_dot,
    stride_dod,
    # key positions of this tile; first real key; length; sm_scale·log2 e
    offs_n,
    start,
    T,
    qk_scale,
    # query range [lo, hi), multiples of BLOCK_M
    lo,
    hi,
    # True: causal + padding mask (diagonal blocks, or the block holding start)
    MASKED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m  # (BLOCK_M,) query positions
        row_ok = rows < T
        # 1. load Qᵀ (D, BLOCK_M), dO (BLOCK_M, D), the row log-sum-exp and delta; rows past T get
        #    lse = +inf -> p = 0
        qt = tl.load(
            q_base + rows[None, :] * stride_qt + offs_d[:, None] * stride_qd,
            mask=row_ok[None, :],
            other=0.0,
        )
        do = tl.load(
            do_base + rows[:, None] * stride_dot + offs_d[None, :] * stride_dod,
            mask=row_ok[:, None],
            other=0.0,
        )
        lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        # 2. recompute Pᵀ (BLOCK_N, BLOCK_M) from the saved log-sum-exp
        if FP32_DOT:
            st = tl.dot(k, qt, input_precision="ieee") * qk_scale
        else:
            st = tl.dot(k, qt) * qk_scale
        pt = tl.exp2(st - lse[None, :])
        if MASKED:
            visible = (offs_n[:, None] <= rows[None, :]) & (offs_n[:, None] >= start)
            pt = tl.where(visible, pt, 0.0)
        # 3. dV += Pᵀ dO;  dPᵀ = V dOᵀ;  dSᵀ = Pᵀ ⊙ (dPᵀ − delta);  dK += dSᵀ Q
        if FP32_DOT:
            dv += tl.dot(pt, do, input_precision="ieee")
            dpt = tl.dot(v, tl.trans(do), input_precision="ieee")
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst, tl.trans(qt), input_precision="ieee")
        else:
            dv += tl.dot(pt.to(do.dtype), do)
            dpt = tl.dot(v, tl.trans(do))
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(qt.dtype), tl.trans(qt))
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(
    # (B, H, T, D) inputs and output gradient, any strides
    Q,
    K,
    V,
    DO,
    # (B, H, T, D) outputs, contiguous
    DK,
    DV,
    # (B·H, T) fp32: forward log-sum-exp (base 2) and rowsum(dO ⊙ O)
    LSE,
    DELTA,
    # (B,) int32 first real token
    START,
    # Q, K, V, dO strides
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dod,
    # dK and dV strides (same contiguous layout)
    stride_gb,
    stride_gh,
    stride_gt,
    stride_gd,
    # number of heads; sequence length; 1/√D; sm_scale · log2(e)
    H,
    T,
    sm_scale,
    qk_scale,
    # query rows per inner step
    BLOCK_M: tl.constexpr,
    # keys owned by this program (a multiple of BLOCK_M)
    BLOCK_N: tl.constexpr,
    # D; exact fp32 dots
    HEAD_DIM: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    tl.static_assert(
        BLOCK_N % BLOCK_M == 0, "the unmasked stage must start on a query-tile boundary"
    )
    pid_n = tl.program_id(0)  # which key block
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start = tl.load(START + b)
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n[:, None] < T
    k = tl.load(
        K
        + b.to(tl.int64) * stride_kb
        + h.to(tl.int64) * stride_kh
        # (BLOCK_N, D)
        + offs_n[:, None] * stride_kt
        + offs_d[None, :] * stride_kd,
        mask=col_ok,
        other=0.0,
    )
    v = tl.load(
        V
        + b.to(tl.int64) * stride_vb
        + h.to(tl.int64) * stride_vh
        # (BLOCK_N, D)
        + offs_n[:, None] * stride_vt
        + offs_d[None, :] * stride_vd,
        mask=col_ok,
        other=0.0,
    )
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    lse_base = LSE + pid_bh.to(tl.int64) * T
    delta_base = DELTA + pid_bh.to(tl.int64) * T
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # Query ranges. Queries before max(n0, start) cannot see these keys (causal) or see nothing
    # (padding rows). A key block that is entirely padding (n0 + BLOCK_N <= start) runs no loop and
    # stores zeros.
    lo = (tl.maximum(n0, start) // BLOCK_M) * BLOCK_M
    # queries past the diagonal see every key of this block...
    diag_hi = tl.minimum(n0 + BLOCK_N, T)
    # ...unless the block holds padding keys: then mask every step
    mask_hi = tl.where(n0 < start, T, diag_hi)
    hi = tl.where(n0 + BLOCK_N <= start, lo, T)
    mask_hi = tl.minimum(mask_hi, hi)
    dk, dv = _attn_bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_base,
        do_base,
        lse_base,
        delta_base,
        stride_qt,
        stride_qd,
        stride_dot,
        stride_dod,
        offs_n,
        start,
        T,
        qk_scale,
        lo,
        mask_hi,
        True,
        BLOCK_M,
        HEAD_DIM,
        FP32_DOT,
    )
    dk, dv = _attn_bwd_dkdv_inner(
        dk,
        dv,
        k,
        v,
        q_base,
        do_base,
        lse_base,
        delta_base,
        stride_qt,
        stride_qd,
        stride_dot,
        stride_dod,
        offs_n,
        start,
        T,
        qk_scale,
        mask_hi,
        hi,
        False,
        BLOCK_M,
        HEAD_DIM,
        FP32_DOT,
    )
    dk *= sm_scale  # dS was taken w.r.t. the natural-unit scores S = sm_scale · Q Kᵀ
    g_off = (
        b.to(tl.int64) * stride_gb
        + h.to(tl.int64) * stride_gh
        + offs_n[:, None] * stride_gt
        + offs_d[None, :] * stride_gd
    )
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=col_ok)
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=col_ok)


@triton.jit
def _attn_bwd_dq_inner(
    # accumulator (BLOCK_M, D); the Q, dO tiles; row log-sum-exp and delta
    dq,
    q,
    do,
    lse,
    delta,
    # K, V pointers of this (b, h), and their strides along T and D
    k_base,
    v_base,
    stride_kt,
    stride_kd,
    stride_vt,
    stride_vd,
    # query positions; first real key; length; sm_scale·log2 e
    offs_m,
    start,
    T,
    qk_scale,
    # key range [lo, hi), multiples of BLOCK_N
    lo,
    hi,
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        kt_ptrs = k_base + cols[None, :] * stride_kt + offs_d[:, None] * stride_kd
        vt_ptrs = v_base + cols[None, :] * stride_vt + offs_d[:, None] * stride_vd
        if MASKED:
            kt = tl.load(kt_ptrs, mask=cols[None, :] < T, other=0.0)  # (D, BLOCK_N)
            vt = tl.load(vt_ptrs, mask=cols[None, :] < T, other=0.0)  # (D, BLOCK_N)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        # 1. recompute P (BLOCK_M, BLOCK_N); rows that see nothing have lse = +inf -> p = 0
        if FP32_DOT:
            s = tl.dot(q, kt, input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, kt) * qk_scale
        p = tl.exp2(s - lse[:, None])
        if MASKED:
            visible = (
                (cols[None, :] <= offs_m[:, None]) & (cols[None, :] >= start) & (cols[None, :] < T)
            )
            p = tl.where(visible, p, 0.0)
        # 2. dP = dO Vᵀ;  dS = P ⊙ (dP − delta);  dQ += dS K
        if FP32_DOT:
            dp = tl.dot(do, vt, input_precision="ieee")
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds, tl.trans(kt), input_precision="ieee")
        else:
            dp = tl.dot(do, vt)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(kt.dtype), tl.trans(kt))
    return dq


@triton.jit
def _attn_bwd_dq(
    # (B, H, T, D) inputs and output gradient, any strides
    Q,
    K,
    V,
    DO,
    # (B, H, T, D) output, contiguous
    DQ,
    # (B·H, T) fp32: forward log-sum-exp (base 2) and rowsum(dO ⊙ O)
    LSE,
    DELTA,
    # (B,) int32 first real token
    START,
    # Q, K, V, dO, dQ strides
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_vd,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dod,
    stride_gb,
    stride_gh,
    stride_gt,
    stride_gd,
    # number of heads; sequence length; 1/√D; sm_scale · log2(e)
    H,
    T,
    sm_scale,
    qk_scale,
    # query rows owned by this program (a multiple of BLOCK_N)
    BLOCK_M: tl.constexpr,
    # keys per inner step
    BLOCK_N: tl.constexpr,
    # D; exact fp32 dots
    HEAD_DIM: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "the unmasked stage must start on a key-tile boundary")
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start = tl.load(START + b)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(
        Q
        + b.to(tl.int64) * stride_qb
        + h.to(tl.int64) * stride_qh
        + offs_m[:, None] * stride_qt
        + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None],
        other=0.0,
    )
    do = tl.load(
        DO
        + b.to(tl.int64) * stride_dob
        + h.to(tl.int64) * stride_doh
        + offs_m[:, None] * stride_dot
        + offs_d[None, :] * stride_dod,
        mask=row_ok[:, None],
        other=0.0,
    )
    lse = tl.load(LSE + pid_bh.to(tl.int64) * T + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # the same three key ranges as the forward
    lo = (start // BLOCK_N) * BLOCK_N
    mid_lo = tl.cdiv(start, BLOCK_N) * BLOCK_N
    hi = tl.minimum(m0 + BLOCK_M, T)
    dq = _attn_bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_base,
        v_base,
        stride_kt,
        stride_kd,
        stride_vt,
        stride_vd,
        offs_m,
        start,
        T,
        qk_scale,
        lo,
        tl.minimum(mid_lo, m0),
        True,
        BLOCK_N,
        HEAD_DIM,
        FP32_DOT,
    )
    dq = _attn_bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_base,
        v_base,
        stride_kt,
        stride_kd,
        stride_vt,
        stride_vd,
        offs_m,
        start,
        T,
        qk_scale,
        mid_lo,
        m0,
        False,
        BLOCK_N,
        HEAD_DIM,
        FP32_DOT,
    )
    dq = _attn_bwd_dq_inner(
        dq,
        q,
        do,
        lse,
        delta,
        k_base,
        v_base,
        stride_kt,
        stride_kd,
        stride_vt,
        stride_vd,
        offs_m,
        start,
        T,
        qk_scale,
        tl.maximum(m0, lo),
        hi,
        True,
        BLOCK_N,
        HEAD_DIM,
        FP32_DOT,
    )
    dq *= sm_scale
    tl.store(
        DQ
        + b.to(tl.int64) * stride_gb
        + h.to(tl.int64) * stride_gh
        + offs_m[:, None] * stride_gt
        + offs_d[None, :] * stride_gd,
        dq.to(DQ.dtype.element_ty),
        mask=row_ok[:, None],
    )


# --------------------------------------------------------------------------------------------------
# Block sizes. One fixed config per head dim, checked for shared memory and register spills on sm_80
# and sm_90 by tests/test_kernels_aot.py (not tuned on a GPU yet). The interpreter uses the same
# tiles, so the CPU tests run the exact loop structure a GPU runs. Constraints: forward and dQ need
# BLOCK_M % BLOCK_N == 0, dK/dV BLOCK_N % BLOCK_M == 0 (the unmasked middle stage must start on a
# tile boundary).


def fwd_config(head_dim, fp32=False):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward kernel."""
    if fp32:  # exact fp32 dots get no tensor-core fragments: small tiles, or registers spill
        return (32, 32, 4, 2) if head_dim <= 64 else (16, 16, 4, 2)
    return (128, 64, 4, 3) if head_dim <= 64 else (128, 32, 8, 2)


def bwd_dkdv_config(head_dim, fp32=False):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dK/dV kernel: BLOCK_N keys owned, BLOCK_M
    query rows per step."""
    if fp32:
        return (16, 32, 4, 2) if head_dim <= 64 else (16, 16, 4, 1)
    # 64×64 with D = 128 spills on sm_80 and sm_90
    return (64, 64, 4, 2) if head_dim <= 64 else (32, 64, 8, 2)


def bwd_dq_config(head_dim, fp32=False):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dQ kernel: BLOCK_M query rows owned,
    BLOCK_N keys per step."""
    if fp32:
        return (32, 16, 4, 2) if head_dim <= 64 else (16, 16, 4, 2)
    return (64, 32, 4, 2) if head_dim <= 64 else (64, 32, 8, 2)  # 64×64 spills 40 B on sm_80


def _tiles_fp32(dtype):
    """Which tile table a launch uses. The interpreter always takes the 16-bit tables (same code,
    exact dots either way): its cost is per program and per op, and the small fp32 tiles would
    make the CPU tests ~5x slower. The fp32 GPU tables are compiled by tests/test_kernels_aot.py
    and exercised by one interpreter test that patches this."""
    return dtype == torch.float32 and not _interpreting()


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_inputs(q, k, v, attention_mask):
    where = "(gpt2_kernels/triton_attention.py)"
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"gpt2_kernels.attention: q, k, v must all be (B, H, T, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)} {where}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in KERNEL_DTYPES:
        raise ValueError(
            "gpt2_kernels.attention: q, k, v must share one dtype among fp32/fp16/bf16; got "
            f"{q.dtype}, {k.dtype}, {v.dtype} {where}"
        )
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"gpt2_kernels.attention: head dim D={q.shape[-1]} unsupported; use one of "
            f"{SUPPORTED_HEAD_DIMS}, or use_kernels='auto' or 'off' for the PyTorch path {where}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"gpt2_kernels.attention: q, k, v are on different devices {where}")
    if not q.is_cuda and not _interpreting():
        raise RuntimeError(
            "gpt2_kernels.attention: CPU tensors need TRITON_INTERPRET=1 set before the kernels "
            f"are imported; use use_kernels='auto' or 'off' on CPU instead {where}"
        )
    B, H, T, D = q.shape
    if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
        raise ValueError(
            f"gpt2_kernels.attention: attention_mask must be (B, T) = ({B}, {T}); got "
            f"{tuple(attention_mask.shape)} {where}"
        )


def padding_starts(attention_mask, B, T, device):
    """(B,) int32 index of the first real token of each row (T for a fully padded row) from a (B,
    T) 1/0 mask."""
    if attention_mask is None:
        return torch.zeros(B, dtype=torch.int32, device=device)
    real = attention_mask.to(device=device).bool()  # (B, T)
    if not real.is_cuda:
        # a 0 between two 1s would be silently treated as real by the kernel; on CPU the check costs
        # nothing (on CUDA it would force a host sync in every layer, so it is skipped there)
        # zeros after the first real token
        after_first = real.long().cummax(dim=1).values.bool() & ~real
        # a real token at or after here
        real_later = real.flip(1).long().cummax(dim=1).values.flip(1).bool()
        if (after_first & real_later).any():
            raise ValueError(
                "gpt2_kernels.attention: attention_mask has a padding hole between real tokens; "
                "only left padding (and trailing right padding) is supported "
                "(gpt2_kernels/triton_attention.py)"
            )
    leading_pad = (real.long().cumsum(dim=1) == 0).sum(dim=1)  # (B,) zeros before the first 1
    return leading_pad.to(torch.int32)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, start):
        B, H, T, D = q.shape
        # the kernels take any strides, but a unit stride along D keeps loads coalesced
        q, k, v = [x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v)]
        o = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)  # (B, H, T, D)
        # (B·H, T) base-2 log-sum-exp
        lse = torch.empty((B * H, T), dtype=torch.float32, device=q.device)
        BLOCK_M, BLOCK_N, num_warps, num_stages = fwd_config(D, _tiles_fp32(q.dtype))
        sm_scale = 1.0 / math.sqrt(D)
        grid = (triton.cdiv(T, BLOCK_M), B * H)
        _attn_fwd[grid](
            q,
            k,
            v,
            o,
            lse,
            start,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *o.stride(),
            H,
            T,
            sm_scale * 1.4426950408889634,
            BLOCK_M=BLOCK_M,
            BLOCK_N=BLOCK_N,
            HEAD_DIM=D,
            FP32_DOT=q.dtype == torch.float32,
            num_warps=num_warps,
            num_stages=num_stages,
        )
        ctx.save_for_backward(q, k, v, o, lse, start)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, start = ctx.saved_tensors
        B, H, T, D = q.shape
        if do.stride(-1) != 1:
            do = do.contiguous()
        sm_scale = 1.0 / math.sqrt(D)
        fp32 = q.dtype == torch.float32
        # 1. delta = rowsum(dO ⊙ O)
        delta = torch.empty((B * H, T), dtype=torch.float32, device=q.device)  # (B·H, T)
        _attn_bwd_delta[(triton.cdiv(T, 64), B * H)](
            o, do, delta, *o.stride(), *do.stride(), H, T, BLOCK_M=64, HEAD_DIM=D
        )
        dq = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
        dk = torch.empty_like(dq)
        dv = torch.empty_like(dq)
        # 2. dK, dV: one program per key block
        BLOCK_M, BLOCK_N, num_warps, num_stages = bwd_dkdv_config(D, _tiles_fp32(q.dtype))
        _attn_bwd_dkdv[(triton.cdiv(T, BLOCK_N), B * H)](
            q,
            k,
            v,
            do,
            dk,
            dv,
            lse,
            delta,
            start,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *do.stride(),
            *dk.stride(),
            H,
            T,
            sm_scale,
            sm_scale * 1.4426950408889634,
            BLOCK_M=BLOCK_M,
            BLOCK_N=BLOCK_N,
            HEAD_DIM=D,
            FP32_DOT=fp32,
            num_warps=num_warps,
            num_stages=num_stages,
        )
        # 3. dQ: one program per query block
        BLOCK_M, BLOCK_N, num_warps, num_stages = bwd_dq_config(D, _tiles_fp32(q.dtype))
        _attn_bwd_dq[(triton.cdiv(T, BLOCK_M), B * H)](
            q,
            k,
            v,
            do,
            dq,
            lse,
            delta,
            start,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *do.stride(),
            *dq.stride(),
            H,
            T,
            sm_scale,
            sm_scale * 1.4426950408889634,
            BLOCK_M=BLOCK_M,
            BLOCK_N=BLOCK_N,
            HEAD_DIM=D,
            FP32_DOT=fp32,
            num_warps=num_warps,
            num_stages=num_stages,
        )
        return dq, dk, dv, None


def attention(q, k, v, attention_mask=None):
    """Causal self-attention softmax(Q Kᵀ/√D) V with left padding, as a Triton kernel (forward and
    backward).

    q, k, v: (B, H, T, D), any strides (a unit stride along D avoids a copy), fp32/fp16/bf16, D in
    {16, 32, 64, 128}, any T ≥ 1. attention_mask: (B, T) bool/int, 1 = real token, 0 = left padding
    (None: all real). Returns (B, H, T, D) in q's dtype; padded query rows are 0 and get zero
    gradient. Differentiable w.r.t. q, k, v.
    """
    _check_inputs(q, k, v, attention_mask)
    B, H, T, D = q.shape
    start = padding_starts(attention_mask, B, T, q.device)  # (B,) int32
    return _FlashAttention.apply(q, k, v, start)
