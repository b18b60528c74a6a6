"""Micro-batches: gradient accumulation, out-of-memory recovery and the per-micro-batch statistics
of ppo.py's update. None of it changes the math: a minibatch's gradient is the same mean at any
micro-batch size (up to float summation order).

Shape letters: E = PPO epochs, M = minibatches per epoch, U = micro-batches per minibatch.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from machinery import dist


def exact_div(a: int, b: int, what: str) -> int:
    if b <= 0 or a % b:
        raise SystemExit(f"error: {what}: {a} is not a multiple of {b}")
    return a // b


def resolve_micro_batch_size(cfg, device: str) -> int:
    """--micro-batch-size as a number. 'auto' on CUDA: the whole minibatch, and the first
    micro-batch that runs out of memory halves it (that first forward is the probe, at the real
    sequence length); on CPU nothing raises a catchable out-of-memory error (the OS swaps or kills
    the process), so 'auto' is the minibatch capped at 64, the default size."""
    # [dist] this process's minibatch: its share of --batch-size, split into --nminibatches
    mb_size = exact_div(
        dist.share(cfg.batch_size, "--batch-size"),
        cfg.nminibatches,
        "--batch-size / --nminibatches (per process)",
    )
    if cfg.micro_batch_size == "auto":
        return mb_size if str(device).startswith("cuda") else min(mb_size, 64)
    try:
        size = int(cfg.micro_batch_size)
    except ValueError:
        size = 0
    if size < 1:
        raise SystemExit(
            f"error: --micro-batch-size {cfg.micro_batch_size!r}: give a positive number or 'auto'"
        )
    return min(size, mb_size)


def fix_size(cfg, mb_size: int, device: str):
    """cfg.micro_batch_size as a number that divides the minibatch size, or a clear error."""
    cfg.micro_batch_size = resolve_micro_batch_size(cfg, device)
    exact_div(mb_size, cfg.micro_batch_size, "minibatch size / --micro-batch-size")


def shrink_micro_batch(cfg, where: str) -> int:
    """After an out-of-memory error: the largest divisor of the micro-batch size that is at most
    half of it (exactly half for even sizes), stored in cfg so the rest of the run, config.json
    and the checkpoint keep it. At size 1 there is nothing left to halve: the caller re-raises."""
    old = cfg.micro_batch_size
    new = max(d for d in range(1, old // 2 + 1) if old % d == 0)
    cfg.micro_batch_size = new
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the failed attempt's blocks back before the retry
    tqdm.write(f"out of memory in {where} at micro-batch size {old}: halved to {new}, kept")
    return new


@torch.no_grad()
def forward_in_chunks(fn, cfg, *tensors):
    """fn(*tensors) -> tuple of (b, ...) tensors, run over the batch cfg.micro_batch_size rows at
    a time and concatenated. A chunk that runs out of memory is run again at half the size (the
    size is kept, see shrink_micro_batch); rows are independent, so nothing else is redone."""
    parts, i, n = [], 0, tensors[0].size(0)
    while i < n:
        chunk, oom = cfg.micro_batch_size, False
        try:
            parts.append(fn(*(x[i : i + chunk] for x in tensors)))
        except torch.OutOfMemoryError:
            if chunk == 1:
                raise
            oom = True  # handled outside the except block, which holds the failed frames
        if oom:
            shrink_micro_batch(cfg, "the rollout")
            continue
        i += chunk
    return tuple(torch.cat(p) for p in zip(*parts))


class Stats:
    """Statistics of an update as (E, M, U) tables, one entry per micro-batch (averaged for
    logging, so no minibatch is left out)."""

    def __init__(self, E: int, M: int):
        self.E, self.M, self.tables = E, M, {}

    def record(self, at: tuple[int, int, int], values: dict, U: int):
        for name, value in values.items():
            table = self.tables.setdefault(name, torch.zeros(self.E, self.M, U))
            table[at] = value.item() if torch.is_tensor(value) else value

    def split(self, factor: int):
        """After a halving: each old micro-batch's entry becomes `factor` equal entries."""
        self.tables = {k: v.repeat_interleave(factor, dim=2) for k, v in self.tables.items()}

    def reduce(self) -> dict:
        """[dist] every rank's tables -> the whole batch's: means of equal-sized micro-batches,
        and the extremes of the ratio."""
        ops = {"ppo/policy/ratio_max": "max", "ppo/policy/ratio_min": "min"}
        stats = self.tables
        if dist.world_size > 1:
            # a rank that ran out of memory halved its own micro-batches, so ranks may hold
            # different U: one entry per minibatch first (micro-batches within a rank are equal)
            within = dict(max=torch.amax, min=torch.amin, mean=torch.mean)
            stats = {k: within[ops.get(k, "mean")](v, 2, keepdim=True) for k, v in stats.items()}
        return {k: dist.reduce(v, ops.get(k, "mean")) for k, v in stats.items()}


def accumulate(loss_fn, cfg, optimizer, mb_size: int, stats: Stats, epoch: int, minibatch: int):
    """One minibatch's gradient, summed over micro-batches: loss_fn(rows) -> (loss, stats dict) for
    the rows slice of the minibatch; each micro-batch's loss is weighted by its share of the
    minibatch. Returns the minibatch's mean loss (a 0-dim tensor, detached).

    A micro-batch that runs out of device memory halves cfg.micro_batch_size (kept for the rest
    of the run) and the minibatch is redone from zero_grad: nothing was stepped."""
    while True:
        micro_size, oom = cfg.micro_batch_size, False
        try:
            optimizer.zero_grad(set_to_none=True)
            total = None
            for micro in range(mb_size // micro_size):
                rows = slice(micro * micro_size, (micro + 1) * micro_size)
                loss, values = loss_fn(rows)
                (loss * (micro_size / mb_size)).backward()
                part = loss.detach() * (micro_size / mb_size)
                total = part if total is None else total + part
                stats.record((epoch, minibatch, micro), values, mb_size // micro_size)
            return total
        except torch.OutOfMemoryError:
            if micro_size == 1:
                raise
            oom = True  # handled outside the except block, which holds the failed frames
        if oom:
            optimizer.zero_grad(set_to_none=True)
            shrink_micro_batch(cfg, f"the PPO update (epoch {epoch}, minibatch {minibatch})")
            stats.split(micro_size // cfg.micro_batch_size)
