"""ppo.py: the PPO math on hand-worked numbers, the first-update invariants, the whole pipeline on `tiny`, resume and
bad input. The math tests run in milliseconds; the pipeline tests share one small run (module-scoped fixture)."""
import json
import math

import pytest
import torch

import ppo


# -----------------------------------------------------------------------------
# The math, on hand-worked numbers


def test_whiten_population_variance_and_shift():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population variance 1.25 (unbiased would be 5/3)
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25 + 1e-8)
    torch.testing.assert_close(ppo.whiten(v), expected)
    torch.testing.assert_close(ppo.whiten(v, shift_mean=False), expected + 2.5)
    w = ppo.whiten(torch.randn(7, 5) * 3 + 2)  # over all elements, not per row
    assert abs(w.mean().item()) < 1e-6 and abs(w.var(unbiased=False).item() - 1) < 1e-5


def test_gae_hand_worked_1x3():
    # the docstring's example: r = [0, 0, 1], V = [0.5, 0.25, 0.5], γ = 1, λ = 0.5
    adv, ret = ppo.compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.25, 0.5]]), 1.0, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.5, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[0.5, 0.75, 1.0]]))
    # γ placement: with V = 0 and λ = 1 the advantage is the discounted return: [1 + 0.5·(0 + 0.5·2), 0 + 0.5·2, 2]
    adv, _ = ppo.compute_gae(torch.tensor([[1.0, 0.0, 2.0]]), torch.zeros(1, 3), 0.5, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5, 1.0, 2.0]]))


def test_score_lands_on_last_token_and_kl_penalty_everywhere():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, -0.5]])
    rewards, non_score, kl = ppo.compute_rewards(torch.tensor([2.0, -1.0]), logprobs, ref_logprobs, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 0.5, 0.0]]))
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, 0.0, 0.1], [0.0, -0.05, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 2.1], [0.0, -0.05, -1.0]]))


def test_penalty_replaces_score_without_stop_token():
    scores = torch.tensor([0.7, 3.0, -2.0])
    valid = torch.tensor([True, False, True])
    torch.testing.assert_close(ppo.penalize_scores(scores, valid, -1.0), torch.tensor([0.7, -1.0, -2.0]))


def test_policy_loss_hand_worked():
    # ratios 1.5, 0.5, 1 with advantages 1, 1, -1 and clip 0.2:
    # -A·r = [-1.5, -0.5, 1], -A·clip(r) = [-1.2, -0.8, 1], max = [-1.2, -0.5, 1] -> mean -0.7/3; clipped: token 0 only
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.0])).requires_grad_()
    loss, stats = ppo.ppo_policy_loss(new, old, torch.tensor([1.0, 1.0, -1.0]), 0.2)
    assert loss.item() == pytest.approx(-0.7 / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)
    loss.backward()  # d/dlogπ of -A·r/3 is -A·r/3, except where the clip is active (no gradient)
    torch.testing.assert_close(new.grad, torch.tensor([0.0, -0.5 / 3, 1 / 3]))


def test_value_loss_hand_worked():
    # V_old = 0, V = [0.5, 0.1], R = 1: clipped V = [0.2, 0.1]; losses [0.25, 0.81] vs [0.64, 0.81] -> 0.5·(0.64+0.81)/2
    loss, stats = ppo.value_loss(torch.tensor([0.5, 0.1]), torch.zeros(2), torch.ones(2), 0.2)
    assert loss.item() == pytest.approx(0.3625)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_adaptive_kl_controller_hand_worked():
    # β0 0.15, target 6, horizon 10,000, 512 episodes per update: β·(1 + e·0.0512), e = clip(KL/6 - 1, ±0.2)
    for kl, expected in [(7.2, 0.15 * (1 + 0.2 * 0.0512)), (6.6, 0.15 * (1 + 0.1 * 0.0512)),
                         (3.0, 0.15 * (1 - 0.2 * 0.0512)), (60.0, 0.15 * 1.01024), (6.0, 0.15)]:
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
    for cls, expected in [(ppo.AdamTF, math.sqrt(1e-3) * g / (math.sqrt(1e-3) * g + eps)), (torch.optim.Adam, g / (g + eps))]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = cls([p], lr=1.0, eps=eps)
        p.grad = torch.tensor([g])
        opt.step()
        assert -p.item() == pytest.approx(expected, rel=1e-5)
    # later steps follow TF's update with the step count t: compare 3 steps against the formula written out
    p = torch.nn.Parameter(torch.zeros(1))
    opt = ppo.AdamTF([p], lr=0.1, eps=eps)
    m = v = theta = 0.0
    for t, grad in enumerate([1e-4, -3e-4, 2e-5], start=1):
        p.grad = torch.tensor([grad])
        opt.step()
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
        theta -= 0.1 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (math.sqrt(v) + eps)
        assert p.item() == pytest.approx(theta, rel=1e-5)
