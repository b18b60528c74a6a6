"""
The reward model's data, and its console: what reward.py needs but a learner of the algorithm may
skip. Nothing here imports reward.py.

  * comparisons: a query and N responses from rho, rejection-sampled at the stop token
    (sample_comparisons, `python reward.py sample`), at task.temperature (task_at: a run's);
  * labels: the scripted ("mock") labeler picks the best candidate (label_comparisons,
    `python reward.py label`);
  * the label file's checks: reading it with a count of what was not used, the task it is for,
    the train / held-out split, and the fit of its tokens in the model;
  * training's console: the plan, the normalization and held-out lines, a progress bar with a line
    every --log-interval steps, and one example pair;
  * rm.pt: the checks on reading one, and the record of its training it keeps;
  * the command line: `reward.py sample` and `reward.py label` whole, and the flags, device and
    output line of `reward.py train` and `reward.py eval` (reward.py runs those two).

The file formats are machinery/labels.py's. Shape letters: B = batch, Q = query length,
R = response length.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpt2 import (
    GPT2,
    PAD_ID,
    GPT2Config,
    generate,
    get_tokenizer,
    left_pad,
)
from machinery import amp, cli, dist, labels, presets, tasks

# --------------------------------------------------------------------------------------------------
# 1. Comparisons: queries from the task, N responses each from rho


def task_at(task: str | tasks.TaskConfig, temperature: float) -> tasks.TaskConfig:
    """The task with its sampling temperature set to `temperature`: what a ppo.py run passes
    wherever it samples (reward.build_reward_model, online.Online), so that rho's comparisons and
    normalization samples are drawn at the run's --temperature, as its rollouts are."""
    return dataclasses.replace(tasks.get_task(task), temperature=temperature)


@torch.no_grad()
def sample_responses(
    policy: GPT2, task: tasks.TaskConfig, raw_queries: list[list[int]], generator, device="cpu"
):
    """rho's responses (B, R) to raw queries (formatted for the policy here) at task.temperature,
    untruncated. Every sampling of comparisons and of normalization comes through here, so a run
    samples at one temperature: ppo.py passes task_at(task, --temperature), the stand-alone
    commands (`reward.py sample`, `reward.py train`) the task's own."""
    tokens, mask = left_pad([tasks.policy_context(task, q) for q in raw_queries], device=device)
    responses, _ = generate(
        policy, tokens, mask, task.response_length, task.temperature, generator=generator
    )
    return responses  # (B, R)


def sample_comparisons(
    policy: GPT2,
    task,
    n: int,
    n_samples: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    split: str = "train",
    max_rounds: int = 10,
    device="cpu",
    query_data: str = "",
    require_stop: bool = True,
) -> list[dict]:
    """n comparisons (labels.py rows): a query and n_samples responses from the policy, truncated at
    the stop token; rows of a query with a reference summary carry it (`reference`).

    Rejection sampling as the paper does for what people see: only responses that contain the stop
    token in [truncate_after, R) are kept, so every candidate ends at its period (books) or newline
    (summaries). Queries still short of n_samples valid responses after max_rounds are dropped; the
    count is printed. A policy that never writes the stop token (tiny on the summarization tasks
    never writes a newline) is an error, unless require_stop is off: then responses without it are
    kept whole. query_data: local query data (tasks.QuerySource).
    """
    task = tasks.get_task(task)
    enc = get_tokenizer()
    src = tasks.QuerySource(task, split, seed=seed, query_data=query_data)
    gen = torch.Generator(device=device).manual_seed(seed)
    rows, n_dropped, n_drawn, n_valid = [], 0, 0, 0
    # disable=None: a progress bar in a terminal, none in a log file (the summary lines are printed
    # either way)
    # leave=None: kept alone on screen, gone when under ppo.py's bar
    bar = tqdm(
        total=n, desc=f"sample comparisons ({task.name})", unit=" cmp", disable=None, leave=None
    )
    while len(rows) < n:
        items = src.next_queries(min(max(1, batch_size // n_samples), n - len(rows)))
        queries = [q.tokens for q in items]
        found: list[list[list[int]]] = [[] for _ in queries]
        for _ in range(max_rounds):
            need = [i for i, f in enumerate(found) if len(f) < n_samples]
            if not need:
                break
            # one draw per missing response
            todo = [i for i in need for _ in range(n_samples - len(found[i]))]
            truncated, valid = tasks.truncate_responses(
                sample_responses(policy, task, [queries[i] for i in todo], gen, device), task
            )
            n_drawn, n_valid = n_drawn + len(todo), n_valid + int(valid.sum())
            for i, row, ok in zip(todo, truncated.cpu(), valid.tolist()):
                if (ok or not require_stop) and len(found[i]) < n_samples:
                    found[i].append(tasks.strip_pad(row))
        if n_valid == 0 and require_stop:
            stop = enc.decode([task.truncate_token])
            raise ValueError(
                f"sample: none of {n_drawn} responses had the stop token {stop!r} at or after "
                f"token {task.truncate_after}, so no comparison can be made: the policy may never "
                "write it (random weights seldom do; tiny, fitted on stories, never writes a "
                "newline). Pass --no-require-stop (ppo.py: --no-rm.require-stop) to keep such "
                "responses whole."
            )
        for q, item, f in zip(queries, items, found):
            if len(f) < n_samples:
                n_dropped += 1
                continue
            row = dict(
                id=f"{task.name}-{split}-s{seed}-{len(rows)}",
                task=task.name,
                query=enc.decode(q),
                query_tokens=q,
                samples=[enc.decode(s) for s in f],
                sample_tokens=f,
            )
            if item.reference is not None:
                row["reference"] = item.reference
            rows.append(row)
            bar.update(1)
    bar.close()
    print(
        f"sample: {len(rows)} comparisons x {n_samples} responses; {n_valid}/{n_drawn} draws had "
        "the stop token "
        f"({n_valid / max(n_drawn, 1):.0%}); {n_dropped} queries dropped (no {n_samples} valid "
        "responses in "
        f"{max_rounds} rounds); {src.n_skipped} texts skipped (no query)"
    )
    return rows


# --------------------------------------------------------------------------------------------------
# 2. Labels: the scripted ("mock") labeler picks the best candidate


def label_comparisons(rows: list[dict], labeler: str | tasks.ScriptedLabeler) -> list[dict]:
    """Label rows (labels.py format): each comparison plus best, labeler, seconds, created, and
    `tied` (the indices sharing the top score) where the labeler broke a tie. A labeler that
    compares with a reference (rouge) reads each row's `reference`."""
    lab = tasks.get_labeler(labeler) if isinstance(labeler, str) else labeler
    out = []
    for r in rows:
        t0 = time.perf_counter()
        best, tied = lab.pick(r["query"], r["samples"], r.get("reference"))
        out.append(
            dict(
                r,
                best=best,
                **(dict(tied=tied) if len(tied) > 1 else {}),
                labeler=f"script:{lab.name}",
                seconds=round(time.perf_counter() - t0, 6),
                created=labels.now_iso(),
            )
        )
    return out


def sample_and_label(
    cfg,
    policy: GPT2 | None,
    model: str,
    task: str | tasks.TaskConfig,
    labeler: str,
    seed: int,
    out: Path,
    device="cpu",
    query_data: str = "",
    precision: str = "auto",
) -> tuple[list[dict], GPT2]:
    """reward.build_reward_model's labels when it is given none: cfg.num_comparisons comparisons
    sampled from rho (`policy`, or tasks.load_base_model(model)) on the task's train queries at
    task.temperature (task: a name or a tasks.TaskConfig; query_data: local query data, see
    tasks.QuerySource; cfg.require_stop as in sample_comparisons), labeled by the scripted labeler
    (`labeler`; empty: the task's own) and written to `out`. cfg: reward.TrainConfig. Returns
    (label rows, rho). ValueError: no task (labeler_for)."""
    labeler = tasks.get_labeler(labeler_for(task, labeler))
    if policy is None:
        policy = tasks.load_base_model(model, device)
    print(
        f"reward model: sampling {cfg.num_comparisons} comparisons from ρ, labeling them with "
        f"the scripted '{labeler.name}' labeler, then training"
    )
    with amp.autocast(device, precision):
        rows = sample_comparisons(
            policy,
            task,
            cfg.num_comparisons,
            seed=seed,
            device=device,
            query_data=query_data,
            require_stop=cfg.require_stop,
        )
    rows = label_comparisons(rows, labeler)
    if dist.is_main():  # [dist] rank 0 alone writes (every rank sampled the same rows)
        labels.write_comparisons(out, rows)  # kept for `python reward.py eval`
    return rows, policy


def labeler_for(task: str | tasks.TaskConfig, labeler: str = "") -> str:
    """The scripted labeler of sampled comparisons: `labeler`, else the task's own. ValueError
    without a task to sample (`reward.py train` given neither --labels nor --task): one line with
    the flags that would work."""
    name = getattr(task, "name", task)
    if name not in tasks.TASKS:
        first, *rest = tasks.TASKS
        raise ValueError(
            f"{f'unknown task {name!r}' if name else 'no task given'}: give --task {first} (or "
            f"{', '.join(rest)}) to sample comparisons from rho and label them with its scripted "
            f"labeler, or --labels FILE to train on labels (label_tool.py, `reward.py label`, or "
            f"OpenAI's released JSON)"
        )
    return labeler or tasks.get_task(task).labeler


# --------------------------------------------------------------------------------------------------
# 3. The labels file: read, task, split, fit


def read_label_rows(path: str) -> list[dict]:
    """labels.read_labels with the count of anything not used printed (nothing is dropped
    silently)."""
    counts: dict = {}
    rows = labels.read_labels(path, counts=counts)
    print(
        f"labels: {path}: {counts.get('labels')} labels from {counts.get('lines')} lines; "
        f"{counts.get('undone', 0)} undone and {counts.get('skipped', 0)} skipped ids not used"
    )
    return rows


def task_and_split(rows: list[dict], task: str, cfg, test_rows: list[dict] | None = None):
    """reward.train_reward_model's rows: (the task (given, or the labels'), train rows, held-out
    rows); test_rows, when given, are the held-out rows and every row trains. cfg:
    reward.TrainConfig (num_train, test_fraction; labels names the file in errors)."""
    task = resolve_task(rows, task, cfg.labels)
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    if test_rows is not None:
        return task, rows, test_rows
    return task, *split_rows(rows, cfg.num_train, cfg.test_fraction)


def split_rows(rows: list[dict], num_train: int, test_fraction: float):
    """First num_train rows train, the rest test (as OpenAI uses the file's first num_train
    labels, and lm-human-preference-details tests on the rows after them). num_train 0: hold out
    the last test_fraction."""
    if num_train <= 0:
        num_train = (
            len(rows) - max(1, round(test_fraction * len(rows))) if test_fraction > 0 else len(rows)
        )
    if not 0 < num_train <= len(rows):
        raise ValueError(f"num_train={num_train} but the labels file has {len(rows)} labels")
    return rows[:num_train], rows[num_train:]


def resolve_task(rows: list[dict], task, path: str = "labels") -> tasks.TaskConfig:
    """The task given (a name or a tasks.TaskConfig, kept as it is: its temperature may be a
    run's), else the one task the rows name; ValueError when they name none or several, or when
    a row names another task than the one given (labels of another task train nothing useful)."""
    found = sorted({r.get("task", "") for r in rows})
    if task:
        check_task(rows, task if isinstance(task, str) else task.name, path)
        return tasks.get_task(task)
    if len(found) != 1 or found[0] not in tasks.TASKS:
        raise ValueError(
            f"{path}: cannot tell the task from the labels (task fields: {found}); pass --task "
            f"({', '.join(tasks.TASKS)})"
        )
    return tasks.get_task(found[0])


def check_task(rows: list[dict], task: str | None, path: str = "labels", flag: str = "--task"):
    """ValueError when a row names a task other than `task` (rows without a task field, such as
    OpenAI's released JSON, are taken as the task's; no task given: nothing to check). flag: the
    command's flag that would take the labels' task instead: --task (a reward model to train) or
    --reward-model (one trained on them, `reward.py eval`)."""
    other = sorted({r["task"] for r in rows if r.get("task") and r["task"] != task})
    if task and other:
        n = sum(r.get("task") in other for r in rows)
        o, trains = other[0], flag == "--task"
        whose = "" if trains else ", the reward model's task"
        instead = f"--task {o} for a {o} reward model" if trains else f"{flag} of a {o} one"
        raise ValueError(
            f"{path}: {n} of {len(rows)} labels are of task {', '.join(other)}, not {task}{whose}; "
            f"give labels of {task} (or {instead})"
        )


def check_rows_fit(rows: list[dict], config: GPT2Config, path: str = "labels", task=None):
    """Token ids inside the model's vocabulary and query+response inside its context, and the
    rows of `task` (a reward model's: `reward.py eval`) when one is given (check_task), or a
    clear error."""
    check_task(rows, task, path, "--reward-model")
    for i, r in enumerate(rows):
        n = len(r["query_tokens"]) + max(len(s) for s in r["sample_tokens"])
        if n > config.n_positions:
            raise ValueError(
                f"{path}: label {r.get('id', i)} has {n} query+response tokens, more than the "
                "model's "
                f"n_positions={config.n_positions}"
            )
        ids = r["query_tokens"] + [t for s in r["sample_tokens"] for t in s]
        if ids and max(ids) >= config.vocab_size and max(ids) != PAD_ID:
            raise ValueError(
                f"{path}: label {r.get('id', i)} has token id {max(ids)} >= the model's vocab size "
                f"{config.vocab_size}"
            )


# --------------------------------------------------------------------------------------------------
# 4. Training's console


class TrainLog:
    """What reward.train_reward_model prints: its plan (at construction), the normalization and
    held-out lines, the steps under a progress bar (in a terminal; none in a log file) with a line
    every cfg.log_interval steps, and one held-out example. cfg: reward.TrainConfig. Every line
    goes through tqdm.write: ppo.py --online retrains under its own bar, which a print would run
    into."""

    def __init__(self, task: str, model: str, cfg, n_train: int, n_held_out: int, N: int, n_steps):
        self.N, self.n_held_out, self.n_steps = N, n_held_out, n_steps
        self.log_interval = cfg.log_interval
        self.losses: list[float] = []
        self.accuracies: list[float] = []
        tqdm.write(
            f"train: task {task}, {n_train} train / {n_held_out} held-out comparisons of N={N}, "
            f"{cfg.epochs} epoch(s), {n_steps} steps of {cfg.batch_size}, lr {cfg.lr} -> 0, base "
            f"model {model}"
        )

    def normalized(self, when: str, s: dict):
        tqdm.write(
            f"normalize {when}: raw rewards under rho {s['mean']:+.4f} +- {s['std']:.4f} -> gain "
            f"{s['gain']:.4f}, bias {s['bias']:+.4f}; check on fresh samples "
            f"{s['after_mean']:+.3f} +- {s['after_std']:.3f}"
        )

    def held_out(self, m: dict, before: bool = False):
        """Held-out accuracy and loss (reward.evaluate's m) against chance."""
        N = self.N
        if before:
            tqdm.write(
                f"train: held-out accuracy before training {m['accuracy']:.3f} (chance "
                f"{1 / N:.3f}), loss {m['loss']:.4f} (uniform {math.log(N):.4f})"
            )
        else:
            tqdm.write(
                f"train: held-out accuracy {m['accuracy']:.3f} on {self.n_held_out} comparisons "
                f"(chance {1 / N:.3f}), loss {m['loss']:.4f}"
            )

    def steps(self):
        """range(n_steps), under the progress bar."""
        self.t0 = time.time()
        # leave=None: kept by `reward.py train`, gone when ppo.py --online retrains under its bar
        self.bar = tqdm(
            range(self.n_steps), desc="train reward model", unit="step", disable=None, leave=None
        )
        return self.bar

    def step(self, step: int, loss: float, accuracy: float, lr: float):
        self.losses.append(loss)
        self.accuracies.append(accuracy)
        self.bar.set_postfix(
            loss=f"{np.mean(self.losses[-10:]):.3f}", acc=f"{np.mean(self.accuracies[-10:]):.2f}"
        )
        k = self.log_interval
        if (step + 1) % k == 0 or step + 1 == self.n_steps:
            tqdm.write(
                f"step {step + 1}/{self.n_steps} | loss {np.mean(self.losses[-k:]):.4f} | "
                f"acc {np.mean(self.accuracies[-k:]):.3f} | lr {lr:.2e} | "
                f"{(time.time() - self.t0) / (step + 1) * 1000:.0f} ms/step"
            )

    def done(self) -> tuple[float, float]:
        """Closes the bar; the mean training loss and accuracy over every step."""
        self.bar.close()
        return float(np.mean(self.losses)), float(np.mean(self.accuracies))

    def example(self, row: dict, r: list[float]):
        """One held-out comparison with its rewards r (N,): the labeled best and the lowest other,
        so a person can see what the model prefers."""
        chosen = row["best"]
        rejected = min(range(len(r)), key=lambda i: r[i] if i != chosen else float("inf"))
        tqdm.write(f"example query: {row['query'][-200:]!r}")
        tqdm.write(f"  labeled best ({r[chosen]:+.2f}): {row['samples'][chosen]!r}")
        tqdm.write(f"  lowest other ({r[rejected]:+.2f}): {row['samples'][rejected]!r}")


def print_eval(path: str, meta: dict, result: dict, rows: list[dict]):
    """`reward.py eval`'s line: reward.evaluate's result for the reward model at path (meta: its
    rm.meta) on label rows."""
    N = len(rows[0]["sample_tokens"])
    print(
        f"eval: {path} (task {meta.get('task')}, base {meta.get('base_model')}) "
        f"on {result['n']} comparisons: accuracy {result['accuracy']:.3f} (chance {1 / N:.3f}) | "
        f"loss {result['loss']:.4f} | mean reward {result['mean_reward']:+.3f}"
    )


# --------------------------------------------------------------------------------------------------
# 5. rm.pt: the checks of a reward model checkpoint


def read_rm_checkpoint(
    path, fmt: str, version: int, expect_config: GPT2Config | None = None
) -> tuple[dict, GPT2Config]:
    """reward.load_reward_model's file checks: the checkpoint dict and the GPT2Config to build its
    model with (expect_config's use_kernels, when given). FileNotFoundError: no such file.
    ValueError: not a reward model (what it is instead: labels.wrong_file), another version, or
    (with expect_config, e.g. the policy's config) another size or vocabulary."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(labels.wrong_file(path, labels.REWARD_MODEL))
    if labels.file_kind(path) != labels.REWARD_MODEL:  # a ppo.py checkpoint, labels...: say so
        raise ValueError(labels.wrong_file(path, labels.REWARD_MODEL))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged one, or one that holds a Python object
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path}: not a reward model checkpoint ({type(e).__name__}: {why}); train one with "
            f"`python reward.py train`"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise ValueError(labels.wrong_file(path, labels.REWARD_MODEL))
    if ckpt.get("version") != version:
        raise ValueError(
            f"{path}: reward model checkpoint version {ckpt.get('version')}, this code reads "
            f"{version}; retrain it"
        )
    config = GPT2Config(**ckpt["gpt2_config"])
    if expect_config is not None:
        keys = ("vocab_size", "n_layer", "n_head", "n_embd")
        got, want = (
            {k: getattr(config, k) for k in keys},
            {k: getattr(expect_config, k) for k in keys},
        )
        if got != want:
            raise ValueError(
                f"{path}: reward model was trained from base model {ckpt.get('base_model')!r} with "
                f"{got}, but the policy has {want}; train a reward model from the policy's base "
                f"model (`python reward.py train --model ...`)"
            )
        config.use_kernels = expect_config.use_kernels
    return ckpt, config


def training_record(rm, cfg, model: str, task, seed: int, query_data: str, metrics: dict):
    """What rm.pt records of its training (rm.meta): task (a tasks.TaskConfig), the temperature
    its samples were drawn at (comparisons sampled here, and normalization), seed, the options
    (cfg: reward.TrainConfig), the metrics and the normalization."""
    return dict(
        task=task.name,
        temperature=task.temperature,
        seed=seed,
        train_config=dict(
            model=model,
            task=task.name,
            temperature=task.temperature,
            seed=seed,
            query_data=query_data,
            **dataclasses.asdict(cfg),
        ),
        metrics=metrics,
        normalization=dict(
            gain=rm.reward_gain.item(),
            bias=rm.reward_bias.item(),
            before=metrics.get("norm_before"),
            after=metrics.get("norm_after"),
        ),
    )


# --------------------------------------------------------------------------------------------------
# Command line: `python reward.py sample` and `python reward.py label`


@dataclass
class SampleArgs:
    task: str = "sentiment"
    """task whose queries to use: sentiment, descriptiveness, tldr, cnndm"""
    model: str = "gpt2"
    """rho, the policy that writes the candidates: tiny, gpt2, ... or a Hugging Face directory"""
    num_comparisons: int = 1000
    """number of comparisons"""
    n_samples: int = 4
    """candidates per comparison (the paper: 4)"""
    out: str = "comparisons.jsonl"
    """output file (comparisons.jsonl format: docs/formats.md)"""
    overwrite: bool = False
    """replace --out if it exists (else a file there is refused, before anything loads)"""
    split: str = "train"
    """query split: train or test (use test for held-out comparisons)"""
    batch_size: int = 64
    """responses sampled per batch"""
    max_rounds: int = 10
    """rejection-sampling rounds before a query without enough valid responses is dropped"""
    require_stop: bool = True
    """keep only responses with the task's stop token (off: keep responses without it whole, for
    a model that never writes it)"""
    query_data: str = ""
    """local query data in the upstream format instead of the default (tldr: a JSON file or a
    folder of {train,valid}-subset.json; cnndm: a folder with url_lists/ and the stories; books:
    a .jsonl of passages); empty: the shipped passages, or a download"""
    seed: int = 0
    """seed of the query order and the sampling"""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda"""


@dataclass
class LabelArgs:
    labeler: str = ""
    """scripted labeler: sentiment (VADER), descriptiveness (a sensory-word lexicon) or rouge
    (ROUGE against each row's `reference`); empty: the labeler of the comparisons' task"""
    comparisons: str = "comparisons.jsonl"
    """comparisons file to label (from `reward.py sample`)"""
    out: str = "labels.jsonl"
    """labels file to write"""
    overwrite: bool = False
    """replace --out if it exists (else a file there, such as people's labels, is refused)"""


@dataclass
class EvalArgs:
    reward_model: str = "rm.pt"
    """reward model checkpoint"""
    labels: str = "test_labels.jsonl"
    """labels to evaluate on (our JSONL or OpenAI's JSON)"""
    batch_size: int = 64
    """comparisons per batch"""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda"""


TRAIN_HELP = (
    "Train a reward model on best-of-N labels (or, without --labels, on comparisons sampled from "
    "rho and labeled by the task's scripted labeler)."
)


def train_device(a, argv: list[str]) -> tuple[str, str]:
    """`reward.py train`'s checks before anything loads (a: reward.TrainArgs; argv: its flags):
    without --labels, a task to sample (labeler_for); --out, and without --labels the labels file
    it writes beside it (build_reward_model's default), are refused where they hold results,
    unless --overwrite (cli.check_output). Then its device (cli.pick_device) and precision
    (amp.resolve_precision; a bad one exits with its error). [dist] Under torchrun it joins the
    process group (nothing otherwise); cmd_train calls dist.finish at its end."""
    if not a.train.labels:
        labeler_for(a.task, a.labeler)  # a task to sample comparisons of, said before any work
    device = cli.pick_device(a.device)
    dist.init(device)  # [dist] under torchrun: joins the process group; nothing otherwise
    command = cli.rerun("reward.py train", argv)
    outputs = [a.out] + ([] if a.train.labels else [Path(a.out).with_suffix(".labels.jsonl")])
    # [dist] rank 0 decides for every rank (another machine may not see its files)
    refusal = None
    if dist.is_main():
        try:
            for path in outputs:
                cli.check_output(path, "--out", a.overwrite, command)
        except SystemExit as e:
            refusal = str(e)
    refusal = dist.gather_objects(refusal)[0]
    if refusal:
        raise SystemExit(refusal)
    try:
        precision = amp.resolve_precision(a.precision, device)
    except ValueError as e:
        raise SystemExit(f"error: --precision: {e}")
    cli.on_interrupt(lambda: train_interrupted(a, argv, time.time()))  # Ctrl-C's line
    return device, precision


def train_interrupted(a, argv: list[str], started: float) -> str:
    """What Ctrl-C leaves of `reward.py train` (cli.run_main says it): no --out (written whole at
    the end); the labels it made, if it got that far, and the command that trains on them."""
    made = Path(a.out).with_suffix(".labels.jsonl")
    if a.train.labels or not made.exists() or made.stat().st_mtime < started:
        return f"{a.out} not written (it is written when training ends)"
    again = cli.rerun("reward.py train", argv, f"--labels {shlex.quote(str(made))}")
    return f"{a.out} not written; the labels it made are in {made}: train on them with {again}"


def cmd_sample(argv):
    a = presets.parse(  # numbers out of range refused before anything loads
        SampleArgs, argv, description="Sample comparisons (a query and N responses) from rho."
    )
    cli.check_output(a.out, "--out", a.overwrite, cli.rerun("reward.py sample", argv))
    device = cli.pick_device(a.device)
    policy = tasks.load_base_model(a.model, device)
    rows = sample_comparisons(
        policy,
        a.task,
        a.num_comparisons,
        a.n_samples,
        a.batch_size,
        a.seed,
        a.split,
        a.max_rounds,
        device,
        a.query_data,
        a.require_stop,
    )
    labels.write_comparisons(a.out, rows)
    print(f"sample: wrote {len(rows)} comparisons to {a.out}")


def cmd_label(argv):
    a = presets.parse(LabelArgs, argv, description="Label comparisons with a scripted labeler.")
    # scripted labels are written whole, never continued (people's label_tool.py files are the
    # logs that a resumed labeling appends to): a file at --out is replaced only when told to
    cli.check_output(a.out, "--out", a.overwrite, cli.rerun("reward.py label", argv))
    rows = labels.read_comparisons(a.comparisons)
    if not a.labeler:
        task = rows[0]["task"]
        if task not in tasks.TASKS:
            raise ValueError(
                f"{a.comparisons}: task {task!r} has no scripted labeler; pass --labeler"
            )
        a.labeler = tasks.TASKS[task].labeler
    out = label_comparisons(rows, a.labeler)
    cli.atomic_write(a.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    picks = np.bincount([r["best"] for r in out], minlength=len(out[0]["samples"]))
    print(
        f"label: wrote {len(out)} labels to {a.out} (labeler {a.labeler}; picks per position "
        f"{picks.tolist()})"
    )
