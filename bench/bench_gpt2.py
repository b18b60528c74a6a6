"""
Benchmark gpt2.py against Hugging Face transformers' GPT-2: forward and generation tokens/s at the
124M shape.

Random weights (no download): a transformers GPT2LMHeadModel is created, saved in the HF layout, and
loaded by our GPT2.from_pretrained, so both models hold the same weights. Shapes: batch 8, 64-token
prompts, 24 new tokens (the paper's style-task rollout). Generation samples at temperature 0.7 with
no top-k/top-p and never stops early, in both.

    python bench_gpt2.py                   # 124M shape, on CUDA if present
    python bench_gpt2.py --preset tiny --repeats 2
This is a benchmark script, not a test: it prints figures.
"""

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stage files, run from anywhere

import torch

from gpt2 import GPT2, PRESETS, generate
from machinery import cli


@dataclass
class BenchArgs:
    preset: str = "gpt2"
    """model shape (random weights): a gpt2.py preset (tiny, gpt2, gpt2-medium, ...)"""
    batch: int = 8
    """prompts per batch"""
    prompt_len: int = 64
    """tokens per prompt"""
    new_tokens: int = 24
    """tokens generated per prompt"""
    repeats: int = 5
    """timed runs per measurement (median reported)"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""


def timeit(fn, repeats, sync):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    args = cli.parse(BenchArgs, description=__doc__)
    if args.preset not in PRESETS:
        raise SystemExit(f"--preset {args.preset!r}: choose from {', '.join(PRESETS)}")
    args.device = cli.pick_device(args.device)
    B, T, R, dev = args.batch, args.prompt_len, args.new_tokens, args.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (B, T), device=dev)
    mask = torch.ones(B, T, dtype=torch.bool, device=dev)

    try:
        import transformers
    except ImportError:
        transformers = None
    with tempfile.TemporaryDirectory() as d:
        if transformers is not None:
            hf_cfg = transformers.GPT2Config(
                n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd
            )
            hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
            hf.save_pretrained(d)
            hf = hf.to(dev)
            ours = GPT2.from_pretrained(d, device=dev)
        else:
            print("transformers is not installed: timing gpt2.py alone")
            ours = GPT2.from_config(args.preset).to(dev).eval()

    rows = []
    with torch.no_grad():
        full = torch.randint(0, cfg.vocab_size, (B, T + R), device=dev)
        t_fwd = timeit(lambda: ours(full), args.repeats, sync)
        g = torch.Generator(device=dev)
        t_gen = timeit(
            lambda: generate(ours, tokens, mask, R, temperature=0.7, generator=g.manual_seed(0)),
            args.repeats,
            sync,
        )
        rows.append(("gpt2.py", B * (T + R) / t_fwd, B * R / t_gen))
        if transformers is not None:
            t_fwd_hf = timeit(lambda: hf(full), args.repeats, sync)
            gen_kw = dict(
                max_new_tokens=R,
                min_new_tokens=R,
                do_sample=True,
                temperature=0.7,
                top_k=0,
                top_p=1.0,
                pad_token_id=0,
                eos_token_id=None,
            )
            t_gen_hf = timeit(
                lambda: hf.generate(tokens, attention_mask=mask.long(), **gen_kw),
                args.repeats,
                sync,
            )
            rows.append(
                (
                    f"transformers {transformers.__version__}",
                    B * (T + R) / t_fwd_hf,
                    B * R / t_gen_hf,
                )
            )

    dev_name = (
        torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.preset} shape, batch {B}, prompt {T}, {R} new tokens, fp32, {dev_name}, torch "
        f"{torch.__version__}"
    )
    print(f"{'implementation':<24} {'forward tok/s':>14} {'generate tok/s':>15}")
    for name, fwd, gen in rows:
        print(f"{name:<24} {fwd:>14.0f} {gen:>15.1f}")
    if len(rows) == 2:
        print(
            f"{'ratio (ours / HF)':<24} {rows[0][1] / rows[1][1]:>14.2f} "
            f"{rows[0][2] / rows[1][2]:>15.2f}"
        )


if __name__ == "__main__":
    main()
