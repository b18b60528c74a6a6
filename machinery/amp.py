"""Mixed precision: one switch for every forward (sampling, scoring, training), bf16 or fp32."""

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device) -> str:
    """'auto' -> 'bf16' on CUDA, 'fp32' elsewhere (bf16 matmuls are slow on most CPUs); 'bf16' and
    'fp32' are kept on any device, so the CPU can run the GPU's exact bf16 code path."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(device, precision: str):
    """The mixed-precision context every forward runs in: torch.autocast to bfloat16 on the
    device's type (CUDA or CPU alike) for 'bf16', nothing for 'fp32'.

    Under it the weights, the optimizer and its state stay fp32 (autocast casts per op); matmuls
    (Linear, attention, the LM head's logits) run in bf16; the residual stream and LayerNorm stay
    fp32; log-softmax, log-probs, entropy, values, scores, losses and statistics are fp32
    (gpt2_kernels.token_logprobs upcasts the logits, the heads' outputs are .float()). bf16 needs
    no loss scaling: it has fp32's exponent range."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast casts matmul inputs to on t's device, or None when autocast is off."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
