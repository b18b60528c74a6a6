"""The PyTorch paths of the two kernels: what the model runs wherever the Triton kernels do not.

- torch_attention: causal attention with a key-padding mask, on PyTorch's
  scaled_dot_product_attention. It runs on CPU, with use_kernels='off', for shapes the Triton kernel
  does not support, and for every decoding step over a KV cache (a few queries against many cached
  keys). It is also the reference the Triton attention is tested against.
- torch_token_logprobs: per-token log-probs and entropy of softmax(hidden · Wᵀ / temperature),
  `chunk` token rows at a time with a hand-written backward, so autograd never holds the (N, V)
  logits. The CPU path of the model's log-probs, and of anything the Triton kernel does not support.

This module imports no triton: CPU users need not have it installed.

Shape letters: B batch, H heads, Tq queries, Tk keys, D head size, N tokens, C hidden size, V
vocabulary, n token rows in one chunk.
"""

import torch
import torch.nn.functional as F

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


def _gemm_weight(weight, hidden):
    """The LM head's weight in hidden's dtype: the logits' GEMM runs in the activations' dtype
    (bf16 under autocast, with fp32 accumulation), as the Triton kernel does."""
    return weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)


class _ChunkedLogprobs(torch.autograd.Function):
    """torch_token_logprobs' autograd function: `chunk` token rows at a time, with a hand-written
    backward.

    Forward, per chunk: z = h·Wᵀ/τ (n, V), lse = logsumexp(z), log p = z − lse, entropy = −Σ p·log
    p. Saved for the backward: h, W, targets, lse and entropy (two floats per token), never the
    logits. Backward, per chunk: recompute z, then with log p = z − lse, p = e^{log p}:
        ∂L/∂z = [g_logp·(1[j=y] − p) − g_ent·p·(log p + entropy)] / τ
    and dh = (∂L/∂z)·W, dW = (∂L/∂z)ᵀ·h. The same math as the Triton kernel
    (kernels/triton_logprobs.py), which chunks the vocabulary instead. Against autograd through
    log_softmax with activation checkpointing this makes about half the passes over the (n, V)
    logits (measured, 2 CPU cores: PPO's forward+backward of the tiny model at 32 x 88 tokens 1.32 s
    -> 0.76 s).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):
        logps, entropies, lses = [], [], []
        w = _gemm_weight(weight, hidden)
        # autocast off: the logits' GEMM runs in hidden's dtype, exactly as the backward (which
        # runs outside autocast) recomputes it; everything after the GEMM is fp32
        with torch.autocast(hidden.device.type, enabled=False):
            for i in range(0, hidden.size(0), chunk):
                # (n, V): one chunk only
                z = (hidden[i : i + chunk] @ w.T).float().mul_(1.0 / temperature)
                lse = torch.logsumexp(z, -1)  # (n,)
                logp_all = z.sub_(lse[:, None])  # (n, V) log p, in place
                logps.append(logp_all.gather(-1, targets[i : i + chunk, None])[:, 0])
                # H = −Σ p·log p (no cancellation)
                entropies.append(-torch.linalg.vecdot(logp_all.exp(), logp_all))
                lses.append(lse)
        logp, entropy, lse = torch.cat(logps), torch.cat(entropies), torch.cat(lses)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.chunk = temperature, chunk
        # an output outside the loss gets None, not a tensor of zeros
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        inv_t = 1.0 / ctx.temperature
        dh = torch.zeros_like(hidden, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        if g_logp is None:
            g_logp = torch.zeros_like(lse)
        w = _gemm_weight(weight, hidden)
        with torch.autocast(hidden.device.type, enabled=False):  # the same GEMMs as the forward
            for i in range(0, hidden.size(0), ctx.chunk):
                h, j = hidden[i : i + ctx.chunk], slice(i, i + ctx.chunk)
                # (n, V) log p, recomputed as the forward computed it (GEMM in hidden's dtype)
                logp = (h @ w.T).float().mul_(inv_t).sub_(lse[j, None])
                p = logp.exp()
                # g = −p·(g_logp + g_ent·(log p + H)), built in place in the log p buffer; then
                # + g_logp at the target
                if g_ent is None:  # PPO's case: only the log-probs are in the loss
                    g = p.mul_(-g_logp[j, None])
                else:
                    g = (
                        logp.add_(entropy[j, None])
                        .mul_(g_ent[j, None])
                        .add_(g_logp[j, None])
                        .mul_(p)
                        .neg_()
                    )
                g.scatter_add_(-1, targets[j, None], g_logp[j, None])
                g.mul_(inv_t)  # (n, V) = ∂L/∂logits
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
        )


def torch_token_logprobs(hidden, weight, targets, temperature: float = 1.0, chunk: int = 1024):
    """Log-prob and entropy of softmax(hidden @ weight.T / temperature) at targets; differentiable.

    hidden (N, C), weight (V, C), targets (N,) -> logprobs (N,), entropy (N,), in fp32. Works
    `chunk` rows at a time and recomputes each chunk's logits in the backward, so autograd never
    holds the (N, V) logits.
    """
    if hidden.size(0) == 0:
        return hidden.new_zeros(0, dtype=torch.float32), hidden.new_zeros(0, dtype=torch.float32)
    return _ChunkedLogprobs.apply(hidden, weight, targets.long(), temperature, chunk)
