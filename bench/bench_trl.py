"""
One PPO update, ours against Hugging Face TRL's PPOTrainer, on the same random GPT-2 shape and the
same work: a batch of 64-token queries, 24 sampled response tokens, 4 epochs x 2 minibatches (one
optimizer step per minibatch, one forward/backward per minibatch), fp32. An update is the rollout
(sampling, old and reference log-probs, values, scores) plus the PPO epochs.

Three contestants, timed alternately (the order rotates every repeat) and reported as medians:
  * ours, shared trunk: ppo.py's default, a value head on the policy's trunk (124M trained weights
    at the 124M shape);
  * ours, separate value network (ppo.py --value-model reward): a second GPT-2 as the critic, like
    for like with TRL (249M trained weights);
  * TRL: PPOTrainer with a separate value model (GPT2ForSequenceClassification), its defaults
    otherwise (fused AdamW, no stop token).
Each gets one warm-up update first. All run in one process with freed memory kept for reuse, as
ppo.py runs on a CPU (--malloc reuse; --malloc system for the C allocator's defaults). Random
weights (no download); a stand-in for the tokenizer (TRL reads only its pad and eos ids).

TRL is a benchmark-only dependency, never in requirements.txt. Its last release that ships
PPOTrainer is 1.12.0 (as trl.experimental.ppo). Install it in a virtual environment of its own
that sees the test venv's packages (a .pth file naming that venv's site-packages) and is pinned to
tests/constraints.txt, so TRL runs on the very torch and transformers the suite passed with and the
comparison does not drift with upstream releases (.venv is the test venv):
    .venv/bin/python -m venv .venv-trl
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \\
        > "$(.venv-trl/bin/python -c 'import site; print(site.getsitepackages()[0])')/base.pth"
    .venv-trl/bin/pip install trl==1.12.0 -c tests/constraints.txt
    .venv-trl/bin/python bench/bench_trl.py --shape tiny --batch 32
    .venv-trl/bin/python bench/bench_trl.py --shape gpt2 --batch 8
The script prints the versions of torch, transformers, trl and accelerate beside its figures, and
refuses to run when torch or transformers differ from tests/constraints.txt (--any-version runs
anyway, and says so beside every figure). Without TRL, it times our two contestants only.
bench/profile_update.py splits the same update into its phases.

This is a benchmark script, not a test: it prints figures. Timings on a shared machine are noisy:
look at the spread and the load average it prints ("cpu s" is the process's CPU time, all threads).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stage files, run from anywhere

import torch

import ppo
import reward
from gpt2 import GPT2, PRESETS
from machinery import cli, tasks
from machinery.optim import make_adam

PAD = 50256  # TRL's pad id (GPT-2's <|endoftext|>); the random queries never contain it


@dataclass
class BenchConfig:
    shape: str = "tiny"
    """GPT-2 shape, random weights: tiny (2 layers, 128 wide) or gpt2 (124M)"""
    batch: int = 32
    """episodes per update (queries in the rollout batch)"""
    repeats: int = 5
    """timed updates per contestant, after one warm-up each; medians are reported"""
    threads: int = 2
    """torch CPU threads"""
    only: str = ""
    """comma-separated subset of: shared, separate, trl (empty: all three)"""
    seed: int = 0
    """seed for the weights and the random queries"""
    any_version: bool = False
    """run even when torch or transformers differ from tests/constraints.txt (the output says so)"""
    malloc: str = "reuse"
    """'reuse': keep freed memory for the next tensor (machinery.cli.reuse_freed_memory, what
    ppo.py does on a CPU), for every contestant alike, as they share this process; 'system': the C
    allocator's defaults"""


CONSTRAINTS = Path(__file__).resolve().parents[1] / "tests" / "constraints.txt"
PINNED = ("torch", "transformers")  # what both sides run on: pinned to the test suite's versions


def versions() -> dict[str, str]:
    """Installed versions of what the comparison depends on (trl and accelerate when present)."""
    names = ["torch", "transformers", "trl", "accelerate"]
    return {n: importlib.metadata.version(n) for n in names if importlib.util.find_spec(n)}


def version_drift(found: dict[str, str]) -> list[str]:
    """The pinned packages whose installed version is not tests/constraints.txt's ('2.13.0+cpu'
    matches a pin of '2.13.0')."""
    pins = dict(
        line.strip().split("==", 1) for line in CONSTRAINTS.read_text().splitlines() if "==" in line
    )
    return [
        f"{n} {found.get(n, 'missing')} (tests/constraints.txt: {pins[n]})"
        for n in PINNED
        if n in pins and found.get(n, "").split("+")[0] != pins[n]
    ]


def version_line() -> str:
    found = versions()
    drift = version_drift(found)
    line = ", ".join(f"{n} {v}" for n, v in found.items())
    return line + (f"; NOT THE PINNED VERSIONS: {', '.join(drift)}" if drift else " (pinned)")


def set_malloc(b: BenchConfig) -> str:
    """Apply --malloc to this process (every contestant alike); returns what took, for the
    setting line."""
    if b.malloc not in ("reuse", "system"):
        raise SystemExit(f"error: --malloc {b.malloc!r}: 'reuse' or 'system'")
    if b.malloc == "reuse" and cli.reuse_freed_memory():
        return "freed memory reused (glibc mallopt)"
    return "the C allocator's defaults"


def contestants(only: str, known: tuple[str, ...]) -> list[str]:
    """The contestants --only names (all of `known` when empty), without TRL when it is not
    installed; an unknown name, or nothing left to run, is an error."""
    names = [n for n in only.split(",") if n] if only else list(known)
    if not names:
        raise SystemExit(
            f"error: --only {only!r} names no contestant: choose from {', '.join(known)}"
        )
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: --only {','.join(unknown)}: choose from {', '.join(known)}")
    if "trl" in names and importlib.util.find_spec("trl") is None:
        print("TRL is not installed (see bench/bench_trl.py's docstring): timing ours only")
        names.remove("trl")
    if not names:
        raise SystemExit("error: --only trl, but TRL is not installed (see bench/bench_trl.py)")
    return names


def setting_line(b: BenchConfig, malloc: str = "") -> str:
    """The machine, the code and the versions, printed above and below the figures."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        os.uname().machine,
    )
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True
    )
    code = commit.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    malloc = f"; {malloc}" if malloc else ""
    return f"{cpu}, {b.threads} threads{malloc}; code {code or 'unknown'}; {version_line()}"


def ppo_config(b: BenchConfig) -> ppo.Config:
    """Our PPO settings for this benchmark: minibatches of batch/2, each in one forward/backward
    (micro-batch 64 >= the minibatch), as TRL with per_device_train_batch_size = batch and
    gradient_accumulation_steps = 1."""
    return ppo.Config(
        model=b.shape,
        batch_size=b.batch,
        nminibatches=2,
        noptepochs=4,
        temperature=0.7,
        device="cpu",
        seed=b.seed,
    )


def our_update(b: BenchConfig, value_model: str, ref, rm, queries):
    """An update function for our PPO (rollout + ppo_update), with the shared trunk or a separate
    value network initialized from the reward model."""
    cfg = dataclasses.replace(ppo_config(b), value_model=value_model)
    task = tasks.get_task("sentiment")  # 64 + 24 tokens
    policy = ppo.make_policy(cfg, ref, rm)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_adam(params, cfg.adam, lr=cfg.lr, eps=cfg.adam_eps)
    sample_gen = torch.Generator().manual_seed(b.seed)
    shuffle_gen = torch.Generator().manual_seed(b.seed + 1)

    def update():
        batch = ppo.rollout(policy, ref, rm, task, queries, cfg, cfg.kl_coef, sample_gen, "cpu")
        ppo.ppo_update(policy, optimizer, batch, cfg, task.response_length, shuffle_gen, "cpu")

    return update, optimizer, policy


class TokenizerStandIn:
    """What PPOTrainer reads from its processing_class: the pad and eos ids."""

    pad_token_id = eos_token_id = PAD


def trl_update(b: BenchConfig, queries, out_dir: str):
    """An update function for TRL's PPOTrainer: one call of train() with total_episodes = batch
    is one update (rollout + PPO epochs)."""
    import datasets
    import transformers
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    c = PRESETS[b.shape]
    hf = transformers.GPT2Config(
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        n_positions=c.n_positions,
        vocab_size=c.vocab_size,
        pad_token_id=PAD,
        num_labels=1,
    )
    torch.manual_seed(b.seed)
    policy, ref = transformers.GPT2LMHeadModel(hf), transformers.GPT2LMHeadModel(hf)
    value = transformers.GPT2ForSequenceClassification(hf)
    rm = transformers.GPT2ForSequenceClassification(hf)
    args = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=b.batch,
        gradient_accumulation_steps=1,  # TRL steps the optimizer every GA micro-batches
        num_mini_batches=2,
        num_ppo_epochs=4,
        total_episodes=b.batch,  # one update per train() call
        response_length=24,
        temperature=0.7,
        learning_rate=1e-5,
        num_sample_generations=0,
        bf16=False,  # TRL's default is bf16
        fp16=False,
        gradient_checkpointing=False,  # TRL's default is True (PPOTrainer does not apply it)
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=b.seed,
    )
    data = datasets.Dataset.from_dict({"input_ids": queries})
    trainer = PPOTrainer(
        args=args,
        processing_class=TokenizerStandIn(),
        model=policy,
        ref_model=ref,
        reward_model=rm,
        train_dataset=data,
        value_model=value,
        eval_dataset=data,
        data_collator=lambda rows: {"input_ids": torch.tensor([r["input_ids"] for r in rows])},
    )

    def update():
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its metrics every update
            trainer.train()

    # accelerate's wrapper skips the step between gradient-accumulation boundaries: count the
    # steps the torch optimizer inside really takes
    return update, trainer.optimizer.optimizer, trainer


def main(argv=None):
    b = cli.parse(BenchConfig, argv, description=__doc__)
    malloc = set_malloc(b)
    drift = version_drift(versions())
    if drift and not b.any_version:
        raise SystemExit(
            f"error: {', '.join(drift)}: install the pinned versions (this script's docstring), "
            "or run with --any-version to time these (the output then says so)"
        )
    torch.set_num_threads(b.threads)
    names = contestants(b.only, ("shared", "separate", "trl"))
    torch.manual_seed(b.seed)
    # the same queries for everyone: the rollout batch, 64 random tokens each
    queries = torch.randint(0, 50000, (b.batch, 64)).tolist()
    ref = GPT2.from_config(b.shape).eval().requires_grad_(False)
    rm = reward.RewardModel(copy.deepcopy(ref)).eval().requires_grad_(False)
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    make = dict(
        shared=lambda: our_update(b, "shared", ref, rm, queries),
        separate=lambda: our_update(b, "reward", ref, rm, queries),
        trl=lambda: trl_update(b, queries, out_dir),
    )
    updates, steps = {}, {n: 0 for n in names}
    for n in names:
        updates[n], optimizer, _ = make[n]()
        optimizer.register_step_post_hook(lambda *_, n=n: steps.__setitem__(n, steps[n] + 1))
    setting = setting_line(b, malloc)
    print(
        f"{b.shape} shape (random weights), batch {b.batch}, 64 + 24 tokens, 4 epochs x 2 "
        f"minibatches, fp32\n{setting}"
    )
    for n in names:  # warm-up
        updates[n]()
    # the same work: 4 epochs x 2 minibatches = 8 optimizer steps per update for everyone
    print("optimizer steps in one update: " + ", ".join(f"{n} {steps[n]}" for n in names))
    times, cpu = {n: [] for n in names}, {n: [] for n in names}
    for r in range(b.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for n in order:
            t0, c0 = time.perf_counter(), time.process_time()
            updates[n]()
            times[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
        print(
            f"repeat {r + 1} (load {os.getloadavg()[0]:.1f}): "
            + ", ".join(f"{n} {times[n][-1]:.2f} s (cpu {cpu[n][-1]:.1f} s)" for n in names)
        )
        sys.stdout.flush()
    med = {n: statistics.median(t) for n, t in times.items()}
    label = dict(shared="ours, shared trunk", separate="ours, separate value network", trl="TRL")
    print(
        f"\n{'contestant':<30} {'median s':>9} {'min s':>7} {'max s':>7} {'TRL / this':>11} "
        f"{'cpu s':>7}"
    )
    for n in names:
        speedup = f"{med['trl'] / med[n]:.2f}x" if "trl" in med else "-"
        print(
            f"{label[n]:<30} {med[n]:>9.2f} {min(times[n]):>7.2f} {max(times[n]):>7.2f} "
            f"{speedup:>11} {statistics.median(cpu[n]):>7.1f}"
        )
    print(setting)
    print(f"load average now {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    return med


if __name__ == "__main__":
    main()
