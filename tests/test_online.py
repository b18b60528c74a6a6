"""ppo.py --online (online.py): the label schedule and retraining points on hand-worked numbers, the
win-rate statistic on known labels, a scripted online run on tiny (retrained the planned number of
times; every label after the initial ones was made on a sample of the policy of its time, checked by
sampling it again from a checkpoint), SIGKILL at a random moment then --resume, PPO waiting for
labels written by this test after a delay, the same with two label_tool.py --follow sessions in
pseudo-terminals, and bad input (a labels file of another run, a queue
edited by hand, a second run in the same folder).

Runs are real `ppo.py` processes on the tiny model with small budgets (OMP_NUM_THREADS=1)."""

import copy
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import terminal
import torch

import ppo
from machinery import labels, online, tasks

ROOT = Path(__file__).resolve().parent.parent

_why_not = terminal.missing()
needs_terminal = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")

# --------------------------------------------------------------------------------------------------
# The math, by hand


def test_labels_due_hand_worked():
    # E = 100 episodes, N = 1000 labels, N0 = 200: l(n) = 200 + 800·(1 - (1 - n/100)²)
    E, N, N0 = 100, 1000, 200
    assert online.labels_due(0, E, N, N0) == 200
    assert online.labels_due(1, E, N, N0) == 215  # 200 + 800·0.0199 = 215.92, rounded down
    assert online.labels_due(10, E, N, N0) == 352  # 200 + 800·0.19
    assert online.labels_due(25, E, N, N0) == 550  # 200 + 800·0.4375
    assert online.labels_due(50, E, N, N0) == 800  # 200 + 800·0.75: most labels come early
    assert online.labels_due(100, E, N, N0) == 1000
    assert online.labels_due(150, E, N, N0) == 1000  # past the end: stays at N
    due = [online.labels_due(n, E, N, N0) for n in range(E + 1)]
    assert due == sorted(due)  # never decreases


def test_retrain_points_hand_worked():
    # K trainings at N0 + floor(k·(N - N0)/K)
    assert online.retrain_points(1000, 200, 4) == [200, 400, 600, 800]
    assert online.retrain_points(40, 16, 3) == [16, 24, 32]
    assert online.retrain_points(10, 3, 3) == [3, 5, 7]  # 7/3 = 2.33 per step, floored
    assert online.retrain_points(800, 320, 1) == [320]
    assert len(online.retrain_points(4992, 1248, 20)) == 20
    # the update from which training k is due: 8 updates of 8 episodes, N = 40, N0 = 16:
    # after update u+1, l = 16 + 24·(1 - (1 - (u+1)/8)²) = 21.6, 26.5, 30.6, 34, 36.6 ...
    points = online.retrain_points(40, 16, 3)
    assert [online.first_update_due(points, k, 8, 8, 40, 16) for k in range(3)] == [0, 1, 3]


def test_validation_items_every_k():
    assert [j for j in range(12) if online.is_validation(j, 3)] == [2, 5, 8, 11]
    assert not any(online.is_validation(j, 0) for j in range(12))


def test_wilson_interval_hand_worked():
    # 8 wins of 10, z ≈ 1.96: center (0.8 + 1.9208/10)/1.38416 = 0.71674, half 1.41602·0.160012
    low, high = labels.wilson_interval(8 / 10, 10)
    assert low == pytest.approx(0.49016, abs=1e-4) and high == pytest.approx(0.94332, abs=1e-4)
    assert labels.wilson_interval(0.0, 0) == (0.0, 1.0)
    low, high = labels.wilson_interval(0.0, 5)  # stays inside [0, 1]
    assert low == 0.0 and 0 < high < 0.5


def test_win_rate_on_known_labels():
    v = ["rho", "rho", "pi", "pi"]
    rows = [
        dict(validation=True, policies=v, best=2),  # π wins
        dict(validation=True, policies=v, best=3),  # π wins
        dict(validation=True, policies=v, best=0),  # ρ wins
        dict(validation=True, policies=v, best=2),  # the same item by a second labeler: counted
        dict(validation=False, policies=["pi"] * 4, best=1),  # not a validation item: ignored
    ]
    wr = online.win_rate(rows)
    assert (wr["wins"], wr["n"], wr["rate"]) == (3, 4, 0.75)
    assert (wr["low"], wr["high"]) == pytest.approx(labels.wilson_interval(3 / 4, 4))
    assert online.win_rate(rows[4:])["rate"] is None


def test_win_rate_counts_a_scripted_tie_as_the_share_of_pi_among_the_tied():
    v = ["rho", "rho", "pi", "pi"]
    rows = [
        dict(validation=True, policies=v, best=1, tied=[1, 2]),  # 1 of 2 tied is π's: 1/2
        dict(validation=True, policies=v, best=3, tied=[0, 1, 2, 3]),  # all tied: 2/4
        dict(validation=True, policies=v, best=0, tied=[0, 2, 3]),  # 2/3, whichever was drawn
        dict(validation=True, policies=v, best=3),  # a clear π pick: 1
    ]
    wr = online.win_rate(rows)
    wins = 1 / 2 + 2 / 4 + 2 / 3 + 1
    assert wr["n"] == 4 and wr["wins"] == pytest.approx(wins)
    assert wr["rate"] == pytest.approx(wins / 4)
    assert (wr["low"], wr["high"]) == pytest.approx(labels.wilson_interval(wins / 4, 4))


def permuted(row: dict, order: tuple) -> dict:
    """The same comparison with its samples in `order` (new position j holds old sample
    order[j]); best and tied move with them."""
    where = {old: new for new, old in enumerate(order)}
    out = dict(row, policies=[row["policies"][i] for i in order], best=where[row["best"]])
    if "tied" in row:
        out["tied"] = sorted(where[i] for i in row["tied"])
    return out


def test_win_rate_does_not_depend_on_the_order_of_the_samples():
    """The scripted labeler on every order of one validation item's samples (three tie at the
    top, one of them π's): its tie-break draws ρ's or π's sample depending on the order, the win
    rate is 1/3 for each. Hand-made rows: every permutation (best and tied moved with the
    samples), or another draw among the tied, gives the same rate."""
    lab = tasks.get_labeler("sentiment")
    texts = {"A door.": "rho", "A chair.": "rho", "A box.": "pi", "It was bad.": "pi"}
    drawn, rates = set(), set()
    for shown in itertools.permutations(texts):
        best, tied = lab.pick("q", list(shown))
        row = dict(validation=True, policies=[texts[t] for t in shown], best=best)
        row.update(dict(tied=tied) if len(tied) > 1 else {})
        drawn.add(row["policies"][best])
        rates.add(round(online.win_rate([row])["rate"], 9))
    assert drawn == {"rho", "pi"}  # the pick alone would give 0 or 1 depending on the order
    assert rates == {round(1 / 3, 9)}
    v = ["rho", "rho", "pi", "pi"]
    rows = [
        dict(validation=True, policies=v, best=0, tied=[0, 2]),
        dict(validation=True, policies=v, best=2, tied=[1, 2, 3]),
        dict(validation=True, policies=v, best=1),
        dict(validation=True, policies=v, best=3, tied=[0, 1, 2, 3]),
    ]
    want = online.win_rate(rows)["rate"]
    assert want == pytest.approx((1 / 2 + 2 / 3 + 0 + 2 / 4) / 4)
    for order in itertools.permutations(range(4)):
        assert online.win_rate([permuted(r, order) for r in rows])["rate"] == pytest.approx(want)
    redrawn = [dict(r, best=r["tied"][-1]) if "tied" in r else r for r in rows]
    assert online.win_rate(redrawn)["rate"] == pytest.approx(want)


def test_scripted_labels_record_ties_and_the_reader_checks_them(tmp_path):
    """The scripted labeler's label keeps `tied` (the samples of equal top score) where it broke a
    tie; LabelReader passes it on to win_rate and refuses a `tied` that cannot be one."""
    folder = make_queue(tmp_path, n=2)
    queue = {r["id"]: r for r in online.read_queue(folder / "queue.jsonl", "abc")}
    lab = tasks.get_labeler("sentiment")
    samples = ["A door.", "It was good.", "A box.", "It was good."]  # 1 and 3 tie at the top
    best, tied = lab.pick("q", samples)
    assert tied == [1, 3] and best in tied
    assert lab.pick("q", ["It was bad.", "It was good and happy.", "A box.", "A door."]) == (1, [1])
    path = folder / "labels-x.jsonl"
    labels.append_jsonl(path, dict(item("abc", 0), best=best, tied=tied, labeler="script:x"))
    labels.append_jsonl(path, dict(item("abc", 1), best=2, labeler="script:x"))
    got = online.LabelReader(folder, "abc").read(queue)
    assert [r.get("tied") for r in got] == [[1, 3], None]
    for bad in ([1], [1, 1], [0, 4], [0, 2], "1,3"):
        path.write_text(json.dumps(dict(item("abc", 0), best=1, tied=bad)) + "\n")
        with pytest.raises(SystemExit, match=r"labels-x.jsonl:1: `tied`"):
            online.LabelReader(folder, "abc").read(queue)


# --------------------------------------------------------------------------------------------------
# Real runs of ppo.py --online on tiny

SEED = 3
B, U, N, N0, K = 8, 6, 30, 12, 3  # batch, updates, labels, initial labels, trainings
SMALL = [
    "--model", "tiny", "--online", "--seed", str(SEED), "--total-episodes", str(B * U),
    "--batch-size", str(B), "--nminibatches", "1", "--micro-batch-size", str(B),
    "--noptepochs", "1", "--labels-total", str(N), "--labels-initial", str(N0),
    "--rm-trainings", str(K), "--validation-every", "2", "--rm.epochs", "1",
    "--rm.batch-size", "8", "--rm.normalize-samples", "8", "--rm.rollout-batch-size", "8",
    "--eval-episodes", "8", "--sample-every", "0", "--save-every", "2",
]  # fmt: skip


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def ppo_cmd(run_dir, *extra, labeler="sentiment"):
    return [sys.executable, str(ROOT / "ppo.py"), *SMALL, "--labeler", labeler,
            "--run-dir", str(run_dir), *extra]  # fmt: skip


def run_ppo(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, env=env(), cwd=ROOT, **kw)
    return r


def expected_per_update() -> dict:
    """Comparisons the schedule queues at each update: l((u+1)·B) - l(u·B) (the N0 before RL at
    update 0 too)."""
    due = [online.labels_due(u * B, U * B, N, N0) for u in range(U + 1)]
    out = {u: due[u + 1] - due[u] for u in range(U)}
    out[0] += N0
    return {u: c for u, c in out.items() if c}


def queue_rows(run_dir) -> list[dict]:
    return [obj for _, obj in labels.read_jsonl(Path(run_dir) / "online" / "queue.jsonl")]


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    """A scripted online run stopped after 3 updates (its checkpoint kept: the policy after 3
    updates), then resumed to the end."""
    run = tmp_path_factory.mktemp("online") / "run"
    r = run_ppo(ppo_cmd(run, "--stop-after", "3"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    shutil.copy(run / "checkpoint.pt", run.parent / "checkpoint-3.pt")
    r = run_ppo([sys.executable, str(ROOT / "ppo.py"), "--resume", str(run)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run, r.stdout


def test_scripted_run_retrains_as_planned(scripted_run):
    run, out = scripted_run
    trainings = [obj for _, obj in labels.read_jsonl(run / "online" / "trainings.jsonl")]
    points = online.retrain_points(N, N0, K)
    assert [t["training"] for t in trainings] == list(range(K))
    assert all(t["labels"] >= points[t["training"]] for t in trainings)
    assert trainings[0]["labels"] == N0 and trainings[0]["update"] == 0  # before RL, ρ's labels
    summary = json.loads((run / "summary.json").read_text())
    assert summary["online"]["rm_trainings"] == K
    rm = torch.load(run / "online" / "rm.pt", weights_only=True)
    assert rm["online"]["training"] == K - 1  # the run ends on its last training's model
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == list(range(1, U + 1))
    assert metrics[-1]["online/rm_trainings"] == K
    assert "labels " in out and "| rm 3" in out  # the console line shows it


def test_scripted_run_queue_follows_the_schedule(scripted_run):
    run, _ = scripted_run
    rows = queue_rows(run)
    state = json.loads((run / "online" / "state.json").read_text())
    run_id = state["run_id"]
    assert [r["id"] for r in rows] == [f"{run_id}-{n}" for n in range(N)]
    assert all(r["run_id"] == run_id for r in rows)
    per_update: dict = {}
    for r in rows:
        per_update[r["update"]] = per_update.get(r["update"], 0) + 1
    assert per_update == expected_per_update()
    # the first N0 are ρ's; after them every second comparison is a validation item
    assert all(r["policies"] == ["rho"] * 4 and not r["validation"] for r in rows[:N0])
    for j, r in enumerate(rows[N0:]):
        want = ["rho", "rho", "pi", "pi"] if j % 2 == 1 else ["pi"] * 4
        assert r["policies"] == want and r["validation"] == (j % 2 == 1)
    # metrics.jsonl agrees: comparisons queued by the end of each update
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert m["online/labels_queued"] == sum(1 for r in rows if r["update"] < m["update"])
        assert m["online/labels_queued"] == online.labels_due(m["update"] * B, U * B, N, N0)


def test_scripted_run_labels_are_the_labelers_picks(scripted_run):
    run, _ = scripted_run
    rows = queue_rows(run)
    lab = tasks.get_labeler("sentiment")
    lines = labels.read_jsonl(run / "online" / "labels-sentiment.jsonl")
    assert [obj["id"] for _, obj in lines] == [r["id"] for r in rows]  # one label per item
    shares = []  # per validation item: the share of π's among the samples of top true score
    for (_, obj), r in zip(lines, rows):
        assert obj["best"] == lab.pick_best(r["query"], r["samples"])
        assert obj["run_id"] == r["run_id"] and obj["sample_tokens"] == r["sample_tokens"]
        score = lab.score(r["samples"])
        top = [i for i, x in enumerate(score) if x == score.max()]
        assert obj.get("tied", [obj["best"]]) == top  # recorded where a tie was broken
        if r["validation"]:
            shares.append(sum(r["policies"][i] == "pi" for i in top) / len(top))
    # π's win rate in summary.json: the share of π picks on the validation items, a tie counting
    # the share of π's samples among the tied
    summary = json.loads((run / "summary.json").read_text())["online"]
    assert summary["win_n"] == len(shares) > 0
    assert summary["win_rate"] == pytest.approx(sum(shares) / len(shares))


def test_scripted_run_provenance(scripted_run):
    """The comparisons queued at update 3 were sampled from the policy after 3 updates (the kept
    checkpoint): sampling them again from it gives the same tokens, and from ρ does not. Those of
    update 0 were made by ρ itself (π has not moved yet)."""
    run, _ = scripted_run
    rows = queue_rows(run)
    task = tasks.get_task("sentiment")
    ref = tasks.load_base_model("tiny")
    policy = ppo.PolicyAndValue(copy.deepcopy(ref))
    ckpt = torch.load(run.parent / "checkpoint-3.pt", weights_only=False)
    assert ckpt["update"] == 3
    policy.load_state_dict(ckpt["policy"])

    def again(items, pi):
        slots = [[ref if p == "rho" else pi for p in r["policies"]] for r in items]
        n0 = int(items[0]["id"].rsplit("-", 1)[1])
        seed = online.item_seed(SEED, n0)
        queries = [r["query_tokens"] for r in items]
        return online.sample_comparison_tokens(slots, task, queries, seed)

    at3 = [r for r in rows if r["update"] == 3]
    assert at3 and any(r["validation"] for r in at3)
    assert again(at3, policy.lm) == [r["sample_tokens"] for r in at3]
    assert again(at3, ref) != [r["sample_tokens"] for r in at3]  # the check can fail
    first_rl = [r for r in rows[N0:] if r["update"] == 0]
    pi0 = copy.deepcopy(ref)  # π before its first update: ρ's weights, in a model of its own
    assert again(first_rl, pi0) == [r["sample_tokens"] for r in first_rl]


def test_online_run_samples_everything_at_its_temperature(tmp_path, monkeypatch):
    """ppo.py --online --temperature 0.9 (sentiment's is 0.7): the queue's comparisons (ρ's and
    π's samples) and the normalization samples of every retraining are drawn at 0.9, as the
    rollouts; state.json and the reward model record it, and a resume at another is refused."""
    from test_reward import record_sampling

    calls = record_sampling(monkeypatch)
    run = tmp_path / "run"
    args = [*SMALL, "--labeler", "sentiment", "--run-dir", str(run), "--temperature", "0.9"]
    for flag, value in (("--total-episodes", "16"), ("--labels-total", "16"),
                        ("--labels-initial", "8"), ("--rm-trainings", "2")):  # fmt: skip
        args[args.index(flag) + 1] = value
    ppo.main(args)
    callers = {c for c, _ in calls}
    assert {
        "machinery.comparisons.sample_responses < machinery.online.sample_comparison_tokens",
        "machinery.comparisons.sample_responses < reward.normalize.<locals>.draw",
        "ppo.rollout < ppo.train",
    } <= callers, callers
    assert {t for _, t in calls} == {0.9}, sorted(set(calls))
    assert json.loads((run / "online" / "state.json").read_text())["temperature"] == 0.9
    rm = torch.load(run / "online" / "rm.pt", weights_only=True)
    assert rm["online"]["training"] == 1 and rm["temperature"] == 0.9
    with pytest.raises(SystemExit, match="temperature: 0.9 -> 0.7"):
        ppo.main(["--resume", str(run), "--temperature", "0.7"])


# --------------------------------------------------------------------------------------------------
# SIGKILL at a random moment, then resume


def test_sigkill_then_resume(tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    run = tmp_path / "run"
    queue = run / "online" / "queue.jsonl"
    kill_at = rng.randrange(1, N + 1)  # kill once the queue has this many lines ...
    extra = rng.uniform(0, 1.5)  # ... and this many seconds more
    p = subprocess.Popen(ppo_cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=env(), cwd=ROOT)  # fmt: skip
    try:
        while p.poll() is None:
            if queue.exists() and queue.read_bytes().count(b"\n") >= kill_at:
                time.sleep(extra)
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    why = f"(random seed {seed}: killed at {kill_at} queue lines + {extra:.2f} s)"
    # after the kill: both files parse, and the labels are exactly the scripted labeler's decisions
    state = json.loads((run / "online" / "state.json").read_text())
    rows = online.read_queue(queue, state["run_id"])
    lab = tasks.get_labeler("sentiment")
    by_id = {r["id"]: r for r in rows}
    path = run / "online" / "labels-sentiment.jsonl"
    lines = labels.read_jsonl(path) if path.exists() else []
    assert len({o["id"] for _, o in lines}) == len(lines), why
    for _, obj in lines:
        r = by_id[obj["id"]]
        assert obj["best"] == lab.pick_best(r["query"], r["samples"]), why
    r = run_ppo([sys.executable, str(ROOT / "ppo.py"), "--resume", str(run)])
    assert r.returncode == 0, why + r.stdout[-3000:] + r.stderr[-3000:]
    # the resumed run continued the same schedule and trained as planned
    rows = queue_rows(run)
    per_update: dict = {}
    for row in rows:
        per_update[row["update"]] = per_update.get(row["update"], 0) + 1
    assert per_update == expected_per_update(), why
    assert rows[: len(by_id)] == list(by_id.values()), why  # nothing queued before was changed
    trainings = [o for _, o in labels.read_jsonl(run / "online" / "trainings.jsonl")]
    assert [t["training"] for t in trainings] == list(range(K)), why
    lines = labels.read_jsonl(path)
    assert [o["id"] for _, o in lines] == [row["id"] for row in rows], why  # each labeled once


# --------------------------------------------------------------------------------------------------
# PPO waits for people's labels


def start_human_run(run):
    """`ppo.py --labeler human` in the background; its output is collected line by line into
    `out` by the returned reader thread."""
    p = subprocess.Popen(ppo_cmd(run, labeler="human"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT)  # fmt: skip
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(p.stdout), daemon=True)
    reader.start()
    return p, out, reader


def test_waits_for_human_labels_then_continues(tmp_path):
    """--labeler human: the run queues the initial comparisons and waits, saying what for; this
    test labels each queued item 2 s after it appears (writing labels-tester.jsonl as label_tool
    would); the run goes on and finishes with every training done."""
    run = tmp_path / "run"
    p, out, reader = start_human_run(run)
    queue, labels_path = run / "online" / "queue.jsonl", run / "online" / "labels-tester.jsonl"
    seen: dict[str, float] = {}
    done: set = set()
    lab = tasks.get_labeler("sentiment")
    try:
        deadline = time.time() + 600
        while p.poll() is None and time.time() < deadline:
            if queue.exists():
                for _, item in labels.read_jsonl(queue) if queue.stat().st_size else []:
                    seen.setdefault(item["id"], time.time())
                    if item["id"] not in done and time.time() - seen[item["id"]] > 2:
                        best = lab.pick_best(item["query"], item["samples"])
                        labels.append_jsonl(
                            labels_path,
                            dict(item, best=best, labeler="tester", seconds=1.0,
                                 created=online.now_iso_ms()),
                        )  # fmt: skip
                        done.add(item["id"])
            time.sleep(0.2)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        reader.join(5)
    text = "".join(out)
    assert p.returncode == 0, text[-4000:]
    assert "online: waiting for labels: the first reward model" in text
    assert "label_tool.py --follow" in text  # says how to label
    assert f"online: {N0}/{N0} labeled" in text  # the progress line, then it went on
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(m["online/waiting"] for m in metrics)  # it waited during RL too (lag 0)
    assert metrics[-1]["online/rm_trainings"] == K
    assert all(m["online/label_latency"] >= 2 for m in metrics)
    assert len(done) >= online.retrain_points(N, N0, K)[-1]


@needs_terminal
def test_two_people_label_in_terminals_while_the_run_waits(tmp_path):
    """The whole human path: `ppo.py --labeler human` and two `label_tool.py --follow` sessions in
    real pseudo-terminals (tests/terminal.py), each person pressing a key for every item their
    screen shows. The run waits for them, goes on, and finishes with every training done; both
    people's labels are in the files and in the trainings (two labels of one comparison are two
    training rows); each tool sees the run finish and quits cleanly."""
    run = tmp_path / "run"
    p, out, reader = start_human_run(run)
    tools, pressed, rng = {}, {}, random.Random(0)

    def label_what_is_shown():
        """One key per item each tool shows (its status line names it), never two for one
        redraw; a tool that exits on its own fails the test at once."""
        for who, tool in tools.items():
            shown = re.search(r" (\d+)/(\d+) done \| item (\d+) \|", tool.poll(0.05))
            assert not getattr(tool, "closed", False), (who, tool.output[-2000:])
            if shown and pressed.get(who) != shown.group(1):
                pressed[who] = shown.group(1)
                tool.send(str(rng.randint(1, 4)))

    try:
        deadline = time.time() + 600
        while p.poll() is None and time.time() < deadline:
            if not tools and (run / "online" / "queue.jsonl").exists():
                for who in ("ann", "bob"):
                    tools[who] = terminal.Terminal(
                        [sys.executable, str(ROOT / "label_tool.py"), "--follow", str(run),
                         "--labeler", who], 30, 110, env={"PYTHONDONTWRITEBYTECODE": "1"},
                    )  # fmt: skip
            label_what_is_shown()
        assert p.poll() == 0, "".join(out)[-4000:]
        # the last comparisons, queued after the last training, are labeled after the run ends
        while time.time() < deadline and not all(
            "The run has finished" in tool.text() for tool in tools.values()
        ):
            label_what_is_shown()
        for who, tool in tools.items():
            tool.wait_for("The run has finished", timeout=5)
            tool.send("q")
            assert tool.wait_exit() == 0 and b"Traceback" not in tool.output, who
        reader.join(5)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        for tool in tools.values():
            tool.reap()
    text = "".join(out)
    assert "online: waiting for labels: the first reward model" in text
    queued = {item["id"] for _, item in labels.read_jsonl(run / "online" / "queue.jsonl")}
    by = {who: labels.read_labels(run / "online" / f"labels-{who}.jsonl") for who in tools}
    for who, rows in by.items():
        assert {r["id"] for r in rows} <= queued, who
        assert all(r["labeler"] == who and r["best"] in range(4) for r in rows), who
    both = {r["id"] for r in by["ann"]} & {r["id"] for r in by["bob"]}
    assert len(both) >= N0  # both labeled the initial comparisons, at least
    trainings = [json.loads(line) for line in (run / "online" / "trainings.jsonl").open()]
    assert len(trainings) == K
    assert trainings[-1]["labels"] > trainings[-1]["comparisons"]  # two people's rows, one item
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["online/rm_trainings"] == K


# --------------------------------------------------------------------------------------------------
# Bad input: another run's labels, a queue edited by hand, a second run in the same folder


def item(run_id, n, **kw):
    return dict(
        id=f"{run_id}-{n}", task="sentiment", query="q", query_tokens=[10, 11],
        samples=["a", "b", "c", "d"], sample_tokens=[[1], [2], [3], [4]], run_id=run_id,
        update=0, policies=["rho"] * 4, validation=False, queued=online.now_iso_ms(), **kw,
    )  # fmt: skip


def make_queue(tmp_path, run_id="abc", n=3):
    folder = tmp_path / "online"
    folder.mkdir()
    for i in range(n):
        labels.append_jsonl(folder / "queue.jsonl", item(run_id, i))
    return folder


def test_summary_counts_the_labels_given_during_the_last_update(tmp_path):
    """The metrics line of the last update counts the labels read as it began; the comparisons
    queued then are labeled during it. summary.json's `online` reads the labels files as the run
    ends, so it counts them (label_tool.py --follow's finish line shows it: it said "2 of 3"
    beside the labeler's "3/3 done")."""
    folder = make_queue(tmp_path)
    queue = online.read_queue(folder / "queue.jsonl", "abc")
    run = object.__new__(online.Online)  # the state summary() reads, without a model
    run.run_id, run.queue, run.by_id = "abc", queue, {r["id"]: r for r in queue}
    run.reader, run.rows, run.seen, run.latencies = online.LabelReader(folder, "abc"), [], set(), []
    run.trainings, run.rm_path = [], folder / "rm.pt"
    for n in range(2):
        labels.append_jsonl(
            folder / "labels-ann.jsonl", dict(item("abc", n), best=n, labeler="ann")
        )
    assert run.refresh() == 2  # the last update's metrics line: 2 received
    labels.append_jsonl(folder / "labels-ann.jsonl", dict(item("abc", 2), best=0, labeler="ann"))
    summary = run.summary()
    assert summary["comparisons_labeled"] == summary["labels"] == 3
    assert summary["comparisons_queued"] == 3


def test_labels_file_of_another_run_is_refused(tmp_path):
    folder = make_queue(tmp_path)
    queue = {r["id"]: r for r in online.read_queue(folder / "queue.jsonl", "abc")}
    good = folder / "labels-ann.jsonl"
    good.write_bytes(b"")  # a labeler that has not decided anything yet: no labels, no error
    assert online.LabelReader(folder, "abc").read(queue) == []
    labels.append_jsonl(good, dict(item("abc", 0), best=1, labeler="ann"))
    labels.append_jsonl(good, dict(item("abc", 1), best=3, labeler="ann"))
    labels.append_jsonl(good, {"id": "abc-1", "undo": True, "run_id": "abc"})
    got = online.LabelReader(folder, "abc").read(queue)
    assert [(r["id"], r["best"]) for r in got] == [("abc-0", 1)]  # the undo applied
    bad = folder / "labels-bob.jsonl"
    labels.append_jsonl(bad, dict(item("abc", 0), best=0))
    labels.append_jsonl(bad, dict(item("zzz", 1), best=2))
    before = bad.read_bytes()
    with pytest.raises(SystemExit, match=r"labels-bob.jsonl:2: run_id 'zzz'.*another run"):
        online.LabelReader(folder, "abc").read(queue)
    assert bad.read_bytes() == before  # nothing lost
    # a label whose samples differ from its queue item (one of the two was edited)
    bad.write_bytes(b"")
    edited = dict(item("abc", 2), best=0)
    edited["sample_tokens"] = [[1], [2], [3], [5]]
    labels.append_jsonl(bad, edited)
    with pytest.raises(SystemExit, match=r"labels-bob.jsonl:1: its sample_tokens differ"):
        online.LabelReader(folder, "abc").read(queue)
    # two labelers of one item: two training rows
    bad.write_bytes(b"")
    labels.append_jsonl(bad, dict(item("abc", 0), best=2, labeler="bob"))
    got = online.LabelReader(folder, "abc").read(queue)
    assert sorted((r["id"], r["labeler"], r["best"]) for r in got) == [
        ("abc-0", "ann", 1),
        ("abc-0", "bob", 2),
    ]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[:1] + rows[2:], r"queue.jsonl:2: id 'abc-2', expected abc-1"),
        (lambda rows: [rows[0], {**rows[1], "run_id": "zzz"}, rows[2]], r"queue.jsonl:2: run_id"),
        (lambda rows: [rows[0], rows[1], {**rows[2], "policies": ["pi"]}], r"queue.jsonl:3: prov"),
        (lambda rows: [rows[0], {**rows[1], "sample_tokens": "x"}, rows[2]], r"queue.jsonl:2"),
    ],
    ids=["line deleted", "run_id changed", "provenance changed", "tokens broken"],
)
def test_queue_edited_by_hand_is_refused(tmp_path, edit, message):
    folder = make_queue(tmp_path)
    path = folder / "queue.jsonl"
    rows = [obj for _, obj in labels.read_jsonl(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))
    before = path.read_bytes()
    with pytest.raises(SystemExit, match=message):
        online.read_queue(path, "abc")
    assert path.read_bytes() == before


def test_bad_input_on_a_real_run(scripted_run, tmp_path):
    """On a finished run: a labels file of another run dropped into its folder stops --resume with
    the file and line named (nothing changed); a new run in the same folder is refused."""
    run = tmp_path / "run"
    shutil.copytree(scripted_run[0], run)
    (run / "summary.json").unlink()
    foreign = run / "online" / "labels-mallory.jsonl"
    labels.append_jsonl(foreign, dict(item("f00", 0), best=0))
    before = {p.name: p.read_bytes() for p in (run / "online").glob("*.jsonl")}
    r = run_ppo([sys.executable, str(ROOT / "ppo.py"), "--resume", str(run)])
    assert r.returncode != 0
    assert "labels-mallory.jsonl:1: run_id 'f00'" in r.stderr + r.stdout
    assert {p.name: p.read_bytes() for p in (run / "online").glob("*.jsonl")} == before
    r = run_ppo(ppo_cmd(run))
    assert r.returncode != 0 and "two runs cannot share one queue" in r.stderr + r.stdout
    assert {p.name: p.read_bytes() for p in (run / "online").glob("*.jsonl")} == before
