"""Triton kernels for the GPT-2 RLHF stack, each with its plain-PyTorch reference.

- attention.py: fused causal self-attention with left padding (FlashAttention-2 style forward +
  backward).
- logprobs.py: per-token log-probs and entropy of softmax(hidden · Wᵀ / temperature) without the N×V
  logits, plus the per-token KL estimators k1 and k3 PPO uses.
- bench.py: `python -m kernels.bench` times them against PyTorch (SDPA; naive matmul → log_softmax →
  gather).

On CPU the kernels only run under Triton's interpreter (TRITON_INTERPRET=1 set before this package
is imported); the model's CPU path uses the *_reference functions. Importing this package runs no
kernel.
"""

from .attention import attention, attention_reference
from .logprobs import kl_k1, kl_k3, token_logprobs, token_logprobs_reference

__all__ = [
    "attention",
    "attention_reference",
    "token_logprobs",
    "token_logprobs_reference",
    "kl_k1",
    "kl_k3",
]
