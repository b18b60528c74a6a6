"""Time PPO updates on random weights: where an update's time goes.

    python bench_ppo.py                                  # the 124M sentiment setting (batch 512)
    python bench_ppo.py --model tiny --batch-size 32 --device cpu
    python bench_ppo.py --value-model reward --micro-batch-size 32
    python ppo.py --bench ...                            # the same, from ppo.py

It takes ppo.py's flags (the same Config, resolved the same way) and runs ppo.py's own rollout()
and ppo_update() on randomly initialized weights (no download; the timing does not depend on the
weights): one warm-up update, then --bench-updates timed ones. Every flag that changes the work is
honoured: --model, --task (query and response lengths), --batch-size, --nminibatches,
--noptepochs, --micro-batch-size (auto included; an out-of-memory error halves it, as in training,
and the size the run ended with is printed), --value-model (a separate value network doubles the
trunk's work), --adam, --device, --precision (as in training: bf16 autocast on CUDA, fp32 on CPU
by default), --grad-checkpoint. It prints the settings used and the split of each update: rollout
(of it: generation), train (forward + backward + optimizer), and of train the optimizer steps
alone.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stage files, run from anywhere

import torch

import gpt2
import ppo
import reward
from machinery import amp, cli, presets, tasks
from machinery.microbatch import resolve_micro_batch_size
from machinery.optim import make_adam


def bench(cfg: ppo.Config) -> dict:
    """Time 1 + cfg.bench_updates PPO updates at this config on random weights; returns the mean
    of the timed ones (seconds, tokens/s, peak GiB on CUDA)."""
    n_timed = cfg.bench_updates
    device = cli.pick_device(cfg.device)
    cfg.precision = amp.resolve_precision(cfg.precision, device)
    cfg.micro_batch_size = resolve_micro_batch_size(cfg, device)
    task = tasks.get_task(cfg.task)
    torch.manual_seed(cfg.seed)
    ref = gpt2.GPT2.from_config(cfg.model).to(device).eval().requires_grad_(False)
    reward_model = reward.RewardModel(copy.deepcopy(ref)).to(device).eval().requires_grad_(False)
    policy = ppo.make_policy(cfg, ref, reward_model)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_adam(params, cfg.adam, lr=cfg.lr, eps=cfg.adam_eps)
    step_seconds = []

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed_step(*args, _step=optimizer.step, **kwargs):
        # optimizer.step on its own: wrapped so the update's train time can be split
        sync()
        t0 = time.perf_counter()
        out = _step(*args, **kwargs)
        sync()
        step_seconds.append(time.perf_counter() - t0)
        return out

    optimizer.step = timed_step
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    raw_queries = torch.randint(
        0, 50000, (cfg.batch_size, task.query_length), generator=shuffle_gen
    ).tolist()
    precision = "bf16 autocast" if cfg.precision == "bf16" else "fp32"
    n_params = sum(p.numel() for p in params)
    print(
        f"bench: {cfg.model} (random weights, {n_params / 1e6:.1f}M trainable) on {device}, "
        f"{precision} | task {task.name}: batch {cfg.batch_size}, {task.query_length} + "
        f"{task.response_length} tokens | {cfg.noptepochs} epochs x {cfg.nminibatches} "
        f"minibatches, micro-batch {cfg.micro_batch_size}"
        f"{', activation checkpointing' if cfg.grad_checkpoint else ''} | "
        f"value model {cfg.value_model} | "
        f"adam {cfg.adam} | kernels {ref.config.use_kernels}"
    )
    rows = []
    for i in range(1 + n_timed):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        step_seconds.clear()
        sync()
        t0 = time.perf_counter()
        batch = ppo.rollout(
            policy, ref, reward_model, task, raw_queries, cfg, cfg.kl_coef, sample_gen, device
        )
        t1 = time.perf_counter()
        ppo.ppo_update(policy, optimizer, batch, cfg, task.response_length, shuffle_gen, device)
        sync()
        t2 = time.perf_counter()
        row = dict(
            update_s=t2 - t0,
            rollout_s=t1 - t0,
            generate_s=batch["t_generate"],
            train_s=t2 - t1,
            optimizer_step_s=sum(step_seconds),
            generate_tok_s=cfg.batch_size * task.response_length / batch["t_generate"],
            peak_gib=torch.cuda.max_memory_allocated() / 2**30
            if device.startswith("cuda")
            else float("nan"),
        )
        print(
            ("warm-up " if i == 0 else f"update {i}  ")
            + " | ".join(f"{k} {v:.3f}" for k, v in row.items())
        )
        if i:
            rows.append(row)
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print(
        f"bench mean over {n_timed} updates ({device}): "
        + " | ".join(f"{k} {v:.3f}" for k, v in mean.items())
    )
    update = mean["update_s"]
    print(f"micro-batch size {cfg.micro_batch_size} at the end (halved on out-of-memory errors)")
    print(
        f"split: rollout {mean['rollout_s'] / update:.0%} (generation "
        f"{mean['generate_s'] / update:.0%}), train {mean['train_s'] / update:.0%} (optimizer "
        f"steps {mean['optimizer_step_s'] / update:.0%})"
    )
    return mean


def main(argv=None):
    return bench(presets.parse_args(ppo.Config, ppo.__doc__.split("\n\n")[1], argv))


if __name__ == "__main__":
    main()
