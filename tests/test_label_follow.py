"""label_tool.py --follow: a person labels the queue of a `ppo.py --online` run while it grows.

The run is played by the test: it writes the run folder's files (config.json, metrics.jsonl,
online/state.json, online/queue.jsonl) the way ppo.py --online does, line by line while the tool
runs, and the tool is driven through a real pseudo-terminal (tests/terminal.py) as in
test_label_tool.py. What is checked: items appear on screen as the queue grows (and a half-written
line is not read), two labelers at once, SIGKILL at random moments (the labels file holds exactly
the confirmed decisions and a restart resumes), and bad input (a labels file of another run, a
queue edited by hand, a duplicate id, the run restarted under the tool) gets a message that names
the file and line, with nothing saved lost.
"""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import terminal
from test_label_tool import (
    COLS,
    FULL_ROWS,
    Model,
    assert_whole_candidates,
    file_log,
    full_rows_item,
    mapping,
)

from machinery import labels

ROOT = Path(__file__).resolve().parent.parent
TOOL = str(ROOT / "label_tool.py")
RUN_ID = "5eed0f"
N_UPDATES = 60  # config.json below: 600 episodes, 10 per update

_why_not = terminal.missing()
needs_terminal = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


@pytest.fixture
def cleanup():
    tools = []
    yield tools
    for t in tools:  # never leave a child running, even when a test fails
        t.reap()


def start(cleanup, run, labeler, rows=30, cols=110):
    t = terminal.Terminal(
        [sys.executable, TOOL, "--follow", str(run), "--labeler", labeler],
        rows,
        cols,
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    cleanup.append(t)
    return t


def run_tool(*args):
    return subprocess.run(
        [sys.executable, TOOL, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


# --------------------------------------------------------------------------------------------------
# The run's side, as ppo.py --online writes it


def item(n, run_id=RUN_ID, validation=False):
    """Queue line n: a best-of-4 comparison with its provenance (never shown to the labeler)."""
    return {
        "id": f"{run_id}-{n}",
        "task": "sentiment",
        "query": f"query number {n}",
        "query_tokens": [n, 1, 2],
        "samples": [f"c{n}-{j} text" for j in range(4)],
        "sample_tokens": [[100 + j, n] for j in range(4)],
        "run_id": run_id,
        "update": n // 3,
        "policies": ["rho", "rho", "pi", "pi"] if validation else ["pi"] * 4,
        "validation": validation,
        "queued": labels.now_iso(),
    }


def make_run(tmp_path, n_items=0, queue=True, online=True):
    """A run folder as ppo.py --online leaves it a little after it started."""
    run = tmp_path / "run"
    (run / "online").mkdir(parents=True)
    config = {"task": "sentiment", "online": online, "total_episodes": 600, "batch_size": 10}
    (run / "config.json").write_text(json.dumps(config))
    if queue:
        start_queue(run)
        for n in range(n_items):
            enqueue(run, n)
    return run


def start_queue(run, run_id=RUN_ID):
    state = {"run_id": run_id, "task": "sentiment", "labels_total": 200}
    (run / "online" / "state.json").write_text(json.dumps(state))
    (run / "online" / "queue.jsonl").write_bytes(b"")


def enqueue(run, n, **kw):
    labels.append_jsonl(run / "online" / "queue.jsonl", item(n, **kw))


def progress(run, update, received):
    labels.append_jsonl(
        run / "metrics.jsonl",
        {
            "update": update,
            "episodes": 10 * update,
            "online/labels_received": received,
            "online/labels_pending": 0,
            "online/waiting": False,
        },
    )


def labels_path(run, who):
    return run / "online" / f"labels-{who}.jsonl"


def pick(tool, text):
    """Press the number of the candidate shown with `text`."""
    for k, shown in mapping(tool).items():
        if shown.startswith(text):
            tool.send(str(k))
            return k
    raise AssertionError(f"no candidate {text!r} on screen:\n{tool.text()}")


def flat(screen, cols=110):
    """The screen's text with wrapped lines joined again: a line that fills the width was a long
    word broken in two, any other line break was a space."""
    out = ""
    for line in screen.split("\n"):
        out += line + ("" if len(line) >= cols else " ")
    return out


def wait_text(tool, *needles):
    """Wait until every needle is on screen, wrapped or not; return the joined text."""
    tool.wait_for(lambda s: all(n in flat(s) for n in needles), what=repr(needles))
    return flat(tool.text())


def status(done, total, shown):
    """The start of the status line: ' 3/5 done | item 4 |' or ' 5/5 done | waiting |'."""
    return f" {done}/{total} done | " + (f"item {shown} |" if shown is not None else "waiting |")


# --------------------------------------------------------------------------------------------------
# Reading a queue that grows (no terminal)


def test_queue_is_read_as_it_grows_a_partial_line_waits(tmp_path):
    path = tmp_path / "queue.jsonl"
    path.touch()
    tail = labels.ComparisonsTail(path)
    assert tail.read() == [] and tail.problem is None
    enqueue_line = lambda obj: (json.dumps(obj) + "\n").encode()  # noqa: E731
    with open(path, "ab") as f:
        f.write(enqueue_line(item(0)) + enqueue_line(item(1))[:40])  # line 2 is half written
    assert [r["id"] for r in tail.read()] == [f"{RUN_ID}-0"]
    assert tail.read() == [] and tail.problem is None  # not an error: not written yet
    with open(path, "ab") as f:
        f.write(enqueue_line(item(1))[40:] + b"\n" + enqueue_line(item(2)))  # a blank line too
    assert [r["id"] for r in tail.read()] == [f"{RUN_ID}-1", f"{RUN_ID}-2"]
    assert tail.lineno == 4


def test_queue_problems_name_the_line_and_reading_resumes_once_fixed(tmp_path):
    path = tmp_path / "queue.jsonl"
    for n in range(2):
        labels.append_jsonl(path, item(n))
    tail = labels.ComparisonsTail(path)
    assert len(tail.read()) == 2
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"id": "hand-edited", \n' + (json.dumps(item(3)) + "\n").encode())
    assert tail.read() == []  # nothing past the bad line
    assert str(tail.problem).startswith(f"{path}:3: not valid JSON")
    # Fixed by hand, the way an editor saves (a new file renamed over the old one): reading goes on.
    fixed = good + (json.dumps(item(2)) + "\n" + json.dumps(item(3)) + "\n").encode()
    (tmp_path / "edited").write_bytes(fixed)
    os.replace(tmp_path / "edited", path)
    assert [r["id"] for r in tail.read()] == [f"{RUN_ID}-2", f"{RUN_ID}-3"]
    assert tail.problem is None
    # A duplicate id, a different N, a check of the caller's (here: the run_id): each names its
    # line.
    labels.append_jsonl(path, item(1))
    assert tail.read() == [] and "queue.jsonl:5: id '5eed0f-1' already used on line 2" in str(
        tail.problem
    )
    with open(path, "r+b") as f:  # take the duplicate back
        f.truncate(len(fixed))

    def same_run(obj, where):
        if obj.get("run_id") != RUN_ID:
            raise labels.FormatError(f"{where}: run_id {obj.get('run_id')!r}: another run")

    tail = labels.ComparisonsTail(path, check=same_run)
    assert len(tail.read()) == 4
    labels.append_jsonl(path, {**item(4), "samples": ["a", "b"], "sample_tokens": [[1], [2]]})
    assert tail.read() == [] and "queue.jsonl:5: 2 candidates, but line 1 has 4" in str(
        tail.problem
    )
    with open(path, "r+b") as f:
        f.truncate(len(fixed))
    labels.append_jsonl(path, item(4, run_id="0ther"))
    assert tail.read() == [] and "queue.jsonl:5: run_id '0ther': another run" in str(tail.problem)
    # Lines already read must not change: that is not an append, and the reader stops.
    path.write_bytes(fixed.replace(b"query number 1", b"query number 9"))
    with pytest.raises(labels.FormatError, match="lines 1-4 changed since they were read"):
        tail.read()


# --------------------------------------------------------------------------------------------------
# The tool in a terminal


@needs_terminal
def test_follow_waits_then_shows_items_as_they_are_queued(tmp_path, cleanup):
    run = make_run(tmp_path, queue=False)
    progress(run, 3, 7)
    t = start(cleanup, run, "ann")
    scr = wait_text(t, "does not exist yet")
    assert f"{run}/online/queue.jsonl" in scr and status(0, 0, None) in scr
    start_queue(run)  # the run creates its queue ...
    scr = wait_text(t, "Nothing is queued yet")
    assert "(update 3/60, 7 of 200 labels so far)" in scr
    assert "update 3/60 |" in t.text().split("\n")[-1]  # on the status line too
    enqueue(run, 0)  # ... and queues a comparison: the screen goes from waiting to the item
    scr = t.wait_for([status(0, 1, 0), "Query: query number 0"])
    assert "Pick the continuation with the most positive" in scr
    pick(t, "c0-2")
    scr = wait_text(t, status(1, 1, None), "All 1 queued comparisons are labeled")
    assert "Waiting for the run to queue more comparisons (update 3/60" in scr
    progress(run, 4, 8)  # the run moves on: the waiting screen follows it
    wait_text(t, "(update 4/60, 8 of 200 labels so far)")
    # A validation item (2 samples from rho, 2 from pi) looks like any other.
    enqueue(run, 1, validation=True)
    enqueue(run, 2)
    scr = t.wait_for(status(1, 3, 1))
    for word in ("rho", "pi ", "validation", "policies", "queued"):
        assert word not in scr
    pick(t, "c1-3")
    t.wait_for(status(2, 3, 2))
    pick(t, "c2-0")
    t.wait_for(status(3, 3, None))
    (run / "summary.json").write_text("{}")  # the run ends (a summary without `online`)
    wait_text(t, "The run has finished (update 4/60, 8 of 200 labels):")
    t.send("q")
    assert t.wait_exit() == 0
    assert b"3 labels this session" in t.output and b"Traceback" not in t.output
    rows = labels.read_labels(labels_path(run, "ann"))
    assert [(r["id"], r["best"]) for r in rows] == [
        (f"{RUN_ID}-{n}", b) for n, b in enumerate([2, 3, 0])
    ]
    assert all(r["run_id"] == RUN_ID and r["labeler"] == "ann" for r in rows)
    # The provenance travels with the label, for the run to use.
    assert [r["validation"] for r in rows] == [False, True, False]
    assert rows[1]["policies"] == ["rho", "rho", "pi", "pi"]


@needs_terminal
def test_the_finish_line_counts_the_labels_the_run_ended_with(tmp_path, cleanup):
    """The run's last metrics line is written as its last update begins, before the labels of
    the comparisons queued then: 2 of 3. Its summary.json counts them as it ends, and the finish
    line says that count (it said "2 of 3 labels so far" beside the labeler's "3/3 done")."""
    run = make_run(tmp_path, n_items=3)
    state = json.loads((run / "online" / "state.json").read_text())
    (run / "online" / "state.json").write_text(json.dumps({**state, "labels_total": 3}))
    progress(run, 60, 2)
    t = start(cleanup, run, "ann")
    for n in range(3):
        t.wait_for(status(n, 3, n))
        pick(t, f"c{n}-0")
    wait_text(t, status(3, 3, None), "(update 60/60, 2 of 3 labels so far)")
    summary = {"online": {"comparisons_labeled": 3, "labels": 3, "comparisons_queued": 3}}
    (run / "summary.json").write_text(json.dumps(summary))  # the run ends
    scr = wait_text(t, "The run has finished (update 60/60, 3 of 3 labels):")
    assert status(3, 3, None) in scr and "so far" not in scr
    t.send("q")
    assert t.wait_exit() == 0


@needs_terminal
def test_full_width_rows_show_the_whole_candidate(tmp_path, cleanup):
    """test_label_tool.py's full-width rows, queued by a run: the same rows on screen."""
    run = make_run(tmp_path)
    n = len(FULL_ROWS)
    labels.append_jsonl(
        run / "online" / "queue.jsonl",
        {**item(0), **full_rows_item(id=f"{RUN_ID}-0"), "policies": ["pi"] * n},
    )
    t = start(cleanup, run, "ann", cols=COLS)
    assert_whole_candidates(t.wait_for(status(0, 1, 0)))
    t.send("q")
    assert t.wait_exit() == 0


@needs_terminal
def test_two_labelers_at_once(tmp_path, cleanup):
    run = make_run(tmp_path, n_items=2)
    ann, bob = start(cleanup, run, "ann"), start(cleanup, run, "bob")
    ann.wait_for(status(0, 2, 0))
    bob.wait_for(status(0, 2, 0))
    pick(ann, "c0-0")
    ann.wait_for(status(1, 2, 1))
    pick(ann, "c1-0")
    ann.wait_for(status(2, 2, None))
    pick(bob, "c0-1")
    bob.wait_for(status(1, 2, 1))
    enqueue(run, 2)  # both see it: ann from her waiting screen, bob behind the item he is on
    ann.wait_for([status(2, 3, 2), "Query: query number 2"])
    bob.wait_for([status(1, 3, 1), "Query: query number 1"])
    pick(bob, "c1-2")
    bob.wait_for(status(2, 3, 2))
    pick(bob, "c2-3")
    pick(ann, "c2-0")
    bob.wait_for(status(3, 3, None))
    ann.wait_for(status(3, 3, None))
    # one writer per labels file
    third = start(cleanup, run, "ann")
    assert third.wait_exit() == 2 and b"another label_tool.py session is writing to" in third.output
    ann.resize(12, 50)  # waiting, the tool still follows the terminal's size and keys
    scr = ann.wait_for(lambda s: "All 3 queued" in s and "done | waiting" in s, what="a redraw")
    assert all(len(line) <= 50 for line in scr.split("\n"))
    ann.send("q")
    assert ann.wait_exit() == 0
    bob.send("ctrl-c")
    assert bob.wait_exit() == 130 and b"Every decision is saved" in bob.output
    got = {
        who: [(r["id"], r["best"], r["labeler"]) for r in labels.read_labels(labels_path(run, who))]
        for who in ("ann", "bob")
    }
    ids = [f"{RUN_ID}-{n}" for n in range(3)]
    assert got == {
        "ann": [(i, 0, "ann") for i in ids],
        "bob": [(i, b, "bob") for i, b in zip(ids, [1, 2, 3])],
    }


class FollowModel(Model):
    """test_label_tool's model of the queue, for a queue that grows: new items join it after the
    undecided ones and before the skipped ones, never in front of the item on screen."""

    def last_kinds(self):
        last = {}
        for id_, kind, _ in self.log:
            last[id_] = kind
        return last

    def add(self, new_ids):
        self.ids = self.ids + new_ids
        last = self.last_kinds()
        skipped = [i for i, x in enumerate(self.queue) if i > 0 and last.get(x) == "skip"]
        k = skipped[0] if skipped else len(self.queue)
        self.queue[k:k] = new_ids

    def signature(self):
        return status(
            self.done(), len(self.ids), self.queue[0].split("-")[1] if self.queue else None
        )


@needs_terminal
def test_sigkill_at_random_moments_then_resume(tmp_path, cleanup):
    run = make_run(tmp_path, n_items=4)
    out = labels_path(run, "kim")
    rng = random.Random(99)
    model = FollowModel([f"{RUN_ID}-{n}" for n in range(4)])
    kills = {"confirmed": 0, "in flight": 0, "grew while running": 0}

    def grow(k):
        n0 = len(model.ids)
        for n in range(n0, n0 + k):
            enqueue(run, n, validation=n % 5 == 4)
        model.add([f"{RUN_ID}-{n}" for n in range(n0, n0 + k)])

    for round_ in range(9):
        t = start(cleanup, run, "kim")
        t.wait_for(model.signature())
        n_steps = rng.randint(1, 8)
        kill_in_flight = rng.random() < 0.5
        grow_at = rng.randrange(n_steps) if rng.random() < 0.6 else -1
        for step in range(n_steps):
            if step == grow_at or not (model.queue or model.history):
                grow(rng.randint(1, 3))  # the run queues more while the tool waits for a key
                kills["grew while running"] += 1
                t.wait_for(model.signature())
            before = t.text()
            choices = (
                ["label"] * 5 + ["skip"] * (len(model.queue) > 1) + ["undo"] * bool(model.history)
            )
            action = rng.choice(choices) if model.queue else "undo"
            if action == "label":
                key = rng.randint(1, 4)
                best = int(re.match(r"c\d+-(\d)", mapping(t)[key]).group(1))
                model.apply("label", best)
                t.send(str(key))
            elif action == "skip":
                model.apply("skip")
                t.send("s")
            else:
                model.apply("undo")
                t.send("u")
            if step == n_steps - 1 and kill_in_flight:
                break
            sig = model.signature()
            t.wait_for(lambda s: sig in s and s != before, what=repr(sig))
        t.kill()
        got = file_log(out)
        if kill_in_flight:  # the last key was not confirmed: on disk or not, nothing else differs
            kills["in flight"] += 1
            assert got in (model.log[:-1], model.log), f"round {round_}"
            model.log = got
        else:
            kills["confirmed"] += 1
            assert got == model.log, f"round {round_}: file differs from the confirmed decisions"
        model.rebuild()  # what a restart resumes from
        if rng.random() < 0.3:
            grow(1)  # queued while no labeler was running
    assert all(kills.values()), kills
    assert all(o["run_id"] == RUN_ID for _, o in labels.read_jsonl(out))
    expect = {}
    for id_, kind, best in model.log:
        expect.pop(id_, None)
        if kind == "label":
            expect[id_] = best
    assert {r["id"]: r["best"] for r in labels.read_labels(out)} == expect


@needs_terminal
def test_queue_edited_by_hand_while_labeling(tmp_path, cleanup):
    run = make_run(tmp_path, n_items=2)
    queue = run / "online" / "queue.jsonl"
    good = queue.read_bytes()
    t = start(cleanup, run, "ann")
    t.wait_for(status(0, 2, 0))
    pick(t, "c0-1")
    t.wait_for(status(1, 2, 1))
    with open(queue, "ab") as f:  # a broken line, then a good one behind it
        f.write(b'{"id": "hand-edited", \n' + (json.dumps(item(3)) + "\n").encode())
    scr = wait_text(t, "queue.jsonl:3: not valid JSON")
    assert status(1, 2, 1) in scr  # still labeling
    pick(t, "c1-1")
    wait_text(t, status(2, 2, None), "Cannot read the queue past line 2", "Fix or delete that line")
    fixed = good + (json.dumps(item(2)) + "\n" + json.dumps(item(3)) + "\n").encode()
    (tmp_path / "edited").write_bytes(fixed)
    os.replace(tmp_path / "edited", queue)  # as an editor saves
    t.wait_for(status(2, 4, 2))
    pick(t, "c2-2")
    t.wait_for(status(3, 4, 3))
    enqueue(run, 1)  # a duplicate id: named, and the items before it are not affected
    wait_text(t, "queue.jsonl:5: id '5eed0f-1' already used on line 2")
    pick(t, "c3-3")
    t.wait_for(status(4, 4, None))
    t.send("q")
    assert t.wait_exit() == 0
    rows = labels.read_labels(labels_path(run, "ann"))
    assert [r["best"] for r in rows] == [1, 1, 2, 3]


@needs_terminal
def test_run_restarted_or_queue_rewritten_under_the_tool_stops_it(tmp_path, cleanup):
    run = make_run(tmp_path, n_items=2)
    out = labels_path(run, "ann")
    t = start(cleanup, run, "ann")
    t.wait_for(status(0, 2, 0))
    pick(t, "c0-0")
    t.wait_for(status(1, 2, 1))
    saved = out.read_bytes()
    start_queue(run, run_id="0ther")  # a new run in the same folder: new state, empty queue
    assert t.wait_exit() == 1
    text = t.output.decode(errors="replace").replace("\r\n", "")
    assert "run_id changed from '5eed0f' to '0ther'" in text and "Traceback" not in text
    assert out.read_bytes() == saved
    # A queue whose lines already read change (edited, or replaced by another run's) is not
    # followed either.
    queue = run / "online" / "queue.jsonl"
    start_queue(run)
    for n in range(2):
        enqueue(run, n)
    t = start(cleanup, run, "ann")
    t.wait_for(status(1, 2, 1))
    queue.write_text(queue.read_text().replace("query number 1", "query number 9"))
    assert t.wait_exit() == 1
    assert b"lines 1-2 changed since they were read" in t.output
    assert out.read_bytes() == saved


# --------------------------------------------------------------------------------------------------
# Refusals before the screen is taken (no terminal needed)


def test_labels_file_of_another_run_is_refused(tmp_path):
    run = make_run(tmp_path, n_items=2)
    out = labels_path(run, "ann")
    labels.append_jsonl(out, {**item(0), "best": 1, "labeler": "ann", "seconds": 1.0})
    labels.append_jsonl(out, {**item(1, run_id="0ther"), "best": 2, "labeler": "ann"})
    saved = out.read_bytes()
    r = run_tool("--follow", str(run), "--labeler", "ann")
    assert r.returncode == 1, r.stderr
    assert f"{out}:2: run_id '0ther', but the run in {run} is '5eed0f'" in r.stderr
    assert "belongs to another run" in r.stderr and out.read_bytes() == saved


def test_broken_queue_is_refused_naming_the_line(tmp_path):
    run = make_run(tmp_path, n_items=3)
    queue, out = run / "online" / "queue.jsonl", labels_path(run, "ann")
    labels.append_jsonl(out, {**item(0), "best": 1, "labeler": "ann", "seconds": 1.0})
    saved = out.read_bytes()
    lines = queue.read_text().split("\n")
    queue.write_text("\n".join([lines[0], lines[1][:-9], lines[2]]) + "\n")  # line 2 cut short
    r = run_tool("--follow", str(run), "--labeler", "ann")
    assert r.returncode == 1 and f"{queue}:2: not valid JSON" in r.stderr
    queue.write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n")  # a duplicate id
    r = run_tool("--follow", str(run), "--labeler", "ann")
    assert r.returncode == 1 and f"{queue}:3: id '5eed0f-1' already used on line 2" in r.stderr
    assert out.read_bytes() == saved


def test_follow_refuses_what_is_not_an_online_run(tmp_path):
    r = run_tool("--follow", str(tmp_path / "nowhere"), "--labeler", "ann")
    assert r.returncode == 1 and "no such folder" in r.stderr
    run = make_run(tmp_path, queue=False, online=False)
    r = run_tool("--follow", str(run), "--labeler", "ann")
    assert r.returncode == 1 and "this run is not online" in r.stderr
    r = run_tool("--follow", str(run), "--labeler", "ann/../x")
    assert r.returncode == 2 and "labels-NAME.jsonl" in r.stderr
    r = run_tool("--follow", str(run), "--out", "x.jsonl")
    assert r.returncode == 2 and "drop --out" in r.stderr
    # Without a terminal: refused, and nothing is created in the run folder.
    run2 = make_run(tmp_path / "b", n_items=1)
    r = run_tool("--follow", str(run2), "--labeler", "ann")
    assert r.returncode == 2 and "needs an interactive terminal" in r.stderr
    assert not labels_path(run2, "ann").exists()
