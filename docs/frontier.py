"""
Reward over-optimization on a laptop: the proxy and the gold score against KL(π‖ρ), for PPO at
several KL settings and for best-of-n sampling from ρ.

Gao et al. 2022 ("Scaling Laws for Reward Model Overoptimization") showed the shape: as a policy
moves away from ρ, the proxy reward (the reward model's score) keeps rising, while the gold reward
(what the reward model was trained to predict) peaks and then falls. Here the gold reward is the
scripted labeler whose labels trained the reward model (machinery/tasks.py), so the whole study
runs on a CPU:

  1. PPO: ppo.py, run in this process, with one reward model and one seed, at each fixed β of
     --betas and with the adaptive controller; each run's metrics.jsonl gives, per update, the
     proxy (objective/score), the gold (objective/true_score) and KL(π‖ρ) (objective/kl);
  2. best-of-n from ρ alone, no training: --n-max samples per held-out query, each scored by the
     reward model and the labeler; for n = 1, 2, 4, ..., the expected proxy and gold of the sample
     that a draw of n keeps (the highest reward-model score), at KL = log n - (n - 1)/n;
  3. the figure, frontier.png (proxy and gold against √KL: a line per PPO run, best-of-n as
     markers, a star where gold peaks and ends lower while the proxy ends higher), and the table,
     frontier.md; frontier.json holds every number of both.

Run it (from the repository's root or anywhere else):
    python docs/frontier.py                               # tiny, sentiment, seed 1: 2 CPU cores
    python docs/frontier.py --betas 0 --no-adaptive --updates 120 --out runs/frontier-long
    python docs/frontier.py --model gpt2 --updates 200    # GPT-2 124M, on a GPU
Rerun with the same flags and the finished runs are reused (--overwrite redoes them). What the
figure shows, and how to read it: docs/frontier.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the stage files, from wherever this script is run

import gpt2  # noqa: E402  (after the path)
import ppo  # noqa: E402
from machinery import amp, cli, presets, runs, tasks  # noqa: E402

# --------------------------------------------------------------------------------------------------
# The math: small pure functions, imported by tests/test_frontier.py


def kl_bon(n: int) -> float:
    """KL(best-of-n ‖ ρ) in nats: log n - (n - 1)/n (Stiennon et al. 2020, appendix), exact
    when no two responses tie in reward, an upper bound otherwise (Beirami et al. 2024). n = 1:
    0; n = 2: log 2 - 1/2 = 0.1931; n = 4: log 4 - 3/4 = 0.6363."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, not {n}")
    return math.log(n) - (n - 1) / n


def bon_weights(proxy, n: int) -> np.ndarray:
    """The chance that best-of-n keeps each of N samples, when n of them are drawn at random
    without replacement and the one with the highest reward-model score `proxy` (N,) is kept.
    Weighting any per-sample value by it gives its expectation over all C(N, n) draws: an unbiased
    estimate of best-of-n from one pool of N samples (not only from the first n of them).

    A tie of k samples at the top of a draw keeps each of them with chance 1/k, as
    reward.py::preference_accuracy counts a tie: a sample never wins by its position. The top
    score of a draw is v when the draw holds one of the g samples scoring v and none of those
    scoring above it; with b samples scoring below v, that is C(b + g, n) - C(b, n) of the C(N, n)
    draws, shared equally by the g.

    Worked example: proxy = [3, 1, 3, 2], n = 2, C(4, 2) = 6 draws. v = 2 (b = 1, g = 1): C(2, 2)
    - C(1, 2) = 1 draw, {1, 2}; v = 3 (b = 2, g = 2): C(4, 2) - C(2, 2) = 5 draws, 2.5 each:
    weights [2.5, 0, 2.5, 1] / 6."""
    proxy = np.asarray(proxy, dtype=np.float64)
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {N} (the samples given)")
    weights = np.zeros(N)
    total, below = math.comb(N, n), 0
    for v, g in zip(*np.unique(proxy, return_counts=True)):  # ascending
        share = (math.comb(below + int(g), n) - math.comb(below, n)) / total
        weights[proxy == v] = share / g
        below += int(g)
    return weights


def outcome(a, b) -> np.ndarray:
    """The scripted labeler's comparison of gold scores a and b: 1 a wins, 0 b wins, 0.5 a tie
    (evaluate.py counts a tie as half a win)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def best_of_n(proxy, gold, gold_ref, n: int) -> dict:
    """Best-of-n from ρ's samples of Q queries: proxy, gold (Q, N) the reward model's and the
    labeler's scores of N samples per query; gold_ref (Q, K) the labeler's of K more samples of
    ρ, the other side of the win rate. Returns the means over queries of the kept sample's proxy
    and gold (bon_weights: every draw of n of the N), and its win rate against ρ."""
    proxy, gold, gold_ref = (np.asarray(x, dtype=np.float64) for x in (proxy, gold, gold_ref))
    w = np.stack([bon_weights(row, n) for row in proxy])  # (Q, N)
    wins = outcome(gold[:, :, None], gold_ref[:, None, :]).mean(-1)  # (Q, N) against ρ's K
    return dict(
        n=n,
        kl=kl_bon(n),
        proxy=float((w * proxy).sum(1).mean()),
        gold=float((w * gold).sum(1).mean()),
        win_rate=float((w * wins).sum(1).mean()),
    )


def running_mean(x, window: int) -> np.ndarray:
    """Mean of the last `window` values at each position (fewer at the start)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo = np.maximum(0, i - window + 1)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)


def trajectory(metrics: list[dict], window: int):
    """A PPO run's path, one point per update: (√KL, proxy, gold), each the running mean over
    `window` updates of metrics.jsonl's objective/kl, objective/score and objective/true_score.
    KL is averaged before the root, and a negative average (the sampled estimate can be, near ρ)
    counts as 0."""
    kl = running_mean([m["objective/kl"] for m in metrics], window)
    proxy = running_mean([m["objective/score"] for m in metrics], window)
    gold = running_mean([m["objective/true_score"] for m in metrics], window)
    return np.sqrt(np.maximum(kl, 0.0)), proxy, gold


def gold_peak(proxy, gold, min_drop: float) -> int | None:
    """The index of the gold peak of a path (PPO's updates, or best-of-n's n), when gold turns
    down after it while the proxy does not: the last gold is at least min_drop below the highest
    and the last proxy is above the proxy at the peak (by any margin; it may dip in between).
    None otherwise (gold still at its best at the end, a drop within min_drop, or proxy
    falling too)."""
    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    i = int(np.argmax(gold))
    if gold[i] - gold[-1] >= min_drop and proxy[-1] > proxy[i]:
        return i
    return None


def read_run(run_dir) -> tuple[dict, list[dict], dict | None]:
    """A ppo.py run folder's config.json, metrics.jsonl (a row per update) and summary.json (None
    before the run's end)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return config, metrics, summary


def ppo_row(run_dir, window: int, min_drop: float) -> dict:
    """A PPO run's row of the frontier table, from its metrics.jsonl: β (or 'adaptive' with its
    start and end), the running means over the last `window` updates of KL, proxy and gold, the
    gold peak (gold_peak), the whole path for the figure, and the win rate against ρ of
    summary.json (the run's end-of-run evaluate.py, held-out queries; None before the end)."""
    config, metrics, summary = read_run(run_dir)
    if not metrics or "objective/true_score" not in metrics[0]:
        raise ValueError(f"{run_dir}: metrics.jsonl has no updates with a true score")
    sqrt_kl, proxy, gold = trajectory(metrics, window)
    peak = gold_peak(proxy, gold, min_drop)
    win = (summary or {}).get("win_rate_vs_initial")
    return dict(
        name=Path(run_dir).name,
        adaptive=config["adaptive_kl"],
        beta=config["kl_coef"],
        beta_end=metrics[-1]["objective/kl_coef"],
        updates=len(metrics),
        kl=float(sqrt_kl[-1] ** 2),
        proxy=float(proxy[-1]),
        gold=float(gold[-1]),
        peak=None
        if peak is None
        else dict(
            update=peak + 1,
            kl=float(sqrt_kl[peak] ** 2),
            gold=float(gold[peak]),
            proxy=float(proxy[peak]),
        ),  # fmt: skip
        win_rate=None if win is None else {k: win[k] for k in ("rate", "lo", "hi", "n")},
        path=dict(sqrt_kl=sqrt_kl.tolist(), proxy=proxy.tolist(), gold=gold.tolist()),
    )


def frontier_table(ppo_rows: list[dict], bon: dict | None, window: int) -> str:
    """The study's table in Markdown: a row per PPO run, then one per best-of-n."""
    lines = [
        "| method | β | KL(π‖ρ), nats | √KL | proxy (reward model) | gold (labeler) "
        "| gold peak at √KL (gold) | win rate vs ρ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ppo_rows:
        beta = f"{r['beta']:g}"
        if r["adaptive"]:
            beta = f"adaptive, {beta} → {r['beta_end']:.3g}"
        peak = "none"
        if r["peak"] is not None:
            peak = f"{math.sqrt(r['peak']['kl']):.2f} ({r['peak']['gold']:.3f})"
        win = "-"
        if r["win_rate"] is not None:
            w = {k: 100 * v for k, v in r["win_rate"].items() if k != "n"}
            win = f"{w['rate']:.1f}% ({w['lo']:.0f}–{w['hi']:.0f}%)"
        lines.append(
            f"| PPO, {r['updates']} updates | {beta} | {r['kl']:.2f} | {math.sqrt(r['kl']):.2f} "
            f"| {r['proxy']:.3f} | {r['gold']:.3f} | {peak} | {win} |"
        )
    for i, b in enumerate(bon["rows"] if bon else []):
        peak = "here" if bon["peak"] == i else ""
        lines.append(
            f"| best-of-{b['n']} | - | {b['kl']:.2f} | {math.sqrt(b['kl']):.2f} "
            f"| {b['proxy']:.3f} | {b['gold']:.3f} | {peak} | {100 * b['win_rate']:.1f}% |"
        )
    notes = (
        f"PPO: the running means over the last {window} updates' training batches "
        "(metrics.jsonl); win rate: the run's end-of-run evaluation against ρ on held-out "
        "queries, with its 95% interval."
    )
    if bon:
        notes += (
            f" Best-of-n: the expectation over every draw of n of {bon['n_pool']} samples of ρ "
            f"for each of {bon['queries']} held-out queries; win rate against {bon['n_refs']} "
            "more samples of ρ per query."
        )
    return "\n".join(lines) + "\n\n" + notes + "\n"


# --------------------------------------------------------------------------------------------------
# The figure


def plot(ppo_rows: list[dict], bon: dict | None, path, title: str) -> None:
    """frontier.png: proxy (left) and gold (right) against √KL; a line per PPO run, coloured by β,
    the adaptive run dashed; best-of-n as black squares marked with n; a star at each gold peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    fixed = sorted({r["beta"] for r in ppo_rows if not r["adaptive"]})
    cmap = plt.get_cmap("viridis")
    for r in ppo_rows:
        p = r["path"]
        if r["adaptive"]:
            color, style = "tab:red", "--"
            label = f"PPO adaptive (β {r['beta']:g} → {r['beta_end']:.2g})"
        else:
            color = cmap(0.85 * fixed.index(r["beta"]) / max(len(fixed) - 1, 1))
            style, label = "-", f"PPO β = {r['beta']:g}"
        for ax, key in zip(axes, ("proxy", "gold")):
            ax.plot(p["sqrt_kl"], p[key], style, color=color, lw=1.6, label=label)
            if r["peak"] is not None:
                i = r["peak"]["update"] - 1
                ax.plot(p["sqrt_kl"][i], p[key][i], "*", color=color, ms=15, mec="black")
    if bon:
        x = [math.sqrt(b["kl"]) for b in bon["rows"]]
        for ax, key in zip(axes, ("proxy", "gold")):
            y = [b[key] for b in bon["rows"]]
            ax.plot(x, y, "s:", color="black", ms=5, lw=0.8, label="best-of-n from ρ")
            for b, xi, yi in zip(bon["rows"], x, y):
                ax.annotate(f"{b['n']}", (xi, yi), textcoords="offset points", xytext=(3, -11),
                            fontsize=7)  # fmt: skip
            if bon["peak"] is not None:
                ax.plot(x[bon["peak"]], y[bon["peak"]], "*", color="black", ms=15)
    axes[0].set_ylabel("proxy: the reward model's score")
    axes[1].set_ylabel("gold: the scripted labeler's score")
    for ax in axes:
        ax.set_xlabel("√KL(π‖ρ), √nats")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    axes[1].plot([], [], "*", color="gray", ms=12, label="gold peak (proxy ends higher)")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# The study


@dataclass
class Args:
    model: str = "tiny"
    """initial policy ρ (ppo.py --model): tiny on a CPU; gpt2, gpt2-medium, ... on a GPU"""
    task: str = "sentiment"
    """a task with a scripted labeler, the gold reward: sentiment or descriptiveness"""
    seed: int = 1
    """one seed for every run, the reward model and best-of-n's samples"""
    betas: str = "0,0.03,0.15"
    """the fixed KL coefficients β of the PPO runs, comma-separated (0.15: ppo.py's β0)"""
    adaptive: bool = True
    """also a run with ppo.py's adaptive controller (β0 0.15 toward a KL of --kl-target)"""
    updates: int = 0
    """PPO updates per run (0: the preset's; 60 for tiny)"""
    reward_model: str = ""
    """the reward model of every run (rm.pt); empty: the first run trains one as ppo.py does,
    into its folder, and the others reuse it"""
    rm_comparisons: int = 0
    """with no --reward-model: the comparisons the reward model learns from (0: the preset's; 800
    for tiny); fewer give a worse proxy"""
    n_max: int = 64
    """best-of-n for n = 1, 2, 4, ... up to this many samples per query"""
    n_refs: int = 8
    """best-of-n's win rate: more samples of ρ per query, the other side"""
    window: int = 10
    """PPO's paths: the running mean over this many updates (one update's gold is a mean over
    --batch-size episodes, 32 for tiny: about ±0.07 alone, ±0.02 over 10)"""
    min_drop: float = 0.1
    """a gold peak counts when gold ends at least this far below it while the proxy ends higher
    than it was there (for tiny, about 3 standard errors of the difference of two running
    means: noise alone seldom makes one)"""
    ppo_flags: str = ""
    """more ppo.py flags for every run, in quotes (e.g. --ppo-flags="--lr 1e-4"); best-of-n
    samples with the same settings (temperature, held-out queries: --eval-episodes)"""
    out: str = ""
    """the study's folder (empty: runs/frontier-<task>-<model>-s<seed>): a folder per PPO run
    and its log, frontier.png, frontier.md, frontier.json"""
    overwrite: bool = False
    """redo runs that are in --out already (without it a finished run of the same flags is reused
    and any other refused)"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""


def plan(a: Args, out: Path) -> list[tuple[str, list[str]]]:
    """(name, ppo.py flags) of each PPO run, the adaptive one first: the first trains the reward
    model when none is given, into its folder, and the others read it from there."""
    try:
        betas = [float(b) for b in a.betas.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"error: --betas {a.betas!r}: give numbers, comma-separated (0,0.03,0.15)")
    if any(b < 0 for b in betas):
        raise SystemExit(f"error: --betas {a.betas!r}: β is a penalty, >= 0")
    if a.reward_model and a.rm_comparisons:
        raise SystemExit("error: --rm-comparisons makes a reward model; --reward-model gives one")
    settings = ([("adaptive", [])] if a.adaptive else []) + [
        (f"beta-{b:g}", ["--kl-coef", f"{b:g}", "--no-adaptive-kl"]) for b in betas
    ]
    if not settings:
        raise SystemExit("error: no PPO runs: give --betas, or --adaptive")
    common = ["--model", a.model, "--task", a.task, "--seed", str(a.seed), "--device", a.device]
    common += ["--sample-every", "0", *shlex.split(a.ppo_flags)]
    if a.updates:
        batch = ppo_config(a, common).batch_size
        common += ["--total-episodes", str(a.updates * batch)]
    rm = str(Path(a.reward_model).resolve()) if a.reward_model else ""
    runs_ = []
    for i, (name, flags) in enumerate(settings):
        if rm:
            rm_flags = ["--reward-model", rm]
        elif i == 0:
            rm_flags = ["--rm.num-comparisons", str(a.rm_comparisons)] if a.rm_comparisons else []
        else:
            rm_flags = ["--reward-model", str(rm_of(out, settings))]
        runs_.append((name, common + flags + rm_flags + ["--run-dir", str(out / name)]))
    return runs_


def rm_of(out: Path, settings: list) -> Path:
    """The reward model that the first run trains, when no --reward-model is given."""
    return out / settings[0][0] / "rm.pt"


def ppo_config(a: Args, flags: list[str]) -> ppo.Config:
    """ppo.Config as a run with these flags resolves it (presets, the task's temperature)."""
    with contextlib.redirect_stdout(sys.stderr):
        return presets.parse_args(ppo.Config, "", flags)


def run_ppo(name: str, argv: list[str], log: Path) -> dict:
    """ppo.py in this process, its output into `log`; its summary.json."""
    try:
        with open(log, "w", buffering=1) as f:  # line by line: `tail -f` follows the run
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                print("python ppo.py " + " ".join(shlex.quote(x) for x in argv))
                return ppo.main(argv)
    except (SystemExit, Exception):
        tail = log.read_text().splitlines()[-15:]
        print(f"error: the PPO run {name} stopped; the end of {log}:\n  " + "\n  ".join(tail))
        raise


def sample_rho(cfg: ppo.Config, n: int, device: str):
    """ρ's samples of the held-out queries (the PPO runs' evaluation queries, --eval-episodes of
    them), n per query, sampled and scored as ppo.py's rollout does (steps 1-2; ρ's KL to itself
    is 0), in batches of --batch-size: proxy and gold (Q, n), the reward model's score (-1 where
    the stop token is missing) and the scripted labeler's."""
    task = tasks.get_task(cfg.task)
    _, labeler = runs.labelers(cfg, task)
    if labeler is None:
        raise SystemExit(f"error: task {cfg.task} has no scripted labeler: no gold reward to plot")
    precision = amp.resolve_precision(cfg.precision, device)
    ref = runs.load_ref(cfg.model, device)
    rm = runs.load_reward(cfg.reward_model, ref, device)
    _, queries, labeler = runs.queries(cfg, task, labeler)
    raw = [q.tokens for q in queries for _ in range(n)]  # query-major: n in a row
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    enc = gpt2.get_tokenizer()
    proxy, texts = [], []
    for i in range(0, len(raw), cfg.batch_size):
        chunk = raw[i : i + cfg.batch_size]
        context = [tasks.policy_context(task, q) for q in chunk]
        q_tokens, q_mask = gpt2.left_pad(context, device=device)  # (B, Q)
        raw_tokens, raw_mask = gpt2.left_pad(chunk, device=device)  # the reward model's view
        with torch.no_grad(), amp.autocast(device, precision):
            responses, _ = gpt2.generate(
                ref, q_tokens, q_mask, task.response_length, cfg.temperature, generator=gen
            )  # (B, R)
            truncated, valid = tasks.truncate_responses(responses, task)
            score = rm.score(raw_tokens, raw_mask, truncated)  # (B,)
        proxy.append(tasks.penalize(score.float(), valid, task).cpu())
        texts += [runs.decode(enc, r) for r in truncated.tolist()]
    refs = [q.reference for q in queries for _ in range(n)] if labeler.needs_reference else None
    gold = labeler.score(texts, refs)
    return torch.cat(proxy).numpy().reshape(len(queries), n), gold.reshape(len(queries), n)


def bon_study(cfg: ppo.Config, a: Args, device: str) -> dict:
    """Best-of-n for n = 1, 2, 4, ..., n_max from ρ's samples (sample_rho), with its gold peak."""
    proxy, gold = sample_rho(cfg, a.n_max + a.n_refs, device)
    pool = slice(0, a.n_max)
    ns = [2**k for k in range(int(math.log2(a.n_max)) + 1)]
    rows = [best_of_n(proxy[:, pool], gold[:, pool], gold[:, a.n_max :], n) for n in ns]
    peak = gold_peak([r["proxy"] for r in rows], [r["gold"] for r in rows], a.min_drop)
    return dict(rows=rows, peak=peak, n_pool=a.n_max, n_refs=a.n_refs, queries=len(proxy))


def main(argv=None) -> dict:
    a = cli.parse(
        Args,
        argv,
        description=__doc__.strip().split("\n\n")[0],
        epilog="\n\n".join(__doc__.strip().split("\n\n")[1:]),
    )
    if a.n_max < 1 or a.n_max & (a.n_max - 1):
        raise SystemExit(f"error: --n-max {a.n_max}: give a power of 2 (1, 2, 4, ..., 64)")
    least = dict(window=1, n_refs=1, updates=0, rm_comparisons=0, min_drop=0)
    for name, lowest in least.items():
        value = getattr(a, name)
        if not value >= lowest:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(f"error: {flag} {value}: must be a number >= {lowest}")
    out = Path(a.out or f"runs/frontier-{a.task}-{Path(a.model).name}-s{a.seed}").resolve()
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out}: a file, not a folder")
    device = cli.pick_device(a.device)
    t0 = time.time()
    settings = plan(a, out)
    state_path = out / "frontier.json"
    old = json.loads(state_path.read_text()) if state_path.exists() else {}
    # a finished run of the same flags is reused, as long as every run before it is (the first
    # may have made the reward model the others read)
    reuse, chain = {}, True
    for name, flags in settings:
        done = (out / name / "summary.json").exists()
        chain = chain and done and old.get("runs", {}).get(name) == flags and not a.overwrite
        reuse[name] = chain
    clash = [n for n, _ in settings if not reuse[n] and cli.held(out / n, runs.RUN_FILES)]
    if clash and not a.overwrite:
        raise SystemExit(
            f"error: {out} holds runs of other flags, or unfinished ones: {', '.join(clash)}; "
            f"give another --out, or redo them: {cli.rerun('docs/frontier.py', None)}"
        )
    state = dict(args=asdict(a), runs={n: f for n, f in settings if reuse[n]})
    n_stages = len(settings) + 2
    for k, (name, flags) in enumerate(settings, start=1):
        what = f"[{k}/{n_stages}] PPO {name}"
        if reuse[name]:
            print(f"{what}: reusing the finished run in {out / name} (--overwrite redoes it)")
            continue
        cfg = ppo_config(a, flags)
        makes_rm = "" if cfg.reward_model else ", the reward model first"
        log = out / f"{name}.log"
        out.mkdir(parents=True, exist_ok=True)
        print(f"[{k}/{n_stages}] PPO {name}: {cfg.total_episodes // cfg.batch_size} updates"
              f"{makes_rm} (log: {log}) ...", flush=True)  # fmt: skip
        t = time.time()
        run_ppo(name, flags + (["--overwrite"] if a.overwrite else []), log)
        row = ppo_row(out / name, a.window, a.min_drop)
        print(
            f"{what}: done in {(time.time() - t) / 60:.1f} min: KL {row['kl']:.2f}, proxy "
            f"{row['proxy']:.3f}, gold {row['gold']:.3f}, gold peak: "
            + ("none" if row["peak"] is None else f"update {row['peak']['update']}"),
            flush=True,
        )
        state["runs"][name] = flags
        cli.atomic_write(state_path, json.dumps(state, indent=2) + "\n")
    ppo_rows = [ppo_row(out / name, a.window, a.min_drop) for name, _ in settings]

    # best-of-n: ρ's samples at the runs' temperature, on their held-out queries, scored by their
    # reward model
    cfg = ppo_config(a, settings[-1][1])
    cfg.reward_model = str(
        Path(a.reward_model).resolve() if a.reward_model else rm_of(out, settings)
    )
    t = time.time()
    k = len(settings) + 1
    print(f"[{k}/{n_stages}] best-of-n: {a.n_max + a.n_refs} samples of ρ for each of "
          f"{cfg.eval_episodes} held-out queries, n = 1 ... {a.n_max} ...", flush=True)  # fmt: skip
    bon = bon_study(cfg, a, device)
    top = bon["rows"][-1]
    print(
        f"[{k}/{n_stages}] best-of-n: done in {(time.time() - t) / 60:.1f} min: best-of-"
        f"{top['n']} KL {top['kl']:.2f}, proxy {top['proxy']:.3f}, gold {top['gold']:.3f}",
        flush=True,
    )

    table = frontier_table(ppo_rows, bon, a.window)
    setting = [a.task, Path(a.model).name, f"seed {a.seed}"]
    setting += [f"{a.updates} updates"] if a.updates else []
    if a.reward_model:
        setting.append(f"reward model {a.reward_model}")
    elif a.rm_comparisons:
        setting.append(f"a reward model from {a.rm_comparisons} comparisons")
    title = (
        f"{', '.join(setting)}: the reward model's score (proxy) and the scripted labeler's "
        "(gold) as π moves away from ρ"
    )
    plot(ppo_rows, bon, out / "frontier.png", title.replace(": ", ":\n", 1))
    cli.atomic_write(out / "frontier.md", f"# {title}\n\n{table}")
    state.update(ppo=ppo_rows, bon=bon, minutes=round((time.time() - t0) / 60, 1))
    cli.atomic_write(state_path, json.dumps(state, indent=2) + "\n")
    print(
        f"[{n_stages}/{n_stages}] figure and table: {out / 'frontier.png'}, {out / 'frontier.md'}"
    )
    print(table)
    print(f"the whole study: {(time.time() - t0) / 60:.1f} min")
    return state


if __name__ == "__main__":
    cli.run_main(main)  # an expected error or Ctrl-C as one line, not a traceback
