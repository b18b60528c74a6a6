"""ppo.py's run around the algorithm: the run options, the run folder, seeds, checkpoints and
resume, the metrics log and console line, curves.png, the export, summary.json. A learner may skip
this file: ppo.py calls it once per concern.

Files in RUN_DIR: config.json (the resolved options), metrics.jsonl (one line per update),
checkpoint.pt (everything a resume needs), policy/ (the policy in the Hugging Face layout),
value_head.safetensors, curves.png, summary.json.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import shlex
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import gpt2
import reward
from machinery import amp, cli, comparisons, dist, hf, labels, online, summarization, tasks
from machinery.microbatch import resolve_micro_batch_size


@dataclass
class Inputs:
    """the task and the models"""

    task: str = "sentiment"
    """task (machinery/tasks.py): sentiment, descriptiveness, tldr, cnndm"""
    model: str = "gpt2"
    """initial policy ρ: gpt2 (124M, the released code), gpt2-medium, gpt2-large (774M, the
    paper), gpt2-xl, a Hugging Face checkpoint dir, or tiny (2 layers, fitted briefly on the
    shipped passages; CPU demo and tests)"""
    reward_model: str = ""
    """reward model checkpoint from `reward.py train`; empty: make one first, into the run folder
    (reward.build_reward_model with the --rm.* options)"""
    labeler: str = ""
    """scripted labeler for the reward model's labels and for the true score (empty: the task's
    own: sentiment, descriptiveness, or rouge for tldr/cnndm); with --online, who labels the
    queue: a scripted labeler's name, or 'human' (people with `label_tool.py --follow RUN_DIR`;
    the true score is then the task's own labeler's)"""
    query_data: str = ""
    """local query data in the upstream format instead of the default (tldr: a JSON file, or a
    folder of {train,valid}-subset.json; cnndm: a folder with url_lists/ and the stories; books: a
    .jsonl of passages); empty: the shipped passages, or a download"""
    rm: reward.TrainConfig = field(default_factory=reward.TrainConfig)
    """how the reward model is made when --reward-model is empty: --rm.<flag> takes the same
    options as `reward.py train --<flag>`"""


@dataclass
class RunOptions:
    """the run: seed, folder, resume, checkpoints, logging"""

    seed: int = 1
    """random seed (the released code: 1)"""
    name: str = ""
    """run name (empty: <task>-<model>-s<seed>)"""
    run_dir: str = ""
    """run folder (empty: runs/<name>/): config, metrics.jsonl, curves.png, checkpoint.pt,
    summary.json"""
    resume: str = ""
    """continue the run in this folder from its last checkpoint (its config.json; flags given
    here override it)"""
    overwrite: bool = False
    """start a new run in a folder that holds one: delete the old run's files first (RUN_FILES)"""
    stop_after: int = 0
    """stop once this many updates are done (0: run to the end); a later --resume continues the
    same run"""
    save_every: int = 50
    """checkpoint every N updates (and at the end)"""
    sample_every: int = 10
    """print a table of queries, responses and scores every N updates"""
    eval_episodes: int = 256
    """episodes on held-out queries for score_before / score_after in summary.json"""
    # --help: performance
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""
    precision: str = "auto"
    """'bf16' (autocast: bf16 matmuls, fp32 weights, log-probs and losses) or 'fp32'; 'auto': bf16
    on CUDA, fp32 on CPU. Also used for the reward model this run trains"""
    grad_checkpoint: bool = False
    """activation checkpointing: recompute each transformer block in the backward instead of
    storing its activations (less memory, ~1/3 more compute; gpt2-large/xl on one GPU). Also used
    for the reward model this run trains"""
    bench: bool = False
    """time PPO updates on random weights at this config (default: the 124M sentiment setting;
    bench/bench_ppo.py) and exit"""
    bench_updates: int = 3
    """with --bench: timed updates after one warm-up"""


@dataclass
class Run:
    """What ppo.setup() builds and the loop uses."""

    cfg: object  # ppo.Config
    device: str
    run_dir: Path
    task: tasks.TaskConfig
    labeler: tasks.ScriptedLabeler | None  # the true score's
    ref: gpt2.GPT2  # ρ, frozen
    reward_model: reward.RewardModel
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    kl_ctl: object
    source: tasks.QuerySource  # training queries
    eval_queries: list
    sample_gen: torch.Generator  # sampling responses
    shuffle_gen: torch.Generator  # minibatch shuffles
    n_updates: int
    online: online.Online | None = None  # --online: the queue, labels and retrainings
    start: int = 0  # updates already done (resumed runs)
    before: dict | None = None  # the evaluation before training
    seconds_before: float = 0.0  # time spent before a resume
    micro_batch_saved: int | str = 0  # the micro-batch size config.json holds

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"


# --------------------------------------------------------------------------------------------------
# Starting a run


def start(cfg) -> tuple[str, Path, dict | None]:
    """Device, torchrun's process group, precision, micro-batch size, run folder, seeds; returns
    (device, run_dir, the checkpoint of a resumed run or None)."""
    device = cli.pick_device(cfg.device)
    dist.init(device)  # [dist] joins torchrun's process group; nothing without torchrun
    try:
        cfg.precision = amp.resolve_precision(cfg.precision, device)
    except ValueError as e:
        raise SystemExit(f"error: --precision: {e}")
    cfg.micro_batch_size = resolve_micro_batch_size(cfg, device)
    if cfg.online:  # how its options fit together (online.Settings.check), before any work too
        names = [f.name for f in fields(online.Settings) if f.name not in ("labeler", "n_updates")]
        labeler = cfg.labeler or tasks.get_task(cfg.task).labeler
        n_updates = math.ceil(cfg.total_episodes / cfg.batch_size)
        online.Settings(
            **{k: getattr(cfg, k) for k in names}, labeler=labeler, n_updates=n_updates
        ).check()
    run_dir = Path(cfg.run_dir)
    # [dist] rank 0 decides for every rank (another machine may not see its folder), before any
    # model loads. The folder is made by the first file written into it: a failed start leaves none
    refusal = dist.gather_objects(claim_folder(cfg, run_dir) if dist.is_main() else None)[0]
    if refusal:
        raise SystemExit(refusal)
    # [dist] seeds differ per rank (rank 0: the seed itself); models are copied or broadcast, so
    # they start identical anyway
    torch.manual_seed(dist.seed(cfg.seed))
    np.random.seed(dist.seed(cfg.seed))
    random.seed(dist.seed(cfg.seed))
    ckpt = None
    cli.on_interrupt(lambda: interrupted(cfg, run_dir))  # what Ctrl-C says (cli.run_main)
    # a run stopped before its first checkpoint resumes from update 0, its reward model (and with
    # --online its labels) kept; [dist] rank 0 decides for every rank
    path = run_dir / "checkpoint.pt"
    saved = cfg.resume and dist.gather_objects(path.exists() if dist.is_main() else None)[0]
    if cfg.resume and not saved:
        print(f"{run_dir}: no checkpoint yet; PPO starts from update 0 (its reward model kept)")
    elif cfg.resume:
        ckpt = load_checkpoint(path)
        n = ckpt.get("world_size", 1)
        if n != dist.world_size:  # [dist] each rank's random state is in the checkpoint
            raise SystemExit(
                f"error: cannot resume {run_dir}: it was run on {n} process{'es' * (n > 1)}, "
                f"this is {dist.world_size} process{'es' * (dist.world_size > 1)}. Resume with "
                f"the same number (torchrun --nproc_per_node ... --nnodes ...)."
            )
    return device, run_dir, ckpt


# What a run writes into its folder (the module docstring's list, with the reward model and labels
# it makes, the end-of-run evaluation and the policy export's leftovers): a folder holding any of
# them holds a run, and --overwrite deletes them (anything else in the folder stays)
RUN_FILES = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "policy", "online", "rm.pt",
    "labels.jsonl", "value_head.safetensors", "curves.png", "eval", "eval-*", ".policy.tmp",
    ".policy.old",
)  # fmt: skip


def claim_folder(cfg, run_dir: Path) -> str | None:
    """Rank 0's decision on the run folder: None (go on), or the one-line refusal. --resume goes
    on in its run's folder; a new run starts only in a folder that holds no run (RUN_FILES), or
    with --overwrite, which deletes the old run's files first (and the folder, if nothing else is
    left in it). A start that stopped before its first update with nothing to keep (failed_start)
    holds no run: its files are deleted too. Nothing is created here."""
    if cfg.resume:
        clash = f"--resume continues the run in {run_dir}, --overwrite deletes it; give one"
        return f"error: {clash}" if cfg.overwrite else None
    elsewhere = "give another --run-dir (or --name)"
    if run_dir.exists() and not run_dir.is_dir():
        return f"error: run folder {run_dir} is a file; {elsewhere}"
    held = cli.held(run_dir, RUN_FILES)
    if held and not cfg.overwrite and failed_start(run_dir, held):
        gone = cli.remove(run_dir, held)
        print(f"{run_dir}: deleted {', '.join(gone)} of a start stopped before its first update")
        return None
    # the flags may name a file of the old run as an input of the new one (its rm.pt): deleting
    # the old run would delete it, so --overwrite is neither done nor offered
    inputs = [cfg.model, cfg.reward_model, cfg.rm.labels, cfg.query_data]
    read = [p for p in inputs if p and any(_within(p, run_dir / h) for h in held)]
    if held and cfg.overwrite:
        if read:
            return (
                f"error: --overwrite would delete {', '.join(read)}, read by this run; {elsewhere}"
            )
        gone = cli.remove(run_dir, held)
        print(f"--overwrite: deleted the old run's {', '.join(gone)} in {run_dir}")
    if not held or cfg.overwrite:
        return None
    resume = (
        f"continue it with `python {cli.script_path('ppo.py')} --resume {run_dir}`, "
        if "config.json" in held
        else ""
    )
    why = "; two runs cannot share one queue" if "online/" in held else ""
    over = f"start over (deleting those) with `{cli.rerun('ppo.py', None)}`, or "
    if read:  # its own input would go too: only another folder works
        over = f"start another run that reads {', '.join(read)}: "
    return (
        f"error: {run_dir} already holds a run ({', '.join(held)}){why}; {resume}{over}{elsewhere}"
    )


def failed_start(run_dir: Path, held: list[str]) -> bool:
    """Does the run folder hold only what a start that stopped before its first update leaves:
    config.json and an empty metrics.jsonl (both written once setup is done), with no reward
    model, labels, checkpoint or queue it made? Nothing there is worth keeping, or resuming."""
    metrics = run_dir / "metrics.jsonl"
    empty = metrics.is_file() and metrics.stat().st_size == 0
    return sorted(held) == ["config.json", "metrics.jsonl"] and empty


def _within(path, entry: Path) -> bool:
    """Is `path` the file or folder `entry`, or inside it?"""
    path, entry = Path(path).resolve(), entry.resolve()
    return path == entry or entry in path.parents


def labelers(cfg, task) -> tuple[str, tasks.ScriptedLabeler | None]:
    """(the name of who labels the reward model's comparisons, the scripted labeler that gives
    the true score). With --online --labeler human the true score is the task's labeler's."""
    name = cfg.labeler or task.labeler
    if name == "human":
        name = task.labeler
    try:
        return name, tasks.get_labeler(name) if name else None
    except ValueError as e:
        raise SystemExit(f"error: {e}")


def load_ref(model: str, device) -> gpt2.GPT2:
    """ρ: frozen, never optimized; the same weights on every rank."""
    with dist.local_main_first():  # [dist] one process per machine fills the download cache
        ref = tasks.load_base_model(model, device=device).requires_grad_(False)
    dist.broadcast_module(ref)  # [dist] every rank starts from rank 0's weights
    return ref


def load_reward(path: str, ref: gpt2.GPT2, device):
    """Load a reward checkpoint made from the same base model as the policy; any failure is one
    line that names the file and says what it is (comparisons.read_rm_checkpoint)."""
    try:
        rm = reward.load_reward_model(path, device=device, expect_config=ref.config)
    except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
        said = str(e) if str(path) in str(e) else f"reward model {path}: {e}"
        raise SystemExit(f"error: {said}")
    return rm.eval().requires_grad_(False)


def reward_model_for(cfg, run_dir: Path, ref, device, labeler_name: str):
    """--reward-model, or (empty) the whole reward pipeline in one call: sample comparisons from
    ρ, label them, train, save into the run folder (reused by a resumed run)."""
    if not cfg.reward_model:
        try:
            path = reward.build_reward_model(
                cfg.rm,
                cfg.model,
                comparisons.task_at(cfg.task, cfg.temperature),  # rho sampled as π: one temperature
                run_dir / "rm.pt",
                cfg.seed,
                labeler_name,
                policy=ref,
                device=device,
                labels_out=run_dir / "labels.jsonl",
                reuse=True,
                query_data=cfg.query_data,
                precision=cfg.precision,
                grad_checkpoint=cfg.grad_checkpoint,
            )
        except (ValueError, tasks.DownloadError) as e:
            raise SystemExit(f"error: {e}")
        cfg.reward_model = str(Path(path).resolve())  # found from any directory
    return load_reward(cfg.reward_model, ref, device)


def queries(cfg, task, labeler):
    """(training queries, held-out queries, the true score's labeler or None when the held-out
    queries lack the references it needs). OpenAI shuffles the query set with a fixed seed 0
    whatever the run's seed; so do we."""
    try:
        source = tasks.QuerySource(task, "train", seed=0, query_data=cfg.query_data)
        held_out = tasks.QuerySource(task, "test", seed=0, query_data=cfg.query_data)
        eval_queries = held_out.next_queries(cfg.eval_episodes)
    except (ValueError, tasks.DownloadError) as e:
        raise SystemExit(f"error: {e}")
    if labeler is not None and labeler.needs_reference:
        if any(q.reference is None for q in eval_queries):
            print(
                f"note: the held-out queries have no reference summaries, so there is no true "
                f"score ({labeler.name} needs them)"
            )
            labeler = None
    return source, eval_queries, labeler


def resume(run: Run, ckpt: dict | None):
    """A resumed run's state back into its objects; then config.json and metrics.jsonl (rank 0):
    metrics written after the checkpoint (the run died later) are dropped, the resumed run writes
    them again."""
    if ckpt is not None:
        run.policy.load_state_dict(ckpt["policy"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.kl_ctl.value = ckpt["kl_ctl"]["value"]
        run.source.load_state_dict(ckpt["data"])
        rng = ckpt["rng"]  # [dist] one state per rank (a dict in checkpoints written before)
        set_rng_state(
            rng[dist.rank] if isinstance(rng, list) else rng, run.sample_gen, run.shuffle_gen
        )
        run.start, run.before, run.seconds_before = ckpt["update"], ckpt["before"], ckpt["seconds"]
        print(f"resumed {run.run_dir} at update {run.start}/{run.n_updates}")
    run.micro_batch_saved = run.cfg.micro_batch_size
    if not dist.is_main():  # [dist] rank 0 alone writes
        return
    if ckpt is not None:
        path = run.metrics_path
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if json.loads(line)["update"] <= run.start]
        cli.atomic_write(path, "".join(line + "\n" for line in kept))
    else:
        cli.atomic_write(run.metrics_path, "")  # the folder's first file when nothing made it yet
    write_config(run)


def write_config(run: Run):
    cli.atomic_write(run.run_dir / "config.json", json.dumps(asdict(run.cfg), indent=2) + "\n")
    run.micro_batch_saved = run.cfg.micro_batch_size


def keep_micro_batch_size(run: Run):
    """config.json again when an out-of-memory error halved the micro-batch size, so that a
    resumed run starts from the size that fits."""
    if run.cfg.micro_batch_size != run.micro_batch_saved and dist.is_main():
        write_config(run)


def stopped_early(run: Run, stop: int) -> dict:
    print(
        f"stopped after {stop}/{run.n_updates} updates (--stop-after); continue with: "
        f"python {cli.script_path('ppo.py')} --resume {run.run_dir}"
    )
    return {}


def print_budget(run: Run):
    cfg, R = run.cfg, run.task.response_length
    Q = (
        max(len(tasks.policy_context(run.task, q.tokens)) for q in run.eval_queries[:8])
        if run.eval_queries
        else run.task.query_length
    )
    M, n = cfg.nminibatches, run.n_updates
    print(
        f"compute budget: {cfg.total_episodes:,} episodes / {cfg.batch_size} per update = "
        f"{n:,} updates ({n * cfg.noptepochs * M:,} Adam steps: {cfg.noptepochs} epochs x {M} "
        f"minibatches)\n"
        f"  per update: {cfg.batch_size} queries of ~{Q} tokens, {cfg.batch_size * R:,} tokens "
        f"generated, {cfg.noptepochs} x {cfg.batch_size} x {Q + R} tokens trained; total "
        f"{n * cfg.batch_size * R:,} tokens generated | model {cfg.model} on {run.device} | "
        f"run dir {run.run_dir}"
    )
    if dist.world_size > 1:
        print(
            f"  on {dist.world_size} processes (torchrun): {cfg.batch_size // dist.world_size} "
            f"episodes each per update; gradients and batch statistics all-reduced"
        )


def progress(run: Run, stop: int):
    """The updates still to do, with a progress bar."""
    return tqdm(
        range(run.start, stop),
        desc="ppo",
        unit="update",
        initial=run.start,
        total=run.n_updates,
        file=sys.stdout,
        dynamic_ncols=True,
        disable=None,
    )


# --------------------------------------------------------------------------------------------------
# Per-update metrics and the console


def decode(enc, row) -> str:
    return enc.decode([t for t in row if t < gpt2.EOT_ID])


def scripted_scores(labeler, truncated, references=None):
    """The scripted labeler's score of each truncated response (against its query's reference
    summary, for rouge): the true reward when measuring PPO offline (None without a labeler)."""
    if labeler is None:
        return None
    enc = gpt2.get_tokenizer()
    texts = [decode(enc, r) for r in truncated.tolist()]
    return torch.as_tensor(np.asarray(labeler.score(texts, references), dtype=np.float32))


def rollout_stats(batch: dict, true_scores: torch.Tensor | None, kl_coef: float) -> dict:
    """Per-update 'objective/...' metrics from a rollout batch (sums over tokens are per episode,
    then averaged). Under torchrun, over the whole batch: each rank's mean of its equal share,
    averaged over ranks (so the controller sees the whole batch's KL)."""
    means = {
        "objective/score": batch["scores"].mean(),
        "objective/kl": batch["kl"].sum(1).mean(),
        "objective/entropy": (-batch["logprobs"]).sum(1).mean(),
        "objective/score_total": (batch["scores"] + batch["non_score_reward"].sum(1)).mean(),
        "objective/valid_fraction": batch["valid"].float().mean(),
    }
    if true_scores is not None:
        means["objective/true_score"] = true_scores.mean()
    out = dist.mean_of(means)  # [dist] one all-reduce for all of them
    out["objective/kl_coef"] = kl_coef
    return out


def online_step(run: Run, update: int):
    """(the reward model to use now, the online metrics): --online's before_update, else as is."""
    if run.online is None:
        return run.reward_model, {}
    return run.online.before_update(update, run.policy.lm)


def update_metrics(run: Run, update: int, stats: dict, batch: dict, lr: float, t_train: float):
    """The update's metrics beside the rollout's: the means of its (E, M, U) tables, the value
    function's explained variance, the counters and the timings."""
    cfg = run.cfg
    metrics = {k: v.mean().item() for k, v in stats.items()}
    metrics["ppo/val/var_explained"] = 1 - metrics["ppo/val/error"] / max(
        metrics["ppo/returns/var"], 1e-8
    )
    R = run.task.response_length
    return metrics | {
        "update": update + 1,
        "episodes": (update + 1) * cfg.batch_size,
        "ppo/lr": lr,
        "time/rollout": batch["t_rollout"],
        "time/train": t_train,
        "time/rollout_tokens_per_s": cfg.batch_size * R / max(batch["t_generate"], 1e-9),
    }


def ppo_stats(pg_stats, entropy, pg_loss, vf_loss, vf_stats, vpred) -> dict:
    """One micro-batch's statistics under their metrics.jsonl names (docs/metrics.md)."""
    values = {f"ppo/policy/{k}": v for k, v in pg_stats.items()}
    return values | {
        "ppo/policy/entropy": entropy.float().mean(),
        "ppo/loss/policy": pg_loss,
        "ppo/loss/value": vf_loss,
        "ppo/val/clipfrac": vf_stats["clipfrac"],
        "ppo/val/error": vf_stats["error"],
        "ppo/val/vpred": vpred.mean(),
    }


def log_update(run: Run, update: int, metrics: dict, batch, raw_queries, true_scores) -> dict:
    """metrics.jsonl, the console line and, every --sample-every updates, a table of samples."""
    cfg = run.cfg
    if dist.is_main():  # [dist] rank 0 alone writes
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
    tqdm.write(metric_line(update + 1, run.n_updates, metrics), file=sys.stdout)
    if cfg.sample_every and (update + 1) % cfg.sample_every == 0:
        formatted = [tasks.policy_context(run.task, q) for q in raw_queries]
        print_samples(gpt2.get_tokenizer(), formatted, batch, true_scores)
    return metrics


def metric_line(update: int, n_updates: int, metrics: dict) -> str:
    """The fixed-format console line of one update."""
    true_part = (
        f"true {metrics['objective/true_score']:6.3f} | "
        if "objective/true_score" in metrics
        else ""
    )
    return (
        f"update {update:>5}/{n_updates} | score {metrics['objective/score']:6.3f} | {true_part}"
        f"kl {metrics['objective/kl']:6.3f} | beta {metrics['objective/kl_coef']:.4f} | "
        f"entropy {metrics['objective/entropy']:6.2f} | "
        f"clipfrac {metrics['ppo/policy/clipfrac']:.3f} | "
        f"approxkl {metrics['ppo/policy/approxkl']:.5f} | "
        f"vf_err {metrics['ppo/val/error']:.4f} | "
        f"{metrics['time/rollout_tokens_per_s']:7.0f} tok/s | "
        f"rollout {metrics['time/rollout']:5.1f}s train {metrics['time/train']:5.1f}s"
        + online.metric_part(metrics)  # --online: labels, trainings, win rate
    )


def print_samples(enc, queries, batch, true_scores, n: int = 4):
    """A plain-text table of a few queries, responses and scores (the lm-human-preference-details
    rich table), written above the progress bar (tqdm.write: a print would start on its line)."""
    lines = [f"{'query (end)':<42} | {'response (truncated)':<60} | score  | true   | kl"]
    for i in range(min(n, len(queries))):
        q = decode(enc, queries[i]).replace("\n", " ")[-40:]
        r = decode(enc, batch["truncated"][i].tolist()).replace("\n", " ")[:60]
        t = f"{true_scores[i].item():6.2f}" if true_scores is not None else "   -  "
        score, kl = batch["scores"][i].item(), batch["kl"][i].sum().item()
        lines.append(f"{q:<42} | {r:<60} | {score:6.2f} | {t} | {kl:5.2f}")
    tqdm.write("\n".join(lines), file=sys.stdout)


def smooth(values: list[float], window: int) -> list[float]:
    """Centered moving average over `window` points (fewer at the ends): the trend line drawn over
    the noisy per-update points of curves.png."""
    half = window // 2
    spans = [values[max(0, i - half) : i + half + 1] for i in range(len(values))]
    return [sum(span) / len(span) for span in spans]


def plot_curves(metrics: list[dict], path: Path, kl_target: float | None, title: str = ""):
    """curves.png, from metrics.jsonl's rows (curves_figure)."""
    import matplotlib.pyplot as plt

    fig = curves_figure(metrics, kl_target, title)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def curves_figure(metrics: list[dict], kl_target: float | None, title: str = ""):
    """Score, true score, KL and β against updates, as the console counts them (the title gives
    the episodes per update); each a faint point per update and a moving average over about a
    tenth of the run. --online adds π's win rate over ρ and the labels received against those
    the schedule called for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("objective/score", "reward-model score"),
        ("objective/true_score", "scripted labeler's true score"),
        ("objective/kl", "KL(π‖ρ), nats"),
        ("objective/kl_coef", "β"),
    ]
    if any("online/win_rate" in row for row in metrics):  # --online
        keys += [
            ("online/win_rate", "π's win rate over ρ (validation items, 95% interval)"),
            ("online/labels", "labels received (dashed: due by the schedule)"),
        ]
    cols = (len(keys) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 6.5), squeeze=False)
    for ax, (key, name) in zip(axes.flat, keys):
        rows = [row for row in metrics if row.get(key) is not None]
        xs, ys = [row["update"] for row in rows], [row[key] for row in rows]
        if key == "online/win_rate":  # already a mean over the last 50 labels: no smoothing
            ax.plot(xs, ys)
            low, high = [r[key + "_low"] for r in rows], [r[key + "_high"] for r in rows]
            ax.fill_between(xs, low, high, alpha=0.2)
            ax.axhline(0.5, color="gray", ls="--", lw=1)
        elif key == "online/labels":
            ax.plot(xs, ys)
            ax.plot(xs, [r.get("online/labels_due") for r in rows], color="gray", ls="--", lw=1)
        elif rows:
            ax.plot(xs, ys, ".", color="C0", alpha=0.25, ms=4)
            ax.plot(xs, smooth(ys, len(ys) // 10 | 1), color="C0")
        if key == "objective/kl" and kl_target is not None:
            ax.axhline(kl_target, color="gray", ls="--", lw=1, label="target")
            ax.legend()
        ax.set_title(name)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    if metrics and metrics[0].get("update"):
        per = metrics[0]["episodes"] // metrics[0]["update"]
        title = f"{title} ({per} episodes per update)" if title else ""
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@torch.no_grad()
def evaluate_policy(run: Run, rollout, when: str = "") -> dict:
    """Reward-model score, scripted true score and KL of the current policy on fixed held-out
    queries, sampled by ppo.py's rollout(); its own generator (seed fixed) so evaluating never
    moves the training RNG.
    Summarization tasks add the paper's measures of the summaries (summarization.py): novelty,
    lead_copy and, with references, rouge1/rouge2/rougeL."""
    cfg, queries, device = run.cfg, run.eval_queries, run.device
    gen = torch.Generator(device=device).manual_seed(12345)
    enc = gpt2.get_tokenizer()
    stats, summaries = {}, []
    for i in range(0, len(queries), cfg.batch_size):
        chunk = queries[i : i + cfg.batch_size]
        raw, refs = [q.tokens for q in chunk], [q.reference for q in chunk]
        b = rollout(run.policy, run.ref, run.reward_model, run.task, raw, cfg, 0.0, gen, device)
        true_score = scripted_scores(run.labeler, b["truncated"], refs)
        for k, v in [("score", b["scores"]), ("kl", b["kl"].sum(1)), ("true_score", true_score)]:
            if v is not None:
                stats.setdefault(k, []).append(v.float().cpu())
        summaries += [decode(enc, r) for r in b["truncated"].tolist()]
    out = {k: torch.cat(v).mean().item() for k, v in stats.items()}
    if "true_score" in stats:
        out["true_score_std"] = torch.cat(stats["true_score"]).std(unbiased=False).item()
    if run.task.query_dataset in ("tldr", "cnndm"):
        sources = [enc.decode(q.tokens) for q in queries]
        references = [q.reference for q in queries]
        out.update(summarization.summary_measures(summaries, sources, references))
    if when:
        print(f"{when} (on {len(queries)} held-out queries): {json.dumps(out)}")
    return out


# --------------------------------------------------------------------------------------------------
# Checkpoints, the export, the summary


def rng_state(sample_gen, shuffle_gen) -> dict:
    """Every random generator's state as tensors and plain values, so checkpoint.pt loads with
    weights_only=True (numpy's and Python's own state objects would need unpickling)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = dict(
        sample=sample_gen.get_state(),
        shuffle=shuffle_gen.get_state(),
        torch=torch.get_rng_state(),
        numpy=dict(
            kind=kind,
            keys=torch.from_numpy(keys.astype(np.int64)),  # (624,) uint32 words
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached_gaussian),
        ),
        python=dict(
            version=version,
            internal=torch.tensor(internal, dtype=torch.int64),
            gauss_next=gauss_next,
        ),
    )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, sample_gen, shuffle_gen):
    sample_gen.set_state(state["sample"])
    shuffle_gen.set_state(state["shuffle"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict:
    """checkpoint.pt, loaded with weights_only=True: tensors and plain values only, so a run folder
    from someone else cannot run code. Anything else is refused with a message; nothing in the
    run folder is touched, and a file that is no ppo.py checkpoint is named for what it is."""
    kind = labels.file_kind(path)
    if kind != labels.PPO_CHECKPOINT:
        raise SystemExit(
            f"error: cannot resume from {path}: it is {kind}, not a ppo.py checkpoint (without "
            f"one, --resume starts PPO from update 0 with the run's reward model: move it away)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(
            f"error: cannot resume from {path}: it holds something other than tensors and plain "
            f"values ({first}). Checkpoints are loaded without unpickling Python objects, so a run "
            f"folder cannot run code; one written by an older ppo.py (numpy/Python RNG objects) "
            f"cannot be resumed: start a new run."
        )
    except Exception as e:
        raise SystemExit(f"error: cannot resume from {path}: {e}")


def export_policy(policy, run_dir: Path):
    """The policy as a plain GPT-2 in the Hugging Face layout (run_dir/policy/, loadable by
    transformers and `python gpt2.py --model RUN_DIR`); the value head beside it, not inside, as
    it is no part of a language model (value_head.safetensors, with the value trunk when it has
    its own). Both are replaced atomically."""
    gpt2.save_pretrained(policy.lm, run_dir / "policy")
    value = {f"value_head.{k}": v for k, v in policy.value_head.state_dict().items()}
    if policy.value_trunk is not None:
        value.update({f"value_trunk.{k}": v for k, v in policy.value_trunk.state_dict().items()})
    hf.write_safetensors(value, run_dir / "value_head.safetensors")


def save_checkpoint(run: Run, update: int, seconds: float):
    """checkpoint.pt (everything a resume needs, written atomically), the exported policy/ and
    curves.png. Called on every rank: each one's random state goes into the checkpoint, which rank
    0 writes."""
    rng = dist.gather_objects(rng_state(run.sample_gen, run.shuffle_gen))  # [dist] by rank
    if not dist.is_main():
        return
    ckpt = dict(
        policy=run.policy.state_dict(),
        optimizer=run.optimizer.state_dict(),
        kl_ctl={"value": run.kl_ctl.value},
        data=run.source.state_dict(),
        rng=rng,
        world_size=dist.world_size,
        update=update,
        before=run.before,
        seconds=seconds,
        config=asdict(run.cfg),
    )
    cli.atomic_write(run.checkpoint_path, lambda f: torch.save(ckpt, f))
    export_policy(run.policy, run.run_dir)
    plot_curves(
        [json.loads(line) for line in run.metrics_path.read_text().splitlines()],
        run.run_dir / "curves.png",
        run.cfg.kl_target if run.cfg.adaptive_kl else None,
        f"{run.cfg.name}: {run.cfg.task}, {Path(run.cfg.model).name}, seed {run.cfg.seed}",
    )


def interrupted(cfg, run_dir: Path) -> str:
    """What Ctrl-C leaves (cli.run_main says it after `stopped (Ctrl-C)`): the last checkpoint and
    the command that continues from it. checkpoint.pt is written atomically: a save that Ctrl-C
    cuts leaves the one before it whole."""
    resume = f"{cli.script_path('ppo.py')} --resume {shlex.quote(str(run_dir))}"
    resume = f"python {resume}" if dist.world_size == 1 else f"torchrun ... {resume} (same ranks)"
    path = run_dir / "checkpoint.pt"
    if path.exists():  # mmap: the update number without reading the weights
        update = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["update"]
        n = math.ceil(cfg.total_episodes / cfg.batch_size)
        return f"the last checkpoint is update {update}/{n} ({path}); continue with: {resume}"
    if (run_dir / "config.json").exists():
        kept = ", reward model kept" if (run_dir / "rm.pt").exists() or cfg.reward_model else ""
        return f"no checkpoint saved yet; continue (PPO from update 0{kept}): {resume}"
    again = cli.rerun("ppo.py", None, "--overwrite" if cli.held(run_dir, RUN_FILES) else "")
    return f"no checkpoint saved yet; start again: {again}"


def stopped_on_nan(run: Run, update: int, e: FloatingPointError) -> SystemExit:
    kept = run.checkpoint_path if run.checkpoint_path.exists() else "(none yet)"
    return SystemExit(
        f"error: update {update + 1}: {e}. Stopped; the last good checkpoint is kept at "
        f"{kept}. Try a lower --lr or check the reward model's scores "
        f"(`python reward.py eval`)."
    )


def summary(run: Run, before: dict, after: dict, last: dict, seconds: float) -> dict:
    """summary.json's entries, the win rate aside."""
    cfg = run.cfg
    out = dict(
        score_before=before["score"],
        score_after=after["score"],
        true_score_before=before.get("true_score"),
        true_score_after=after.get("true_score"),
        true_score_std_before=before.get("true_score_std"),
        kl=after["kl"],
        kl_train_last=last.get("objective/kl"),
        kl_coef=run.kl_ctl.value,
        updates=run.n_updates,
        episodes=run.n_updates * cfg.batch_size,
        seconds=round(seconds, 1),
        eval_episodes=len(run.eval_queries),
        device=run.device,
        model=cfg.model,
        task=cfg.task,
        reward_model=cfg.reward_model,
        world_size=dist.world_size,
    )
    for k in ("novelty", "lead_copy", *summarization.ROUGE_TYPES):  # summarization tasks
        if k in after:
            out[f"{k}_before"], out[f"{k}_after"] = before.get(k), after[k]
    if run.online is not None:
        out["reward_model"] = str(run.online.rm_path)
        out["online"] = run.online.summary()
    return out


def write_summary(run: Run, summary: dict, after: dict):
    if dist.is_main():  # [dist] rank 0 alone writes
        cli.atomic_write(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"after training: {json.dumps(after)}\nsummary: {run.run_dir / 'summary.json'}")
    print(json.dumps(summary, indent=2))
