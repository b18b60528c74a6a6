"""optim.py: AdamTF on hand-worked numbers, and against the per-tensor loop it replaced, step by
step: on weight shapes like the model's, on a real tiny model, in the reward-model trainer and in a
PPO update. Checkpoints of either version load into it."""

import copy
import dataclasses
import math

import pytest
import torch

import ppo
import reward
from gpt2 import GPT2, PRESETS
from machinery import optim
from machinery.optim import AdamTF

F32_EPS = torch.finfo(torch.float32).eps


class OldAdamTF(torch.optim.Adam):
    """REFERENCE: the previous AdamTF (from reward.py), kept verbatim apart from foreach=False:
    torch's Adam updating one tensor at a time (what it did on CPU by default), with eps set to
    eps / sqrt(1 - beta2^t) before each step."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-5):
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=False)
        for group in self.param_groups:
            group["tf_eps"] = eps

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            steps = [
                self.state[p]["step"] for p in group["params"] if "step" in self.state.get(p, {})
            ]
            t = int(steps[0]) + 1 if steps else 1  # the step about to be taken
            group["eps"] = group["tf_eps"] / math.sqrt(1 - group["betas"][1] ** t)
        return super().step(closure)


def test_two_steps_by_hand():
    # optim.py's docstring: beta1 0.5, beta2 0.96, lr 1, eps 0.2, p = 1; g = 1 then g = 0.2
    p = torch.nn.Parameter(torch.ones(()))
    opt = AdamTF([p], lr=1.0, betas=(0.5, 0.96), eps=0.2)
    assert opt.param_groups[0]["fused"]  # on CPU: torch's fused kernel, not the per-tensor loop
    p.grad = torch.tensor(1.0)
    opt.step()
    assert p.item() == pytest.approx(0.5, abs=1e-7)
    p.grad = torch.tensor(0.2)
    opt.step()
    assert p.item() == pytest.approx(13 / 75, abs=1e-7)
    # torch's Adam with the same eps would have moved much further at step 1: 1 / 1.2
    q = torch.nn.Parameter(torch.ones(()))
    q.grad = torch.tensor(1.0)
    torch.optim.Adam([q], lr=1.0, betas=(0.5, 0.96), eps=0.2).step()
    assert q.item() == pytest.approx(1 - 1 / 1.2, abs=1e-7)


# the model's kinds of tensors (GPT-2 small's shapes, scaled down): embeddings, layer norms,
# attention and MLP weights and biases, the value head, the reward gain
SHAPES = [(1000, 64), (128, 64), (64,), (64, 192), (192,), (64, 256), (256, 64), (1, 64), (1,), ()]


def gradients(gen):
    """One gradient per SHAPES tensor, each element's scale drawn from 1e-9 to 1e-1 (so eps
    matters for some and not for others)."""
    return [
        torch.randn(s, generator=gen) * 10 ** (torch.rand(s, generator=gen) * 8 - 9) for s in SHAPES
    ]


def assert_same_trajectory(new, old, init, rtol=1e-6, norm_rtol=None):
    """Per tensor, the largest difference is within rtol of the largest movement from init, plus 2
    float32 ulps of the largest weight (the rounding of p - update itself); with norm_rtol, the
    difference's norm is within norm_rtol of the movement's norm."""
    for a, b, p0 in zip(new, old, init, strict=True):
        a, b = a.detach(), b.detach()
        movement = (b - p0).abs().max()
        assert movement > 0
        assert (a - b).abs().max() <= rtol * movement + 2 * F32_EPS * b.abs().max()
        if norm_rtol is not None:
            assert (a - b).norm() <= norm_rtol * (b - p0).norm()


def test_same_updates_as_the_per_tensor_loop_on_model_shapes():
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) * 0.02 for s in SHAPES]
    new = [torch.nn.Parameter(p.clone()) for p in init]
    old = [torch.nn.Parameter(p.clone()) for p in init]
    opt_new, opt_old = AdamTF(new, lr=1e-3), OldAdamTF(old, lr=1e-3)
    for _ in range(10):
        for a, b, g in zip(new, old, gradients(gen)):
            a.grad, b.grad = g.clone(), g.clone()
        # one step from the same weights and moments: equal to 1e-6 of the update, plus rounding
        # of p itself (2 ulp)
        for a, b in zip(new, old):
            a.data.copy_(b.data)
            for k in ("exp_avg", "exp_avg_sq"):
                if b in opt_old.state:
                    opt_new.state[a][k].copy_(opt_old.state[b][k])
        before = [b.detach().clone() for b in old]
        opt_new.step()
        opt_old.step()
        for a, b, p0 in zip(new, old, before):
            bound = 1e-6 * (b.detach() - p0).abs() + 2 * F32_EPS * p0.abs()
            assert ((a.detach() - b.detach()).abs() <= bound).all()
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(
                    opt_new.state[a][k], opt_old.state[b][k], rtol=1e-6, atol=0
                )
    # ... and ten steps run independently stay as close
    new = [torch.nn.Parameter(p.clone()) for p in init]
    old = [torch.nn.Parameter(p.clone()) for p in init]
    opt_new, opt_old = AdamTF(new, lr=1e-3), OldAdamTF(old, lr=1e-3)
    for _ in range(10):
        for a, b, g in zip(new, old, gradients(gen)):
            a.grad, b.grad = g.clone(), g.clone()
        opt_new.step()
        opt_old.step()
    assert_same_trajectory(new, old, init)


# In a model, later gradients see the rounding-level differences in the weights, and Adam divides
# by sqrt(v), so a few elements drift further apart than with fixed gradients. Measured over these
# tests: largest difference <= 3.3e-5 of the largest movement, norms <= 4.7e-6 (torch's own Adam,
# fused vs per-tensor loop, differs by as much: 6.6e-6, 1.4e-6).
MODEL_TOL = dict(rtol=1e-4, norm_rtol=1e-5)


def lm_loss(model, tokens):
    logits = model(tokens)  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def test_same_updates_as_the_per_tensor_loop_on_a_tiny_model():
    torch.manual_seed(0)
    new = GPT2.from_config(dataclasses.replace(PRESETS["tiny"]))
    old = copy.deepcopy(new)
    init = [p.detach().clone() for p in old.parameters()]
    opt_new, opt_old = AdamTF(new.parameters(), lr=1e-3), OldAdamTF(old.parameters(), lr=1e-3)
    tokens = torch.randint(0, new.config.vocab_size, (4, 16))
    for _ in range(4):
        for model, opt in [(new, opt_new), (old, opt_old)]:
            opt.zero_grad()
            lm_loss(model, tokens).backward()
            opt.step()
    # the gradients see the rounding-level differences in the weights too
    assert_same_trajectory(list(new.parameters()), list(old.parameters()), init, **MODEL_TOL)


def label_rows(n):
    return [
        dict(
            id=f"x{i}",
            task="sentiment",
            query="q",
            query_tokens=[464, 3290, 13],
            samples=["a", "b"],
            sample_tokens=[[383, 13 + i], [464, 13]],
            best=i % 2,
            labeler="t",
            seconds=1.0,
            created="2024",
        )
        for i in range(n)
    ]


def test_reward_trainer_same_weights_as_with_the_per_tensor_loop(monkeypatch):
    policy = GPT2.from_config(dataclasses.replace(PRESETS["tiny"]))
    cfg = reward.TrainConfig(
        labels="<rows>",
        batch_size=2,
        lr=1e-3,
        epochs=2,
        normalize_before=False,
        normalize_after=False,
    )
    models = {}
    for name, cls in [("new", AdamTF), ("old", OldAdamTF)]:
        monkeypatch.setattr(optim, "AdamTF", cls)
        models[name], _ = reward.train_reward_model(
            label_rows(6), cfg, "tiny", "sentiment", seed=1, policy=policy, test_rows=[]
        )
    # the reward model starts as a copy of the policy plus a random head (seeded by the trainer)
    torch.manual_seed(1)
    init = dict(reward.RewardModel(copy.deepcopy(policy)).named_parameters())
    # except the three that only add the same shift to every candidate's reward: the softmax loss
    # ignores it, so their gradient is 0 up to rounding noise, which Adam turns into an update of
    # noise (their movement is ~1e-7, against ~3e-3 for the other tensors)
    shifts = {"reward_bias", "head.bias", "lm.transformer.ln_f.bias"}
    names = [k for k in init if k not in shifts]
    new, old = dict(models["new"].named_parameters()), dict(models["old"].named_parameters())
    assert_same_trajectory(
        [new[k] for k in names], [old[k] for k in names], [init[k] for k in names], **MODEL_TOL
    )


def test_ppo_update_same_weights_as_with_the_per_tensor_loop():
    from test_ppo import CountStopsRM, small_setup

    ref, policy, cfg, task, queries = small_setup()
    gen = torch.Generator().manual_seed(0)
    batch = ppo.rollout(policy, ref, CountStopsRM(), task, queries, cfg, 0.1, gen, "cpu")
    R = batch["responses"].shape[1]
    init = copy.deepcopy(policy)
    results = {}
    for name, cls in [("new", AdamTF), ("old", OldAdamTF)]:
        pol = copy.deepcopy(init)
        opt = cls(pol.parameters(), lr=cfg.lr)
        stats = ppo.ppo_update(pol, opt, batch, cfg, R, torch.Generator().manual_seed(0), "cpu")
        results[name] = pol, stats
    (new, stats_new), (old, stats_old) = results["new"], results["old"]
    # the first minibatch sees no step: identical, and the ratio exactly 1
    assert torch.equal(stats_new["ppo/policy/ratio_max"][0, 0], torch.ones(2))
    assert torch.equal(stats_new["ppo/loss/policy"][0, 0], stats_old["ppo/loss/policy"][0, 0])
    # 8 optimizer steps later (4 epochs x 2 minibatches): the same weights to float rounding
    assert_same_trajectory(
        list(new.parameters()), list(old.parameters()), list(init.parameters()), **MODEL_TOL
    )
    torch.testing.assert_close(
        stats_new["ppo/loss/policy"], stats_old["ppo/loss/policy"], rtol=1e-4, atol=1e-7
    )


def test_checkpoints_resume_exactly_and_old_checkpoints_load():
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=gen) * 0.02 for s in SHAPES]
    grads = [gradients(gen) for _ in range(4)]

    def run(opt_cls, params, steps, state=None):
        opt = opt_cls(params, lr=1e-3)
        if state is not None:
            opt.load_state_dict(copy.deepcopy(state))
        for gs in steps:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
        return opt

    # uninterrupted vs 2 steps, save, a fresh AdamTF loads the state, 2 more steps: bit-identical
    straight = [torch.nn.Parameter(p.clone()) for p in init]
    run(AdamTF, straight, grads)
    resumed = [torch.nn.Parameter(p.clone()) for p in init]
    saved = run(AdamTF, resumed, grads[:2]).state_dict()
    opt = run(AdamTF, resumed, grads[2:], state=saved)
    assert opt.param_groups[0]["fused"] and opt.param_groups[0]["tf_eps"] == 1e-5
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    # a checkpoint from the per-tensor version (fused/foreach None in its groups) loads, keeps the
    # fused kernel, and continues as the old version would have
    old_params = [torch.nn.Parameter(p.clone()) for p in init]
    old_saved = run(OldAdamTF, old_params, grads[:2]).state_dict()
    old_saved["param_groups"][0].update(fused=None, foreach=None)  # as the old class saved them
    new_params = [p.detach().clone().requires_grad_() for p in old_params]
    opt = run(AdamTF, new_params, grads[2:], state=old_saved)
    assert opt.param_groups[0]["fused"] and int(opt.state[new_params[0]]["step"]) == 4
    run(OldAdamTF, old_params, grads[2:], state=old_saved)
    assert_same_trajectory(new_params, old_params, init)
