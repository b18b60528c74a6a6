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
  2. pairs: write them as RUN_DIR/eval/pairs.jsonl, a comparisons file with N = 2
     (machinery/labels.py), in a random order, both the order of the pairs and of the two samples
     within each. Which sample is the policy's is kept in RUN_DIR/eval/key.json only: a person
     labeling pairs.jsonl is blind (the ids are a random prefix and the line number);
  3. judge: a scripted labeler (machinery/tasks.py) judges at once; people label pairs.jsonl with
     label_tool.py, each into their own labels file, and `--report` reads all of them;
  4. report: the win rate with a 95% interval, per labeler and pooled, the labelers' agreement,
     the reward model's score, the scripted true score and KL(π‖ρ) of both sides on the same
     queries, and a few pairs side by side; RUN_DIR/eval/summary.json holds all of it.

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
    python evaluate.py runs/sentiment-tiny-s1 --report         # read the people's labels files
    python evaluate.py runs/a --against runs/b                 # one run against another
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import secrets
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

import gpt2
from machinery import amp, cli, labels, runs, tasks
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
    """do not sample: read the labels files of the pairs already written and print the win rates"""
    labels: list[str] = field(default_factory=list)
    """with --report: labels files to read (default: every RUN_DIR/eval/labels*.jsonl)"""
    out: str = ""
    """where the pairs, key, labels and summary live (default: RUN_DIR/eval)"""
    overwrite: bool = False
    """replace an earlier evaluation in --out (never one that people have labeled)"""
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
            f"writing new pairs would orphan them. Read them with --report, or evaluate into "
            f"another folder with --out"
        )


EVAL_FILES = ("pairs.jsonl", "key.json", "summary.json")  # what judge writes into --out


def claim_out(out: Path, overwrite: bool) -> None:
    """judge's check before anything loads: pairs people have labeled are never replaced
    (refuse_if_labeled); an earlier evaluation is, only with overwrite (ppo.py's end of run: its
    own eval/), and its files are deleted first, so that no old summary.json or key.json sits
    beside new pairs if this one stops halfway."""
    refuse_if_labeled(out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; give a folder")
    held = cli.held(out, EVAL_FILES)
    if held and not overwrite:
        raise SystemExit(
            f"error: {out} already holds an evaluation ({', '.join(held)}); read its "
            f"summary.json, evaluate into another folder with --out, or replace it: "
            f"{cli.rerun('evaluate.py', None)}"
        )
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


def read_eval_labels(paths: list[Path], pairs: list[dict]) -> list[dict]:
    """Every label row of `paths` (machinery/labels.py resolves undo/skip), each checked to be a
    label of one of `pairs`: same id, same query and sample tokens. Labels of another pairs file
    (another run, an earlier evaluation) are an error naming the file and id."""
    by_id = {r["id"]: r for r in pairs}
    rows = []
    for path in paths:
        try:
            got = labels.read_labels(path)
        except FormatError as e:
            raise SystemExit(f"error: {e}")
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
    return rows


# --------------------------------------------------------------------------------------------------
# 3-4. Judging and reporting


def human_report(out: Path, paths: list[Path], against: str) -> tuple[list[str], dict]:
    """The report lines and summary entries for people's labels files: a line per labeler,
    pooled, and their agreement."""
    pairs, meta = read_pairs(out)
    if not paths:
        raise SystemExit(
            f"error: no labels files in {out} (labels*.jsonl); label the pairs first:\n"
            f"  {label_command(out, meta.get('task', ''))}"
        )
    rows = read_eval_labels(paths, pairs)
    by_labeler = outcomes_by_labeler(rows, meta["policy_index"])
    lines = [f"labels: {', '.join(str(p) for p in paths)}; {len(pairs)} pairs"]
    summary = {"labels": [str(p) for p in paths], "by_labeler": {}}
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
    return lines, summary


def label_command(out: Path, task: str) -> str:
    who = labels.login_name()
    return (
        f"python label_tool.py {shlex.quote(str(out / 'pairs.jsonl'))} --out "
        f"{shlex.quote(str(out / f'labels_{who}.jsonl'))} --labeler {shlex.quote(who)}"
        + (f" --task {task}" if task else "")
    )


def side_by_side(rows: list[tuple[str, str, str]], width: int = 100) -> str:
    """A plain-text table of (query end, policy response, other response)."""
    col = (width - 6) // 3
    clip = lambda s, n: s.replace("\n", " ")[:n]  # noqa: E731
    lines = [f"{'query (end)':<{col}} | {'policy':<{col}} | other"]
    for q, a, b in rows:
        lines.append(f"{clip(q[-col:], col):<{col}} | {clip(a, col):<{col}} | {clip(b, col)}")
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
    (unless labeler == 'human') and write eval/summary.json. Returns the summary.

    models: already loaded {"policy", "ref", "reward_model"} (ppo.py's end of run passes its own,
    so nothing is loaded twice); by default they are read from the run folder. overwrite: replace
    an earlier evaluation in `out` (claim_out)."""
    t0 = time.time()
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    cfg = SimpleNamespace(**run)  # config.json: the run's options, resolved when it started
    task = tasks.get_task(cfg.task)
    out = Path(out) if out else run_dir / "eval"
    claim_out(out, overwrite)  # before any query or model loads: no time wasted
    # the held-out queries: those ppo.py's before/after numbers use
    try:
        source = tasks.QuerySource(task, "test", seed=0, query_data=cfg.query_data)
        items = source.next_queries(n)
    except (ValueError, tasks.DownloadError) as e:
        raise SystemExit(f"error: {e}")
    queries, references = [q.tokens for q in items], [q.reference for q in items]
    # the scripted labeler that judges (none: people do) and the one that gives the true score
    scripted = cfg.labeler or task.labeler
    name = labeler or scripted or "human"
    if name != "human" and name not in tasks.LABELERS:
        raise SystemExit(
            f"error: --labeler {name!r}: use one of {', '.join(tasks.LABELERS)} or 'human'"
        )
    scripted = scripted if name == "human" else name
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

    # 2. the blind pairs file; the key beside it
    rng = random.Random(secrets.randbits(64))  # not the seed: the order must not be guessable
    rows, key, query_index = make_pairs(task.name, queries, pol[0], oth[0], rng, references)
    # what names this evaluation, in key.json and in summary.json
    names = dict(run=str(run_dir), against=against, task=task.name, model=cfg.model, n=n)
    meta = dict(names, seed=seed, query_index=query_index)
    write_pairs(out, rows, key, meta)
    print(f"wrote {len(rows)} blind pairs to {out / 'pairs.jsonl'} (the key: {out / 'key.json'})")

    # 3-4. scores, the judge, the report
    enc = gpt2.get_tokenizer()
    texts_p = [enc.decode(r) for r in pol[0]]
    texts_o = [enc.decode(r) for r in oth[0]]
    summary = dict(
        names,
        distinct_queries=distinct,
        temperature=cfg.temperature,
        score_policy=pol[1].mean().item(),
        score_against=oth[1].mean().item(),
        kl_policy=pol[2].mean().item(),
        kl_against=oth[2].mean().item(),
    )
    print(
        f"reward model score: policy {summary['score_policy']:.3f}, {against_name} "
        f"{summary['score_against']:.3f} | KL(·‖ρ) nats: policy {summary['kl_policy']:.2f}, "
        f"{against_name} {summary['kl_against']:.2f} (on the same {n} queries)"
    )
    if scripted:
        scorer = tasks.get_labeler(scripted)
        refs = references if scorer.needs_reference else None
        true_p, true_o = scorer.score(texts_p, refs), scorer.score(texts_o, refs)
        summary.update(
            true_score_policy=float(true_p.mean()),
            true_score_against=float(true_o.mean()),
            true_labeler=scorer.name,
        )
        print(
            f"true score ({scorer.name} labeler): policy {summary['true_score_policy']:.3f}, "
            f"{against_name} {summary['true_score_against']:.3f}"
        )
    if name != "human":
        # the scripted labeler's choice: the higher score; equal scores are a tie (half a win)
        outcomes = [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(true_p, true_o)]
        stats = win_rate(outcomes)
        summary["win_rate"] = dict(stats, labeler=f"script:{name}")
        print(f"{name} labeler: {preference_line(stats, against_name)}")
    if name != "human":  # people label blind: nothing printed may tell which sample is whose
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
            + (f" --out {shlex.quote(str(out))}" if out != run_dir / "eval" else "")
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
        run.run_dir, n=run.cfg.eval_episodes, labeler=run.labeler.name, device=run.device,
        models=models, overwrite=True,  # the run's own eval/: a resumed end replaces it
    )  # fmt: skip
    return {"win_rate_vs_initial": summary["win_rate"]}


def main(argv=None):
    args = cli.parse(
        Args,
        argv,
        description=__doc__.strip().split("\n\n")[0],
        epilog="\n\n".join(__doc__.strip().split("\n\n")[1:]),
        positional=("run_dir",),
    )
    if not args.run_dir:
        raise SystemExit("error: give a run folder: python evaluate.py RUN_DIR (see --help)")
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "eval"
    if args.report:
        read_run(run_dir)
        paths = [Path(p) for p in args.labels] if args.labels else existing_labels(out)
        meta = read_pairs(out)[1]
        against = "ρ" if meta.get("against", "initial") == "initial" else meta["against"]
        lines, entries = human_report(out, paths, against)
        print("\n".join(lines))
        update_summary(out, {"human": entries})
        return entries
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
