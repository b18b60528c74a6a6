"""ppo.py: the PPO math on hand-worked numbers, the first-update invariants, the whole pipeline
on `tiny`, resume and bad input. The math tests run in milliseconds; the pipeline tests share one
small run (module-scoped fixture)."""

import dataclasses
import json
import math

import pytest
import torch

import ppo
from machinery import runs
from machinery.optim import AdamTF

# --------------------------------------------------------------------------------------------------
# The math, on hand-worked numbers


def test_whiten_population_variance_and_shift():
    # mean 2.5, population variance 1.25 (unbiased would be 5/3)
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25 + 1e-8)
    torch.testing.assert_close(ppo.whiten(v), expected)
    torch.testing.assert_close(ppo.whiten(v, shift_mean=False), expected + 2.5)
    w = ppo.whiten(torch.randn(7, 5) * 3 + 2)  # over all elements, not per row
    assert abs(w.mean().item()) < 1e-6 and abs(w.var(unbiased=False).item() - 1) < 1e-5


def test_gae_hand_worked_1x3():
    # the docstring's example: r = [0, 0, 1], V = [0.5, 0.25, 0.5], γ = 1, λ = 0.5
    adv, ret = ppo.compute_gae(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.25, 0.5]]), 1.0, 0.5
    )
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.5, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[0.5, 0.75, 1.0]]))
    # γ placement: with V = 0 and λ = 1 the advantage is the discounted return: [1 + 0.5·(0 +
    # 0.5·2), 0 + 0.5·2, 2]
    adv, _ = ppo.compute_gae(torch.tensor([[1.0, 0.0, 2.0]]), torch.zeros(1, 3), 0.5, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5, 1.0, 2.0]]))


def test_score_lands_on_last_token_and_kl_penalty_everywhere():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, -0.5]])
    rewards, non_score, kl = ppo.compute_rewards(
        torch.tensor([2.0, -1.0]), logprobs, ref_logprobs, kl_coef=0.1
    )
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 0.5, 0.0]]))
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, 0.0, 0.1], [0.0, -0.05, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 2.1], [0.0, -0.05, -1.0]]))


def test_penalty_replaces_score_without_stop_token():
    # the penalty is written once, in tasks.py; ppo.rollout applies it (checked in the rollout test
    # too)
    from machinery import tasks

    scores = torch.tensor([0.7, 3.0, -2.0])
    valid = torch.tensor([True, False, True])
    torch.testing.assert_close(
        tasks.penalize(scores, valid, tasks.get_task("sentiment")), torch.tensor([0.7, -1.0, -2.0])
    )


def test_policy_loss_hand_worked():
    # ratios 1.5, 0.5, 1 with advantages 1, 1, -1 and clip 0.2: -A·r = [-1.5, -0.5, 1], -A·clip(r) =
    # [-1.2, -0.8, 1], max = [-1.2, -0.5, 1] -> mean -0.7/3; clipped: token 0 only
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.0])).requires_grad_()
    loss, stats = ppo.ppo_policy_loss(new, old, torch.tensor([1.0, 1.0, -1.0]), 0.2)
    assert loss.item() == pytest.approx(-0.7 / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["approxkl"].item() == pytest.approx(
        0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3
    )
    loss.backward()  # d/dlogπ of -A·r/3 is -A·r/3, except where the clip is active (no gradient)
    torch.testing.assert_close(new.grad, torch.tensor([0.0, -0.5 / 3, 1 / 3]))


def test_value_loss_hand_worked():
    # V_old = 0, V = [0.5, 0.1], R = 1: clipped V = [0.2, 0.1]; losses [0.25, 0.81] vs [0.64, 0.81]
    # -> 0.5·(0.64+0.81)/2
    loss, stats = ppo.value_loss(torch.tensor([0.5, 0.1]), torch.zeros(2), torch.ones(2), 0.2)
    assert loss.item() == pytest.approx(0.3625)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_adaptive_kl_controller_hand_worked():
    # β0 0.15, target 6, horizon 10,000, 512 episodes per update: β·(1 + e·0.0512), e = clip(KL/6 -
    # 1, ±0.2)
    for kl, expected in [
        (7.2, 0.15 * (1 + 0.2 * 0.0512)),
        (6.6, 0.15 * (1 + 0.1 * 0.0512)),
        (3.0, 0.15 * (1 - 0.2 * 0.0512)),
        (60.0, 0.15 * 1.01024),
        (6.0, 0.15),
    ]:
        ctl = ppo.AdaptiveKLController(0.15, target=6.0, horizon=10_000)
        ctl.update(kl, n_steps=512)
        assert ctl.value == pytest.approx(expected, rel=1e-12)
    ctl = ppo.AdaptiveKLController(0.15, 6.0, 10_000)
    ctl.update(7.2, 512)
    ctl.update(7.2, 512)
    assert ctl.value == pytest.approx(0.15 * 1.01024**2, rel=1e-12)
    fixed = ppo.FixedKLController(0.03)
    fixed.update(100.0, 512)
    assert fixed.value == 0.03


def test_adam_tf_epsilon_outside_bias_correction():
    # one step, gradient g = 1e-4, lr 1, β2 = 0.999, ε = 1e-5:
    # TF:    update = sqrt(1-β2)·g / (sqrt(1-β2)·g + ε) = 3.16228e-6 / 1.316228e-5 = 0.240253
    # torch: update = g / (g + ε) = 1e-4 / 1.1e-4 = 0.909091
    g, eps = 1e-4, 1e-5
    for cls, expected in [
        (AdamTF, math.sqrt(1e-3) * g / (math.sqrt(1e-3) * g + eps)),
        (torch.optim.Adam, g / (g + eps)),
    ]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = cls([p], lr=1.0, eps=eps)
        p.grad = torch.tensor([g])
        opt.step()
        assert -p.item() == pytest.approx(expected, rel=1e-5)
    # later steps follow TF's update with the step count t: compare 3 steps against the formula
    # written out
    p = torch.nn.Parameter(torch.zeros(1))
    opt = AdamTF([p], lr=0.1, eps=eps)
    m = v = theta = 0.0
    for t, grad in enumerate([1e-4, -3e-4, 2e-5], start=1):
        p.grad = torch.tensor([grad])
        opt.step()
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
        theta -= 0.1 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (math.sqrt(v) + eps)
        assert p.item() == pytest.approx(theta, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# The first update: old log-probs come from the training forward, so the ratio starts at exactly 1


class CountStopsRM:
    """A stand-in reward model: the number of '.' tokens in the (truncated) response.
    Deterministic and instant."""

    def score(self, query, query_mask, response):
        return (response == 13).float().sum(1)


def small_setup(batch_size=8, micro=2, nminibatches=2, **cfg_overrides):
    """ρ, π (a copy of ρ with a value head), a tiny-model Config (any field overridable) and a
    batch of raw sentiment queries. Also used by test_optim.py and test_gpu_path.py."""
    import copy

    import gpt2
    from machinery import tasks

    torch.manual_seed(0)
    ref = gpt2.GPT2.from_config("tiny").eval().requires_grad_(False)
    policy = ppo.PolicyAndValue(copy.deepcopy(ref).requires_grad_(True)).eval()
    cfg = ppo.Config(
        model="tiny",
        batch_size=batch_size,
        micro_batch_size=micro,
        nminibatches=nminibatches,
        lr=1e-3,
        device="cpu",
        **cfg_overrides,
    )
    task = tasks.get_task("sentiment")
    queries = tasks.QuerySource(task, "train", seed=0).next_batch(batch_size, formatted=False)
    return ref, policy, cfg, task, queries


def test_first_minibatch_ratio_exactly_one_and_penalty_in_rollout():
    from machinery import tasks

    ref, policy, cfg, task, queries = small_setup()
    gen = torch.Generator().manual_seed(0)
    batch = ppo.rollout(policy, ref, CountStopsRM(), task, queries, cfg, 0.1, gen, "cpu")
    B, R = batch["responses"].shape
    assert (B, R) == (8, task.response_length)
    # π = ρ at the start: the KL penalty is exactly 0, and the value head is zero-initialized
    assert torch.equal(batch["logprobs"], batch["ref_logprobs"]) and torch.equal(
        batch["values"], torch.zeros(B, R)
    )
    # score: the stand-in RM where the stop token exists, -1 where it does not; placed on the last
    # token only
    expected = torch.where(
        batch["valid"], (batch["truncated"] == 13).float().sum(1), torch.tensor(-1.0)
    )
    torch.testing.assert_close(batch["scores"], expected)
    torch.testing.assert_close(batch["rewards"][:, -1], expected)
    assert torch.equal(batch["rewards"][:, :-1], torch.zeros(B, R - 1))
    truncated, valid = tasks.truncate_responses(batch["responses"], task)
    assert torch.equal(truncated, batch["truncated"]) and torch.equal(valid, batch["valid"])

    opt = AdamTF(policy.parameters(), lr=1e-3)
    stats = ppo.ppo_update(policy, opt, batch, cfg, R, torch.Generator().manual_seed(0), "cpu")
    E, M, U = stats["ppo/policy/approxkl"].shape
    assert (E, M, U) == (4, 2, 2)
    # every micro-batch of the first minibatch of the first epoch: no optimizer step yet, so π_new
    # == π_old exactly
    assert torch.equal(stats["ppo/policy/ratio_max"][0, 0], torch.ones(U))
    assert torch.equal(stats["ppo/policy/ratio_min"][0, 0], torch.ones(U))
    assert torch.equal(stats["ppo/policy/approxkl"][0, 0], torch.zeros(U))
    assert torch.equal(stats["ppo/policy/clipfrac"][0, 0], torch.zeros(U))
    # ... and after the first optimizer step the policy has moved (so the check above can fail)
    assert (
        stats["ppo/policy/approxkl"][0, 1].min() > 0 and stats["ppo/policy/approxkl"][-1].min() > 0
    )


def test_value_model_from_reward_starts_at_the_normalized_score():
    import copy

    import gpt2
    import reward

    ref, _, cfg, task, queries = small_setup()
    rm = reward.RewardModel(copy.deepcopy(ref)).eval()
    with torch.no_grad():
        rm.reward_gain.fill_(2.0)
        rm.reward_bias.fill_(-0.5)
    policy = ppo.make_policy(dataclasses.replace(cfg, value_model="reward"), ref, rm)
    tokens, mask = gpt2.left_pad(queries)
    R = 3
    with torch.no_grad():
        _, _, values = policy(tokens, mask, R, 0.7)  # (B, R)
        T = tokens.size(1)
        expected = torch.stack(
            [rm(tokens[:, : T - R + t], mask[:, : T - R + t]) for t in range(R)], 1
        )
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# The whole pipeline on tiny (smoke), resume, bad input. One pipeline run builds the reward model
# the others reuse.

TINY = [
    "--model",
    "tiny",
    "--batch-size",
    "8",
    "--micro-batch-size",
    "4",
    "--eval-episodes",
    "8",
    "--save-every",
    "1",
    "--sample-every",
    "2",
]


def metrics_of(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`python ppo.py --model tiny` with tiny budgets: sample comparisons, scripted labels, train
    the RM, then PPO."""
    run_dir = tmp_path_factory.mktemp("pipeline")
    summary = ppo.main(
        TINY
        + [
            "--rm.num-comparisons",
            "16",
            "--rm.normalize-samples",
            "32",
            "--total-episodes",
            "16",
            "--run-dir",
            str(run_dir),
        ]
    )
    return run_dir, summary


def test_pipeline_smoke(pipeline_run):
    run_dir, summary = pipeline_run
    for name in [
        "config.json",
        "metrics.jsonl",
        "curves.png",
        "checkpoint.pt",
        "summary.json",
        "rm.pt",
        "labels.jsonl",
    ]:
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    for key in [
        "score_before",
        "score_after",
        "true_score_before",
        "true_score_after",
        "kl",
        "updates",
        "seconds",
    ]:
        assert summary[key] is not None and math.isfinite(summary[key]), key
    assert summary["updates"] == 2
    m = metrics_of(run_dir)
    assert [r["update"] for r in m] == [1, 2]
    assert m[0]["objective/kl"] == 0.0  # π = ρ for the first rollout
    # KL far below target: the controller lowers β
    assert m[1]["objective/kl_coef"] < m[0]["objective/kl_coef"]


def test_resume_gives_the_same_metrics(pipeline_run, tmp_path):
    rm = str(pipeline_run[0] / "rm.pt")
    args = TINY + ["--reward-model", rm, "--total-episodes", "24"]
    ppo.main(args + ["--run-dir", str(tmp_path / "whole")])
    ppo.main(args + ["--run-dir", str(tmp_path / "parts"), "--stop-after", "2"])
    assert len(metrics_of(tmp_path / "parts")) == 2
    summary = ppo.main(["--resume", str(tmp_path / "parts")])
    assert metrics_of(tmp_path / "parts") == metrics_of(tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    for key in ["score_after", "true_score_after", "kl", "kl_coef", "updates"]:
        assert summary[key] == whole[key], key


def test_bad_reward_checkpoints(pipeline_run, tmp_path):
    import gpt2
    import reward

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x80\x02 this is not a checkpoint")
    with pytest.raises(SystemExit, match="not a reward model checkpoint"):
        ppo.main(TINY + ["--reward-model", str(bad), "--run-dir", str(tmp_path / "a")])
    other = tmp_path / "other-size.pt"
    reward.save_reward_model(
        reward.RewardModel(gpt2.GPT2(gpt2.GPT2Config(n_layer=1, n_head=2, n_embd=64))), other
    )
    with pytest.raises(SystemExit, match="policy has"):
        ppo.main(TINY + ["--reward-model", str(other), "--run-dir", str(tmp_path / "b")])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(pipeline_run, tmp_path, monkeypatch):
    calls = []
    real = ppo.compute_rewards

    def nan_on_second_update(scores, *args):
        calls.append(1)
        # call 1: eval; 2: update 1
        return real(scores * (float("nan") if len(calls) == 3 else 1.0), *args)

    monkeypatch.setattr(ppo, "compute_rewards", nan_on_second_update)
    run_dir = tmp_path / "nan"
    with pytest.raises(
        SystemExit, match=r"(?s)update 2: the PPO loss is nan.*last good checkpoint is kept"
    ):
        ppo.main(
            TINY
            + [
                "--reward-model",
                str(pipeline_run[0] / "rm.pt"),
                "--total-episodes",
                "32",
                "--run-dir",
                str(run_dir),
            ]
        )
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["update"] == 1 and all(torch.isfinite(v).all() for v in ckpt["policy"].values())


def test_rng_state_is_plain_and_round_trips(tmp_path):
    """Every generator's state survives torch.save + torch.load(weights_only=True) exactly."""
    import random

    import numpy as np

    sample, shuffle = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    np.random.normal()  # a cached Gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    torch.save(runs.rng_state(sample, shuffle), tmp_path / "rng.pt")
    draws = lambda: (  # noqa: E731
        torch.rand(3, generator=sample).tolist(),
        torch.rand(3, generator=shuffle).tolist(),
        torch.rand(3).tolist(),
        np.random.normal(size=3).tolist(),
        [random.random(), random.gauss(0, 1)],
    )
    first = draws()
    runs.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), sample, shuffle)
    assert draws() == first


def folder_digest(folder):
    """Every file under folder (policy/ and eval/ included) -> its hash."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).digest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_resume_refuses_a_checkpoint_that_needs_unpickling(pipeline_run, tmp_path):
    """A run folder from someone else cannot run code: checkpoint.pt loads with weights_only=True,
    and anything else (an arbitrary object, numpy's RNG tuple as older versions stored it) is
    refused by name, with the folder left as it was."""
    import shutil

    import numpy as np

    run_dir = tmp_path / "run"
    shutil.copytree(pipeline_run[0], run_dir)
    good = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    for payload in (object(), np.random.get_state()):
        torch.save({**good, "rng": payload}, run_dir / "checkpoint.pt")
        before = folder_digest(run_dir)
        with pytest.raises(SystemExit, match=r"checkpoint\.pt: it holds something other than"):
            ppo.main(["--resume", str(run_dir)])
        assert folder_digest(run_dir) == before


def test_curves_smoothing_and_figure():
    # centered moving average, fewer points at the ends (hand-worked)
    assert runs.smooth([0.0, 3.0, 6.0, 3.0, 0.0], 3) == [1.5, 3.0, 4.0, 3.0, 1.5]
    assert runs.smooth([1.0, 2.0], 1) == [1.0, 2.0]

    def row(u, online=False):
        out = {"update": u, "episodes": 32 * u, "objective/score": float(u % 3),
               "objective/true_score": 0.1 * u, "objective/kl": 1.0,
               "objective/kl_coef": 0.15}  # fmt: skip
        if online:
            out.update({"online/win_rate": 0.6, "online/win_rate_low": 0.4,
                        "online/win_rate_high": 0.8, "online/labels": 10 * u,
                        "online/labels_due": 11 * u})  # fmt: skip
        return out

    fig = runs.curves_figure([row(u) for u in range(1, 41)], 6.0, "demo-s1: sentiment")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 4 and all(ax.get_xlabel() == "update" for ax in shown)
    assert fig._suptitle.get_text() == "demo-s1: sentiment (32 episodes per update)"
    score = shown[0].lines  # faint raw points, then the trend: x is the update number
    assert list(score[0].get_xdata()) == list(range(1, 41)) and score[0].get_alpha() < 0.5
    assert list(score[1].get_ydata()) == runs.smooth([float(u % 3) for u in range(1, 41)], 5)
    # --online: six panels, none of them empty
    fig = runs.curves_figure([row(u, online=True) for u in range(1, 41)], None)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 6 and all(ax.lines for ax in shown)
