"""
Where one PPO update's time goes, phase by phase, ours against TRL's PPOTrainer: seconds, the
arithmetic each phase does (GFLOP, counted from the shapes) and the rate it achieves (GFLOP/s).
The same setting as bench/bench_trl.py (its docstring says how to install TRL), with our separate
value network, like for like:

    .venv-trl/bin/python bench/profile_update.py --shape gpt2 --batch 8
    .venv-trl/bin/python bench/profile_update.py --shape gpt2 --batch 8 --only separate --gemm

Phases (time inside a phase is its own: a nested phase's time is not counted twice):
  generate         sampling R tokens with the KV cache (ours: gpt2.generate; TRL: model.generate)
  score policy     old log-probs (ours: a forward of π, the same function as training; TRL: a
                   log-softmax of the logits generation returned, no forward)
  score ref        ρ's log-probs (ours: R positions; TRL: the logits at all T positions)
  score value      the value network's forward (old values)
  score reward     the reward model's forward (the score)
  train fwd policy the training forward of π (with its log-probs)
  train fwd value  the training forward of the value network
  train backward   loss.backward(), both networks
  optimizer        the optimizer steps (Adam; memory-bound, so GB/s, not GFLOP/s)
  other            the rest: advantages, losses, statistics, batching, TRL's bookkeeping

GFLOP per phase, forward GEMMs only, for C channels, L layers, V = 50257, batch B, query Q,
response R, T = Q + R tokens (multiply-add = 2 FLOPs; bias adds, LayerNorm, GELU, softmax not
counted):
  block GEMMs per token and layer: 24·C² (qkv 6C², attention projection 2C², MLP 16C²)
  attention per sequence and layer: 4·Tq·Tk·C (QKᵀ and PV over the full Tq × Tk square; the causal
    half would be 2·Tq·Tk·C, a 1-2% difference at these lengths)
  LM head per position: 2·C·V; value and reward heads: 2·C (negligible)
  ours with `last = n` (gpt2.py's final block at the last n positions only): the final layer does
    4·C²·T (keys and values) + 20·C²·n, and attention 4·n·T·C
  backward = 2 × forward (the gradients of inputs and of weights)
  generation: the prompt's prefill (B·Q tokens) + R - 1 steps of B tokens over the growing cache,
    the LM head at B positions per sampled token (ours and transformers' generate alike)

--gemm also measures the training phase's GEMMs (aten::mm, addmm, bmm) in place, with
torch.profiler over one more update, against the same shapes run alone (each shape timed in a
loop of its own): their rates in place and alone. It takes one contestant per process (--only):
both sides' models, optimizer states and the profiler's record held more than 24 GiB at 124M
(--malloc reuse keeps a process at its peak; ours alone peaked at 10 GB).

A benchmark script, not a test. Timings on a shared machine are noisy: it prints the load.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stage files, run from anywhere

import torch

import gpt2
import reward
from bench import bench_trl
from gpt2 import GPT2, PRESETS
from machinery import cli

PHASES = (
    "generate",
    "score policy",
    "score ref",
    "score value",
    "score reward",
    "train fwd policy",
    "train fwd value",
    "train backward",
    "optimizer",
    "other",
)


@dataclass
class ProfileConfig:
    shape: str = "gpt2"
    """GPT-2 shape, random weights: tiny or gpt2 (124M)"""
    batch: int = 8
    """episodes per update"""
    repeats: int = 3
    """timed updates per contestant (after one warm-up); the phase table holds their medians"""
    threads: int = 2
    """torch CPU threads"""
    only: str = ""
    """comma-separated subset of: separate, trl (empty: both)"""
    clock: str = "wall"
    """'wall': seconds of wall time; 'cpu': the process's CPU seconds, which on a loaded machine at
    --threads 1 count the work done and not the time spent waiting for a core"""
    gemm: bool = False
    """also measure the training phase's GEMM rate in place against the same shapes alone"""
    seed: int = 0
    """seed for the weights and the queries"""
    malloc: str = "reuse"
    """'reuse' or 'system': as bench/bench_trl.py's --malloc (both sides alike)"""


# --------------------------------------------------------------------------------------------------
# A clock of nested phases


class PhaseClock:
    """Exclusive time per phase: entering a phase pauses the one it is nested in. `timer`: wall
    time (time.perf_counter) or the process's CPU time (time.process_time)."""

    def __init__(self, timer=time.perf_counter):
        self.stack, self.seconds, self.t, self.timer = [], collections.Counter(), 0.0, timer
        # minor page faults per phase (first touches of freshly mapped memory), and their count
        self.faults, self.f = collections.Counter(), 0
        self.last = None  # the last phase left (TRL's log-softmax follows its own forward)
        self.profiling = False  # also mark each phase for torch.profiler

    def _switch(self):
        now, f = self.timer(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if self.stack:
            self.seconds[self.stack[-1]] += now - self.t
            self.faults[self.stack[-1]] += f - self.f
        self.t, self.f = now, f

    @contextlib.contextmanager
    def phase(self, name):
        self._switch()
        self.stack.append(name)
        mark = torch.profiler.record_function(name) if self.profiling else contextlib.nullcontext()
        try:
            with mark:
                yield
        finally:
            self._switch()
            self.last = self.stack.pop()

    def top(self):
        return self.stack[-1] if self.stack else None

    def wrap(self, obj, attr, name_of):
        """Replace obj.attr by a wrapper that runs it in phase name_of(*args) (None: no phase)."""
        fn = getattr(obj, attr)

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            name = name_of(*args, **kwargs)
            if name is None or self.top() == "generate":
                return fn(*args, **kwargs)
            with self.phase(name):
                return fn(*args, **kwargs)

        setattr(obj, attr, wrapped)


def mode(train: str, score: str):
    """A phase name by grad mode: training forwards run with gradients, scoring without."""
    return lambda *a, **k: train if torch.is_grad_enabled() else score


# --------------------------------------------------------------------------------------------------
# The two updates, instrumented


def instrument_backward(clock):
    """Every loss.backward() in the process is the training backward."""
    clock.wrap(torch.Tensor, "backward", lambda *a, **k: "train backward")


def instrument_ours(clock, policy, ref, rm, optimizer):
    """ppo.rollout and ppo.ppo_update as they run, with the phases marked around our functions."""
    clock.wrap(gpt2, "generate", lambda *a, **k: "generate")
    clock.wrap(policy, "forward", mode("train fwd policy", "score policy"))
    clock.wrap(policy.value_trunk, "response_states", mode("train fwd value", "score value"))
    clock.wrap(gpt2, "response_logprobs", lambda m, *a, **k: "score ref" if m is ref else None)
    clock.wrap(rm, "score", lambda *a, **k: "score reward")
    clock.wrap(optimizer, "step", lambda *a, **k: "optimizer")


def instrument_trl(clock, trainer, optimizer):
    """TRL's PPOTrainer.train as it runs, with the phases marked around its functions and its
    models' forwards."""
    from trl.experimental.ppo import ppo_trainer as pt

    model = trainer.model  # PolicyAndValueWrapper (accelerate leaves it unwrapped on one CPU)
    ref, rm = trainer.ref_model, trainer.reward_model

    def forward_phase(m, *a, **k):
        return "score ref" if m is ref else None  # the training forward is marked per model

    def reward_phase(m, *a, **k):
        return "score reward" if m is rm else "score value"

    def log_softmax_phase(*a, **k):  # the policy's old log-probs, then ρ's after its forward
        return "score ref" if clock.last == "score ref" else "score policy"

    clock.wrap(pt, "batch_generation", lambda *a, **k: "generate")
    clock.wrap(pt, "forward", forward_phase)
    clock.wrap(pt, "get_reward", reward_phase)
    clock.wrap(pt, "selective_log_softmax", log_softmax_phase)
    clock.wrap(model.policy, "forward", mode("train fwd policy", None))
    clock.wrap(model.critic_backbone, "forward", mode("train fwd value", "score value"))
    clock.wrap(optimizer, "step", lambda *a, **k: "optimizer")


# --------------------------------------------------------------------------------------------------
# Arithmetic per phase


def flops(shape: str, B: int, Q: int = 64, R: int = 24) -> dict[str, dict[str, float]]:
    """GFLOP per phase for ours (separate value network) and TRL, by the formulas in the module
    docstring."""
    c = PRESETS[shape]
    C, L, V, T = c.n_embd, c.n_layer, c.vocab_size, Q + R

    def trunk(n_tok, Tq, Tk, last=None):
        """One trunk's forward over a batch of B sequences of Tk tokens (n_tok per sequence in the
        GEMMs), the final layer at the last `last` positions only when given."""
        full = 24 * C * C * n_tok + 4 * Tq * Tk * C
        if last is None:
            return B * L * full
        final = 4 * C * C * Tk + 20 * C * C * last + 4 * last * Tk * C
        return B * ((L - 1) * full + final)

    def head(n):  # LM head at n positions per sequence
        return B * 2 * C * V * n

    prefill = trunk(Q, Q, Q) + head(1)
    steps = sum(trunk(1, 1, Q + t) + head(1) for t in range(1, R))
    gen = prefill + steps
    ours_fwd_pol = trunk(T, T, T, last=R + 1) + head(R)
    ours_fwd_val = trunk(T, T, T, last=R + 1)
    trl_fwd_pol = trunk(T, T, T) + head(T)
    trl_fwd_val = trunk(T, T, T)
    steps_per_update = 8  # 4 epochs x 2 minibatches of B/2: in all, 4 passes over the batch
    g = 1e-9
    ours = {
        "generate": gen,
        "score policy": ours_fwd_pol,
        "score ref": ours_fwd_pol,
        "score value": ours_fwd_val,
        "score reward": trunk(T, T, T, last=1),
        "train fwd policy": 4 * ours_fwd_pol,
        "train fwd value": 4 * ours_fwd_val,
        "train backward": 4 * 2 * (ours_fwd_pol + ours_fwd_val),
    }
    trl = {
        "generate": gen,
        "score policy": 0.0,
        "score ref": trl_fwd_pol,
        "score value": trl_fwd_val,
        "score reward": trl_fwd_val,
        "train fwd policy": 4 * trl_fwd_pol,
        "train fwd value": 4 * trl_fwd_val,
        "train backward": 4 * 2 * (trl_fwd_pol + trl_fwd_val),
    }
    n_params = 2 * (L * 12 * C * C + V * C + c.n_positions * C)  # two trunks trained
    adam_bytes = steps_per_update * n_params * 4 * 7  # read p, g, m, v; write p, m, v
    return {
        "ours": {k: v * g for k, v in ours.items()},
        "trl": {k: v * g for k, v in trl.items()},
        "adam_gb": adam_bytes * g,
    }


# --------------------------------------------------------------------------------------------------
# GEMMs in place and alone


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
TRAIN = ("train fwd policy", "train fwd value", "train backward")


def gemm_shapes(update, clock) -> dict:
    """torch.profiler over one update: the GEMMs of the training phase (forward and backward) by
    (op, shapes, strides) -> [calls, seconds, FLOPs]. A GEMM belongs to the innermost phase around
    it (clock.profiling marks each phase with record_function)."""
    from torch.profiler import ProfilerActivity, profile

    found = collections.defaultdict(lambda: [0, 0.0, 0.0])
    clock.profiling = True
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        with clock.phase("other"):
            update()
    clock.profiling = False
    for e in prof.events():
        if e.name not in GEMM_OPS:
            continue
        up = e.cpu_parent
        while up is not None and up.name not in PHASES:
            up = up.cpu_parent
        if up is None or up.name not in TRAIN:
            continue
        shapes = tuple(tuple(s) for s in e.input_shapes if s)
        strides = tuple(tuple(s) for s in e.structured_input_strides if s)[: len(shapes)]
        rec = found[(e.name, shapes, strides)]
        rec[0] += 1
        rec[1] += e.cpu_time_total / 1e6
        rec[2] += e.flops or 0
    return dict(found)


def gemm_alone(name, shapes, strides, calls: int) -> float:
    """Seconds for `calls` runs of one GEMM of these shapes and memory layouts, alone (the last
    result reused as the output buffer, as nothing else runs)."""
    n_in = 3 if name == "aten::addmm" else 2  # the inputs (an out= tensor may follow)
    ts = [torch.empty_strided(s, st).normal_() for s, st in zip(shapes[:n_in], strides)]
    fn = {"aten::mm": torch.mm, "aten::addmm": torch.addmm, "aten::bmm": torch.bmm}[name]
    fn(*ts)  # warm-up
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(*ts)
    return time.perf_counter() - t0


def report_gemms(label, shapes):
    if not shapes:
        print(f"{label}: no GEMMs recorded")
        return
    total_s = sum(v[1] for v in shapes.values())
    total_f = sum(v[2] for v in shapes.values())
    alone_s = 0.0
    print(f"\n{label}: training-phase GEMMs by shape (in place vs alone)")
    print(f"{'op':<12} {'shapes':<44} {'calls':>6} {'GFLOP':>8} {'in place':>9} {'alone':>9}")
    for (name, sh, st), (n, s, f) in sorted(shapes.items(), key=lambda kv: -kv[1][1]):
        a = gemm_alone(name, sh, st, n)
        alone_s += a
        shape_txt = " ".join("x".join(map(str, x)) for x in sh)
        print(
            f"{name[6:]:<12} {shape_txt:<44} {n:>6} {f / 1e9:>8.1f} "
            f"{f / 1e9 / s:>7.0f}/s {f / 1e9 / a:>7.0f}/s"
        )
    print(
        f"{'all':<12} {'':<44} {'':>6} {total_f / 1e9:>8.1f} {total_f / 1e9 / total_s:>7.0f}/s "
        f"{total_f / 1e9 / alone_s:>7.0f}/s  -> in place at {alone_s / total_s:.0%} of alone "
        f"({total_s:.1f} s in place, {alone_s:.1f} s alone)"
    )


# --------------------------------------------------------------------------------------------------
# Main


def main(argv=None):
    p = cli.parse(ProfileConfig, argv, description=__doc__)
    b = bench_trl.BenchConfig(
        shape=p.shape, batch=p.batch, threads=p.threads, seed=p.seed, malloc=p.malloc
    )
    malloc = bench_trl.set_malloc(b)
    torch.set_num_threads(p.threads)
    names = bench_trl.contestants(p.only, ("separate", "trl"))
    if p.gemm and len(names) > 1:
        raise SystemExit(
            "error: --gemm profiles one contestant per process: add --only separate or --only trl "
            "(both at once held more than 24 GiB at 124M)"
        )
    torch.manual_seed(p.seed)
    queries = torch.randint(0, 50000, (p.batch, 64)).tolist()
    ref = GPT2.from_config(p.shape).eval().requires_grad_(False)
    rm = reward.RewardModel(copy.deepcopy(ref)).eval().requires_grad_(False)
    setting = bench_trl.setting_line(b, malloc)
    print(
        f"{p.shape} shape (random weights), batch {p.batch}, 64 + 24 tokens, 4 epochs x 2 "
        f"minibatches, fp32, our separate value network\n{setting}"
    )
    fl = flops(p.shape, p.batch)
    clock = PhaseClock(dict(wall=time.perf_counter, cpu=time.process_time)[p.clock])
    instrument_backward(clock)
    updates = {}
    for n in names:
        if n == "separate":
            update, optimizer, policy = bench_trl.our_update(b, "reward", ref, rm, queries)
            instrument_ours(clock, policy, ref, rm, optimizer)
        else:
            out_dir = tempfile.mkdtemp(prefix="profile_trl_")
            update, optimizer, trainer = bench_trl.trl_update(b, queries, out_dir)
            instrument_trl(clock, trainer, optimizer)
        updates[n] = update
        update()  # warm-up
    results = {n: [] for n in names}
    for r in range(p.repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:  # alternating
            clock.seconds.clear()
            clock.faults.clear()
            t0 = clock.timer()
            with clock.phase("other"):
                updates[n]()
            results[n].append((clock.timer() - t0, dict(clock.seconds), dict(clock.faults)))
            print(f"{n}: {results[n][-1][0]:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    gemms = {n: gemm_shapes(updates[n], clock) for n in names} if p.gemm else {}
    print_table(p, names, results, fl)
    for n in names:
        if n in gemms:
            report_gemms({"separate": "ours", "trl": "TRL"}[n], gemms[n])
    print(setting)
    print(f"load average now {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")


def print_table(p, names, results, fl):
    """Per phase and contestant: seconds, GFLOP, GFLOP/s (the optimizer: GB/s of Adam's memory
    traffic) and thousands of minor page faults; medians over the repeats."""
    import statistics

    label = {"separate": "ours", "trl": "TRL"}
    key = {"separate": "ours", "trl": "trl"}
    print(
        f"\nper update, medians of {p.repeats} ({p.clock} clock): seconds, GFLOP, GFLOP/s, "
        "thousands of page faults"
    )
    cols = "".join(f" {label[n] + ' s':>8} {'GFLOP':>6} {'GF/s':>6} {'kflt':>5}" for n in names)
    print(f"{'phase':<17}{cols}")
    total = {n: 0.0 for n in names}
    for ph in PHASES:
        row = f"{ph:<17}"
        for n in names:
            s = statistics.median(r[1].get(ph, 0.0) for r in results[n])
            k = statistics.median(r[2].get(ph, 0) for r in results[n]) / 1e3
            if ph == "optimizer":
                rate = f"{fl['adam_gb'] / s:>2.0f}GB/s" if s else f"{'-':>6}"
                row += f" {s:>8.2f} {'':>6} {rate} {k:>5.0f}"
            else:
                f = fl[key[n]].get(ph, 0.0)
                rate = f"{f / s:>6.0f}" if s and f else f"{'-':>6}"
                row += f" {s:>8.2f} {f:>6.0f} {rate} {k:>5.0f}"
                total[n] += f
        print(row)
    row = f"{'total':<17}"
    for n in names:
        wall = statistics.median(r[0] for r in results[n])
        k = statistics.median(sum(r[2].values()) for r in results[n]) / 1e3
        row += f" {wall:>8.2f} {total[n]:>6.0f} {total[n] / wall:>6.0f} {k:>5.0f}"
    print(row)


if __name__ == "__main__":
    main()
