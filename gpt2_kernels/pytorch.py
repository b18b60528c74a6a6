"""The PyTorch paths of the two kernels: what the model runs wherever the Triton kernels do not.

- torch_attention: causal attention with a key-padding mask, on PyTorch's
  scaled_dot_product_attention. It runs on CPU, with use_kernels='off', for shapes the Triton kernel
  does not support, and for every decoding step over a KV cache (a few queries against many cached
  keys). It is also the reference the Triton attention is tested against.
- torch_token_logprobs: per-token log-probs and entropy of softmax(hidden · Wᵀ / temperature),
  a chunk of token rows at a time with a hand-written backward, which recomputes the logits rather
  than have autograd hold all (N, V) of them (small batches keep them). The CPU path of the model's
  log-probs, and of anything the Triton kernel does not support.

This module imports no triton: CPU users need not have it installed.

Shape letters: B batch, H heads, Tq queries, Tk keys, D head size, N tokens, C hidden size, V
vocabulary, n token rows in one chunk.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# --------------------------------------------------------------------------------------------------
# Attention


def torch_attention(q, k, v, key_mask=None):
    """Causal attention of the last Tq queries over Tk keys, with a key-padding mask.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D) with Tk >= Tq (Tk > Tq while decoding with a KV cache:
    query i sits at position Tk - Tq + i). key_mask: (B, Tk) bool or 1/0, True for real tokens, or
    None. A query that sees no real key (a left pad) returns 0, as the Triton kernel does, instead
    of the NaN a fully masked softmax row would give. Differentiable.
    """
    Tq, Tk = q.size(-2), k.size(-2)
    if key_mask is None and Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # no padding: the fast path
    if key_mask is None and Tq == 1:
        return F.scaled_dot_product_attention(q, k, v)  # one new token sees every cached key
    # (Tq, Tk)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    # (B, 1, Tq, Tk)
    allowed = causal if key_mask is None else causal & key_mask.bool()[:, None, None, :]
    sees_a_key = allowed.any(-1, keepdim=True)  # (B, 1, Tq, 1)
    # let key-less queries attend to everything (finite math), then zero them
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~sees_a_key)
    return y.masked_fill(~sees_a_key, 0.0)


# --------------------------------------------------------------------------------------------------
# Per-token log-probs without the full (N, V) logits


# Token rows per chunk. After the forward's GEMM come a few passes over the chunk's (n, V) logits
# (scale, max, shift, exp, two sums): 128 rows x 50,257 x 4 bytes = 26 MB, about a CPU's last-level
# cache, so those passes read cache rather than memory. The backward adds dW += gᵀ·h per chunk,
# which reads and writes all of the (V, C) dW each time (154 MB at C = 768), so it takes bigger
# chunks.
# Measured on 2 CPU cores, forward of 768 rows at C = 128 (the tiny model's rollout): 0.42 s at
# 1,024 rows per chunk, 0.20 s at 128; forward + backward of 192 rows at C = 768 (124M): 0.60 s at
# 1,024, 0.67 s at 128 in both directions.
FORWARD_ROWS = 128
BACKWARD_ROWS = 1024
# When the forward's log p of all N rows fits in this many bytes (N x V x 4: 77 MB for a tiny-model
# micro-batch of 16 x 24 tokens) and a gradient is wanted, it is kept for the backward instead of
# recomputed there: one GEMM of three saved. Measured on 2 CPU cores, forward + backward: 384 rows
# at C = 128 (a tiny-model micro-batch) 0.26 s -> 0.20 s; 192 rows at C = 768 (124M) 0.60 s ->
# 0.47 s. Bigger batches (the 124M model's on a GPU, where the Triton kernel runs anyway) recompute.
KEEP_LOGITS_BYTES = 256 * 2**20


def _gemm_weight(weight, hidden):
    """The LM head's weight in hidden's dtype: the logits' GEMM runs in the activations' dtype
    (bf16 under autocast, with fp32 accumulation), as the Triton kernel does."""
    return weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)


class _ChunkedLogprobs(torch.autograd.Function):
    """torch_token_logprobs' autograd function: `chunk` token rows at a time in the forward,
    `backward_chunk` in the backward (see FORWARD_ROWS), with a hand-written backward.

    Forward, per chunk: z = h·Wᵀ/τ (n, V); with s = z − max(z) and e = exp(s) (so every exponent is
    at most 0), lse = max(z) + log Σe, log p = s − log Σe, and the entropy −Σ p·log p = log Σe −
    Σ e·s / Σe (a sum of two non-negative terms: no cancellation). Six passes over the logits after
    the GEMM (scale, max, shift, exp, two sums), with one temporary (n, V) buffer. Saved for the
    backward: h, W, targets, lse and entropy (two floats per token), and the (N, V) log p only when
    it fits in KEEP_LOGITS_BYTES. Backward, per chunk: log p (kept, or recomputed as z − lse),
    p = e^{log p}:
        ∂L/∂z = [g_logp·(1[j=y] − p) − g_ent·p·(log p + entropy)] / τ
    and dh = (∂L/∂z)·W, dW = (∂L/∂z)ᵀ·h. The same math as the Triton kernel
    (gpt2_kernels/triton_logprobs.py), which chunks the vocabulary instead. Against autograd through
    log_softmax with activation checkpointing this makes about half the passes over the (n, V)
    logits (measured, 2 CPU cores: PPO's forward+backward of the tiny model at 32 x 88 tokens 1.32 s
    -> 0.76 s).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk, backward_chunk, grad_wanted):
        logps, entropies, lses = [], [], []
        N, V = hidden.size(0), weight.size(0)
        w = _gemm_weight(weight, hidden)
        # grad_wanted: the caller's grad mode (inside forward it is always off)
        keep = grad_wanted and N * V * 4 <= KEEP_LOGITS_BYTES
        # (N, V) fp32 log p, or None
        kept = torch.empty(N, V, dtype=torch.float32, device=hidden.device) if keep else None
        # autocast off: the logits' GEMM runs in hidden's dtype, exactly as the backward (which
        # runs outside autocast) recomputes it; everything after the GEMM is fp32
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, N, chunk):
                # (n, V): one chunk only, in its rows of `kept` when log p is kept
                if keep and hidden.dtype == torch.float32:  # the GEMM writes into `kept`
                    s = torch.mm(hidden[i : i + chunk], w.T, out=kept[i : i + chunk])
                elif keep:
                    s = kept[i : i + chunk].copy_(hidden[i : i + chunk] @ w.T)
                else:
                    s = (hidden[i : i + chunk] @ w.T).float()
                s.mul_(1.0 / temperature)
                top = s.amax(-1)  # (n,)
                s.sub_(top[:, None])  # z − max(z), in place
                e = torch.exp(s)  # (n, V) unnormalized p
                sum_e = e.sum(-1)  # (n,)
                log_sum = sum_e.log()  # (n,)
                logps.append(s.gather(-1, targets[i : i + chunk, None])[:, 0] - log_sum)
                entropies.append(log_sum - torch.linalg.vecdot(e, s) / sum_e)
                lses.append(top + log_sum)
                if keep:
                    s.sub_(log_sum[:, None])  # log p, kept for the backward
        logp, entropy, lse = torch.cat(logps), torch.cat(entropies), torch.cat(lses)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy, kept)
        ctx.temperature, ctx.chunk = temperature, backward_chunk
        # an output outside the loss gets None, not a tensor of zeros
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    @once_differentiable  # no graph of the backward's own ops: a second derivative raises
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, entropy, kept = ctx.saved_tensors
        inv_t = 1.0 / ctx.temperature
        dh = torch.zeros_like(hidden, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        if g_logp is None:
            g_logp = torch.zeros_like(lse)
        # the weight in hidden's dtype, only for recomputing the logits (a cast copies all of it)
        w = _gemm_weight(weight, hidden) if kept is None else None
        with torch.autocast(hidden.device.type, enabled=False):  # the same GEMMs as the forward
            for i in range(0, hidden.size(0), ctx.chunk):
                h, j = hidden[i : i + ctx.chunk], slice(i, i + ctx.chunk)
                # (n, V) log p: kept by the forward (never written to here), or recomputed as the
                # forward computed it (GEMM in hidden's dtype) into a fresh buffer
                if kept is None:
                    logp = (h @ w.T).float().mul_(inv_t).sub_(lse[j, None])
                # ∂L/∂logits = −p·(g_logp + g_ent·(log p + H))/τ, then + g_logp/τ at the target;
                # the 1/τ rides on the (n,) vectors rather than a pass over (n, V)
                g_lp = g_logp[j] * inv_t  # (n,)
                if g_ent is None:  # PPO's case: only the log-probs are in the loss
                    p = kept[j].exp() if kept is not None else logp.exp_()
                    g = p.mul_(-g_lp[:, None])
                else:
                    logp = kept[j].clone() if kept is not None else logp
                    p = logp.exp()
                    g = (
                        logp.add_(entropy[j, None])
                        .mul_(g_ent[j, None] * inv_t)
                        .add_(g_lp[:, None])
                        .mul_(p)
                        .neg_()
                    )
                g.scatter_add_(-1, targets[j, None], g_lp[:, None])  # (n, V) = ∂L/∂logits
                if dh is not None:
                    dh[j] = g @ weight.float()
                if dw is not None:
                    dw.addmm_(g.T, h.float())
        return (
            dh.to(hidden.dtype) if dh is not None else None,
            dw.to(weight.dtype) if dw is not None else None,
            None,
            None,
            None,
            None,
            None,
        )


def torch_token_logprobs(
    hidden,
    weight,
    targets,
    temperature: float = 1.0,
    chunk: int = FORWARD_ROWS,
    backward_chunk: int = BACKWARD_ROWS,
):
    """Log-prob and entropy of softmax(hidden @ weight.T / temperature) at targets; differentiable.

    hidden (N, C), weight (V, C), targets (N,) -> logprobs (N,), entropy (N,), in fp32. Works
    `chunk` rows at a time (`backward_chunk` in the backward, see FORWARD_ROWS) and recomputes each
    chunk's logits in the backward, so autograd does not hold the (N, V) logits, unless they fit in
    KEEP_LOGITS_BYTES.
    """
    if hidden.size(0) == 0:
        return hidden.new_zeros(0, dtype=torch.float32), hidden.new_zeros(0, dtype=torch.float32)
    grad_wanted = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedLogprobs.apply(
        hidden, weight, targets.long(), temperature, chunk, backward_chunk, grad_wanted
    )
