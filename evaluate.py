"""
Judge a trained policy as the paper does: how often is its continuation preferred to the initial
model's (ρ) on held-out queries?

Ziegler et al. 2019 report the fine-tuned 774M models preferred to zero-shot GPT-2 88%
(sentiment) and 86% (descriptiveness) of the time, by the same kind of labelers who made the
training labels. This stage measures that number for a ppo.py run:

  1. sample: for each of --n held-out queries (the task's test split), one response from the policy
     (RUN_DIR/policy) and one from the other side (ρ by default, or another run or model), at the
     run's sampling temperature, truncated at the stop token as in the comparisons the labelers saw
     during training;
  2. pairs: write them as pairs.jsonl, a comparisons file with N = 2 (machinery/labels.py), in a
     random order, both the order of the pairs and of the two samples within each. Which sample is
     the policy's is kept in key.json only: a person labeling pairs.jsonl is blind (the ids are a
     random prefix and the line number);
  3. judge: a scripted labeler (machinery/tasks.py) judges at once; people label pairs.jsonl with
     label_tool.py, each into their own labels file, and `--report` reads all of them;
  4. report: the win rate with a 95% interval, per labeler and pooled, the labelers' agreement,
     the reward model's score, the scripted true score and KL(π‖ρ) of both sides on the same
     queries, and (scripted labelers) a few pairs side by side; summary.json holds all of it.

Where: RUN_DIR/eval-<labeler>/ (eval-sentiment/, eval-human/, ...; against another run or model
eval-<labeler>-vs-<its name>/), or --out. ppo.py's end of run writes its own scripted evaluation
to RUN_DIR/eval/. A scripted evaluation is replaced by the same one made again (same labeler,
other side, n and seed); anything else that holds an evaluation takes --overwrite, and pairs that
people have labeled are never replaced.

Blind: with --labeler human nothing printed or written to summary.json before the labeling tells
which sample is the policy's: the two sides' scores wait in key.json, and --report shows only how
many pairs are labeled until every labels file covers every pair (--unblind: the rates now).

How the numbers are counted (functions below, tested on hand-worked label sets):
  * a win is a comparison where the policy's sample was picked; a tie (a scripted labeler scoring
    both samples the same) counts as half a win, so the rate is (wins + ties / 2) / comparisons;
  * the interval is Wilson's score interval at that rate over all comparisons, ties included;
  * pooled over several labelers, each pair counts once, with the mean of its labelers' votes (a
    split vote is a tie), so pairs labeled twice do not narrow the interval as if they were new
    pairs. A person cannot tie: label_tool.py asks for a choice (skipped pairs are left out).

Run it:
    python evaluate.py runs/sentiment-tiny-s1                  # scripted labeler, against ρ
    python evaluate.py runs/sentiment-tiny-s1 --labeler human  # prints the label_tool.py command
    python evaluate.py runs/sentiment-tiny-s1 --report         # read eval-human/'s labels files
    python evaluate.py runs/a --against runs/b                 # one run against another
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import re
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

import gpt2
from machinery import amp, cli, labels, presets, runs, tasks
from machinery.labels import FormatError
from machinery.microbatch import forward_in_chunks

# --------------------------------------------------------------------------------------------------
# The statistics: small pure functions, imported by tests/test_evaluate.py


def win_rate(outcomes: list[float]) -> dict:
    """Win rate of a list of outcomes, one per comparison: 1 the policy was preferred, 0 the
    other side was, anything between a tie (0.5 for a scripted tie or a split vote). Ties count
    as half a win; `ties` counts the outcomes strictly between 0 and 1."""
    n = len(outcomes)
    wins = sum(1 for o in outcomes if o == 1)
    losses = sum(1 for o in outcomes if o == 0)
    rate = sum(outcomes) / n if n else float("nan")
    lo, hi = labels.wilson_interval(rate, n) if n else (float("nan"), float("nan"))
    return dict(rate=rate, lo=lo, hi=hi, n=n, wins=wins, ties=n - wins - losses, losses=losses)


def outcomes_by_labeler(rows: list[dict], policy_index: dict[str, int]) -> dict[str, dict]:
    """{labeler: {pair id: 1.0 if the policy's sample was picked else 0.0}} from label rows
    (machinery/labels.py format, already resolved: one label per labeler and pair; a later row
    wins)."""
    out = collections.defaultdict(dict)
    for r in rows:
        out[r.get("labeler", "?")][r["id"]] = 1.0 if r["best"] == policy_index[r["id"]] else 0.0
    return dict(out)


def pool(by_labeler: dict[str, dict]) -> dict[str, float]:
    """{pair id: mean vote of the labelers who labeled it}: each pair counts once, a split vote is
    a tie (e.g. 2 of 3 for the policy: 0.667)."""
    votes = collections.defaultdict(list)
    for per_pair in by_labeler.values():
        for id_, o in per_pair.items():
            votes[id_].append(o)
    return {id_: sum(v) / len(v) for id_, v in votes.items()}


def agreement(by_labeler: dict[str, dict]) -> dict | None:
    """Agreement on the pairs labeled by two or more labelers: the fraction of agreeing pairs of
    votes and Fleiss' kappa, over the categories 'policy' and 'other' (labels.fleiss_kappa).
    None when no pair was labeled twice."""
    votes = collections.defaultdict(list)
    for per_pair in by_labeler.values():
        for id_, o in per_pair.items():
            votes[id_].append(o)
    table = [[v.count(1.0), v.count(0.0)] for v in votes.values() if len(v) >= 2]
    if not table:
        return None
    return dict(
        pairs=len(table),
        percent=labels.percent_agreement(table),
        kappa=labels.fleiss_kappa(table),
    )


def preference_line(stats: dict, against: str = "ρ") -> str:
    """'policy preferred to ρ in 71.9% of 256 comparisons (95% CI 66.1–77.0%; ties 12)'."""
    return (
        f"policy preferred to {against} in {100 * stats['rate']:.1f}% of {stats['n']} comparisons "
        f"(95% CI {100 * stats['lo']:.1f}–{100 * stats['hi']:.1f}%; ties {stats['ties']})"
    )


# --------------------------------------------------------------------------------------------------
# Config


@dataclass
class Args:
    run_dir: str = ""
    """the ppo.py run folder to judge (its policy/ is the policy)"""
    against: str = "initial"
    """the other side: 'initial' (ρ, the run's base model), another run folder, or a model (a
    Hugging Face directory or a hub name)"""
    n: int = 256
    """held-out queries, one comparison each"""
    labeler: str = ""
    """a scripted labeler (sentiment, descriptiveness, rouge) that judges at once, or 'human' to
    write the pairs and print the label_tool.py command (default: the task's scripted labeler, else
    human)"""
    report: bool = False
    """do not sample: read the labels files of the pairs already written and print the win rates
    (once every labels file covers every pair; until then only how many are labeled)"""
    unblind: bool = False
    """with --report: print the win rates and scores before the labeling is done (whoever reads
    them learns which sample of each pair labeled so far was the policy's)"""
    labels: list[str] = field(default_factory=list)
    """with --report: labels files to read (default: every labels*.jsonl of the folder)"""
    out: str = ""
    """where the pairs, key, labels and summary live (default: RUN_DIR/eval-<labeler>, plus
    -vs-<name> with --against; --report: RUN_DIR/eval-human)"""
    overwrite: bool = False
    """replace an earlier evaluation in that folder (never one that people have labeled)"""
    seed: int = 0
    """sampling seed (the policy samples with it, the other side with seed + 1)"""
    batch_size: int = 64
    """queries sampled at once"""
    show: int = 4
    """pairs printed side by side (scripted labelers only: with --labeler human nothing is shown
    that tells which sample is the policy's)"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""


# --------------------------------------------------------------------------------------------------
# Runs and models


def read_run(run_dir) -> dict:
    """A ppo.py run folder's config.json, checked: it is a run (config.json with a task and a
    model) and has an exported policy."""
    run_dir = Path(run_dir)
    how = "give the folder `python ppo.py` wrote (runs/<task>-<model>-s<seed>)"
    if not run_dir.is_dir():
        raise SystemExit(f"error: {run_dir}: no such folder; {how}")
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {run_dir}: not a ppo.py run folder (no config.json); {how}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {path}: not valid JSON ({e}); {how}")
    if not isinstance(config, dict) or not {"task", "model", "seed"} <= set(config):
        raise SystemExit(
            f"error: {path}: not a ppo.py run's config (it needs task, model and seed); {how}"
        )
    if not (run_dir / "policy" / "config.json").is_file():
        raise SystemExit(
            f"error: {run_dir}: no exported policy (policy/config.json); ppo.py writes it at every "
            f"checkpoint: let the run reach its first checkpoint (--save-every), or resume it"
        )
    return config


def size_of(config) -> dict:
    return {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size")}


def check_against(run_dir: Path, run: dict, against: str, policy_config) -> None:
    """Refuse an `against` of another task or another model size, before anything loads (a hub
    name is checked once loaded)."""
    path = Path(against)
    if (path / "config.json").is_file() and (path / "policy").is_dir():  # a run folder
        other = read_run(path)
        if other["task"] != run["task"]:
            raise SystemExit(
                f"error: --against {against}: a run of task {other['task']!r}, but {run_dir} is a "
                f"{run['task']!r} run; compare runs of the same task"
            )
    if path.is_dir():
        try:
            theirs = gpt2.read_config(against)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"error: --against {against}: {e}")
        if size_of(theirs) != size_of(policy_config):
            raise SystemExit(
                f"error: --against {against}: a model of {size_of(theirs)}, but {run_dir}'s policy "
                f"has {size_of(policy_config)}; compare policies of the same model size"
            )


# --------------------------------------------------------------------------------------------------
# 1. Sampling: one response per query from each side, with its score and KL


@torch.no_grad()
def sample_side(lm, ref, reward_model, task, queries, cfg, seed: int, batch_size: int, device):
    """Responses of `lm` to raw queries, made and scored as ppo.py's rollout makes them (steps 1-3:
    the same sampling at cfg.temperature, truncation, penalty, reward-model score and KL against
    ρ, in micro-batches of cfg.micro_batch_size). Returns truncated responses (token lists, pads
    dropped), reward-model scores (B,) and KL(lm‖ρ) per episode (B,)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    R = task.response_length
    responses, scores, kls = [], [], []
    for i in range(0, len(queries), batch_size):
        raw = queries[i : i + batch_size]
        context = [tasks.policy_context(task, q) for q in raw]
        q_tokens, q_mask = gpt2.left_pad(context, device=device)  # (B, Q)
        with amp.autocast(device, cfg.precision):
            new, _ = gpt2.generate(lm, q_tokens, q_mask, R, cfg.temperature, generator=gen)
            tokens = torch.cat([q_tokens, new], 1)  # (B, T)
            mask = torch.cat([q_mask, torch.ones_like(new, dtype=torch.bool)], 1)
            (kl,) = forward_in_chunks(
                lambda t, m: (
                    gpt2.response_logprobs(lm, t, m, R, cfg.temperature)[0]
                    - gpt2.response_logprobs(ref, t, m, R, cfg.temperature)[0],
                ),
                cfg,
                tokens,
                mask,
            )  # (B, R)
            truncated, valid = tasks.truncate_responses(new, task)
            raw_tokens, raw_mask = gpt2.left_pad(raw, device=device)  # the raw query, as ppo.py
            (score,) = forward_in_chunks(
                lambda q, m, r: (reward_model.score(q, m, r),), cfg, raw_tokens, raw_mask, truncated
            )
        responses += [tasks.strip_pad(r) for r in truncated.tolist()]
        scores.append(tasks.penalize(score.float(), valid, task).cpu())
        kls.append(kl.sum(1).float().cpu())
    return responses, torch.cat(scores), torch.cat(kls)


# --------------------------------------------------------------------------------------------------
# 2. The blind pairs file and its key


def make_pairs(task_name, queries, policy_responses, other_responses, rng, references=None):
    """Comparison rows (machinery/labels.py, N = 2) and the key {id: index of the policy's sample}.
    references: each query's reference summary or None (kept in the row, as in the comparisons
    the reward model's labels were made on).

    Blind by construction: the rows hold only the format's fields; the pairs are shuffled and each
    pair's two samples are in a random order; an id is a random prefix shared by the whole file
    plus the line number, so it says nothing about the order either (and labels of another pairs
    file cannot pass for these: their prefix differs)."""
    enc = gpt2.get_tokenizer()
    prefix = f"{rng.getrandbits(24):06x}"
    order = list(range(len(queries)))
    rng.shuffle(order)
    rows, key, query_index = [], {}, {}
    for line, i in enumerate(order):
        k = rng.randrange(2)  # where the policy's sample goes
        samples = [other_responses[i], policy_responses[i]]
        if k == 0:
            samples.reverse()
        id_ = f"{prefix}-{line + 1:04d}"
        rows.append(
            dict(
                id=id_,
                task=task_name,
                query=enc.decode(queries[i]),
                query_tokens=list(queries[i]),
                samples=[enc.decode(s) for s in samples],
                sample_tokens=samples,
            )
        )
        if references is not None and references[i] is not None:
            rows[-1]["reference"] = references[i]
        key[id_], query_index[id_] = k, i
    return rows, key, query_index


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def existing_labels(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("labels*.jsonl") if p.stat().st_size > 0)


def refuse_if_labeled(out: Path) -> None:
    """New pairs would orphan the labels people made of the old ones: refuse, before sampling."""
    done = existing_labels(out)
    if done:
        raise SystemExit(
            f"error: {out} already holds labels of its pairs ({', '.join(p.name for p in done)}); "
            f"writing new pairs would orphan them. Read them with --report, or make new pairs in "
            f"another folder: {rerun_into(out)}"
        )


EVAL_FILES = ("pairs.jsonl", "key.json", "summary.json")  # what judge writes into --out
# What makes two evaluations the same (key.json's fields): made again, a scripted one replaces the
# old one. The run folder is not among them: the same run may be named by another path.
METHOD = ("task", "model", "labeler", "against", "n", "seed")


def labeler_name(run: dict, labeler: str) -> str:
    """The labeler an evaluation of `run` (its config.json) uses: --labeler, else the run's
    scripted labeler, else the task's, else 'human'."""
    try:
        task = tasks.get_task(run["task"])
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    return labeler or run.get("labeler") or task.labeler or "human"


def default_out(run_dir: Path, labeler: str, against: str) -> Path:
    """RUN_DIR/eval-<labeler>[-vs-<against's name>]: one folder per kind of evaluation, none of
    them ppo.py's end-of-run eval/, so that neither replaces the other."""
    name = f"eval-{labeler}"
    if against != "initial":
        other = Path(against)
        other = other.resolve().name if other.exists() else against.rstrip("/").split("/")[-1]
        name += "-vs-" + re.sub(r"[^A-Za-z0-9._-]+", "_", other)
    return run_dir / name


def rerun_into(out: Path) -> str:
    """This command with --out naming a free folder beside `out` (any --out it had dropped)."""
    i = 2
    while (out.parent / f"{out.name}-{i}").exists():
        i += 1
    args = None
    if Path(sys.argv[0]).name == "evaluate.py":  # drop --out X / --out=X: the new one replaces it
        args = [a for a in sys.argv[1:] if not a.startswith("--out=")]
        if "--out" in args[:-1]:
            del args[args.index("--out") : args.index("--out") + 2]
    return cli.rerun(
        "evaluate.py", args, f"--out {shlex.quote(str(out.parent / f'{out.name}-{i}'))}"
    )


def claim_out(out: Path, overwrite: bool, method: dict) -> None:
    """judge's check before anything loads: pairs people have labeled are never replaced
    (refuse_if_labeled); a scripted evaluation made the same way (METHOD) is replaced, as if
    made again; another evaluation only with overwrite (ppo.py's end of run: its own eval/). The
    old files are deleted first, so that no old summary.json or key.json sits beside new pairs if
    this one stops halfway."""
    refuse_if_labeled(out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; give a folder")
    held = cli.held(out, EVAL_FILES)
    if held and not overwrite:
        try:
            before = json.loads((out / "key.json").read_text())
            before = {k: before.get(k) for k in METHOD}
        except (OSError, ValueError, AttributeError):
            before = {}
        replace = f"or replace it: {cli.rerun('evaluate.py', None)}"
        if before.get("labeler") == "human":
            raise SystemExit(
                f"error: {out} holds blind pairs for people, not labeled yet; label them: "
                f"{label_command(out, before.get('task') or '')}, {replace}"
            )
        if before != method:
            differ = [f"{k} {before[k]} -> {method[k]}" for k in METHOD if before[k] != method[k]]
            raise SystemExit(
                f"error: {out} already holds an evaluation ({', '.join(held)}; made another way: "
                f"{', '.join(differ) if before else 'no key.json'}); keep it and evaluate into "
                f"another folder: {rerun_into(out)}, {replace}"
            )
        print(f"{out}: replacing the scripted evaluation made the same way ({', '.join(METHOD)})")
    cli.remove(out, held)


def interrupted(out: Path) -> str:
    """What Ctrl-C leaves (cli.run_main says it): judge writes its files once sampling ends."""
    if cli.held(out, EVAL_FILES):
        return f"{out} holds an unfinished evaluation; redo it: {cli.rerun('evaluate.py', None)}"
    return f"nothing written to {out}; run the same command again"


def write_pairs(out: Path, rows: list[dict], key: dict, meta: dict) -> None:
    """pairs.jsonl, then key.json (which names pairs.jsonl's hash, so a key never vouches for
    another file)."""
    refuse_if_labeled(out)
    out.mkdir(parents=True, exist_ok=True)
    labels.write_comparisons(out / "pairs.jsonl", rows)
    meta = dict(meta, pairs_sha256=sha256_of(out / "pairs.jsonl"), policy_index=key)
    cli.atomic_write(out / "key.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def read_pairs(out: Path) -> tuple[list[dict], dict]:
    """pairs.jsonl and key.json, checked against each other."""
    pairs_path, key_path = out / "pairs.jsonl", out / "key.json"
    if not pairs_path.is_file() or not key_path.is_file():
        raise SystemExit(
            f"error: {out}: no pairs.jsonl and key.json; write them first with "
            f"`python evaluate.py RUN_DIR --labeler human`"
        )
    try:
        rows = labels.read_comparisons(pairs_path)
        meta = json.loads(key_path.read_text())
    except (FormatError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {e}")
    if meta.get("pairs_sha256") != sha256_of(pairs_path):
        raise SystemExit(
            f"error: {pairs_path} changed after evaluate.py wrote it (its hash is not the one in "
            f"{key_path}), so the key no longer says which sample is the policy's; restore it, "
            f"or evaluate again into a new --out"
        )
    return rows, meta


def read_eval_labels(paths: list[Path], pairs: list[dict]) -> tuple[list[dict], dict]:
    """Every label row of `paths` (machinery/labels.py resolves undo/skip), each checked to be a
    label of one of `pairs`: same id, same query and sample tokens. Labels of another pairs file
    (another run, an earlier evaluation) are an error naming the file and id. Also returns each
    file's progress, {path: (pairs labeled, pairs skipped)}."""
    by_id = {r["id"]: r for r in pairs}
    rows, progress = [], {}
    for path in paths:
        counts = {}
        try:
            got = labels.read_labels(path, counts=counts)
        except FormatError as e:
            raise SystemExit(f"error: {e}")
        progress[path] = (counts["labels"], counts["skipped"])
        for r in got:
            p = by_id.get(r["id"])
            if p is None or (r["query_tokens"], r["sample_tokens"]) != (
                p["query_tokens"],
                p["sample_tokens"],
            ):
                what = "is not in" if p is None else "has other tokens than its pair in"
                raise SystemExit(
                    f"error: {path}: the label of id {r['id']!r} {what} the pairs file; these "
                    f"labels belong to another pairs file (another run or an earlier evaluation). "
                    f"Give --report the labels made on this run's pairs.jsonl"
                )
            if len(r["sample_tokens"]) != 2:
                raise SystemExit(f"error: {path}: id {r['id']!r} has N != 2")
            rows.append(r)
    return rows, progress


# --------------------------------------------------------------------------------------------------
# 3-4. Judging and reporting


def score_lines(scores: dict, against: str) -> list[str]:
    """The two sides' reward-model score and KL(·‖ρ), and their scripted true score if any."""
    lines = [
        f"reward model score: policy {scores['score_policy']:.3f}, {against} "
        f"{scores['score_against']:.3f} | KL(·‖ρ) nats: policy {scores['kl_policy']:.2f}, "
        f"{against} {scores['kl_against']:.2f} (on the same queries)"
    ]
    if "true_score_policy" in scores:
        lines.append(
            f"true score ({scores['true_labeler']} labeler): policy "
            f"{scores['true_score_policy']:.3f}, {against} {scores['true_score_against']:.3f}"
        )
    return lines


def human_report(
    out: Path, paths: list[Path], against: str, unblind: bool = False
) -> tuple[list[str], dict | None]:
    """The report lines and summary entries for people's labels files: how far each file is,
    then (once every file covers every pair, labeled or skipped, or with unblind) a line per
    labeler, pooled, their agreement and the two sides' scores. Before that the entries are None:
    a person who reads the rates after each pick would learn which sample was the policy's."""
    pairs, meta = read_pairs(out)
    if not paths:
        raise SystemExit(
            f"error: no labels files in {out} (labels*.jsonl); label the pairs first:\n"
            f"  {label_command(out, meta.get('task', ''))}"
        )
    rows, progress = read_eval_labels(paths, pairs)
    lines = [f"{len(pairs)} pairs in {out / 'pairs.jsonl'}"]
    for path, (labeled, skipped) in progress.items():
        lines.append(
            f"{path}: {labeled} of {len(pairs)} labeled"
            + (f", {skipped} skipped" if skipped else "")
        )
    done = all(labeled + skipped >= len(pairs) for labeled, skipped in progress.values())
    if not done and not unblind:
        lines.append(
            "the win rates stay hidden until every labels file covers every pair (labeled or "
            "skipped): seen after each pick they would tell which sample was the policy's. "
            "--unblind shows them now"
        )
        return lines, None
    if not done:
        lines.append("--unblind: the labeling is not finished; these rates unblind it")
    by_labeler = outcomes_by_labeler(rows, meta["policy_index"])
    summary = {"labels": [str(p) for p in paths], "by_labeler": {}, "finished": done}
    width = max(len(k) for k in by_labeler) + 1
    for who, per_pair in sorted(by_labeler.items()):
        s = win_rate(list(per_pair.values()))
        summary["by_labeler"][who] = s
        lines.append(f"{who + ':':<{width}} {preference_line(s, against)}")
    pooled = win_rate(list(pool(by_labeler).values()))
    summary["pooled"] = pooled
    lines.append(
        f"pooled ({len(by_labeler)} labeler{'s' if len(by_labeler) > 1 else ''}, each pair once, "
        f"split votes as ties): {preference_line(pooled, against)}"
    )
    agree = agreement(by_labeler)
    summary["agreement"] = agree
    if agree is None:
        lines.append("agreement: no pair is labeled by two labelers")
    else:
        kappa = "undefined" if math.isnan(agree["kappa"]) else f"{agree['kappa']:.2f}"
        lines.append(
            f"agreement on {agree['pairs']} pairs labeled more than once: "
            f"{100 * agree['percent']:.1f}% of pairs of votes agree (chance 50%), Fleiss' κ "
            f"{kappa}"
        )
    if meta.get("scores"):
        lines += score_lines(meta["scores"], against)
    return lines, summary


def label_command(out: Path, task: str) -> str:
    who = labels.login_name()
    return (
        f"python label_tool.py {shlex.quote(str(out / 'pairs.jsonl'))} --out "
        f"{shlex.quote(str(out / f'labels_{who}.jsonl'))} --labeler {shlex.quote(who)}"
        + (f" --task {task}" if task else "")
    )


def side_by_side(rows: list[tuple[str, str, str]], width: int = 100) -> str:
    """A plain-text table of (query end, policy response, other response); the end-of-text
    token, which starts many queries, shows as ⟨eot⟩."""
    col = (width - 6) // 3
    clip = lambda s: s.replace("\n", " ").replace("<|endoftext|>", "⟨eot⟩")  # noqa: E731
    lines = [f"{'query (end)':<{col}} | {'policy':<{col}} | other"]
    for q, a, b in rows:
        a, b = clip(a)[:col], clip(b)[:col]
        lines.append(f"{clip(q)[-col:]:<{col}} | {a:<{col}} | {b}")
    return "\n".join(lines)


def update_summary(out: Path, entries: dict) -> dict:
    """Add entries to eval/summary.json (what --report found, beside the sampling's numbers)."""
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(entries)
    cli.atomic_write(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def judge(
    run_dir,
    against: str = "initial",
    n: int = 256,
    labeler: str = "",
    out=None,
    seed: int = 0,
    batch_size: int = 64,
    show: int = 4,
    device: str = "cpu",
    models: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Steps 1-4 for a run folder: sample, write the blind pairs, judge with the scripted labeler
    (unless labeler == 'human') and write summary.json into `out` (default_out). Returns the
    summary.

    models: already loaded {"policy", "ref", "reward_model"} (ppo.py's end of run passes its own,
    so nothing is loaded twice); by default they are read from the run folder. overwrite: replace
    an earlier evaluation in `out` (claim_out)."""
    t0 = time.time()
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    cfg = SimpleNamespace(**run)  # config.json: the run's options, resolved when it started
    task = tasks.get_task(cfg.task)
    name = labeler_name(run, labeler)  # the labeler that judges ('human': people do)
    if name != "human" and name not in tasks.LABELERS:
        raise SystemExit(
            f"error: --labeler {name!r}: use one of {', '.join(tasks.LABELERS)} or 'human'"
        )
    out = Path(out) if out else default_out(run_dir, name, against)
    # what names this evaluation, in key.json and in summary.json
    names = dict(run=str(run_dir), against=against, task=task.name, model=cfg.model, n=n)
    names["labeler"] = name
    method = {k: dict(names, seed=seed)[k] for k in METHOD}
    claim_out(out, overwrite, method)  # before any query or model loads: no time wasted
    # the held-out queries: those ppo.py's before/after numbers use
    try:
        source = tasks.QuerySource(task, "test", seed=0, query_data=cfg.query_data)
        items = source.next_queries(n)
    except (ValueError, tasks.DownloadError) as e:
        raise SystemExit(f"error: {e}")
    queries, references = [q.tokens for q in items], [q.reference for q in items]
    # the scripted labeler that gives the true score: the judge's, or with people the run's
    scripted = (cfg.labeler or task.labeler) if name == "human" else name
    if scripted and tasks.get_labeler(scripted).needs_reference and None in references:
        if name != "human":
            raise SystemExit(
                f"error: --labeler {name}: it compares with reference summaries, and these "
                f"held-out queries have none; use --labeler human"
            )
        scripted = ""  # no true score
    models = models or {}
    policy = models.get("policy")
    if policy is None:
        try:
            policy = gpt2.GPT2.from_pretrained(str(run_dir / "policy"), device=device)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise SystemExit(f"error: {e}")
    ref = models.get("ref")
    if ref is None:
        ref = tasks.load_base_model(cfg.model, device=device)
    if size_of(ref.config) != size_of(policy.config):
        raise SystemExit(
            f"error: {run_dir}/policy is a model of {size_of(policy.config)}, but the run's base "
            f"model {cfg.model!r} has {size_of(ref.config)}; the folder mixes two runs"
        )
    if against == "initial":
        other, against_name = ref, "ρ"
    else:
        check_against(run_dir, run, against, policy.config)
        try:
            other = tasks.load_base_model(against, device=device)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise SystemExit(f"error: --against {against}: {e}")
        if size_of(other.config) != size_of(policy.config):
            raise SystemExit(
                f"error: --against {against}: a model of {size_of(other.config)}, but {run_dir}'s "
                f"policy has {size_of(policy.config)}; compare policies of the same model size"
            )
        against_name = against
    rm = models.get("reward_model")
    if rm is None:
        rm_path = Path(cfg.reward_model)
        if not rm_path.is_file() and (run_dir / "rm.pt").is_file():  # run moved, or another cwd
            rm_path = run_dir / "rm.pt"
        rm = runs.load_reward(str(rm_path), ref, device)

    # 1. sample one response per query from each side
    distinct = len({tuple(q) for q in queries})
    if distinct < n:
        print(
            f"note: the {task.name} test split has {distinct} distinct queries; the {n} "
            f"comparisons use each about {n / distinct:.1f} times (with fresh samples each time)"
        )
    with torch.no_grad():
        pol = sample_side(policy, ref, rm, task, queries, cfg, seed, batch_size, device)
        oth = sample_side(other, ref, rm, task, queries, cfg, seed + 1, batch_size, device)

    # the two sides' scores (step 4): the reward model's, KL(·‖ρ) and the scripted true score
    enc = gpt2.get_tokenizer()
    texts_p = [enc.decode(r) for r in pol[0]]
    texts_o = [enc.decode(r) for r in oth[0]]
    scores = dict(
        score_policy=pol[1].mean().item(),
        score_against=oth[1].mean().item(),
        kl_policy=pol[2].mean().item(),
        kl_against=oth[2].mean().item(),
    )
    if scripted:
        scorer = tasks.get_labeler(scripted)
        refs = references if scorer.needs_reference else None
        true_p, true_o = scorer.score(texts_p, refs), scorer.score(texts_o, refs)
        scores.update(
            true_score_policy=float(true_p.mean()),
            true_score_against=float(true_o.mean()),
            true_labeler=scorer.name,
        )

    # 2. the blind pairs file; the key beside it (with people, the scores too: until they are
    # done, nothing they may see says which side scored higher)
    rng = random.Random(secrets.randbits(64))  # not the seed: the order must not be guessable
    rows, key, query_index = make_pairs(task.name, queries, pol[0], oth[0], rng, references)
    meta = dict(names, seed=seed, query_index=query_index)
    if name == "human":
        meta["scores"] = scores
    write_pairs(out, rows, key, meta)
    print(f"wrote {len(rows)} blind pairs to {out / 'pairs.jsonl'} (the key: {out / 'key.json'})")

    # 3-4. the judge and the report
    summary = dict(names, distinct_queries=distinct, temperature=cfg.temperature)
    if name != "human":  # people label blind: nothing they see may tell which sample is whose
        summary.update(scores)
        print("\n".join(score_lines(scores, against_name)))
        # the scripted labeler's choice: the higher score; equal scores are a tie (half a win)
        outcomes = [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(true_p, true_o)]
        stats = win_rate(outcomes)
        summary["win_rate"] = dict(stats, labeler=f"script:{name}")
        print(f"{name} labeler: {preference_line(stats, against_name)}")
        rows = [(enc.decode(queries[i]), texts_p[i], texts_o[i]) for i in range(min(show, n))]
        print(side_by_side(rows))
    summary["seconds"] = round(time.time() - t0, 1)
    # a fresh summary: anything in the old one was about the pairs just replaced
    cli.atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if name == "human":
        print(
            f"label the pairs (blind: each person into their own labels file):\n"
            f"  {label_command(out, task.name)}\n"
            f"then: python evaluate.py {shlex.quote(str(run_dir))} --report"
            + (
                f" --out {shlex.quote(str(out))}"
                if out != default_out(run_dir, "human", "initial")
                else ""
            )
        )
    return summary


def end_of_run(run) -> dict:
    """ppo.py's one call at the end of a run: the scripted win rate against ρ on the run's
    held-out queries (cfg.eval_episodes of them), with the models already in memory. Returns the
    entry for summary.json ({} when the task has no scripted labeler, or when people have
    labeled the run's pairs already: new pairs would orphan their labels)."""
    if run.labeler is None:
        return {}
    out = run.run_dir / "eval"
    if existing_labels(out):
        print(f"evaluate: {out} holds people's labels; not replacing its pairs (see --report)")
        return {}
    models = dict(policy=run.policy.lm, ref=run.ref, reward_model=run.reward_model)
    summary = judge(
        run.run_dir, n=run.cfg.eval_episodes, labeler=run.labeler.name, out=out,
        device=run.device, models=models, overwrite=True,  # its eval/: a resumed end replaces it
    )  # fmt: skip
    return {"win_rate_vs_initial": summary["win_rate"]}


def main(argv=None):
    args = presets.parse(  # cli.parse, and a value out of range refused before any work
        Args,
        argv,
        description=__doc__.strip().split("\n\n")[0],
        epilog="\n\n".join(__doc__.strip().split("\n\n")[1:]),
        positional=("run_dir",),
    )
    if not args.run_dir:
        raise SystemExit("error: give a run folder: python evaluate.py RUN_DIR (see --help)")
    run_dir = Path(args.run_dir)
    run = read_run(run_dir)
    if args.report:
        out = Path(args.out) if args.out else default_out(run_dir, "human", args.against)
        paths = [Path(p) for p in args.labels] if args.labels else existing_labels(out)
        meta = read_pairs(out)[1]
        against = "ρ" if meta.get("against", "initial") == "initial" else meta["against"]
        lines, entries = human_report(out, paths, against, args.unblind)
        print("\n".join(lines))
        if entries is not None:
            update_summary(out, {"human": entries, **meta.get("scores", {})})
        return entries
    if args.unblind:
        raise SystemExit("error: --unblind goes with --report (it shows the labels' win rates)")
    out = (
        Path(args.out)
        if args.out
        else default_out(run_dir, labeler_name(run, args.labeler), args.against)
    )
    cli.on_interrupt(lambda: interrupted(out))
    return judge(
        run_dir,
        args.against,
        args.n,
        args.labeler,
        out,
        args.seed,
        args.batch_size,
        args.show,
        cli.pick_device(args.device),
        overwrite=args.overwrite,
    )


if __name__ == "__main__":
    cli.run_main(main)  # expected errors and Ctrl-C: one line each
