"""docs/frontier.py: best-of-n's KL and selection on hand-worked numbers and against a brute-force
loop over every draw, ties counted as reward.py's accuracy counts them; the gold peak; and the
study itself on real short runs of `tiny`, whose metrics.jsonl files make the frontier table."""

import importlib.util
import itertools
import json
import math
import sys

import numpy as np
import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("frontier", ROOT / "docs" / "frontier.py")
frontier = importlib.util.module_from_spec(_spec)
sys.modules["frontier"] = frontier  # docs/ is no package: dataclasses and --help look it up here
_spec.loader.exec_module(frontier)

# --------------------------------------------------------------------------------------------------
# KL of best-of-n


def test_kl_bon_hand_worked():
    # log n - (n - 1)/n
    assert frontier.kl_bon(1) == 0.0
    assert frontier.kl_bon(2) == pytest.approx(0.693147181 - 0.5)
    assert frontier.kl_bon(4) == pytest.approx(1.386294361 - 0.75)
    assert frontier.kl_bon(64) == pytest.approx(4.158883083 - 0.984375)
    with pytest.raises(ValueError):
        frontier.kl_bon(0)


def test_kl_bon_bounds_the_kl_of_best_of_n():
    # 6 equally likely responses with distinct rewards: best-of-n keeps the i-th lowest (1-based)
    # with chance (i/6)^n - ((i-1)/6)^n; its KL to ρ lies under log n - (n-1)/n (which it reaches
    # as the responses grow many), within 0.1 nats already at 6
    for n in (2, 4):
        p = np.array([(i / 6) ** n - ((i - 1) / 6) ** n for i in range(1, 7)])
        kl = float((p * np.log(p * 6)).sum())
        assert kl <= frontier.kl_bon(n) and kl == pytest.approx(frontier.kl_bon(n), abs=0.1)


# --------------------------------------------------------------------------------------------------
# Best-of-n selection


def test_bon_weights_hand_worked():
    # the docstring's example: draws of 2 of [3, 1, 3, 2]: {3a,1} 3a, {3a,3b} half each, {3a,2}
    # 3a, {1,3b} 3b, {1,2} 2, {3b,2} 3b
    w = frontier.bon_weights([3.0, 1.0, 3.0, 2.0], 2)
    np.testing.assert_allclose(w, np.array([2.5, 0.0, 2.5, 1.0]) / 6)
    np.testing.assert_allclose(frontier.bon_weights([3.0, 1.0, 3.0, 2.0], 1), np.full(4, 0.25))
    np.testing.assert_allclose(frontier.bon_weights([3.0, 1.0, 3.0, 2.0], 4), [0.5, 0, 0.5, 0])
    with pytest.raises(ValueError):
        frontier.bon_weights([1.0, 2.0], 3)


def brute_force(proxy, gold, gold_ref, n):
    """Every draw of n of the N samples, in a plain loop: keep the highest proxy; a tie of k at the
    top keeps each with chance 1/k, so the draw's gold is the mean over the tied, and its win over
    each reference sample the mean of theirs."""
    golds, wins = [], []
    for draw in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in draw)
        kept = [i for i in draw if proxy[i] == top]
        golds.append(sum(gold[i] for i in kept) / len(kept))
        win = [1.0 if gold[i] > r else 0.0 if gold[i] < r else 0.5 for i in kept for r in gold_ref]
        wins.append(sum(win) / len(win))
    return sum(golds) / len(golds), sum(wins) / len(wins)


# hand-made scores: a tie of three at the top (the -1 of responses without a stop token ties
# too), a tie in the middle, gold ties with the references
PROXY = [0.5, -1.0, 2.0, 2.0, -1.0, 0.5, 2.0, 1.0]
GOLD = [0.1, -0.3, 0.9, 0.0, 0.2, 0.1, 0.4, 0.6]
REF = [0.0, 0.4]


@pytest.mark.parametrize("n", range(1, 9))
def test_best_of_n_against_brute_force(n):
    gold, win = brute_force(PROXY, GOLD, REF, n)
    rows = np.array([PROXY, PROXY[::-1]]), np.array([GOLD, GOLD[::-1]]), np.array([REF, REF])
    got = frontier.best_of_n(*rows, n)  # the second query: the same samples in reverse order
    assert got["gold"] == pytest.approx(gold) and got["win_rate"] == pytest.approx(win)
    assert got["kl"] == frontier.kl_bon(n)
    # the kept proxy: the top of each draw, ties or not
    tops = [max(PROXY[i] for i in d) for d in itertools.combinations(range(8), n)]
    assert got["proxy"] == pytest.approx(sum(tops) / len(tops))


def test_a_tie_at_the_top_is_not_won_by_position():
    # all tied (every response penalized -1): best-of-n's gold is the mean gold, whatever the
    # order and n, not the first sample's
    gold = np.array([[0.9, 0.0, 0.0, 0.3]])
    for n in (1, 2, 4):
        got = frontier.best_of_n(np.full((1, 4), -1.0), gold, np.zeros((1, 1)), n)
        assert got["gold"] == pytest.approx(0.3) and got["proxy"] == -1.0
    # a tie of two at the top of four, best-of-4: half each, in either order
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        p, g = (
            np.array([[2.0, 2.0, 1.0, 0.0]])[:, order],
            np.array([[1.0, 0.0, 5.0, 5.0]])[:, order],
        )
        assert frontier.best_of_n(p, g, np.zeros((1, 1)), 4)["gold"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------
# Paths and peaks


def test_running_mean_and_trajectory():
    np.testing.assert_allclose(frontier.running_mean([1, 3, 5, 7], 2), [1, 2, 4, 6])
    np.testing.assert_allclose(frontier.running_mean([1, 3, 5, 7], 9), [1, 2, 3, 4])
    rows = [
        {"objective/kl": kl, "objective/score": s, "objective/true_score": g}
        for kl, s, g in [(-0.5, 0.0, 0.1), (4.5, 1.0, 0.3), (17.5, 2.0, 0.2)]
    ]
    sqrt_kl, proxy, gold = frontier.trajectory(rows, 2)
    np.testing.assert_allclose(sqrt_kl, [0.0, math.sqrt(2.0), math.sqrt(11.0)])  # mean, then √
    np.testing.assert_allclose(proxy, [0.0, 0.5, 1.5])
    np.testing.assert_allclose(gold, [0.1, 0.2, 0.25])


def test_gold_peak():
    assert frontier.gold_peak([0, 1, 2, 3], [0.1, 0.5, 0.4, 0.3], 0.1) == 1
    assert frontier.gold_peak([0, 1, 2, 3], [0.1, 0.5, 0.4, 0.45], 0.1) is None  # drop < 0.1
    assert frontier.gold_peak([0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], 0.0) is None  # still rising
    assert frontier.gold_peak([0, 2, 1, 0.5], [0.1, 0.5, 0.3, 0.2], 0.1) is None  # proxy fell


# --------------------------------------------------------------------------------------------------
# The study on real short runs of tiny: two PPO runs (adaptive, β = 0) of 2 updates of 8 episodes,
# the first training a reward model on 16 comparisons, then best-of-1..4 on 8 held-out queries

SMALL = [
    "--model", "tiny", "--betas", "0", "--updates", "2", "--rm-comparisons", "16", "--n-max", "4",
    "--n-refs", "2", "--window", "2", "--device", "cpu",
    "--ppo-flags=--batch-size 8 --micro-batch-size 4 --eval-episodes 8 --rm.normalize-samples 32",
]  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier")
    return out, frontier.main(SMALL + ["--out", str(out)])


def test_the_table_is_made_from_the_runs_metrics(study):
    out, state = study
    assert [r["name"] for r in state["ppo"]] == ["adaptive", "beta-0"]
    for row in state["ppo"]:
        rows = [json.loads(line) for line in (out / row["name"] / "metrics.jsonl").open()]
        assert row["updates"] == len(rows) == 2
        # window 2 over 2 updates: the final figures are the means of both updates
        mean = lambda key: (rows[0][key] + rows[1][key]) / 2  # noqa: E731
        assert row["proxy"] == pytest.approx(mean("objective/score"))
        assert row["gold"] == pytest.approx(mean("objective/true_score"))
        assert row["kl"] == pytest.approx(max(mean("objective/kl"), 0.0))
        summary = json.loads((out / row["name"] / "summary.json").read_text())
        assert row["win_rate"]["rate"] == summary["win_rate_vs_initial"]["rate"]
    adaptive, beta0 = state["ppo"]
    assert (
        adaptive["adaptive"] and not beta0["adaptive"] and beta0["beta"] == beta0["beta_end"] == 0
    )
    # one reward model: the first run trained it, the second read it
    config = json.loads((out / "beta-0" / "config.json").read_text())
    assert config["reward_model"] == str(out / "adaptive" / "rm.pt")
    assert not (out / "beta-0" / "rm.pt").exists()
    table = (out / "frontier.md").read_text()
    assert "| PPO, 2 updates | adaptive, 0.15 → " in table and "| PPO, 2 updates | 0 | " in table
    assert (out / "frontier.png").stat().st_size > 10_000


def test_best_of_n_rows(study):
    _, state = study
    bon = state["bon"]
    assert [b["n"] for b in bon["rows"]] == [1, 2, 4] and bon["queries"] == 8
    assert [b["kl"] for b in bon["rows"]] == [frontier.kl_bon(n) for n in (1, 2, 4)]
    proxy = [b["proxy"] for b in bon["rows"]]
    assert proxy == sorted(proxy)  # keeping the best of more samples never lowers the proxy


def test_a_rerun_reuses_the_runs_and_other_flags_are_refused(study, capsys):
    out, state = study
    again = frontier.main(SMALL + ["--out", str(out)])
    assert "reusing the finished run" in capsys.readouterr().out
    assert [r["kl"] for r in again["ppo"]] == [r["kl"] for r in state["ppo"]]
    with pytest.raises(SystemExit, match="holds runs of other flags"):
        frontier.main([*SMALL, "--out", str(out), "--updates", "3"])


def test_the_same_command_runs_gpt2_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """`--model gpt2` needs no code change: the study runs on the GPT-2 that the Hugging Face cache
    holds, here a random 1-layer one in the cache's own layout (no download in tests), through the
    gpt2 preset instead of tiny's (the books passages, the BPE tokenizer, no tiny defaults)."""
    from huggingface_hub import constants

    import gpt2

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--openai-community--gpt2"
    small = gpt2.GPT2(gpt2.GPT2Config(n_layer=1, n_head=1, n_embd=8))
    gpt2.save_pretrained(small, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "study"
    flags = [a if a != "tiny" else "gpt2" for a in SMALL]
    flags[-1] += " --no-rm.require-stop"  # random weights never write the stop token '.'
    state = frontier.main([*flags, "--no-adaptive", "--out", str(out)])
    config = json.loads((out / "beta-0" / "config.json").read_text())
    assert config["model"] == "gpt2" and config["kl_coef"] == 0
    assert [r["name"] for r in state["ppo"]] == ["beta-0"] and state["ppo"][0]["updates"] == 2
    assert [b["n"] for b in state["bon"]["rows"]] == [1, 2, 4]
    assert "| PPO, 2 updates | 0 | " in (out / "frontier.md").read_text()


@pytest.mark.parametrize(
    "flags, says",
    [(["--window", "0"], "--window 0: must be a number >= 1"),
     (["--min-drop", "-1"], "--min-drop -1.0: must be a number >= 0"),
     (["--n-refs", "0"], "--n-refs 0: must be a number >= 1"),
     (["--updates", "-1"], "--updates -1: must be a number >= 0")],
)  # fmt: skip
def test_bad_values_are_refused_before_anything_runs(tmp_path, flags, says):
    with pytest.raises(SystemExit, match=says):
        frontier.main([*flags, "--out", str(tmp_path / "study")])
    assert not (tmp_path / "study").exists()
    (tmp_path / "a-file").write_text("mine\n")
    with pytest.raises(SystemExit, match="a file, not a folder"):
        frontier.main(["--out", str(tmp_path / "a-file")])
    assert (tmp_path / "a-file").read_text() == "mine\n"


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        frontier.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--betas" in text and "--n-max" in text and "log n - (n - 1)/n" in text
