"""The one-GPU path, run on the CPU: bf16 autocast through a PPO update and a reward-model step,
out-of-memory recovery (the error injected) and the device check's dry mode."""

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_ppo import CountStopsRM, small_setup

import gpt2
import ppo
import reward
from machinery import tasks
from machinery.microbatch import resolve_micro_batch_size
from machinery.optim import AdamTF

ROOT = Path(__file__).resolve().parent.parent


def setup_ppo(precision="fp32", batch_size=4, micro=2, nminibatches=2, noptepochs=2):
    """test_ppo.py's small setup at this precision, and one rollout from it."""
    ref, policy, cfg, task, queries = small_setup(
        batch_size, micro, nminibatches, noptepochs=noptepochs, precision=precision
    )
    gen = torch.Generator().manual_seed(0)
    batch = ppo.rollout(policy, ref, CountStopsRM(), task, queries, cfg, 0.1, gen, "cpu")
    return policy, cfg, batch, task.response_length


def spy(monkeypatch, module, name, seen: list):
    """Wrap module.name so each call's returned loss dtype is recorded."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        loss = out[0] if isinstance(out, tuple) else out
        seen.append((name, loss.dtype, [a.dtype for a in args if torch.is_tensor(a)]))
        return out

    monkeypatch.setattr(module, name, wrapped)


def bf16_matmuls(model: torch.nn.Module) -> list:
    """Record the output dtype of every c_attn Linear (proof that autocast was on)."""
    seen = []
    for m in model.modules():
        if isinstance(m, gpt2.CausalSelfAttention):
            m.c_attn.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_ppo_update_under_bf16_autocast(monkeypatch):
    """One PPO update on the CPU under bf16 autocast: the matmuls really ran in bf16, the
    log-probs, values, losses and statistics are fp32 and finite, the ratio is exactly 1 on the
    first minibatch (the rollout and the update run the same bf16 forward), and the weights stay
    fp32."""
    losses = []
    spy(monkeypatch, ppo, "ppo_policy_loss", losses)
    spy(monkeypatch, ppo, "value_loss", losses)
    policy, cfg, batch, R = setup_ppo("bf16")
    for k in ("logprobs", "ref_logprobs", "values", "scores", "rewards"):
        assert batch[k].dtype == torch.float32 and torch.isfinite(batch[k]).all(), k
    matmuls = bf16_matmuls(policy)
    opt = AdamTF(policy.parameters(), lr=1e-3)
    stats = ppo.ppo_update(policy, opt, batch, cfg, R, torch.Generator().manual_seed(0), "cpu")
    assert matmuls and set(matmuls) == {torch.bfloat16}
    assert losses and all(
        dtype == torch.float32 and all(a == torch.float32 for a in args)
        for _, dtype, args in losses
    ), losses
    assert all(torch.isfinite(v).all() for v in stats.values())
    A = stats["ppo/policy/ratio_max"].shape[2]
    assert torch.equal(stats["ppo/policy/ratio_max"][0, 0], torch.ones(A))
    assert torch.equal(stats["ppo/policy/ratio_min"][0, 0], torch.ones(A))
    assert stats["ppo/policy/approxkl"][-1].min() > 0  # and the policy did move
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert all(
        t.dtype == torch.float32 for s in opt.state.values() for t in s.values() if t.dim() > 0
    )


def test_reward_model_step_under_bf16_autocast(monkeypatch):
    """One reward-model training step on the CPU under bf16 autocast: the matmuls ran in bf16,
    the rewards and the preference loss are fp32 and finite, the weights stay fp32 and moved."""
    losses = []
    spy(monkeypatch, reward, "preference_loss", losses)
    torch.manual_seed(0)
    lm = gpt2.GPT2.from_config("tiny")
    rows = [
        dict(query_tokens=[1, 2, 3], sample_tokens=[[4, 5], [6], [7, 8, 9], [10]], best=i % 4)
        for i in range(4)
    ]
    rm = reward.RewardModel(copy.deepcopy(lm))
    matmuls = bf16_matmuls(rm)
    before = {n: p.detach().clone() for n, p in rm.named_parameters()}
    opt = AdamTF(rm.parameters(), lr=1e-3)
    loss, accuracy = reward.train_step(rm, opt, rows, "cpu", precision="bf16")
    assert matmuls and set(matmuls) == {torch.bfloat16}
    assert losses
    for _, dtype, args in losses:
        assert dtype == torch.float32 and args == [torch.float32, torch.int64]
    assert math.isfinite(loss) and 0 <= accuracy <= 1
    assert all(p.dtype == torch.float32 for p in rm.parameters())
    assert any(not torch.equal(before[n], p) for n, p in rm.named_parameters())


# --------------------------------------------------------------------------------------------------
# Out of memory: inject the error, check the update ends where it would have without it


def inject_oom(monkeypatch, calls: set[int]):
    """PolicyAndValue.forward raises torch.OutOfMemoryError on these call numbers (1-based)."""
    original = ppo.PolicyAndValue.forward
    count = [0]

    def forward(self, *args, **kwargs):
        count[0] += 1
        if count[0] in calls:
            raise torch.OutOfMemoryError(f"injected at call {count[0]}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ppo.PolicyAndValue, "forward", forward)
    return count


def run_update(policy, cfg, batch, R):
    policy = copy.deepcopy(policy)
    opt = AdamTF(policy.parameters(), lr=1e-3)
    stats = ppo.ppo_update(policy, opt, batch, cfg, R, torch.Generator().manual_seed(0), "cpu")
    return policy, stats


def test_out_of_memory_halves_the_micro_batch_and_redoes_the_minibatch(monkeypatch, capsys):
    """An out-of-memory error in the first micro-batch halves the size (2 -> 1) and redoes the
    minibatch; every minibatch then runs at size 1, so the weights are bit-for-bit those of a run
    at size 1 from the start (torch.equal: the same operations in the same order; the failed
    attempt left nothing behind: no optimizer step, gradients zeroed). Later in the update (epoch
    2), the minibatches before it ran at 2: the result matches the run without any error up to
    float summation order (assert_close at fp32 rounding), since each micro-batch's loss is
    weighted by its share of the minibatch."""
    policy, cfg, batch, R = setup_ppo("fp32", micro=2)
    plain2, stats2 = run_update(policy, copy.deepcopy(cfg), batch, R)
    plain1, stats1 = run_update(policy, dataclasses_replace(cfg, micro_batch_size=1), batch, R)

    cfg_first = copy.deepcopy(cfg)
    count = inject_oom(monkeypatch, {1})
    first, stats_first = run_update(policy, cfg_first, batch, R)
    assert cfg_first.micro_batch_size == 1  # kept for the rest of the run
    assert "out of memory" in capsys.readouterr().out
    # 2 epochs x 2 minibatches x 2 micro-batches of 1, plus the failed call
    assert count[0] == 1 + 2 * 2 * 2
    for (n, p), q in zip(first.named_parameters(), plain1.parameters()):
        assert torch.equal(p, q), n
    for k in stats1:
        assert torch.equal(stats_first[k], stats1[k]), k

    monkeypatch.undo()
    cfg_late = copy.deepcopy(cfg)
    # epoch 1 runs 2 minibatches x 1 micro-batch of 2 (calls 1, 2); call 4 is epoch 2's second
    # minibatch
    inject_oom(monkeypatch, {4})
    late, stats_late = run_update(policy, cfg_late, batch, R)
    assert cfg_late.micro_batch_size == 1
    moved = False
    for (n, p), q, p0 in zip(late.named_parameters(), plain2.parameters(), policy.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
        moved |= not torch.equal(p, p0)
    assert moved
    # the stats keep their (E, M, U) shape at the final size; the earlier entries repeat
    assert stats_late["ppo/policy/approxkl"].shape == (2, 2, 2)
    torch.testing.assert_close(
        stats_late["ppo/loss/policy"].mean(), stats2["ppo/loss/policy"].mean(), rtol=1e-5, atol=1e-6
    )


def test_out_of_memory_in_the_rollout_and_at_size_one(monkeypatch):
    """The rollout's chunked forwards halve the same way (same old log-probs and values, the
    size kept); at micro-batch size 1 the error is raised as is."""
    policy, cfg, batch, R = setup_ppo("fp32", micro=2)
    ref = copy.deepcopy(policy.lm).requires_grad_(False)
    task = tasks.get_task("sentiment")
    queries = tasks.QuerySource(task, "train", seed=0).next_batch(cfg.batch_size, formatted=False)
    args = (policy, ref, CountStopsRM(), task, queries)
    clean = ppo.rollout(*args, cfg, 0.1, torch.Generator().manual_seed(0), "cpu")
    inject_oom(monkeypatch, {2})
    cfg_oom = copy.deepcopy(cfg)
    recovered = ppo.rollout(*args, cfg_oom, 0.1, torch.Generator().manual_seed(0), "cpu")
    assert cfg_oom.micro_batch_size == 1
    for k in ("logprobs", "values", "ref_logprobs", "scores"):
        torch.testing.assert_close(recovered[k], clean[k], rtol=1e-5, atol=1e-6, msg=k)

    monkeypatch.undo()
    inject_oom(monkeypatch, set(range(1, 100)))
    cfg_one = dataclasses_replace(cfg, micro_batch_size=1)
    with pytest.raises(torch.OutOfMemoryError):
        run_update(policy, cfg_one, batch, R)


def test_micro_batch_size_auto():
    """auto: the minibatch on CUDA (the first out-of-memory error then halves it), on the CPU the
    minibatch capped at 64."""
    cfg = ppo.Config(batch_size=512, nminibatches=2, micro_batch_size="auto")
    assert resolve_micro_batch_size(cfg, "cuda") == 256
    assert resolve_micro_batch_size(cfg, "cpu") == 64
    cfg = ppo.Config(batch_size=32, nminibatches=2, micro_batch_size="auto")
    assert resolve_micro_batch_size(cfg, "cpu") == 16


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# --------------------------------------------------------------------------------------------------
# The device check


def test_gpu_check_dry_mode(tmp_path):
    """bench/gpu_check.py --dry: every stage runs on the CPU on tiny shapes and the table names
    each stage, ok, and the device; the table is also written to $OUT."""
    env = {**os.environ, "OUT": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.startswith("device: CPU")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    names = [r.split("|")[1].strip() for r in rows[1:]]
    assert names == ["tests", "kernels", "ppo tiny", "ppo tiny, checkpointed", "pipeline"]
    assert all(r.split("|")[2].strip() == "ok" for r in rows[1:])
    assert "update " in table and "bench" not in rows[0]
