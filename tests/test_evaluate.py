"""evaluate.py: the win-rate statistics on hand-worked label sets, the blind pairs file, a person
labeling it in a real terminal and --report reading it back, and each kind of bad input."""

import json
import math
import random
import re
import sys
from pathlib import Path

import pytest
import terminal

import evaluate
import gpt2
from evaluate import agreement, outcomes_by_labeler, pool, preference_line, win_rate
from machinery import labels

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# Statistics, by hand


def test_wilson_interval_hand_worked():
    # 8 of 10: center (0.8 + z²/20) / (1 + z²/10) = 0.99208 / 1.38415 = 0.71674,
    # half-width z·sqrt(0.016 + z²/400) / 1.38415 = 1.96·0.16001 / 1.38415 = 0.22658
    lo, hi = labels.wilson_interval(0.8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    # 0 of 10 and 10 of 10: not a point, and inside [0, 1]: z² / (n + z²) = 3.8415 / 13.8415
    assert labels.wilson_interval(0.0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert labels.wilson_interval(1.0, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    # symmetric about 1/2 when the rate is
    lo, hi = labels.wilson_interval(0.5, 40)
    assert lo + hi == pytest.approx(1.0) and lo == pytest.approx(0.35199, abs=1e-4)


def test_win_rate_counts_a_tie_as_half_a_win():
    # 3 wins, 1 loss, 2 ties of 6: (3 + 2/2) / 6 = 2/3; Wilson at 2/3 over all 6:
    # center (0.66667 + 0.32013) / 1.64025 = 0.60162, half 1.96·sqrt(0.03704 + 0.02668) / 1.64025
    s = win_rate([1.0, 1.0, 1.0, 0.0, 0.5, 0.5])
    assert (s["n"], s["wins"], s["ties"], s["losses"]) == (6, 3, 2, 1)
    assert s["rate"] == pytest.approx(2 / 3)
    assert (s["lo"], s["hi"]) == pytest.approx((0.30000, 0.90323), abs=1e-4)
    assert preference_line(s) == (
        "policy preferred to ρ in 66.7% of 6 comparisons (95% CI 30.0–90.3%; ties 2)"
    )
    assert preference_line(win_rate([1.0, 0.0]), "runs/b").startswith(
        "policy preferred to runs/b in 50.0% of 2 comparisons"
    )


def label_row(id_, best, labeler):
    return dict(id=id_, query_tokens=[1], sample_tokens=[[2], [3]], best=best, labeler=labeler)


# The policy's sample is at index 1 in pairs a and c, at 0 in b and d.
KEY = {"a": 1, "b": 0, "c": 1, "d": 0}
# ann: a policy, b policy, c other; bob: a policy, b other; cat: a other, d policy
ROWS = [
    label_row("a", 1, "ann"),
    label_row("b", 0, "ann"),
    label_row("c", 0, "ann"),
    label_row("a", 1, "bob"),
    label_row("b", 1, "bob"),
    label_row("a", 0, "cat"),
    label_row("d", 0, "cat"),
]


def test_several_labelers_per_labeler_and_pooled():
    by = outcomes_by_labeler(ROWS, KEY)
    assert by == {
        "ann": {"a": 1.0, "b": 1.0, "c": 0.0},
        "bob": {"a": 1.0, "b": 0.0},
        "cat": {"a": 0.0, "d": 1.0},
    }
    assert win_rate(list(by["ann"].values()))["rate"] == pytest.approx(2 / 3)
    # pooled: each pair once, its votes averaged: a 2/3, b 1/2, c 0, d 1 -> 2.1667 / 4
    pooled = pool(by)
    assert pooled == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 0.0, "d": 1.0})
    s = win_rate(list(pooled.values()))
    assert (s["n"], s["wins"], s["ties"], s["losses"]) == (4, 1, 2, 1)
    assert s["rate"] == pytest.approx(13 / 24)
    # agreement on a (2 policy, 1 other) and b (1, 1): P_a = (4 + 1 - 3) / 6 = 1/3, P_b = 0,
    # mean 1/6; P_e from 3 policy / 2 other votes = 0.36 + 0.16 = 0.52; κ = (1/6 - 0.52) / 0.48
    agree = agreement(by)
    assert agree["pairs"] == 2
    assert agree["percent"] == pytest.approx(1 / 6)
    assert agree["kappa"] == pytest.approx((1 / 6 - 0.52) / 0.48)
    assert agreement({"ann": by["ann"]}) is None


# --------------------------------------------------------------------------------------------------
# The blind pairs file

POLICY_TEXT, OTHER_TEXT = " What a wonderful, happy day it was.", " It was a grey and gloomy day."


def fake_pairs(n, seed=0):
    """Pairs whose policy samples are recognizable (for the test only): the policy's response to
    query i is POLICY_TEXT plus i, the other side's OTHER_TEXT plus i."""
    enc = gpt2.get_tokenizer()
    queries = [enc.encode(f"Query number {i}.") for i in range(n)]
    pol = [enc.encode(f"{POLICY_TEXT} ({i})") for i in range(n)]
    oth = [enc.encode(f"{OTHER_TEXT} ({i})") for i in range(n)]
    return evaluate.make_pairs("sentiment", queries, pol, oth, random.Random(seed))


def test_pairs_are_blind():
    n = 400
    rows, key, query_index = fake_pairs(n)
    # the key is right: the sample it names is the policy's
    for r in rows:
        assert r["samples"][key[r["id"]]].startswith(POLICY_TEXT)
    # nothing but the comparisons format's own fields (no side, no source, no seed)
    assert all(list(r) == list(labels.COMPARISON_FIELDS) for r in rows)
    refs = [f"reference {i}" for i in range(n)]  # a summarization task's: the same for both sides
    with_refs, key2, qi2 = evaluate.make_pairs(
        "tldr", [[1]] * n, [[2]] * n, [[3]] * n, random.Random(0), refs
    )
    assert all(list(r) == [*labels.COMPARISON_FIELDS, "reference"] for r in with_refs)
    assert all(r["reference"] == refs[qi2[r["id"]]] for r in with_refs)
    # ids: one random prefix for the whole file, then the line number: nothing about the order
    prefix = rows[0]["id"].split("-")[0]
    assert re.fullmatch(r"[0-9a-f]{6}", prefix)
    assert [r["id"] for r in rows] == [f"{prefix}-{i + 1:04d}" for i in range(n)]
    assert fake_pairs(n, seed=1)[0][0]["id"].split("-")[0] != prefix
    # the policy's position: a fair coin per pair (binomial(400, 1/2): 200 ± 10; ±4 sd here) ...
    at0 = [key[r["id"]] == 0 for r in rows]
    assert 160 <= sum(at0) <= 240
    # ... independent of the line (even vs odd lines, first vs second half) ...
    for part in (at0[0::2], at0[1::2], at0[: n // 2], at0[n // 2 :]):
        assert 0.35 <= sum(part) / len(part) <= 0.65
    # ... and the pairs are not in query order
    order = [query_index[r["id"]] for r in rows]
    assert sorted(order) == list(range(n)) and order != list(range(n))
    # runs of equal positions behave like a coin's (a fixed pattern such as alternation would not)
    runs = 1 + sum(a != b for a, b in zip(at0, at0[1:]))
    assert 160 <= runs <= 240


def fake_run(tmp_path, task="sentiment", n=4, seed=0):
    """A run folder as ppo.py leaves it (config.json, policy/) with evaluate.py's blind pairs of
    fake_pairs in eval-human/: what --report reads."""
    run = tmp_path / "run"
    (run / "eval-human").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": task, "model": "tiny", "seed": 1}))
    gpt2.save_pretrained(gpt2.GPT2(gpt2.GPT2Config(n_layer=1, n_head=1, n_embd=8)), run / "policy")
    rows, key, query_index = fake_pairs(n, seed)
    scores = dict(score_policy=1.306, score_against=-1.233, kl_policy=2.5, kl_against=0.0)
    meta = dict(run=str(run), against="initial", task=task, labeler="human", scores=scores)
    meta["query_index"] = query_index
    evaluate.write_pairs(run / "eval-human", rows, key, meta)
    return run


def test_pairs_file_is_a_comparisons_file_and_the_key_is_beside_it(tmp_path):
    run = fake_run(tmp_path, n=6)
    pairs = labels.read_comparisons(run / "eval-human" / "pairs.jsonl")  # validated, N = 2
    assert len(pairs) == 6 and all(len(r["samples"]) == 2 for r in pairs)
    raw = (run / "eval-human" / "pairs.jsonl").read_text()
    assert "policy" not in raw and "initial" not in raw and "key" not in raw
    key = json.loads((run / "eval-human" / "key.json").read_text())
    assert set(key["policy_index"]) == {r["id"] for r in pairs}
    assert key["pairs_sha256"] == evaluate.sha256_of(run / "eval-human" / "pairs.jsonl")


# --------------------------------------------------------------------------------------------------
# A person labels the pairs in a real terminal; --report reads the labels back

_why_not = terminal.missing()


@pytest.mark.skipif(_why_not is not None, reason=_why_not or "")
def test_a_person_labels_the_pairs_and_report_counts_them(tmp_path, capsys):
    run = fake_run(tmp_path, n=4)
    pairs = labels.read_comparisons(run / "eval-human" / "pairs.jsonl")
    out = run / "eval-human" / "labels_ann.jsonl"
    # The command evaluate.py prints for --labeler human, with this labeler's name.
    cmd = evaluate.label_command(run / "eval-human", "sentiment").split()
    assert cmd[:2] == ["python", "label_tool.py"]
    assert cmd[2] == str(run / "eval-human" / "pairs.jsonl")
    argv = cmd[2:]
    argv[argv.index("--out") + 1], argv[argv.index("--labeler") + 1] = str(out), "ann"
    t = terminal.Terminal([sys.executable, str(ROOT / "label_tool.py"), *argv], rows=30, cols=100)
    try:
        # ann prefers the happy (policy) sample on the first three pairs, the gloomy one on the last
        for i, r in enumerate(pairs):
            screen = t.wait_for(f"{i}/4 done | item {r['id']}")
            assert "most positive and happy" in screen
            shown = dict(re.findall(r"^\[(\d)\] (.*)$", screen, re.M))
            assert sorted(shown) == ["1", "2"]
            want = POLICY_TEXT.strip() if i < 3 else OTHER_TEXT.strip()
            (k,) = [k for k, text in shown.items() if text.strip().startswith(want)]
            t.send(k)
        t.wait_for("4/4 done")
        t.send("q")
        assert t.wait_exit() == 0
    finally:
        t.reap()
    # a second labeler, bob, agrees on pairs 1 and 4 and disagrees on 2 (skips 3)
    key = json.loads((run / "eval-human" / "key.json").read_text())["policy_index"]
    for r, policy in zip(pairs[:2] + pairs[3:], (True, False, False)):
        best = key[r["id"]] if policy else 1 - key[r["id"]]
        row = {**r, "best": best, "labeler": "bob", "seconds": 1.0, "created": ""}
        labels.append_jsonl(run / "eval-human" / "labels_bob.jsonl", row)
    capsys.readouterr()
    assert evaluate.main([str(run), "--report"]) is None  # bob is not done: progress only
    assert "bob.jsonl: 3 of 4 labeled" in capsys.readouterr().out
    labels.append_jsonl(
        run / "eval-human" / "labels_bob.jsonl", {"id": pairs[2]["id"], "skip": True}
    )

    evaluate.main([str(run), "--report"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.endswith("labels_bob.jsonl: 3 of 4 labeled, 1 skipped") for line in lines)
    # now, and only now, the two sides' scores (kept in key.json while people label)
    assert "reward model score: policy 1.306, ρ -1.233 | KL(·‖ρ) nats: policy 2.50" in lines[-1]
    # ann: 3 of 4; bob: 1 of 3; pooled per pair: 1, 1/2, 1, 0 -> 2.5 / 4 with one tie
    assert any(
        line.startswith("ann:")
        and "policy preferred to ρ in 75.0% of 4 comparisons (95% CI 30.1–95.4%; ties 0)" in line
        for line in lines
    ), lines
    assert any("bob:" in line and "33.3% of 3 comparisons" in line for line in lines), lines
    pooled = win_rate([1.0, 0.5, 1.0, 0.0])
    assert any(
        line.startswith("pooled (2 labelers") and preference_line(pooled) in line for line in lines
    ), lines
    # agreement on pairs 1, 2, 4 (votes [2, 0], [1, 1], [0, 2]): 2 of 3 agree; 3 policy and 3
    # other votes: P_e = 1/4 + 1/4, κ = (2/3 - 1/2) / (1 - 1/2) = 1/3
    kappa = 1 / 3
    assert any(
        "agreement on 3 pairs" in line and "66.7%" in line and f"κ {kappa:.2f}" in line
        for line in lines
    ), lines
    written = json.loads((run / "eval-human" / "summary.json").read_text())
    assert written["score_policy"] == 1.306
    summary = written["human"]
    assert summary["by_labeler"]["ann"]["rate"] == 0.75 and summary["finished"]
    assert summary["pooled"]["rate"] == pytest.approx(2.5 / 4)
    assert math.isclose(summary["agreement"]["kappa"], kappa)


def test_report_is_blind_until_every_pair_is_labeled(tmp_path, capsys):
    """A person who re-runs --report after each pick must not learn which side each pick was: while
    a labels file misses pairs it says how many are labeled, and no rate, score or summary."""
    run = fake_run(tmp_path, n=4)
    pairs = labels.read_comparisons(run / "eval-human" / "pairs.jsonl")
    path = run / "eval-human" / "labels_ann.jsonl"
    summary_before = (run / "eval-human" / "summary.json").exists()
    for i, r in enumerate(pairs[:3]):
        labels.append_jsonl(path, {**r, "best": 0, "labeler": "ann", "seconds": 1.0})
        capsys.readouterr()
        assert evaluate.main([str(run), "--report"]) is None
        printed = capsys.readouterr().out
        assert f"labels_ann.jsonl: {i + 1} of 4 labeled" in printed
        assert "--unblind" in printed
        for leak in ("preferred", "%", "score", "1.306", "agreement"):
            assert leak not in printed, leak
        assert (run / "eval-human" / "summary.json").exists() == summary_before
    # --unblind: the rates now, said to be of an unfinished labeling
    entries = evaluate.main([str(run), "--report", "--unblind"])
    printed = capsys.readouterr().out
    assert "not finished" in printed and "of 3 comparisons" in printed and "1.306" in printed
    assert entries["finished"] is False and entries["pooled"]["n"] == 3
    with pytest.raises(SystemExit, match="--unblind goes with --report"):
        evaluate.main([str(run), "--unblind"])


def test_default_folders_by_labeler_and_side(tmp_path):
    run = tmp_path / "run"
    assert evaluate.default_out(run, "sentiment", "initial") == run / "eval-sentiment"
    assert evaluate.default_out(run, "human", "initial") == run / "eval-human"
    assert evaluate.default_out(run, "human", "runs/b/") == run / "eval-human-vs-b"
    assert evaluate.default_out(run, "rouge", "openai-community/gpt2") == run / "eval-rouge-vs-gpt2"


# --------------------------------------------------------------------------------------------------
# Bad input: each a clear error


def test_report_refuses_labels_of_another_pairs_file(tmp_path, capsys):
    run = fake_run(tmp_path / "one")
    other = fake_run(tmp_path / "two", seed=1)  # same texts, other order and id prefix
    theirs = labels.read_comparisons(other / "eval-human" / "pairs.jsonl")[0]
    labels.append_jsonl(
        tmp_path / "theirs.jsonl", {**theirs, "best": 0, "labeler": "x", "seconds": 1.0}
    )
    with pytest.raises(SystemExit, match="belong to another pairs file"):
        evaluate.main([str(run), "--report", "--labels", str(tmp_path / "theirs.jsonl")])
    # same id, other tokens: refused too
    ours = labels.read_comparisons(run / "eval-human" / "pairs.jsonl")[0]
    forged = {**ours, "sample_tokens": ours["sample_tokens"][::-1], "best": 0, "labeler": "x"}
    labels.append_jsonl(tmp_path / "forged.jsonl", forged)
    with pytest.raises(SystemExit, match=r"has other tokens than its pair in the pairs file"):
        evaluate.main([str(run), "--report", "--labels", str(tmp_path / "forged.jsonl")])


def test_report_refuses_a_changed_pairs_file_and_missing_labels(tmp_path):
    run = fake_run(tmp_path)
    with pytest.raises(SystemExit, match=r"(?s)no labels files in .*label_tool.py"):
        evaluate.main([str(run), "--report"])
    pairs = run / "eval-human" / "pairs.jsonl"
    pairs.write_text(pairs.read_text().replace("wonderful", "terrible"))
    with pytest.raises(SystemExit, match="changed after evaluate.py wrote it"):
        evaluate.main([str(run), "--report"])


def test_new_pairs_never_orphan_labels(tmp_path):
    run = fake_run(tmp_path)
    pairs = labels.read_comparisons(run / "eval-human" / "pairs.jsonl")
    labels.append_jsonl(run / "eval-human" / "labels_ann.jsonl", {**pairs[0], "best": 0})
    before = (run / "eval-human" / "pairs.jsonl").read_bytes()
    rows, key, _ = fake_pairs(4, seed=5)
    with pytest.raises(SystemExit, match="already holds labels of its pairs"):
        evaluate.write_pairs(run / "eval-human", rows, key, {})
    assert (run / "eval-human" / "pairs.jsonl").read_bytes() == before


@pytest.mark.parametrize("what", ["missing", "empty", "not a run", "no policy"])
def test_a_folder_that_is_not_a_run(tmp_path, what):
    folder = tmp_path / "x"
    if what != "missing":
        folder.mkdir()
    if what == "not a run":
        (folder / "config.json").write_text(json.dumps({"n_layer": 2}))  # a model's config
    if what == "no policy":
        (folder / "config.json").write_text(
            json.dumps({"task": "sentiment", "model": "tiny", "seed": 1})
        )
    message = {
        "missing": "no such folder",
        "empty": "not a ppo.py run folder",
        "not a run": "not a ppo.py run's config",
        "no policy": "no exported policy",
    }[what]
    with pytest.raises(SystemExit, match=message):
        evaluate.main([str(folder), "--report"])


# --------------------------------------------------------------------------------------------------
# A real run: ppo.py on tiny with the smallest budgets exports its policy and judges it


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import ppo

    run_dir = tmp_path_factory.mktemp("tiny-run")
    summary = ppo.main(
        ["--model", "tiny", "--batch-size", "8", "--micro-batch-size", "4"]
        + ["--eval-episodes", "8", "--save-every", "1", "--sample-every", "0"]
        + ["--rm.num-comparisons", "16", "--rm.normalize-samples", "32"]
        + ["--total-episodes", "16", "--run-dir", str(run_dir)]
    )
    return run_dir, summary


def test_a_run_exports_its_policy_and_reports_the_scripted_win_rate(tiny_run):
    import torch
    from safetensors.torch import load_file

    run_dir, summary = tiny_run
    # policy/ is the trained policy: the same weights as the checkpoint's, and loadable from the
    # run folder itself
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    exported = gpt2.GPT2.from_pretrained(str(run_dir)).state_dict()
    for name, t in exported.items():
        assert torch.equal(t, ckpt["policy"][f"lm.{name}"]), name
    value = load_file(str(run_dir / "value_head.safetensors"))
    assert set(value) == {"value_head.weight", "value_head.bias"}
    assert torch.equal(value["value_head.weight"], ckpt["policy"]["value_head.weight"])
    # the win rate against ρ: in summary.json, over the run's held-out queries
    win = summary["win_rate_vs_initial"]
    assert json.loads((run_dir / "summary.json").read_text())["win_rate_vs_initial"] == win
    assert win["n"] == 8 and win["wins"] + win["ties"] + win["losses"] == 8
    assert win["rate"] == pytest.approx((win["wins"] + win["ties"] / 2) / 8)
    assert win["labeler"] == "script:sentiment" and win["lo"] <= win["rate"] <= win["hi"]


def test_scripted_judge_agrees_with_its_pairs_and_key(tiny_run, tmp_path, capsys):
    """The printed rate is what the sentiment labeler says about the pairs file, read through the
    key: the key names the policy's samples and the scores are the labeler's."""
    from machinery import tasks

    run_dir, _ = tiny_run
    out = tmp_path / "eval"
    summary = evaluate.main([str(run_dir), "--n", "12", "--out", str(out), "--batch-size", "8"])
    printed = capsys.readouterr().out
    pairs = labels.read_comparisons(out / "pairs.jsonl")
    key = json.loads((out / "key.json").read_text())["policy_index"]
    scorer = tasks.get_labeler("sentiment")
    outcomes = []
    for r in pairs:
        mine, theirs = scorer.score([r["samples"][key[r["id"]]], r["samples"][1 - key[r["id"]]]])
        outcomes.append(1.0 if mine > theirs else 0.0 if mine < theirs else 0.5)
    expected = win_rate(outcomes)
    assert summary["win_rate"]["rate"] == pytest.approx(expected["rate"])
    assert f"sentiment labeler: {preference_line(expected)}" in printed
    for k in ("score_policy", "score_against", "true_score_policy", "kl_policy"):
        assert math.isfinite(summary[k]), k
    assert summary["kl_against"] == 0.0  # ρ against itself
    assert "reward model score: policy" in printed and "query (end)" in printed
    assert json.loads((out / "summary.json").read_text()) == summary


def test_human_judge_prints_the_label_tool_command(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "eval"
    summary = evaluate.main(
        [str(run_dir), "--n", "4", "--labeler", "human", "--out", str(out), "--show", "0"]
    )
    printed = capsys.readouterr().out
    assert "win_rate" not in summary and len(labels.read_comparisons(out / "pairs.jsonl")) == 4
    assert f"python label_tool.py {out / 'pairs.jsonl'} --out {out}/labels_" in printed
    assert f"then: python evaluate.py {run_dir} --report --out {out}" in printed


def test_human_judge_shows_nothing_that_unblinds_the_pairs(tiny_run, tmp_path, capsys):
    # the default --show would print pairs side by side under "policy | other" headers; a person
    # about to label must see neither the table nor any sample next to its side
    run_dir, _ = tiny_run
    out = tmp_path / "eval"
    evaluate.main([str(run_dir), "--n", "4", "--labeler", "human", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "policy |" not in printed and "| other" not in printed
    pairs = labels.read_comparisons(out / "pairs.jsonl")
    # the table clipped each sample to its column: look for their first 20 characters
    starts = {s.replace("\n", " ")[:20] for row in pairs for s in row["samples"] if len(s) > 20}
    assert starts and not [s for s in starts if s in printed]


def test_against_a_run_of_another_task_or_model_size(tiny_run, tmp_path):
    import shutil

    run_dir, _ = tiny_run
    other = tmp_path / "other"
    shutil.copytree(run_dir / "policy", other / "policy")
    config = json.loads((run_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "task": "descriptiveness"}))
    with pytest.raises(SystemExit, match="a run of task 'descriptiveness', but .* 'sentiment'"):
        evaluate.main([str(run_dir), "--against", str(other), "--out", str(tmp_path / "e")])
    small = gpt2.GPT2(gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=16))
    gpt2.save_pretrained(small, other / "policy")
    (other / "config.json").write_text(json.dumps(config))
    for against in (other, other / "policy"):  # a run folder, or the model directory itself
        with pytest.raises(SystemExit, match="'n_layer': 1.* compare policies of the same model"):
            evaluate.main([str(run_dir), "--against", str(against), "--out", str(tmp_path / "e")])
    assert not (tmp_path / "e").exists()  # refused before writing anything


def test_documented_commands_work_after_a_run(tiny_run, capsys):
    """The README's and docs/running.md's commands, as written, right after a run: evaluate.py's
    folders are its own (eval-<labeler>/), never ppo.py's end-of-run eval/."""
    run_dir, _ = tiny_run
    own = {p.name: p.read_bytes() for p in (run_dir / "eval").iterdir()}
    small = ["--n", "4", "--batch-size", "4"]
    first = evaluate.main([str(run_dir), *small])
    out = run_dir / "eval-sentiment"
    assert first["labeler"] == "sentiment" and (out / "summary.json").is_file()
    key = (out / "key.json").read_bytes()
    # the same command again makes the same scripted evaluation again: it replaces the first
    capsys.readouterr()
    again = evaluate.main([str(run_dir), *small])
    assert "replacing the scripted evaluation made the same way" in capsys.readouterr().out
    assert (out / "key.json").read_bytes() != key and again["win_rate"]["n"] == 4
    # another way (another n) is refused, naming the two commands that go on
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(run_dir), "--n", "6", "--batch-size", "4"])
    assert "n 4 -> 6" in str(e.value) and f"--out {out}-2" in str(e.value)
    assert str(e.value).rstrip().endswith("--overwrite")
    assert {p.name: p.read_bytes() for p in (run_dir / "eval").iterdir()} == own

    # people: eval-human/, blind (no score printed or in summary.json), then --report
    capsys.readouterr()
    summary = evaluate.main([str(run_dir), *small, "--labeler", "human"])
    printed = capsys.readouterr().out
    human = run_dir / "eval-human"
    for leak in ("score", "policy preferred", "policy |", "KL"):
        assert leak not in printed, leak
    written = json.loads((human / "summary.json").read_text())
    assert written == summary and not [k for k in written if "score" in k or "kl" in k]
    assert "true_score_policy" in json.loads((human / "key.json").read_text())["scores"]
    assert f"then: python evaluate.py {run_dir} --report\n" in printed + "\n"
    # made again before anyone labeled: refused, naming the label command and --overwrite
    with pytest.raises(SystemExit, match=r"not labeled yet; label them: python label_tool\.py"):
        evaluate.main([str(run_dir), *small, "--labeler", "human"])
    # once labeled, never replaced, not even with --overwrite
    pairs = labels.read_comparisons(human / "pairs.jsonl")
    labels.append_jsonl(human / "labels_ann.jsonl", {**pairs[0], "best": 0, "labeler": "ann"})
    with pytest.raises(SystemExit, match="already holds labels of its pairs"):
        evaluate.main([str(run_dir), *small, "--labeler", "human", "--overwrite"])
    assert labels.read_comparisons(human / "pairs.jsonl") == pairs
    capsys.readouterr()
    evaluate.main([str(run_dir), "--report"])
    assert "labels_ann.jsonl: 1 of 4 labeled" in capsys.readouterr().out
