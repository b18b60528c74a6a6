"""GPT-2's two hot spots, each as one function that runs a Triton kernel or its PyTorch path.

- attention(q, k, v, key_mask, use_kernels): causal self-attention over a left-padded batch.
- token_logprobs(hidden, weight, targets, temperature, use_kernels): per-token log-probs and entropy
  of softmax(hidden · Wᵀ / temperature), without holding the (N, V) logits for the backward (the
  PyTorch path keeps them when they are small: gpt2_kernels/pytorch.py's KEEP_LOGITS_BYTES).

Which path runs, by use_kernels:
- 'auto' (the default): the Triton kernel for CUDA tensors of a shape it supports (attention: head
  dim 16, 32, 64 or 128, fp32/fp16/bf16; log-probs: fp32/fp16/bf16 hidden states). Everything else
  runs the PyTorch path: CPU tensors silently; on CUDA, an unsupported shape or a missing triton
  is reported once per reason, as a warning.
- 'on': always the Triton kernel. CPU tensors run it under Triton's interpreter (TRITON_INTERPRET=1,
  set before the first call imports the kernels); an unsupported shape is an error.
- 'off': always the PyTorch path.
Attention with fewer queries than keys (a decoding step over a KV cache) takes the PyTorch path in
every mode: the kernel covers full sequences (training, scoring, the prompt's prefill).

Files:
- pytorch.py: the PyTorch paths, torch_attention (on SDPA) and torch_token_logprobs (token chunks,
  hand-written backward). They are also the reference the kernels are tested against.
- triton_attention.py: fused causal attention with left padding (FlashAttention-2 style forward and
  backward).
- triton_logprobs.py: fused LM-head log-prob + entropy, the vocabulary in chunks.
- bench/bench_kernels.py (outside this folder) times the kernels against PyTorch (SDPA; naive
  matmul → log_softmax → gather).

Importing this package imports no triton and runs no kernel: CPU users need not install triton.
"""

import importlib
import warnings

from .pytorch import BACKWARD_ROWS, FORWARD_ROWS, torch_attention, torch_token_logprobs

MODES = ("auto", "on", "off")

# reasons for a fallback already reported, so each is said once per process
_reported: set[str] = set()


def _on_gpu(t) -> bool:
    """Does 'auto' consider this tensor's device one the kernels are for? (Tests replace this to
    exercise the GPU-side dispatch on CPU, under the interpreter.)"""
    return t.is_cuda


def _report_fallback(op: str, reason: str) -> None:
    key = f"{op}: {reason}"
    if key not in _reported:
        _reported.add(key)
        warnings.warn(
            f"kernels.{op}: {reason}; use_kernels='auto' falls back to the PyTorch path "
            "(said once)",
            stacklevel=3,
        )


def _triton_module(op: str, mode: str, t, *inputs):
    """The Triton module that should run op on these inputs, or None for the PyTorch path.

    The Triton modules are imported here, on first use, so that CPU users need no triton. For
    'auto', the module's own `unsupported` says which shapes its kernel refuses.
    """
    if mode not in MODES:
        raise ValueError(f"use_kernels must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off" or (mode == "auto" and not _on_gpu(t)):
        return None
    name = {"attention": "triton_attention", "token_logprobs": "triton_logprobs"}[op]
    try:
        module = importlib.import_module(f".{name}", __name__)
    except ImportError as e:
        if mode == "on":
            raise ImportError(
                f"kernels.{op}: use_kernels='on' needs triton ({e}); install it, or use "
                "use_kernels='auto' or 'off' for the PyTorch path"
            ) from e
        _report_fallback(op, "triton is not installed")
        return None
    if mode == "auto":
        reason = module.unsupported(*inputs)
        if reason is not None:
            _report_fallback(op, reason)
            return None
    return module


def attention(q, k, v, key_mask=None, use_kernels: str = "auto"):
    """Causal attention of the last Tq queries over Tk keys with a key-padding mask.

    q: (B, H, Tq, D); k, v: (B, H, Tk, D), Tk >= Tq; key_mask: (B, Tk), True / 1 for real tokens,
    or None. Returns (B, H, Tq, D); a query that sees no real key gets 0. Differentiable.
    """
    if q.size(-2) == k.size(-2):  # a full sequence: the kernel's case
        module = _triton_module("attention", use_kernels, q, q, k, v)
        if module is not None:
            return module.attention(q, k, v, key_mask)
    elif use_kernels not in MODES:
        raise ValueError(f"use_kernels must be 'auto', 'on' or 'off', got {use_kernels!r}")
    return torch_attention(q, k, v, key_mask)


def token_logprobs(
    hidden,
    weight,
    targets,
    temperature: float = 1.0,
    use_kernels: str = "auto",
    chunk: int = FORWARD_ROWS,
    backward_chunk: int = BACKWARD_ROWS,
):
    """Log-prob and entropy of softmax(hidden @ weight.T / temperature) at targets; differentiable.

    hidden (N, C), weight (V, C), targets (N,) -> logprobs (N,), entropy (N,), in fp32. The Triton
    kernel makes one pass over the vocabulary in column chunks; the PyTorch path works `chunk` token
    rows at a time (`backward_chunk` in the backward). Neither holds the (N, V) logits for the
    backward, except the PyTorch path when they fit in KEEP_LOGITS_BYTES.
    """
    module = _triton_module("token_logprobs", use_kernels, hidden, hidden, weight)
    if module is not None:
        return module.token_logprobs(hidden, weight, targets, temperature)
    return torch_token_logprobs(hidden, weight, targets, temperature, chunk, backward_chunk)


__all__ = ["MODES", "attention", "token_logprobs", "torch_attention", "torch_token_logprobs"]
