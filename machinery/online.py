"""
Online label collection (`ppo.py --online`): labels of the CURRENT policy's samples arrive while PPO
trains, and the reward model is retrained on them. This is the paper's main summarization setting
(Ziegler et al. 2019, §2.3 and §4.1); the released lm-human-preferences code has only the offline
mode (one reward model from ρ's samples, frozen), so this module is built from the paper's text.

The schedule, over a run of E episodes with a budget of N labels, N0 of them before RL:
  * after n episodes the run should have l(n) = N0 + (N - N0)·(1 - (1 - n/E)²) labels: most come
    early (labels_due);
  * the reward model is trained K = --rm-trainings times in all, at evenly spaced label counts
    p_k = N0 + floor(k·(N - N0)/K), k = 0..K-1 (retrain_points). The first, on the N0 labels of
    ρ's samples, comes before RL. (A (K+1)-th point would fall at N labels, when the run ends and no
    RL is left to use it; the labels after p_{K-1} still measure π's win rate.) Each training
    starts again from ρ with a fresh random head, runs over all labels so far and is normalized
    against ρ again: reward.train_reward_model, as `reward.py train` does. It holds out the newest
    --rm.test-fraction of the labels, which makes its held-out accuracy the accuracy on the current
    policy's samples. (The paper trains one epoch; --rm.epochs applies, and the tiny preset uses 8,
    as it does offline.)
  * every --validation-every k-th comparison during RL is a validation item: two samples of ρ and
    two of π. The labelers' picks on them give π's win rate over ρ (with a Wilson interval; a
    scripted pick among tied samples counts the share of them that are π's); they are training
    labels too.

The collection is "batched", as the paper recommends after finding fully asynchronous collection
hard to debug: at the start of each PPO update, ppo.py calls Online.before_update(), which queues
the comparisons the schedule calls for from the policy of that moment, takes in the labels that
arrived, and retrains when a training point is reached. Sampling stops only while the reward model
trains, or while the labels a due retraining needs have not arrived (a scripted labeler labels at
once; with people, PPO waits and says for what, or goes on for up to --max-label-lag updates).

Files, in RUN_DIR/online/ (the interface label_tool.py --follow reads and writes):
    state.json       {"run_id": random hex made once per run, "task", "temperature" (the run's:
                      every comparison and normalization sample is drawn at it, as π's rollouts),
                      "labels_total", "labels_initial", "rm_trainings", "validation_every",
                      "labeler", "created"}, written once when the run starts
    queue.jsonl      append-only, one writer (this module): comparisons in labels.py's format plus
                     provenance: run_id, update (how many PPO updates the policy that made the
                     samples had done), policies ("rho"/"pi" per sample), validation (bool), queued
                     (ISO time). Ids are f"{run_id}-{n}", n = 0, 1, ... in file order.
    labels-<labeler>.jsonl   one file per labeler, labels.py's labels format (the last line about
                     an id wins; undo/skip lines); every line carries the queue item's run_id. A
                     scripted labeler writes labels-<its name>.jsonl, with `tied` (the indices
                     of equal top score) where it broke a tie. When several labelers label the
                     same item, each label is its own training row.
    rm.pt            the current reward model (written atomically; its meta says which training
                     it is and on how many labels); trainings.jsonl logs each training.

Crash safety: every line is appended with labels.append_jsonl (one write, fsync), and nothing
here ever rewrites a queue or labels line. A resumed run (ppo.py --resume) reads the queue back
(checked line by line), labels what its scripted labeler had not labeled yet, keeps the newest
complete reward model, and redoes a training that was cut off. PPO itself resumes from its last
checkpoint; the comparisons queued after that checkpoint stay in the queue (their labels are real
decisions), and the resumed run queues nothing new until the schedule passes them, so the number of
comparisons queued at each update is the same as in an uninterrupted run. A queue or labels file of
another run (another run_id) is refused with the file and line named.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import secrets
import sys
import time
from pathlib import Path

import torch

import gpt2
import reward
from machinery import cli, comparisons, dist, labels, tasks

WIN_RATE_WINDOW = 50  # validation labels in the "recent" win rate (the newest ones)
POLL_SECONDS = 0.5  # how often a waiting run looks for new labels
CHUNK_QUERIES = 16  # queries per sampling batch (x 4 samples)


# --------------------------------------------------------------------------------------------------
# The math: small pure functions, imported by tests/test_online.py


def labels_due(n: int, E: int, N: int, N0: int) -> int:
    """l(n) = N0 + (N - N0)·(1 - (1 - n/E)²) labels after n of E episodes, rounded down, in exact
    integer arithmetic: N0 + floor((N - N0)·(E² - (E - n)²) / E²). l(0) = N0, l(E) = N."""
    n = min(max(n, 0), E)
    return N0 + (N - N0) * (E * E - (E - n) * (E - n)) // (E * E)


def retrain_points(N: int, N0: int, K: int) -> list[int]:
    """The label counts at which the reward model is trained: p_k = N0 + floor(k·(N - N0)/K) for
    k = 0..K-1 (K trainings in all, the first on the N0 initial labels)."""
    return [N0 + k * (N - N0) // K for k in range(K)]


def first_update_due(points: list[int], k: int, B: int, U: int, N: int, N0: int) -> int:
    """The first update (0-based) at whose start the schedule has queued p_k comparisons: the
    update from which training k is due (U when it never is)."""
    for u in range(U):
        if labels_due((u + 1) * B, U * B, N, N0) >= points[k]:
            return u
    return U


def is_validation(j: int, every: int) -> bool:
    """Whether the j-th comparison made during RL (0-based) is a validation item: every k-th."""
    return every > 0 and (j + 1) % every == 0


def win_rate(rows: list[dict]) -> dict:
    """π's win rate over ρ from labeled validation items: the share of picks that went to a π
    sample. rows: label rows with `policies` and `best` (one per label: two labelers of the same
    item are two picks). A scripted pick among k samples of equal score (the label's `tied`
    indices) counts the share of them that are π's: 1 of 2 tied is half a win, as evaluate.py
    counts a scripted tie, so the rate does not depend on the order of the samples (which the
    tie-break's draw does). Returns {"rate", "low", "high", "n", "wins"} (wins may be fractional;
    rate None when n = 0)."""
    tops = [(r["policies"], r.get("tied") or [r["best"]]) for r in rows if r.get("validation")]
    wins = sum(sum(pol[i] == "pi" for i in top) / len(top) for pol, top in tops)
    n = len(tops)
    low, high = labels.wilson_interval(wins / n if n else 0.0, n)  # (0, 1) when n = 0
    return dict(rate=wins / n if n else None, low=low, high=high, n=n, wins=wins)


def item_seed(seed: int, n: int) -> int:
    """The sampling seed of the batch of comparisons starting at queue item n (deterministic, so a
    test can make the same samples again from a checkpoint)."""
    return seed * 1_000_003 + n


def _parse_time(s: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(s).timestamp()
    except (TypeError, ValueError):
        return None


def now_iso_ms() -> str:
    return (
        datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="milliseconds")
    )


# --------------------------------------------------------------------------------------------------
# Sampling comparisons from ρ and π


@torch.no_grad()
def sample_comparison_tokens(
    slots: list[list[gpt2.GPT2]], task, queries: list[list[int]], seed: int, device="cpu",
    max_rounds: int = 10,
) -> list[list[list[int]]]:  # fmt: skip
    """Candidate responses (token lists, truncated at the stop token) for each raw query; item i's
    candidate j comes from the model slots[i][j]. As sample_comparisons, a response without
    the task's stop token is drawn again (up to max_rounds); one still without it after that is
    kept whole (so every query gets its candidates and the query stream stays one query per item).
    Deterministic given `seed`."""
    gen = torch.Generator(device=device).manual_seed(seed)
    found = [[None] * len(s) for s in slots]
    fallback = [[None] * len(s) for s in slots]
    models = []  # distinct models, in first-seen order (ρ before π in a validation item)
    for s in slots:
        for m in s:
            if all(m is not x for x in models):
                models.append(m)
    for _ in range(max_rounds):
        for model in models:
            todo = [
                (i, j)
                for i, s in enumerate(slots)
                for j, m in enumerate(s)
                if m is model and found[i][j] is None
            ]
            if not todo:
                continue
            responses = comparisons.sample_responses(
                model, task, [queries[i] for i, _ in todo], gen, device
            )
            truncated, valid = tasks.truncate_responses(responses, task)
            for (i, j), row, ok in zip(todo, truncated.cpu(), valid.tolist()):
                if ok:
                    found[i][j] = tasks.strip_pad(row)
                else:
                    fallback[i][j] = tasks.strip_pad(row)
        if all(x is not None for f in found for x in f):
            break
    return [[f if f is not None else b for f, b in zip(fi, bi)] for fi, bi in zip(found, fallback)]


# --------------------------------------------------------------------------------------------------
# Reading the queue and the labels back


def _error(msg: str) -> SystemExit:
    return SystemExit(f"error: {msg}")


def read_queue(path: Path, run_id: str) -> list[dict]:
    """The whole queue, checked line by line: labels.py's comparison fields, this run's run_id,
    ids f"{run_id}-{n}" in order, and the provenance fields. A hand-edited line is an error that
    names it; the file is never changed here."""
    if not path.exists():
        return []
    msg = labels.repair_truncated_tail(path)  # only a power cut mid-append leaves a partial line
    if msg:
        print(f"online: {msg}")

    def check(obj: dict, where: str):
        n = tail.lineno  # complete lines read before this one
        if obj.get("run_id") != run_id:
            raise labels.FormatError(
                f"{where}: run_id {obj.get('run_id')!r}, but this run's is {run_id!r} "
                f"({path.parent / 'state.json'}): the line belongs to another run"
            )
        if obj["id"] != f"{run_id}-{n}":
            raise labels.FormatError(
                f"{where}: id {obj['id']!r}, expected {run_id}-{n} (ids count lines from 0): the "
                "queue was edited by hand"
            )
        N = len(obj["samples"])
        pol = obj.get("policies")
        if not (
            isinstance(obj.get("update"), int)
            and isinstance(pol, list)
            and len(pol) == N
            and all(p in ("rho", "pi") for p in pol)
            and isinstance(obj.get("validation"), bool)
        ):
            raise labels.FormatError(
                f"{where}: provenance fields missing or wrong (update: int, policies: a list of "
                f"'rho'/'pi' per sample, validation: bool): the queue was edited by hand"
            )

    tail = labels.ComparisonsTail(path, check=check)
    try:
        rows = tail.read()
    except labels.FormatError as e:
        raise _error(str(e))
    if tail.problem:
        raise _error(
            f"{tail.problem}\n  The queue is append-only and written by ppo.py alone; put the "
            f"line back as it was (nothing in the labels files is lost)."
        )
    return rows


class LabelReader:
    """All labels of the run, from every online/labels-*.jsonl, re-read when a file changes.

    A file's incomplete last line (its labeler is writing it) waits for the next read; an empty
    file (a labeler that has not decided anything yet) holds no labels. Every line must carry this
    run's run_id and name an id of the queue, and a label must show the queue item's tokens; else a
    clear error naming the file and line (nothing is changed or dropped)."""

    def __init__(self, folder: Path, run_id: str):
        self.folder, self.run_id = folder, run_id
        self._cache: dict[Path, tuple] = {}  # path -> (stat key, rows)

    def read(self, queue: dict[str, dict]) -> list[dict]:
        """Label rows (the queue item plus best, labeler, created, seconds), in queue order, then
        by labeler file name."""
        rows = []
        for path in sorted(self.folder.glob("labels-*.jsonl")):
            st = path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns, len(queue))
            if path in self._cache and self._cache[path][0] == key:
                rows += self._cache[path][1]
                continue
            got = self._read_file(path, queue)
            self._cache[path] = (key, got)
            rows += got
        order = {id_: i for i, id_ in enumerate(queue)}
        return sorted(rows, key=lambda r: order[r["id"]])  # stable: file order within an id

    def _read_file(self, path: Path, queue: dict[str, dict]) -> list[dict]:
        data = path.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # complete lines only
        items = []
        for lineno, raw in enumerate(data.split(b"\n")[:-1], 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = labels.parse_line(raw, where)
                labels.classify_line(obj, where)
            except labels.FormatError as e:
                raise _error(str(e))
            if obj.get("run_id") != self.run_id:
                raise _error(
                    f"{where}: run_id {obj.get('run_id')!r}, but this run's is {self.run_id!r} "
                    f"({self.folder / 'state.json'}): this labels file belongs to another run. "
                    f"Move it out of {self.folder} (nothing in it is lost) and resume."
                )
            if obj["id"] not in queue:
                raise _error(
                    f"{where}: id {obj['id']!r} is not in this run's queue "
                    f"({self.folder / 'queue.jsonl'}, {len(queue)} items): the labels file or "
                    f"the queue was edited by hand"
                )
            items.append((lineno, obj))
        final, order, _ = labels.resolve(items, path)
        out = []
        for id_ in order:
            lineno, kind, obj = final[id_]
            if kind != "label":
                continue
            item, where = queue[id_], f"{path}:{lineno}"
            n = len(item["sample_tokens"])
            if type(obj["best"]) is not int or not 0 <= obj["best"] < n:
                raise _error(f"{where}: `best` = {obj['best']!r} must be an integer 0..{n - 1}")
            tied = obj.get("tied")  # a scripted labeler's tie: the indices of equal top score
            if tied is not None and not (
                isinstance(tied, list)
                and all(type(i) is int and 0 <= i < n for i in tied)
                and len(set(tied)) == len(tied) >= 2
                and obj["best"] in tied
            ):
                raise _error(
                    f"{where}: `tied` = {tied!r} must list two or more distinct indices "
                    f"0..{n - 1}, `best` among them"
                )
            for k in ("query_tokens", "sample_tokens"):
                if k in obj and obj[k] != item[k]:
                    raise _error(
                        f"{where}: its {k} differ from queue item {id_} "
                        f"({self.folder / 'queue.jsonl'}): the queue or the labels file was "
                        "edited by hand; put it back as it was"
                    )
            out.append(
                dict(
                    item,
                    best=obj["best"],
                    **(dict(tied=tied) if tied is not None else {}),
                    labeler=obj.get("labeler", path.stem.removeprefix("labels-")),
                    created=obj.get("created"),
                    seconds=obj.get("seconds"),
                )
            )
        return out


# --------------------------------------------------------------------------------------------------
# The run's online side


@dataclasses.dataclass
class Options:
    """online label collection: labels of the current policy's samples during RL"""

    online: bool = False
    """collect labels during RL on the current policy's samples and retrain the reward model on
    them (machinery/online.py; the paper's summarization setting); off: one reward model from ρ's
    samples, frozen (the released code)"""
    labels_total: int = 4992
    """--online: labels over the whole run, N; after n of E episodes the run has l(n) = N0 + (N -
    N0)·(1 - (1 - n/E)²)"""
    labels_initial: int = 1248
    """--online: labels of ρ's samples before RL, N0 (the first reward model's)"""
    rm_trainings: int = 20
    """--online: reward model trainings in all (the paper: 20), at evenly spaced label counts
    from N0; each from ρ with a fresh head on all labels so far, re-normalized"""
    validation_every: int = 8
    """--online: every k-th comparison during RL holds 2 samples of ρ and 2 of π (π's win rate
    over ρ; also training labels); 0: none"""
    max_label_lag: int = 0
    """--online: updates PPO may go on with the old reward model when the labels a retraining
    needs have not arrived; then it waits for them"""


@dataclasses.dataclass
class Settings:
    """What Online needs from ppo.py's Config (its fields of the same names)."""

    task: str
    model: str
    seed: int
    labeler: str  # a scripted labeler's name, or "human"
    labels_total: int
    labels_initial: int
    rm_trainings: int
    validation_every: int
    max_label_lag: int
    query_data: str
    batch_size: int
    n_updates: int
    rm: reward.TrainConfig
    temperature: float  # every sample of the run, ρ's and π's, for the queue and for the RM

    STATE_KEYS = (
        "task",
        "temperature",
        "labels_total",
        "labels_initial",
        "rm_trainings",
        "validation_every",
        "labeler",
    )

    def check(self):
        N, N0, K = self.labels_total, self.labels_initial, self.rm_trainings
        problems = []
        if not 1 <= N0 <= N:
            problems.append(f"--labels-initial {N0} must be in 1..--labels-total ({N})")
        if K < 1:
            problems.append(f"--rm-trainings {K} must be >= 1")
        elif K > 1 and (N - N0) < K - 1:
            problems.append(
                f"--rm-trainings {K} needs at least {K - 1} labels after the initial ones "
                f"(--labels-total {N} - --labels-initial {N0})"
            )
        if K > self.n_updates:
            problems.append(
                f"--rm-trainings {K} is more than the {self.n_updates} PPO updates (at most one "
                f"retraining per update)"
            )
        if self.labeler != "human" and self.labeler not in tasks.LABELERS:
            problems.append(
                f"--labeler {self.labeler or '(none)'}: give a scripted labeler "
                f"({', '.join(tasks.LABELERS)}) or 'human'"
            )
        if self.validation_every < 0 or self.max_label_lag < 0:
            problems.append("--validation-every and --max-label-lag must be >= 0")
        if problems:
            raise _error("--online: " + "; ".join(problems))


class Online:
    """The online side of one run: the queue, the labels, the reward model's retrainings."""

    def __init__(self, s: Settings, run_dir: Path, ref: gpt2.GPT2, device: str, resume: bool):
        s.check()
        self.s, self.ref, self.device = s, ref, device
        self.dir = Path(run_dir) / "online"
        self.queue_path, self.state_path = self.dir / "queue.jsonl", self.dir / "state.json"
        self.rm_path, self.log_path = self.dir / "rm.pt", self.dir / "trainings.jsonl"
        self.task = comparisons.task_at(s.task, s.temperature)  # π's rollouts' temperature
        self.scripted = None if s.labeler == "human" else tasks.get_labeler(s.labeler)
        self.points = retrain_points(s.labels_total, s.labels_initial, s.rm_trainings)
        self.E = s.n_updates * s.batch_size
        self._open(resume)
        self.by_id = {r["id"]: r for r in self.queue}
        self.reader = LabelReader(self.dir, self.run_id)
        self.rows: list[dict] = []  # every label so far
        self.seen: set = set()  # (id, labeler) of the labels read so far
        self.latencies: list[float] = []  # seconds from queued to labeled, in order of reading
        self.wait_seconds = 0.0
        self.rm: reward.RewardModel | None = None
        self.trainings: list[dict] = []  # one per completed training (trainings.jsonl)
        # queries for the comparisons: the train split in the seed's order, as `reward.py sample`;
        # exactly one query per queue item, so a resumed run skips as many as are queued
        self.source = tasks.QuerySource(self.task, "train", seed=s.seed, query_data=s.query_data)
        if self.queue:
            self.source.next_queries(len(self.queue))

    # --- files
    def _open(self, resume: bool):
        """Make online/ for a new run, or read it back for a resumed one."""
        s = self.s
        check_fresh(self.dir.parent, resume)
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            # a state.json from before it recorded the temperature: its run sampled at the task's
            state.setdefault("temperature", tasks.get_task(s.task).temperature)
            changed = [
                f"{k}: {state.get(k)!r} -> {getattr(s, k)!r}"
                for k in Settings.STATE_KEYS
                if state.get(k) != getattr(s, k)
            ]
            if changed:
                raise _error(
                    f"--resume: the online schedule must stay as it started ({self.state_path}); "
                    f"changed: {'; '.join(changed)}. Drop those flags."
                )
            self.run_id = state["run_id"]
            self.queue = read_queue(self.queue_path, self.run_id)
            return
        if self.dir.exists() and any(self.dir.glob("labels-*.jsonl")):
            raise _error(
                f"{self.dir} holds labels files but no state.json: they belong to another run. "
                "Move them aside (nothing in them is lost) and start again."
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id = secrets.token_hex(6)
        state = {k: getattr(s, k) for k in Settings.STATE_KEYS}
        state = dict(run_id=self.run_id, **state, created=labels.now_iso())
        # the queue exists (empty) before state.json: a follower that sees state.json finds both
        if not self.queue_path.exists():
            self.queue_path.write_bytes(b"")
            cli.fsync_dir(self.queue_path)
        cli.atomic_write(self.state_path, json.dumps(state, indent=2) + "\n")
        self.queue = []

    def _append(self, rows: list[dict]):
        for r in rows:
            labels.append_jsonl(self.queue_path, r)
            self.queue.append(r)
            self.by_id[r["id"]] = r

    # --- queueing
    def queue_comparisons(self, n: int, update: int, policy: gpt2.GPT2 | None):
        """Queue n comparisons made now: of ρ only (policy None, the initial labels), else of π,
        every --validation-every k-th one a validation item (2 samples of ρ, 2 of π)."""
        N = 4
        first = len(self.queue)
        n_rl_before = max(0, first - self.s.labels_initial)
        bar = None
        if n > CHUNK_QUERIES:
            bar = cli_tqdm(n, "queue comparisons")
        for start in range(0, n, CHUNK_QUERIES):
            m = min(CHUNK_QUERIES, n - start)
            found = self.source.next_queries(m)
            queries = [q.tokens for q in found]
            slots, pols, val = [], [], []
            for i in range(m):
                j = n_rl_before + start + i
                if policy is None:
                    p = ["rho"] * N
                elif is_validation(j, self.s.validation_every):
                    p = ["rho", "rho", "pi", "pi"]
                else:
                    p = ["pi"] * N
                pols.append(p)
                val.append(policy is not None and is_validation(j, self.s.validation_every))
                slots.append([self.ref if x == "rho" else policy for x in p])
            n0 = first + start
            samples = sample_comparison_tokens(
                slots, self.task, queries, item_seed(self.s.seed, n0), self.device
            )
            enc = gpt2.get_tokenizer()
            rows = [
                dict(
                    id=f"{self.run_id}-{n0 + i}",
                    task=self.task.name,
                    query=enc.decode(q),
                    query_tokens=q,
                    samples=[enc.decode(x) for x in samples[i]],
                    sample_tokens=samples[i],
                    run_id=self.run_id,
                    update=update,
                    policies=pols[i],
                    validation=val[i],
                    queued=now_iso_ms(),
                )
                for i, q in enumerate(queries)
            ]
            for row, q in zip(rows, found):  # summaries: the reference, for the rouge labeler
                if q.reference is not None:
                    row["reference"] = q.reference
            self._append(rows)
            self.label_scripted()
            if bar:
                bar.update(m)
        if bar:
            bar.close()

    def label_scripted(self):
        """The scripted labeler labels every queued item it has not labeled yet, at once."""
        if self.scripted is None:
            return
        path = self.dir / f"labels-{self.scripted.name}.jsonl"
        mine = f"script:{self.scripted.name}"
        done = {r["id"] for r in self.reader.read(self.by_id) if r["labeler"] == mine}
        for item in self.queue:
            if item["id"] in done:
                continue
            t0 = time.perf_counter()
            best, tied = self.scripted.pick(item["query"], item["samples"], item.get("reference"))
            labels.append_jsonl(
                path,
                dict(
                    item,
                    best=best,
                    **(dict(tied=tied) if len(tied) > 1 else {}),  # for win_rate
                    labeler=f"script:{self.scripted.name}",
                    seconds=round(time.perf_counter() - t0, 6),
                    created=now_iso_ms(),
                ),
            )

    # --- labels
    def refresh(self) -> int:
        """Read the labels files; returns how many queue items have at least one label."""
        self.rows = self.reader.read(self.by_id)
        for r in self.rows:
            if (r["id"], r["labeler"]) in self.seen:
                continue
            self.seen.add((r["id"], r["labeler"]))
            a, b = _parse_time(r.get("queued")), _parse_time(r.get("created"))
            if a is not None and b is not None:
                self.latencies.append(max(0.0, b - a))
        return len({r["id"] for r in self.rows})

    def wait_for(self, need: int, why: str):
        """Block until `need` queue items are labeled, saying once what for, then a progress line
        as labels come in."""
        got = self.refresh()
        if got >= need:
            return
        t0 = time.time()
        say(
            f"online: waiting for labels: {why} needs {need} labeled comparisons, {got} so far "
            f"({len(self.queue) - got} queued in {self.queue_path} are unlabeled). Label them with"
            f"\n  python label_tool.py --follow {self.dir.parent} --labeler YOUR_NAME"
        )
        last = got
        while got < need:
            time.sleep(POLL_SECONDS)
            got = self.refresh()
            if got != last:
                say(f"online: {got}/{need} labeled ({time.time() - t0:.0f} s waited)")
                last = got
        self.wait_seconds += time.time() - t0

    # --- the reward model
    def train(self, k: int, update: int) -> reward.RewardModel:
        """Training k (0-based): from ρ with a fresh head on every label so far, normalized against
        ρ (reward.train_reward_model); saved to rm.pt, then logged in trainings.jsonl."""
        rows = list(self.rows)
        n_items = len({r["id"] for r in rows})
        say(
            f"online: reward model training {k + 1}/{self.s.rm_trainings} on {len(rows)} labels "
            f"({n_items} comparisons; point {self.points[k]}), at update {update}"
        )
        t0 = time.time()
        cfg = dataclasses.replace(self.s.rm, labels=str(self.dir / "labels-*.jsonl"), num_train=0)
        rm, metrics = reward.train_reward_model(
            rows, cfg, self.s.model, self.task, self.s.seed + k, policy=self.ref,
            device=self.device, query_data=self.s.query_data,
        )  # fmt: skip
        record = dict(
            training=k,
            update=update,
            labels=len(rows),
            comparisons=n_items,
            point=self.points[k],
            accuracy=metrics.get("test", {}).get("accuracy"),
            num_test=metrics.get("num_test"),
            seconds=round(time.time() - t0, 1),
            created=labels.now_iso(),
        )
        rm.meta["online"] = record
        reward.save_reward_model(rm, self.rm_path)  # atomic: the old one or the new one
        labels.append_jsonl(self.log_path, record)
        self.trainings.append(record)
        return rm.eval().requires_grad_(False)

    def _load_rm(self):
        """The newest complete reward model (rm.pt) and the trainings log; a training logged in
        rm.pt but not in trainings.jsonl (killed between the two writes) is logged now."""
        if self.log_path.exists():
            self.trainings = [obj for _, obj in labels.read_jsonl(self.log_path)]
        if not self.rm_path.exists():
            return
        rm = reward.load_reward_model(self.rm_path, self.device, expect_config=self.ref.config)
        record = rm.meta.get("online", {})
        k = record.get("training", -1)
        self.trainings = [t for t in self.trainings if t["training"] <= k]
        if len(self.trainings) == k:
            labels.append_jsonl(self.log_path, record)
            self.trainings.append(record)
        if len(self.trainings) != k + 1:
            raise _error(
                f"{self.log_path}: {len(self.trainings)} trainings logged, but {self.rm_path} is "
                f"training {k + 1}; the files were changed by hand"
            )
        self.rm = rm.eval().requires_grad_(False)
        print(
            f"online: reward model {self.rm_path}: training {k + 1}/{self.s.rm_trainings} "
            f"on {record.get('labels')} labels"
        )

    # --- the run
    def start(self) -> reward.RewardModel:
        """Before RL: the N0 comparisons of ρ queued and labeled, the first reward model trained
        (a resumed run takes back what it had)."""
        self._load_rm()
        missing = self.s.labels_initial - len(self.queue)
        if missing > 0:
            print(
                f"online: run {self.run_id}, queue {self.queue_path}; queueing "
                f"{missing} comparisons of ρ (labels before RL)"
            )
            self.queue_comparisons(missing, 0, None)
        self.label_scripted()  # items queued just before a crash
        if self.rm is None:
            self.wait_for(self.points[0], "the first reward model (labels of ρ's samples)")
            self.rm = self.train(0, 0)
        self.refresh()
        return self.rm

    def before_update(self, update: int, policy: gpt2.GPT2) -> tuple[reward.RewardModel, dict]:
        """At the start of PPO update `update` (0-based; the policy has done that many): queue what
        the schedule calls for by the end of this update, take in labels, retrain if due (waiting
        for labels if they are late by more than --max-label-lag updates). Returns the reward
        model to use and the online metrics."""
        s = self.s
        self.wait_seconds, waited = 0.0, False
        target = labels_due((update + 1) * s.batch_size, self.E, s.labels_total, s.labels_initial)
        if target > len(self.queue):
            self.queue_comparisons(target - len(self.queue), update, policy)
        got = self.refresh()
        k = len(self.trainings)
        if k < s.rm_trainings:
            p = self.points[k]
            due = first_update_due(
                self.points, k, s.batch_size, s.n_updates, s.labels_total, s.labels_initial
            )
            if got < p and update >= due and update - due >= s.max_label_lag:
                self.wait_for(p, f"reward model training {k + 1}/{s.rm_trainings}")
                got, waited = self.refresh(), True
            if got >= p:
                self.rm = self.train(k, update)
        return self.rm, self.metrics(target, got, waited)

    def metrics(self, target: int, got: int, waited: bool) -> dict:
        wr_all = win_rate(self.rows)
        val = [r for r in self.rows if r.get("validation")]
        wr = win_rate(val[-WIN_RATE_WINDOW:])
        last = self.trainings[-1] if self.trainings else {}
        out = {
            "online/labels_due": target,
            "online/labels_queued": len(self.queue),
            "online/labels_received": got,
            "online/labels": len(self.rows),
            "online/labels_pending": len(self.queue) - got,
            "online/rm_trainings": len(self.trainings),
            "online/rm_labels": last.get("labels", 0),
            "online/waiting": waited,
            "online/wait_seconds": round(self.wait_seconds, 2),
            "online/win_n": wr_all["n"],
        }
        if last.get("accuracy") is not None:
            out["online/rm_accuracy"] = last["accuracy"]
        if self.latencies:
            recent = self.latencies[-WIN_RATE_WINDOW:]
            out["online/label_latency"] = sum(recent) / len(recent)
        if wr["n"]:
            out.update(
                {
                    "online/win_rate": wr["rate"],
                    "online/win_rate_low": wr["low"],
                    "online/win_rate_high": wr["high"],
                    "online/win_rate_all": wr_all["rate"],
                }
            )
        return out

    def summary(self) -> dict:
        """summary.json's `online`, from the labels files as the run ends: the last metrics line
        was written before the labels of the comparisons queued at its update came in (what
        label_tool.py --follow says when the run has finished)."""
        labeled = self.refresh()
        wr = win_rate(self.rows)
        return dict(
            run_id=self.run_id,
            labels=len(self.rows),
            comparisons_labeled=labeled,
            comparisons_queued=len(self.queue),
            rm_trainings=len(self.trainings),
            rm_accuracy=[t.get("accuracy") for t in self.trainings],
            win_rate=wr["rate"],
            win_rate_interval=[wr["low"], wr["high"]],
            win_n=wr["n"],
            reward_model=str(self.rm_path),
        )


def start(cfg, run_dir: Path, ref, device, labeler_name: str) -> tuple[Online, object]:
    """ppo.py --online's one call: the queue, the labels and the first reward model (it waits for
    its labels). cfg is ppo.Config; returns (the Online, the first reward model)."""
    if cfg.reward_model:
        raise SystemExit("error: --online trains its own reward models; drop --reward-model")
    if dist.world_size > 1:  # [dist] the queue and its labels have one writer
        raise SystemExit("error: --online runs in one process; start it without torchrun")
    n_updates = math.ceil(cfg.total_episodes / cfg.batch_size)
    settings = Settings(
        **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(Settings)
           if f.name not in ("labeler", "n_updates")},
        labeler=cfg.labeler or labeler_name, n_updates=n_updates,
    )  # fmt: skip
    # config.json before the queue: label_tool.py --follow tells an online run by its "online":
    # true, and a run killed from here on can be resumed (a resumed run keeps its own until
    # Online has checked the flags against its state.json)
    check_fresh(run_dir, bool(cfg.resume))
    if not cfg.resume:
        config = json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"
        cli.atomic_write(Path(run_dir) / "config.json", config)
    run = Online(settings, run_dir, ref, device, resume=bool(cfg.resume))
    return run, run.start()


def check_fresh(run_dir: Path, resume: bool):
    """A new (not resumed) online run must not start in a folder that holds another run's queue:
    two runs cannot share one queue by accident."""
    state = Path(run_dir) / "online" / "state.json"
    if not resume and state.exists():
        try:
            run_id = json.loads(state.read_text()).get("run_id")
        except (ValueError, AttributeError):
            run_id = "?"
        raise _error(
            f"{state.parent} already holds the queue of run {run_id!r} ({state}); two runs cannot "
            f"share one queue. Continue that run with --resume {run_dir}, or give another "
            "--run-dir (or --name)."
        )


def metric_part(m: dict) -> str:
    """The online part of ppo.py's console line."""
    if "online/labels_received" not in m:
        return ""
    acc = m.get("online/rm_accuracy")
    part = (
        f" | labels {m['online/labels_received']}+{m['online/labels_pending']} pending"
        f" | rm {m['online/rm_trainings']}" + (f" acc {acc:.2f}" if acc is not None else "")
    )
    if "online/label_latency" in m:
        part += f" | latency {m['online/label_latency']:.0f}s"
    if "online/win_rate" in m:
        part += (
            f" | win {m['online/win_rate']:.2f} [{m['online/win_rate_low']:.2f},"
            f"{m['online/win_rate_high']:.2f}]"
        )
    return part


def cli_tqdm(total: int, desc: str):
    from tqdm import tqdm

    # leave=None: gone when done under ppo.py's bar (a second line), kept when it is the only one
    return tqdm(total=total, desc=desc, unit=" cmp", file=sys.stdout, disable=None, leave=None)


def say(text: str) -> None:
    """A console line that may come while ppo.py's progress bar is up: tqdm.write lifts the bar
    above it (a print would start on the bar's line), flushed for a log file."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":  # a part of ppo.py, not a command: say which commands run it
    asked = any(a in ("-h", "--help") for a in sys.argv[1:])
    print(
        "machinery/online.py is not a command: `python ppo.py --online` collects labels during RL "
        "(see `python ppo.py --help`, group online), `python label_tool.py --follow RUN_DIR` "
        "labels its queue; docs/online.md",
        file=sys.stdout if asked else sys.stderr,
    )
    sys.exit(0 if asked else 2)
