"""A terminal tool for labeling best-of-N comparisons: a person reads a query and N continuations
and picks the best.

This is the human side of the paper's reward-model data (Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences"; openai/lm-human-preferences `label_types.py::PickBest`, label type
best_of_4). OpenAI's labels came from Scale AI's web interface; this is a keyboard-first curses
equivalent. It reads comparisons.jsonl (from `reward.py sample`) and appends to labels.jsonl (read
by `reward.py train`); both formats are defined in machinery/labels.py.

    python label_tool.py comparisons.jsonl --out labels.jsonl --labeler alice
    # label a `ppo.py --online` run's queue while it trains (writes RUN/online/labels-alice.jsonl)
    python label_tool.py --follow runs/sentiment-tiny-s1 --labeler alice
    # counts, time per label, agreement
    python label_tool.py --stats labels_alice.jsonl labels_bob.jsonl

Keys: 1..N pick the best candidate, s skip, u undo the last decision, ? help, q quit (Ctrl-C too),
arrows / PgUp / PgDn / Home / End scroll a long item. Every other key is ignored, with a hint.

Guarantees:
- Each decision is appended to the labels file and fsynced BEFORE the next item is drawn, so
  anything the labeler has seen move on is on disk. kill -9 at any moment loses at most the decision
  being made; the file always parses (labels.append_jsonl writes each line with one write()). A
  partial last line (power cut) is repaired on open.
- Candidates appear in a random order per item (seeded by --seed, labeler and id, so a restart shows
  the same order); `best` always indexes the ORIGINAL `samples`, and `order` records what was shown
  where.
- Restarting resumes at the first undecided item. Skipped items are logged ({"id", "skip": true})
  and come back last: after every unskipped item, in this session and after a restart. Undo works
  across restarts (it appends {"id", "undo": true}; the last line about an id wins) and shows the
  undone item again.

Following a run (--follow RUN_DIR): the run (`ppo.py --online --labeler human`) appends comparisons
of its current policy to RUN_DIR/online/queue.jsonl; the tool reads the new complete lines as they
come (a few stat() calls twice a second while nothing changes) and labels them into
RUN_DIR/online/labels-<labeler>.jsonl, with every guarantee above. Each line carries the run's id
(online/state.json), so labels of another run are refused. Validation items (samples of the initial
and the current policy mixed) look like any other: provenance is never shown. New items join after
the undecided ones, before the skipped ones, and never replace the item on screen. With nothing to
label, the screen says what it waits for and how far the run is; a bad queue line is shown (the
items before it stay labelable) until someone fixes it. Several people may follow one run at once,
each under their own --labeler: each labels every item, and the run keeps every label.

Not done: no gold items, ties, flags or free-text comments; one labeler per terminal (run several
with their own --out, or their own --labeler with --follow).
"""

import curses
import locale
import math
import os
import random
import re
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from machinery import cli, labels
from machinery.labels import FormatError
from machinery.termtext import clip, fit, fmt_duration, sanitize, wrap


@dataclass
class Config:
    comparisons: str = ""
    """comparisons.jsonl to label (made by `python reward.py sample`)"""
    out: str = ""
    """labels file to append to: created if missing, reopened to resume (required unless --stats)"""
    follow: str = ""
    """a `ppo.py --online` run folder: label its queue (online/queue.jsonl) as the run adds to it,
    into online/labels-<labeler>.jsonl (instead of a comparisons file and --out)"""
    labeler: str = ""
    """your name, stored on every label (default: your login name)"""
    task: str = ""
    """show this task's instruction (sentiment, descriptiveness, tldr, cnndm) instead of each
    comparison's own"""
    instructions: str = ""
    """a text file of instructions: its first line is shown above every item, the whole file
    under `?`"""
    seed: int = 0
    """seeds the per-item shuffle of candidates (mixed with labeler and id, so a restart shows
    the same order)"""
    stats: list = field(default_factory=list)
    """print counts, time per label and agreement for these labels files, then exit (no terminal
    needed)"""


def parse_args(argv=None) -> Config:
    p = cli.make_parser(
        Config,
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:4]),
        positional=("comparisons",),
    )
    cfg = cli.from_flat(Config, vars(p.parse_args(argv)))
    # Derived / checked once, here.
    if cfg.follow and (cfg.comparisons or cfg.out):
        p.error(
            "--follow labels the run's own queue into RUN_DIR/online/labels-<labeler>.jsonl (the "
            "file the run reads): drop --out and the comparisons file"
        )
    if not cfg.stats and not cfg.follow and not (cfg.comparisons and cfg.out):
        p.error(
            "give a comparisons file and --out LABELS.jsonl (or --follow RUN_DIR, or --stats "
            "LABELS.jsonl ...)"
        )
    if cfg.task and cfg.task not in labels.TASK_INSTRUCTIONS:
        p.error(
            f"--task {cfg.task!r} is unknown; choose from {', '.join(labels.TASK_INSTRUCTIONS)}"
        )
    cfg.labeler = cfg.labeler or labels.login_name()
    if cfg.follow:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.labeler):
            p.error(
                f"--labeler {cfg.labeler!r}: with --follow the name becomes a file name "
                "(online/labels-NAME.jsonl); use letters, digits and . _ - only"
            )
        online = Path(cfg.follow) / "online"
        cfg.comparisons = str(online / "queue.jsonl")
        cfg.out = str(online / f"labels-{cfg.labeler}.jsonl")
    return cfg


# --------------------------------------------------------------------------------------------------
# The labeling session: state and file I/O, no curses (so tests can drive it directly too)


def shuffled_order(item_id: str, labeler: str, seed: int, n: int) -> list[int]:
    """order[k] = the original index of the candidate shown as key k+1. Deterministic, so
    restarts agree."""
    order = list(range(n))
    # str seeds are hashed with SHA-512: stable
    random.Random(f"{seed}|{labeler}|{item_id}").shuffle(order)
    return order


RATE_MIN_SECONDS = 1.0  # labels/hour counts no faster label: that is no reading of N candidates


class Session:
    """Which items are decided, what comes next, and the append-only log on disk.

    queue[0] is the item on screen. Undecided items come in file order, then skipped ones. `history`
    is the order of decisions (label or skip) still standing, for undo. With --follow, `follow`
    is the run and items arrive later through add().
    """

    def __init__(self, cfg: Config, comparisons: list[dict], instructions: str | None):
        self.cfg = cfg
        self.rows, self.by_id, self.queue = [], {}, []
        self.n: int | None = None  # candidates per item (the same for all), from the first one
        self.custom_instructions = instructions
        self.follow: Follow | None = None
        # --follow: the run's id, written on every line and checked on every line read back
        self.run_id: str | None = None
        self.notice = None
        self.state: dict[str, str] = {}  # id -> "label" | "skip"
        # time per label, for the labels/hour shown in the status line
        self.recent_seconds: list[float] = []
        self.history: list[str] = []
        self.session_labels = 0
        self.add(comparisons)

    def add(self, rows: list[dict]) -> None:
        """More items (a followed run queued them): they go after the undecided items and before
        the skipped ones, never in front of the item on screen."""
        for r in rows:
            self.rows.append(r)
            self.by_id[r["id"]] = r
        if rows and self.n is None:
            self.n = len(rows[0]["samples"])
        skipped = [k for k, id_ in enumerate(self.queue) if k > 0 and self.state.get(id_) == "skip"]
        k = skipped[0] if skipped else len(self.queue)
        self.queue[k:k] = [r["id"] for r in rows if r["id"] not in self.state]

    def open_log(self) -> None:
        """Repair a cut-off last line of the labels file, read it back (checked against the items)
        and queue the undecided items in file order, then the skipped ones."""
        if os.path.exists(self.cfg.out):
            self.notice = labels.repair_truncated_tail(self.cfg.out)
            self._load_existing()
        ids = [r["id"] for r in self.rows]
        self.queue = [i for i in ids if i not in self.state]
        self.queue += [i for i in ids if self.state.get(i) == "skip"]

    def _load_existing(self) -> None:
        """Read our own log back, checking that it belongs to this comparisons file (this run)."""
        path, comp = self.cfg.out, self.cfg.comparisons
        if labels.is_json_list(path):
            raise FormatError(
                f"{path}: this is a JSON list (OpenAI's label format), not a labels.jsonl log; "
                f"choose another --out"
            )
        items = labels.read_jsonl(path)
        final, order, _ = labels.resolve(items, path)
        if self.follow:
            advice = (
                "this labels file does not belong to this run's queue. Move it aside (nothing in "
                "it is lost) and start again."
            )
        else:
            advice = (
                "this labels file was made for a different comparisons file. Pass the comparisons "
                "file it belongs to, or a new --out."
            )
        for lineno, obj in items:
            if self.run_id is not None and obj.get("run_id") != self.run_id:
                raise FormatError(
                    f"{path}:{lineno}: run_id {obj.get('run_id')!r}, but the run in "
                    f"{self.cfg.follow} is {self.run_id!r} (its online/state.json): this labels "
                    "file belongs to another run. Move it aside (nothing in it is lost) and start "
                    "again."
                )
            row = self.by_id.get(obj["id"])
            if row is None:
                raise FormatError(f"{path}:{lineno}: id {obj['id']!r} is not in {comp}: {advice}")
            if "best" in obj and (
                obj.get("query_tokens") != row["query_tokens"]
                or obj.get("sample_tokens") != row["sample_tokens"]
            ):
                raise FormatError(
                    f"{path}:{lineno}: id {obj['id']!r} has different tokens than the comparison "
                    f"with that id in {comp}: {advice}"
                )
            if "best" in obj and not (type(obj["best"]) is int and 0 <= obj["best"] < self.n):
                raise FormatError(
                    f"{path}:{lineno}: `best` = {obj['best']!r} is not an index 0..{self.n - 1}"
                )
        for id_ in order:
            kind = final[id_][1]
            if kind in ("label", "skip"):
                self.state[id_] = kind
                self.history.append(id_)
            if kind == "label" and isinstance(final[id_][2].get("seconds"), (int, float)):
                self.recent_seconds.append(final[id_][2]["seconds"])

    # --- what is on screen
    # ----------------------------------------------------------------------------------------------
    def current(self) -> dict | None:
        return self.by_id[self.queue[0]] if self.queue else None

    def order(self, row: dict) -> list[int]:
        return shuffled_order(row["id"], self.cfg.labeler, self.cfg.seed, len(row["samples"]))

    def instruction(self, row: dict | None) -> str:
        if self.custom_instructions is not None:
            return next((ln for ln in self.custom_instructions.splitlines() if ln.strip()), "")
        row = row or (self.rows[0] if self.rows else {})  # a followed run may have queued nothing
        return labels.TASK_INSTRUCTIONS.get(self.cfg.task or row.get("task"), "")

    def name(self, id_: str) -> str:
        """An item's id as shown: a followed run's ids are <run_id>-<n>, shown as n."""
        return id_.removeprefix(f"{self.run_id}-") if self.run_id else id_

    def done(self) -> int:
        return sum(1 for v in self.state.values() if v == "label")

    def skipped(self) -> int:
        return sum(1 for v in self.state.values() if v == "skip")

    def rate_per_hour(self) -> float | None:
        """From the mean time of the last 20 labels: tracks the current pace, survives restarts.
        None (shown as --) until 3 labels each took a reader's time (RATE_MIN_SECONDS): a key
        held down, or lines a script wrote (a resumed file, one repaired on open), take ~0 s and
        would show millions of labels an hour and an ETA of 0s."""
        recent = [t for t in self.recent_seconds if t >= RATE_MIN_SECONDS][-20:]
        return 3600.0 / statistics.fmean(recent) if len(recent) >= 3 else None

    # --- decisions: each one is on disk before it returns
    # ----------------------------------------------------------------------------------------------
    def choose(self, position: int, seconds: float) -> int:
        """The labeler pressed key position+1; returns the original index stored as `best`."""
        row = self.current()
        order = self.order(row)
        best = order[position]
        labels.append_jsonl(
            self.cfg.out,
            {
                **row,
                "best": best,
                "labeler": self.cfg.labeler,
                "seconds": round(seconds, 3),
                "created": labels.now_iso(),
                "order": order,
            },
        )
        self._decided(row["id"], "label")
        self.queue.pop(0)
        self.recent_seconds.append(seconds)
        self.session_labels += 1
        return best

    def skip(self, seconds: float) -> None:
        row = self.current()
        labels.append_jsonl(
            self.cfg.out,
            {
                "id": row["id"],
                "skip": True,
                "labeler": self.cfg.labeler,
                "seconds": round(seconds, 3),
                "created": labels.now_iso(),
                **self._run_id(),
            },
        )
        self._decided(row["id"], "skip")
        self.queue.append(self.queue.pop(0))  # skipped items come back after everything else

    def undo(self) -> str | None:
        """Withdraw the most recent standing decision and show that item again. Returns its id
        (None: nothing)."""
        if not self.history:
            return None
        id_ = self.history.pop()
        labels.append_jsonl(
            self.cfg.out,
            {
                "id": id_,
                "undo": True,
                "labeler": self.cfg.labeler,
                "created": labels.now_iso(),
                **self._run_id(),
            },
        )
        self.state.pop(id_, None)
        if id_ in self.queue:
            self.queue.remove(id_)
        self.queue.insert(0, id_)
        return id_

    def _run_id(self) -> dict:
        """Label lines carry the run_id of their queue item; skip and undo lines carry it too."""
        return {"run_id": self.run_id} if self.run_id else {}

    def _decided(self, id_: str, kind: str) -> None:
        self.state[id_] = kind
        if id_ in self.history:
            self.history.remove(id_)
        self.history.append(id_)


def load_session(cfg: Config) -> Session:
    """Read and check everything before the screen is taken over; FormatError / OSError say what
    is wrong."""
    labels.check_text(cfg.labeler, f"--labeler {cfg.labeler!r}")  # it goes into every label line
    instructions = None
    if cfg.instructions:
        with open(cfg.instructions, "rb") as f:
            raw = f.read()
        try:
            instructions = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise FormatError(
                f"{cfg.instructions}:{line}: not UTF-8 ({e.reason}); save the file as UTF-8"
            ) from None
    if cfg.follow:
        s = Session(cfg, [], instructions)
        s.follow = Follow(cfg)
        s.follow.check_folder(s)
        return s
    comparisons = labels.read_comparisons(cfg.comparisons)
    if not (cfg.task or cfg.instructions):
        unknown = sorted({r["task"] for r in comparisons} - set(labels.TASK_INSTRUCTIONS))
        if unknown:
            raise FormatError(
                f"{cfg.comparisons}: no built-in instruction for task(s) {', '.join(unknown)}; "
                "pass "
                f"--instructions FILE or --task ({', '.join(labels.TASK_INSTRUCTIONS)})"
            )
    s = Session(cfg, comparisons, instructions)
    s.open_log()
    return s


# --------------------------------------------------------------------------------------------------
# Following a `ppo.py --online` run: its queue, read as it grows, and its progress (no curses)


class Follow:
    """A run as its labelers see it. Only files are shared: the run writes config.json,
    metrics.jsonl (one line per update), summary.json (at the end), online/state.json (its run_id)
    and online/queue.jsonl (append-only); the tool writes online/labels-<labeler>.jsonl.

    poll() brings a Session up to date and costs a stat() per file while nothing changes. It raises
    FormatError when going on would be wrong (the run was restarted as another run, lines already
    read changed); a bad new queue line is only a `problem`, shown until it is fixed.
    """

    def __init__(self, cfg: Config):
        self.dir = Path(cfg.follow)
        self.queue_path = self.dir / "online" / "queue.jsonl"
        self.state_path = self.dir / "online" / "state.json"
        self.config: dict = {}  # config.json: the run's options (total updates, online or not)
        self.state: dict = {}  # online/state.json: run_id, labels_total
        self.metrics: dict = {}  # the last line of metrics.jsonl: update, labels received
        self.finished = False  # summary.json exists: the run has ended
        self.final: dict = {}  # summary.json's `online`: the labels the run had when it ended
        self.tail: labels.ComparisonsTail | None = None  # the queue, once the run has made it
        self.lock = None  # the open labels file holding our flock, once taken
        self._seen: dict[Path, tuple | None] = {}

    # --- at startup, before the screen
    def check_folder(self, s: Session) -> None:
        """Refuse what cannot be followed; read the queue and the labels file if the run has made
        the queue already (otherwise run_ui waits for it)."""
        if not self.dir.is_dir():
            what = "not a folder" if self.dir.exists() else "no such folder"
            raise FormatError(
                f"--follow {self.dir}: {what}. Start the run first (`python ppo.py --online "
                "--labeler human` makes its folder), or check the path."
            )
        self._read_progress(s)
        if not self.ready():
            if self.config and not self.config.get("online"):
                raise FormatError(
                    f"--follow {self.dir}: this run is not online (its config.json does not say "
                    '"online": true), so it queues nothing to label. Start one with `python ppo.py '
                    "--online --labeler human`, or label a comparisons file with `python "
                    "label_tool.py FILE --out LABELS.jsonl`."
                )
            if os.path.exists(s.cfg.out):
                raise FormatError(
                    f"{s.cfg.out} exists, but the run has no queue yet: that file is left from "
                    "another run. Move it aside (nothing in it is lost) and start again."
                )
            return
        self.start(s)

    def ready(self) -> bool:
        return self.queue_path.exists() and self.state_path.exists()

    def start(self, s: Session) -> None:
        """The run has made its queue: read it and our labels file, both checked against its id."""
        self.state = labels.read_json(self.state_path)
        run_id = self.state.get("run_id")
        if not isinstance(run_id, str) or not run_id:
            raise FormatError(f"{self.state_path}: no `run_id` (a string); is this ppo.py's file?")
        s.run_id = run_id
        self.tail = labels.ComparisonsTail(self.queue_path, check=self._line_checker(s))
        rows = self.tail.read()
        if self.tail.problem:
            raise self.tail.problem
        s.add(rows)
        s.open_log()

    def _line_checker(self, s: Session):
        def check(obj: dict, where: str) -> None:
            if obj.get("run_id") != s.run_id:
                raise FormatError(
                    f"{where}: run_id {obj.get('run_id')!r}, but this run's is {s.run_id!r} "
                    f"({self.state_path}): the line belongs to another run"
                )
            if s.custom_instructions is None and not s.cfg.task:
                if obj["task"] not in labels.TASK_INSTRUCTIONS:
                    raise FormatError(
                        f"{where}: no built-in instruction for task {obj['task']!r}; start again "
                        "with --instructions FILE or --task "
                        f"({', '.join(labels.TASK_INSTRUCTIONS)})"
                    )

        return check

    # --- while the screen is up
    def poll(self, s: Session) -> None:
        """New queue lines become items of `s`; the run's progress is re-read."""
        self._read_progress(s)
        if self.tail is None:
            if not self.ready():
                return
            self.lock = labels.lock_labels_file(s.cfg.out)
            if self.lock is None:
                raise FormatError(busy_message(s.cfg))
            self.start(s)
            return
        s.add(self.tail.read())

    @property
    def problem(self) -> str | None:
        """A bad queue line, said with what to do about it."""
        if self.tail is None or self.tail.problem is None:
            return None
        return (
            f"Cannot read the queue past line {self.tail.lineno}: {self.tail.problem}. Fix or "
            "delete that line: reading goes on from there once it parses (the run only appends, "
            "so nothing after it is lost)."
        )

    def _changed(self, path: Path) -> bool:
        try:
            st = path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        changed = path not in self._seen or self._seen[path] != key
        self._seen[path] = key
        return changed

    def _read_progress(self, s: Session) -> None:
        if self._changed(path := self.dir / "config.json"):
            self.config = labels.read_json(path, missing_ok=True, quiet=True) or self.config
        if self._changed(path := self.dir / "metrics.jsonl"):
            self.metrics = labels.last_json_line(path)
        if self._changed(path := self.dir / "summary.json"):
            self.finished = path.exists()
            final = labels.read_json(path, missing_ok=True, quiet=True).get("online")
            self.final = final if isinstance(final, dict) else {}
        if self._changed(self.state_path):
            state = labels.read_json(self.state_path, missing_ok=True, quiet=True)
            if s.run_id and state.get("run_id", s.run_id) != s.run_id:
                raise FormatError(
                    f"{self.state_path}: the run_id changed from {s.run_id!r} to "
                    f"{state['run_id']!r}: {self.dir} was started again as a new run. Your labels "
                    f"are saved in {s.cfg.out}; move that file aside and start label_tool.py "
                    "again to label the new run."
                )
            self.state = state or self.state

    def updates(self) -> str:
        """'update 12/60': the last update in metrics.jsonl, of the total in config.json."""
        done = self.metrics.get("update", 0)
        episodes, batch = self.config.get("total_episodes"), self.config.get("batch_size")
        if isinstance(episodes, int) and isinstance(batch, int) and batch > 0:
            return f"update {done}/{math.ceil(episodes / batch)}"
        return f"update {done}"

    def progress(self) -> str:
        """'update 12/60, 140 of 1000 labels so far' (labels the run has received, of its
        budget); once it has ended, 'update 60/60, 1000 of 1000 labels', the count it ended with
        (summary.json: the last metrics line predates the labels of its last update)."""
        received, total = self.metrics.get("online/labels_received"), self.state.get("labels_total")
        received = self.final.get("comparisons_labeled", received)
        if received is None:
            return self.updates()
        so_far = "" if self.finished else " so far"
        return f"{self.updates()}, {received}{f' of {total}' if total else ''} labels{so_far}"

    def waiting_text(self, s: Session) -> str:
        """What the screen says when there is nothing to label."""
        if self.tail is None:
            return (
                f"Waiting for the run to start its queue: {self.queue_path} does not exist yet "
                "(`ppo.py --online` makes it). This screen changes by itself; q quits."
            )
        if s.rows:
            head, more = f"All {len(s.rows)} queued comparisons are labeled.", "more comparisons"
        else:
            head, more = "Nothing is queued yet.", "comparisons"
        if self.finished:
            text = (
                f"{head} The run has finished ({self.progress()}): nothing more will come; q quits."
            )
        else:
            text = (
                f"{head} Waiting for the run to queue {more} ({self.progress()}). They appear "
                "here by themselves. q quits (every decision is saved), u undoes the last one."
            )
        return f"{self.problem}\n\n{text}" if self.problem else text


# --------------------------------------------------------------------------------------------------
# Screen: build the lines for the current state, then draw them (only `draw` and `run_ui` touch
# curses)

HELP = """Keys
  1..{n}        pick the best candidate (numbers as shown on screen; the order is shuffled per item)
  s           skip this item: it comes back after all the others (also after a restart)
  u           undo the last decision (label or skip), and show that item again
  ?           this help (any key closes it)
  q, Ctrl-C   quit: every decision is already saved; run the same command to resume
  Up/Down, PgUp/PgDn, Home/End    scroll a long item

Saving
  Each decision is written to {out} and flushed to disk before the next item appears.
  Labeler: {labeler}.  Comparisons: {comparisons}.

Instructions
"""


def item_lines(s: Session, width: int) -> list[tuple[str, int]]:
    """The scrollable body for the current item: instruction, query, then the candidates in
    shuffled order."""
    row = s.current()
    if row is None:
        text = (
            s.follow.waiting_text(s)
            if s.follow
            else f"All {len(s.rows)} items are labeled. Press q to quit (u undoes the last label)."
        )
        return [(ln, curses.A_BOLD) for ln in wrap(text, width)]
    lines = []
    if s.follow and s.follow.problem:  # the items before a bad queue line stay labelable
        lines += [(ln, curses.A_BOLD) for ln in wrap(s.follow.problem, width)] + [("", 0)]
    lines += [(ln, curses.A_BOLD) for ln in wrap(s.instruction(row), width)]
    lines.append(("", 0))
    lines += [(ln, 0) for ln in wrap(row["query"] or "(empty query)", width, "Query: ", 2)]
    for k, idx in enumerate(s.order(row)):
        text = row["samples"][idx]
        lines.append(("", 0))
        lines += [
            (ln, curses.A_DIM if not text.strip() else 0)
            for ln in wrap(text if text.strip() else "(empty response)", width, f"[{k + 1}] ", 4)
        ]
    return lines


def help_lines(s: Session, width: int) -> list[tuple[str, int]]:
    text = HELP.format(
        n=s.n or "N", out=s.cfg.out, labeler=s.cfg.labeler, comparisons=s.cfg.comparisons
    )
    text += (
        s.custom_instructions if s.custom_instructions is not None else s.instruction(s.current())
    )
    return [(ln, curses.A_BOLD if ln and not ln.startswith(" ") else 0) for ln in wrap(text, width)]


def status_text(s: Session) -> str:
    row = s.current()
    remaining = len(s.rows) - s.done()
    rate = s.rate_per_hour()
    # Most important first: narrow terminals cut the end off.
    parts = [
        f"{s.done()}/{len(s.rows)} done",
        f"item {s.name(row['id'])}" if row else "waiting" if s.follow else "finished",
    ]
    if s.skipped():
        parts.append(f"{s.skipped()} skipped")
    if s.follow:  # the queue grows: the run's progress instead of an ETA
        parts.append(s.follow.updates())
    parts.append(f"{rate:.0f} labels/h" if rate else "-- labels/h")
    if not s.follow:
        eta = fmt_duration(remaining * 3600 / rate) if rate and remaining else "--"
        parts.append(f"ETA {eta}")
    return " " + " | ".join(parts) + " "


def safe_addstr(win, y: int, x: int, text: str, attr: int = 0) -> None:
    """addstr that never raises: sanitized (one line), clipped to the window by cells,
    bottom-right cell avoided, unencodable chars replaced."""
    h, w = win.getmaxyx()
    if not (0 <= y < h and 0 <= x < w):
        return
    # Everything drawn is measured by termtext's widths: ids and paths in the status and message
    # lines come from files too. A newline would move curses to the next row.
    text = clip(sanitize(text).replace("\n", " "), w - x - (1 if y == h - 1 else 0))
    try:
        win.addstr(y, x, text, attr)
    except UnicodeEncodeError:  # a non-UTF-8 locale: show what it can encode
        enc = locale.getpreferredencoding(False) or "ascii"
        safe_addstr(win, y, x, text.encode(enc, "replace").decode(enc), attr)
    except curses.error:
        pass


def draw(win, lines, scroll: int, message: str, status: str) -> int:
    """Body on rows 0..h-3, message on row h-2, status on row h-1. Returns the scroll offset
    actually used."""
    h, w = win.getmaxyx()
    body = max(0, h - 2)
    scroll = max(0, min(scroll, len(lines) - body))
    win.erase()
    for r, (text, attr) in enumerate(lines[scroll : scroll + body]):
        safe_addstr(win, r, 0, text, attr)
    # The scroll hint goes first on the message line, so a narrow terminal still shows it.
    more = (
        "[more above and below]"
        if scroll > 0 and scroll + body < len(lines)
        else "[more below: Down/PgDn]"
        if scroll + body < len(lines)
        else "[more above: Up/PgUp]"
        if scroll > 0
        else ""
    )
    if h >= 2:
        safe_addstr(win, h - 2, 0, f"{more} {message}" if more else message, curses.A_BOLD)
    safe_addstr(win, h - 1, 0, fit(status, w), curses.A_REVERSE)
    win.noutrefresh()
    curses.doupdate()
    return scroll


POLL_MS = 500  # following a run: how often the key loop wakes to read its files

SCROLL_KEYS = {
    curses.KEY_UP,
    curses.KEY_DOWN,
    curses.KEY_PPAGE,
    curses.KEY_NPAGE,
    curses.KEY_HOME,
    curses.KEY_END,
}


def scrolled(key: int, scroll: int, page: int) -> int:
    page = max(1, page - 1)  # keep one line of context when paging
    return {
        curses.KEY_UP: scroll - 1,
        curses.KEY_DOWN: scroll + 1,
        curses.KEY_PPAGE: scroll - page,
        curses.KEY_NPAGE: scroll + page,
        curses.KEY_HOME: 0,
        curses.KEY_END: 10**9,
    }[key]


def run_ui(win, s: Session, notice: str | None) -> None:
    """The key loop. Returns on q; KeyboardInterrupt (Ctrl-C) propagates after curses.wrapper
    restores the terminal. Following a run, it wakes twice a second without a key to read the
    run's files (FormatError propagates too: the run changed under us)."""
    try:
        curses.curs_set(0)
    except curses.error:
        pass  # terminals without an invisible cursor
    if s.follow:
        win.timeout(POLL_MS)
    keys_hint = f"1-{s.n or 'N'} pick  s skip  u undo  ? help  q quit"
    mode, scroll, message = "item", 0, keys_hint
    # shown until a key
    banner = [(ln, curses.A_BOLD) for ln in wrap(f"Note: {notice}", 10**6)] if notice else []
    shown_id, shown_at = None, time.monotonic()
    problem = problem_line = None
    while True:
        if s.follow:
            s.follow.poll(s)
            keys_hint = f"1-{s.n or 'N'} pick  s skip  u undo  ? help  q quit"
            if s.follow.problem != problem:  # a bad queue line: say so at once, and after each key
                problem = s.follow.problem
                problem_line = problem and (
                    f"{s.follow.tail.problem} (fix or delete that line)".replace(
                        str(s.follow.dir) + os.sep, ""
                    )
                )
                message = problem_line or keys_hint
        row = s.current()
        if (row and row["id"]) != shown_id:  # a new item: its timer starts now, at the top
            shown_id, shown_at, scroll = (row and row["id"]), time.monotonic(), 0
        h, w = win.getmaxyx()
        lines = help_lines(s, w) if mode == "help" else item_lines(s, w)
        if banner:
            lines = [(ln, a) for text, a in banner for ln in wrap(text, w)] + [("", 0)] + lines
        scroll = draw(win, lines, scroll, message, status_text(s))
        try:
            key = win.get_wch()
        except curses.error:  # no key (the poll timed out, or a signal): poll again, redraw
            continue
        message = problem_line or keys_hint
        if key != curses.KEY_RESIZE:
            banner = []
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()
            win.clear()  # full repaint at the new size
            continue
        if key in SCROLL_KEYS:
            scroll = scrolled(key, scroll, max(1, h - 2))
            continue
        if mode == "help":  # any other key closes help
            mode, scroll = "item", 0
            continue
        if key == "q":
            return
        if key == "?":
            mode, scroll = "help", 0
        elif key == "u":
            id_ = s.undo()
            message = (
                f"undid the decision on item {s.name(id_)}: decide again"
                if id_
                else "nothing to undo"
            )
        elif row is None and key in ("s",) + tuple(str(k) for k in range(1, 10)):
            message = (
                "nothing to label until the run queues more: u undoes the last label, q quits"
                if s.follow
                else "all items are labeled: u undoes the last label, q quits"
            )
        elif key == "s":
            s.skip(time.monotonic() - shown_at)
            message = f"skipped item {s.name(row['id'])}: it comes back after the others"
        elif isinstance(key, str) and key in "123456789" and len(key) == 1:
            if int(key) > s.n:
                message = f"there are only {s.n} candidates: press 1-{s.n}"
            else:
                s.choose(int(key) - 1, time.monotonic() - shown_at)
                message = f"saved: item {s.name(row['id'])} -> [{key}]"
        else:
            name = (
                repr(key) if isinstance(key, str) else curses.keyname(key).decode(errors="replace")
            )
            message = f"key {name} does nothing: {keys_hint}"


# --------------------------------------------------------------------------------------------------
# Main: check everything before the screen is taken over, take the labels file's lock, run
# the key loop, and say what was saved


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def busy_message(cfg: Config) -> str:
    own = "--labeler name" if cfg.follow else "--out (label_tool.py --stats compares them)"
    return (
        f"another label_tool.py session is writing to {cfg.out}. Finish that one first, or give "
        f"each labeler their own {own}."
    )


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if cfg.stats:
        try:
            print(labels.stats_report(cfg.stats))
        except FormatError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        s = load_session(cfg)
    except (FormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if s.notice:
        print(f"note: {s.notice}", file=sys.stderr)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "error: label_tool.py needs an interactive terminal (stdin and stdout must be a tty), "
            "and this is not one. Run it directly in a terminal, not through a pipe or "
            "redirection. For scripted labels use `python reward.py label`.",
            file=sys.stderr,
        )
        return 2
    # A followed run that has no queue yet: the lock is taken when the queue appears (Follow.poll),
    # so that nothing is written into the run's folder before the run has made it.
    lock = None  # held until the process exits
    if not (s.follow and s.follow.tail is None):
        lock = labels.lock_labels_file(cfg.out)
        if lock is None:
            print(f"error: {busy_message(cfg)}", file=sys.stderr)
            return 2
    locale.setlocale(locale.LC_ALL, "")  # curses writes UTF-8 only under a UTF-8 locale
    os.environ.setdefault("ESCDELAY", "25")  # a lone Esc should not freeze the screen for a second
    # Ctrl-C quits cleanly even when the shell that started us ignores SIGINT (a background job
    # without job control inherits SIG_IGN, and Python then never raises KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # kill / closing the terminal: leave the screen clean too
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    code, error = 0, None
    try:
        curses.wrapper(run_ui, s, s.notice)
    except KeyboardInterrupt:
        code = 130
    except (FormatError, OSError) as e:  # following: the run changed under us
        code, error = 1, e
    if s.follow:
        print(
            f"{cfg.out}: {s.session_labels} labels this session; {s.done()}/{len(s.rows)} queued "
            "items labeled. Every decision is saved; run the same command to go on."
        )
    else:
        print(
            f"{cfg.out}: {s.session_labels} labels this session; {s.done()}/{len(s.rows)} items "
            "labeled"
            + (f", {s.skipped()} skipped" if s.skipped() else "")
            + (
                ". Every decision is saved; run the same command to resume."
                if s.done() < len(s.rows)
                else ". All done."
            )
        )
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
