"""Benchmark the Triton kernels against PyTorch: time and peak memory per shape.

    python bench/bench_kernels.py         # everything; on a GPU: the shapes below, bf16
    python bench/bench_kernels.py --what attention --dtype fp16 --reps 50
    python bench/bench_kernels.py --help

Compared (forward, and forward + backward):
- attention: ours with a left-padding mask, ours without, torch SDPA causal without a mask (flash
  backend), and SDPA with the (B, 1, T, T) causal ∧ key-padding mask a padded batch needs (PyTorch
  then falls back to the memory-efficient or math backend). Shapes: PPO batches B ∈ {64, 128, 256,
  512} at T = 88, and long context B = 8, T = 1024; H = 12, D = 64 (GPT-2 small).
- log-probs: ours (log-prob and entropy, vocab-chunked) against the naive H @ Wᵀ → log_softmax
  (fp32) → gather, at N ∈ {64·24, 512·24} tokens, d = 768, V = 50257. The backward takes a per-token
  weight, as PPO's advantages do.
Time is the median of --reps runs (CUDA events), peak memory is torch.cuda.max_memory_allocated
above what the inputs already hold. Goals (H100): attention fwd+bwd ≥ 0.8x SDPA flash without
a mask and faster than SDPA with a mask; log-probs fwd+bwd ≥ 1.5x faster than naive with ≤ 10% of
its peak memory at N = 512·24.

On a machine without CUDA the script still runs, on tiny shapes, with the kernels under Triton's
interpreter (it re-executes itself with TRITON_INTERPRET=1), so it cannot rot; those numbers say
nothing about GPU speed.
"""

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stage files, run from anywhere

import torch

from machinery import cli


@dataclass
class BenchConfig:
    what: str = "all"
    """which kernels: 'attention', 'logprobs' or 'all'"""
    dtype: str = "bf16"
    """input dtype on GPU: 'bf16', 'fp16' or 'fp32' (CPU runs fp32: the interpreter cannot do
    bf16 math)"""
    reps: int = 20
    """timed repetitions per measurement (median reported), after 3 warm-up runs"""
    seed: int = 0
    """seed for the random inputs and padding lengths"""


def parse_args(argv=None) -> BenchConfig:
    return cli.parse(BenchConfig, argv, description=__doc__.split("\n")[0])


# --------------------------------------------------------------------------------------------------
# measurement helpers


def measure(fn, reps, cuda):
    """Median milliseconds of fn() and its peak extra memory in MB (CUDA only; None on CPU)."""
    for _ in range(3):  # warm-up: compiles the kernels, fills the allocator cache
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        peak = None
    return statistics.median(times), peak


def fmt_row(cells, widths):
    return "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )


def report(title, rows):
    """rows: (shape, impl, fwd_ms, fwd_MB, fwdbwd_ms, fwdbwd_MB, speedup-vs-baseline text)."""
    head = (
        "shape",
        "impl",
        "fwd ms",
        "fwd MB",
        "fwd+bwd ms",
        "fwd+bwd MB",
        "vs baseline (fwd+bwd)",
    )
    table = [head] + [
        tuple("-" if x is None else (f"{x:.3f}" if isinstance(x, float) else x) for x in r)
        for r in rows
    ]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    print(f"\n{title}")
    for r in table:
        print(fmt_row(r, widths))


# --------------------------------------------------------------------------------------------------
# attention


def bench_attention(cfg, device, dtype, gpt2_kernels):
    import torch.nn.functional as F

    cuda = device == "cuda"
    shapes = [(64, 88), (128, 88), (256, 88), (512, 88), (8, 1024)] if cuda else [(2, 64), (2, 129)]
    H, D = (12, 64) if cuda else (2, 32)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    rows = []
    for B, T in shapes:
        q, k, v = (
            torch.randn(B, H, T, D, generator=g).to(device, dtype).requires_grad_(True)
            for _ in range(3)
        )
        do = torch.randn(B, H, T, D, generator=g).to(device, dtype)
        # left padding as in PPO query batches: each row real from a random start in [0, T/2] (never
        # fully padded, which would give SDPA NaN rows)
        starts = torch.randint(0, T // 2 + 1, (B,), generator=g)
        mask = (torch.arange(T)[None, :] >= starts[:, None]).to(device)  # (B, T)
        # (B, 1, T, T)
        sdpa_mask = (
            torch.ones(T, T, dtype=torch.bool, device=device).tril() & mask[:, None, None, :]
        )
        # keep pad rows finite (they see self)
        sdpa_mask = sdpa_mask | torch.eye(T, dtype=torch.bool, device=device)

        impls = {
            "ours (mask)": lambda: gpt2_kernels.attention(q, k, v, mask, use_kernels="on"),
            "ours (no mask)": lambda: gpt2_kernels.attention(q, k, v, use_kernels="on"),
            "sdpa causal, no mask": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "sdpa + padding mask": lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=sdpa_mask
            ),
        }
        results = {}
        for name, f in impls.items():
            with torch.no_grad():
                t_f, m_f = measure(f, cfg.reps, cuda)

            def fwd_bwd(f=f):
                torch.autograd.grad(f(), (q, k, v), do)

            t_fb, m_fb = measure(fwd_bwd, cfg.reps, cuda)
            results[name] = (t_f, m_f, t_fb, m_fb)
        for name, (t_f, m_f, t_fb, m_fb) in results.items():
            base = {
                "ours (mask)": "sdpa + padding mask",
                "ours (no mask)": "sdpa causal, no mask",
            }.get(name)
            speed = f"{results[base][2] / t_fb:.3g}x the speed of {base}" if base else ""
            rows.append((f"B={B} T={T} H={H} D={D}", name, t_f, m_f, t_fb, m_fb, speed))
    report(f"attention ({device}, {str(dtype).replace('torch.', '')})", rows)


# --------------------------------------------------------------------------------------------------
# log-probs


def naive_logprobs(hidden, weight, targets):
    """The baseline: full logits, fp32 log_softmax, gather (the textbook way, which keeps the
    (N, V) logits for the backward)."""
    logits = hidden @ weight.t()  # (N, V)
    # (N,)
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def bench_logprobs(cfg, device, dtype, gpt2_kernels):
    cuda = device == "cuda"
    shapes = [(64 * 24, 768, 50257), (512 * 24, 768, 50257)] if cuda else [(64, 64, 2001)]
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    rows = []
    for N, d, V in shapes:
        hidden = torch.randn(N, d, generator=g).to(device, dtype).requires_grad_(True)
        weight = (torch.randn(V, d, generator=g) * 0.05).to(device, dtype).requires_grad_(True)
        targets = torch.randint(0, V, (N,), generator=g).to(device)
        # per-token upstream gradient, as in PPO
        advantages = torch.randn(N, generator=g).to(device)
        impls = {
            "ours (logp + entropy)": lambda: gpt2_kernels.token_logprobs(
                hidden, weight, targets, use_kernels="on"
            )[0],
            "naive matmul+log_softmax+gather": lambda: naive_logprobs(hidden, weight, targets),
        }
        results = {}
        for name, f in impls.items():
            with torch.no_grad():
                t_f, m_f = measure(f, cfg.reps, cuda)

            def fwd_bwd(f=f):
                torch.autograd.grad((f() * advantages).sum(), (hidden, weight))

            t_fb, m_fb = measure(fwd_bwd, cfg.reps, cuda)
            results[name] = (t_f, m_f, t_fb, m_fb)
        base = results["naive matmul+log_softmax+gather"]
        for name, (t_f, m_f, t_fb, m_fb) in results.items():
            speed = ""
            if name.startswith("ours"):
                speed = f"{base[2] / t_fb:.3g}x the speed of naive"
                if m_fb is not None and base[3]:
                    speed += f", {100 * m_fb / base[3]:.1f}% of naive peak memory"
            rows.append((f"N={N} d={d} V={V}", name, t_f, m_f, t_fb, m_fb, speed))
    report(f"token log-probs ({device}, {str(dtype).replace('torch.', '')})", rows)


def main():
    cfg = parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        # the interpreter must be on before any @triton.jit runs, i.e. before the kernels are
        # imported: start again
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])
    import triton

    import gpt2_kernels  # after TRITON_INTERPRET is set

    device = "cuda" if cuda else "cpu"
    dtype = (
        {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.dtype]
        if cuda
        else torch.float32
    )
    name = (
        torch.cuda.get_device_name()
        if cuda
        else "CPU (Triton interpreter: tiny shapes, not a speed measurement)"
    )
    if not cuda:
        cfg.reps = min(cfg.reps, 3)  # the interpreter is ~1000x slower than eager PyTorch on CPU
    versions = f"torch {torch.__version__} | triton {triton.__version__}"
    print(f"device: {name} | {versions} | reps {cfg.reps}")
    if cfg.what in ("attention", "all"):
        bench_attention(cfg, device, dtype, gpt2_kernels)
    if cfg.what in ("logprobs", "all"):
        bench_logprobs(cfg, device, dtype, gpt2_kernels)


if __name__ == "__main__":
    main()
