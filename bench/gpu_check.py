"""The device check: every number the one-GPU path needs, from one run of under 8 minutes on one
H100 / H200, as one results table naming the device.

    python bench/gpu_check.py        # on the GPU; also writes $OUT/gpu_check.md if OUT is set
    python bench/gpu_check.py --dry  # CPU, tiny shapes: every stage still runs (a test runs it)

Stages, each a subprocess with its own time limit (so one slow stage cannot eat the budget; a stage
that fails or runs out of time is reported and the next one runs):
  1. tests    the kernel and model tests with the kernels compiled for the GPU (TRITON_INTERPRET=0)
  2. kernels  `python bench/bench_kernels.py`: attention and log-probs, time and peak memory against
     SDPA
              and the naive log-softmax
  3. ppo 124M `python bench_ppo.py` at the 124M sentiment setting (batch 512, 64 + 24 tokens, bf16):
              update time, tokens/s, peak memory
  4. ppo large the same at gpt2-large (774M, the paper's size) with activation checkpointing and
              --micro-batch-size auto (one timed update)
  5. pipeline `python ppo.py`, the real pipeline (comparisons sampled from rho, scripted labels,
              reward model, PPO) for 20 updates on random 124M weights written as a Hugging Face
              checkpoint (no download); --no-rm.require-stop, since random weights almost never
              sample the stop token

Offline: everything here tokenizes (query formatting, the scripted labeler), so tiktoken's GPT-2
files must be on disk. The script uses $TIKTOKEN_CACHE_DIR, else the repo's .tiktoken_cache/
(gitignored: copy tiktoken's two cache files there to carry them to a machine without network).
The exit status is 1 when any stage failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 470  # the whole check, stage limits included: 8 minutes less start-up
DRY_LIMIT_S = 120  # each dry stage (a loaded CI machine; dry is about not rotting, not speed)


@dataclass
class Stage:
    name: str
    argv: list[str]
    limit_s: float
    """the stage's own time limit (also capped by what is left of the whole budget)"""
    env: dict = field(default_factory=dict)
    summarize: object = None
    """stdout -> a short results text and, optionally, the goal verdicts"""


# --------------------------------------------------------------------------------------------------
# Reading each stage's output (the tools print their numbers; we pick out the ones that matter)


def summarize_tests(out: str) -> str:
    lines = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    return lines[-1].strip("= ") if lines else "no pytest summary line"


def summarize_kernels(out: str) -> str:
    """One line per 'ours' row at bench/bench_kernels.py's GPU shapes: the speed (and memory)
    against the baseline, as bench/bench_kernels.py prints it."""
    keep = []
    for line in out.splitlines():
        if "x the speed of" not in line:
            continue
        shape = line.split("  ")[0].strip()
        speed = line[line.index("ours") :] if "ours" in line else line
        speed = re.sub(r"\s{2,}[-\d.\s]+\s{2,}", ": ", speed, count=1)
        keep.append(f"{shape} {speed.strip()}")
    # on a GPU: the PPO batch and the long-context shape for attention, both log-prob sizes
    wanted = ("B=512 T=88", "B=8 T=1024", "N=12288", "N=1536")
    chosen = [k for k in keep if k.startswith(wanted)] or keep
    return "; ".join(chosen) if chosen else "no result rows"


def bench_numbers(out: str) -> dict:
    """The 'bench mean over N updates' line of bench_ppo.py as a dict."""
    for line in out.splitlines():
        if line.startswith("bench mean over"):
            return {
                k: float(v) for k, v in re.findall(r"(\w+) (-?[\d.]+|nan)", line.split(":", 1)[1])
            }
    return {}


def summarize_bench(tokens_per_episode: int, batch: int, epochs: int, goal_update_s=None):
    def summarize(out: str) -> str:
        m = bench_numbers(out)
        if not m:
            return "no 'bench mean' line"
        train_tok_s = batch * tokens_per_episode * epochs / max(m["train_s"], 1e-9)
        text = (
            f"update {m['update_s']:.2f} s (rollout {m['rollout_s']:.2f}, train "
            f"{m['train_s']:.2f}); generate {m['generate_tok_s']:,.0f} tok/s; train "
            f"{train_tok_s:,.0f} tok/s; peak {m['peak_gib']:.1f} GiB"
        )
        micro = re.findall(r"micro-batch size (\d+)", out)
        if micro:
            text += f"; micro-batch {micro[-1]}"
        if goal_update_s is not None:
            ok = m["update_s"] <= goal_update_s
            text += f" | goal update <= {goal_update_s} s: {'met' if ok else 'NOT met'}"
        return text

    return summarize


def summarize_pipeline(out: str) -> str:
    updates = [line for line in out.splitlines() if line.startswith("update ")]
    rm = [line for line in out.splitlines() if "held-out accuracy" in line]
    text = updates[-1][:110] if updates else "no update line"
    return text + (f" | reward model: {rm[-1].strip()[:80]}" if rm else "")


# --------------------------------------------------------------------------------------------------
# The stages


def random_checkpoint(preset: str, folder: Path) -> str:
    """Random GPT-2 weights (GPT-2's initialization) in the Hugging Face layout, so ppo.py loads
    them as it loads a downloaded checkpoint: the real loading path, without network."""
    import torch

    sys.path.insert(0, str(ROOT))
    import gpt2

    torch.manual_seed(0)
    model = gpt2.GPT2.from_config(preset)
    c = model.config
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(
        model_type="gpt2",
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        vocab_size=c.vocab_size,
        n_positions=c.n_positions,
        layer_norm_epsilon=c.layer_norm_epsilon,
    )
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return str(folder)


def stages(dry: bool, work: Path) -> list[Stage]:
    py = sys.executable
    if dry:
        # tiny shapes on the CPU, kernels under Triton's interpreter: the same commands, flags and
        # parsing as on the GPU, so the script cannot rot; the numbers mean nothing
        ckpt = random_checkpoint("tiny", work / "random-tiny")
        # fp32: CPUs without bf16 matmul units emulate it ~10x slower (the bf16 path on the CPU is
        # covered by tests/test_gpu_path.py)
        common = ["--device", "cpu", "--precision", "fp32", "--task", "sentiment"]
        return [
            Stage(
                "tests",
                [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpt2.py"]
                + ["-k", "presets"],
                DRY_LIMIT_S,
                {"TRITON_INTERPRET": "1"},
                summarize_tests,
            ),
            Stage(
                "kernels",
                [py, "bench/bench_kernels.py", "--what", "logprobs", "--reps", "1"],
                DRY_LIMIT_S,
                {},
                summarize_kernels,
            ),
            Stage(
                "ppo tiny",
                [py, "bench/bench_ppo.py", "--model", "tiny", "--batch-size", "2"]
                + ["--micro-batch-size", "1", "--noptepochs", "1", "--bench-updates", "1"]
                + common,
                DRY_LIMIT_S,
                {},
                summarize_bench(64 + 24, 2, 1),
            ),
            Stage(
                "ppo tiny, checkpointed",
                [py, "bench/bench_ppo.py", "--model", "tiny", "--batch-size", "2"]
                + ["--micro-batch-size", "auto", "--grad-checkpoint", "--noptepochs", "1"]
                + ["--bench-updates", "1"]
                + common,
                DRY_LIMIT_S,
                {},
                summarize_bench(64 + 24, 2, 1),
            ),
            Stage(
                "pipeline",
                [py, "ppo.py", "--model", ckpt, "--run-dir", str(work / "run")]
                + pipeline_flags(batch=2, updates=2, comparisons=8, eval_episodes=2)
                + ["--noptepochs", "1"]
                + common,
                DRY_LIMIT_S,
                {},
                summarize_pipeline,
            ),
        ]
    ckpt = random_checkpoint("gpt2", work / "random-gpt2")
    return [
        Stage(
            "tests",
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            + ["tests/test_kernels.py", "tests/test_gpt2.py"],
            120,
            {"TRITON_INTERPRET": "0"},
            summarize_tests,
        ),
        Stage("kernels", [py, "bench/bench_kernels.py"], 100, {}, summarize_kernels),
        Stage(
            "ppo 124M",
            [
                py,
                "bench/bench_ppo.py",
                "--model",
                "gpt2",
                "--precision",
                "bf16",
                "--bench-updates",
                "3",
            ],
            75,
            {},
            summarize_bench(64 + 24, 512, 4, goal_update_s=2.0),
        ),
        Stage(
            "ppo gpt2-large",
            [py, "bench/bench_ppo.py", "--model", "gpt2-large", "--precision", "bf16"]
            + ["--grad-checkpoint", "--micro-batch-size", "auto", "--bench-updates", "1"],
            100,
            {},
            summarize_bench(64 + 24, 512, 4),
        ),
        Stage(
            "pipeline",
            [py, "ppo.py", "--model", ckpt, "--run-dir", str(work / "run"), "--precision", "bf16"]
            + pipeline_flags(batch=64, updates=20, comparisons=256, eval_episodes=64),
            75,
            {},
            summarize_pipeline,
        ),
    ]


def pipeline_flags(batch: int, updates: int, comparisons: int, eval_episodes: int) -> list[str]:
    """ppo.py for `updates` updates of `batch` episodes, its reward model trained on `comparisons`
    scripted labels (the work scales down, the code path is the whole pipeline). Random weights
    almost never sample the stop token, so the comparisons keep responses without it
    (--no-rm.require-stop)."""
    return [
        *("--batch-size", str(batch), "--total-episodes", str(batch * updates)),
        *("--micro-batch-size", str(min(batch, 32)), "--eval-episodes", str(eval_episodes)),
        *("--rm.num-comparisons", str(comparisons), "--no-rm.require-stop"),
        *("--rm.normalize-samples", str(eval_episodes), "--rm.rollout-batch-size", str(batch)),
        *("--rm.batch-size", str(min(comparisons // 2, 32)), "--save-every", str(updates)),
        *("--sample-every", "0"),
    ]


# --------------------------------------------------------------------------------------------------
# Running them


def tiktoken_cache() -> str | None:
    """Where tiktoken's GPT-2 files are: $TIKTOKEN_CACHE_DIR, else the repo's .tiktoken_cache/."""
    if os.environ.get("TIKTOKEN_CACHE_DIR"):
        return os.environ["TIKTOKEN_CACHE_DIR"]
    local = ROOT / ".tiktoken_cache"
    return str(local) if local.is_dir() and any(local.iterdir()) else None


def run_stage(stage: Stage, deadline: float, log) -> dict:
    limit = max(1.0, min(stage.limit_s, deadline - time.monotonic()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **stage.env}
    print(f"\n=== {stage.name} (limit {limit:.0f} s): {' '.join(stage.argv[1:])}", flush=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            stage.argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=limit,
        )
        out, status = p.stdout, "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = f"timed out ({limit:.0f} s)"
    seconds = time.monotonic() - t0
    log.write(f"\n=== {stage.name}: {status}, {seconds:.1f} s\n{out}")
    print(out[-3000:], flush=True)
    try:
        result = stage.summarize(out) if stage.summarize else ""
    except Exception as e:  # a format change must show up in the table, not kill the check
        result = f"could not read the output ({type(e).__name__}: {e})"
    if status != "ok":
        tail = [line for line in out.strip().splitlines() if line.strip()][-1:] or [""]
        result = f"{result} | last line: {tail[0][:160]}"
    return dict(stage=stage.name, status=status, seconds=round(seconds, 1), result=result)


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        device = f"{name} ({gib:.0f} GiB)"
    else:
        device = "CPU (dry run: tiny shapes, kernels interpreted; not a measurement)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return f"device: {device} | torch {torch.__version__} | triton {triton_version}"


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| stage | status | seconds | results |", "|---|---|---|---|"]
    for r in rows:
        result = r["result"].replace("|", "/")
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']} | {result} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry", action="store_true", help="CPU, tiny shapes: check that every stage still runs"
    )
    parser.add_argument(
        "--only", action="append", help="run only the stages with these names (repeatable)"
    )
    args = parser.parse_args(argv)
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("error: no CUDA device visible; on a CPU run `--dry`", file=sys.stderr)
        return 2
    deadline = time.monotonic() + (5 * DRY_LIMIT_S if args.dry else BUDGET_S)
    cache = tiktoken_cache()
    if cache:
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    else:
        print(
            "warning: no tiktoken cache ($TIKTOKEN_CACHE_DIR or .tiktoken_cache/); without network "
            "the PPO stages cannot tokenize",
            file=sys.stderr,
        )
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    header = device_line()
    print(header, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        log_path = (out_dir or Path(tmp)) / "gpu_check.log"
        with open(log_path, "w") as log:
            log.write(header + "\n")
            for stage in stages(args.dry, Path(tmp)):
                if args.only and stage.name not in args.only:
                    continue
                if time.monotonic() >= deadline:
                    rows.append(
                        dict(stage=stage.name, status="skipped", seconds=0, result="no time left")
                    )
                    continue
                rows.append(run_stage(stage, deadline, log))
    text = table(rows, header)
    print("\n" + text)
    if out_dir:
        (out_dir / "gpu_check.md").write_text(text)
        (out_dir / "gpu_check.json").write_text(
            json.dumps(dict(device=header, rows=rows), indent=2)
        )
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
