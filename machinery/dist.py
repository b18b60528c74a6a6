"""
Several processes (GPUs, machines) under torchrun: the few distributed lines ppo.py and reward.py
need, in one place. Every call site in those files is marked `# [dist]`.

    torchrun --nproc_per_node 8 ppo.py ...                        # one machine, 8 GPUs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 ppo.py ...                      # two machines (run on each)

torchrun starts one process per GPU and tells each its place through environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); init() reads them. Without torchrun (or with one
process) nothing here does anything: every function below returns its input unchanged, so a run on
one process is exactly the single-process program.

How the work is split (data parallel, no framework):
  * every process holds the whole model; each takes its block of every batch (`share`, `shard`)
    and samples with its own seed (`seed`);
  * gradients are averaged over processes once per optimizer step (`average_gradients`), after
    all micro-batches, so each step uses the mean over the whole minibatch;
  * every statistic of a batch (whitening, the KL the controller sees, reward normalization,
    logged metrics) is reduced over all processes (`mean_var`, `mean_of`, `reduce`), so N
    processes compute what one process with the same total batch would, up to float order;
  * rank 0 alone writes files and prints (`is_main`); the other ranks' stdout goes to /dev/null
    (their errors still reach stderr).

Backend: NCCL on GPUs, gloo on CPU. A collective that waits longer than TIMEOUT raises instead of
hanging; when a process dies, torchrun stops the others (SIGTERM), and they say so.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as tdist

# The longest one process may wait for the others at a collective before giving up. Everything
# between two collectives runs on every rank in step (rank 0's checkpoint writes take seconds), so
# only a dead or stuck peer comes near this.
TIMEOUT = timedelta(minutes=10)
# Per-rank seeds are seed + rank * SEED_STRIDE (a prime, so the streams of nearby seeds never meet).
SEED_STRIDE = 100_003

rank, world_size, local_rank = 0, 1, 0
comm_device = "cpu"  # where collectives run: cuda for NCCL, cpu for gloo


def init(device: str) -> None:
    """Join torchrun's process group (NCCL on cuda, gloo on cpu) when WORLD_SIZE > 1; else nothing.
    On cuda each process takes GPU LOCAL_RANK as its default device, so 'cuda' means that GPU."""
    global rank, world_size, local_rank, comm_device
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or tdist.is_initialized():
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        comm_device = "cuda"
    tdist.init_process_group(
        backend="nccl" if device.startswith("cuda") else "gloo", timeout=TIMEOUT
    )
    signal.signal(signal.SIGTERM, _stopped)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # one console line per update, not N
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it for every new bar


def _collective(fn):
    """A collective that fails because a peer is gone ends this process with one clear line
    instead of a traceback from the backend."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:  # torch.distributed's errors (DistError) are RuntimeErrors
            raise SystemExit(
                f"rank {rank}/{world_size}: a collective failed ({type(e).__name__}: "
                f"{str(e)[:300]}), most likely because another rank failed (torchrun's report "
                f"names it). Files already written are intact; continue with --resume on the "
                f"same number of processes."
            ) from None

    return wrapper


def _stopped(signum, frame):
    # torchrun sends SIGTERM to every process when one of them fails
    raise SystemExit(
        f"rank {rank}/{world_size}: stopped by torchrun (SIGTERM), most likely because another "
        f"rank failed (torchrun's report names it). Files already written are intact; continue "
        f"with --resume on the same number of processes."
    )


def finish() -> None:
    """Leave the process group (at the end of a run)."""
    if tdist.is_initialized():
        tdist.destroy_process_group()


def is_main() -> bool:
    """Rank 0: the only process that writes files and prints."""
    return rank == 0


def seed(base: int) -> int:
    """This rank's seed: base on rank 0 (so one process is unchanged), base + rank * SEED_STRIDE
    elsewhere."""
    return base + rank * SEED_STRIDE


def share(n: int, what: str) -> int:
    """This rank's part of n items (a batch size), which must split evenly."""
    if n % world_size:
        raise SystemExit(
            f"error: {what} = {n} does not split evenly over {world_size} processes; use a "
            f"multiple of {world_size}"
        )
    return n // world_size


def shard(items, what: str = "batch"):
    """This rank's contiguous block of a batch that every rank holds whole (rank r: block r)."""
    b = share(len(items), what)
    return items[rank * b : (rank + 1) * b]


@contextmanager
def local_main_first():
    """Local rank 0 of each machine runs the block first (filling download/fit caches), the others
    after it (reading them)."""
    if world_size > 1 and local_rank != 0:
        tdist.barrier()
    yield
    if world_size > 1 and local_rank == 0:
        tdist.barrier()


# --------------------------------------------------------------------------------------------------
# Reductions. With one process each returns what the plain single-process code computes.


@_collective
def reduce(x: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """Elementwise mean, sum, max or min of x over ranks (x has the same shape on every rank), on
    x's device."""
    if world_size == 1:
        return x
    y = x.detach().to(comm_device, copy=True)
    ops = dict(mean=tdist.ReduceOp.SUM, sum=tdist.ReduceOp.SUM)
    ops.update(max=tdist.ReduceOp.MAX, min=tdist.ReduceOp.MIN)
    tdist.all_reduce(y, op=ops[op])
    return (y / world_size if op == "mean" else y).to(x.device)


@_collective
def mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and POPULATION variance over all elements of every rank's x (ranks may hold different
    counts). One process: exactly x.mean(), x.var(unbiased=False). N: two all-reduces (count and
    sum, then the sum of squared deviations), in float64 so the order of the additions barely
    matters."""
    if world_size == 1:
        return x.mean(), x.var(unbiased=False)
    count = x.new_tensor(x.numel(), dtype=torch.float64)
    n_sum = reduce(torch.stack([count, x.double().sum()]), "sum")
    mean = n_sum[1] / n_sum[0]
    sq = reduce(((x.double() - mean) ** 2).sum(), "sum")
    return mean.to(x.dtype), (sq / n_sum[0]).to(x.dtype)


def mean_of(values: dict) -> dict:
    """{name: scalar tensor} -> {name: float}, each averaged over ranks in one all-reduce. For
    means over equal shares of a batch this is the mean over the whole batch."""
    if not values:
        return {}
    stacked = reduce(torch.stack([v.detach().float().reshape(()).cpu() for v in values.values()]))
    return dict(zip(values, stacked.tolist()))


@_collective
def average_gradients(module: torch.nn.Module) -> None:
    """Replace every .grad by its mean over ranks (call once per optimizer step, after the last
    backward). Explicit rather than DistributedDataParallel: one visible line in the update, and no
    wrapper around a model that is also used for sampling."""
    if world_size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    for works in [tdist.all_reduce(g, async_op=True) for g in grads]:
        works.wait()
    for g in grads:
        g.div_(world_size)


@_collective
def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's weights (parameters and buffers) to every rank, so all start identical even if
    a model was fitted or loaded differently on different machines."""
    if world_size == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)


@_collective
def gather_objects(obj) -> list:
    """Every rank's obj (picklable), as a list indexed by rank, on every rank."""
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    tdist.all_gather_object(out, obj)
    return out


@_collective
def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if world_size > 1:
        tdist.barrier()


def split(items: list) -> list:
    """This rank's contiguous part of a list that may not split evenly (parts differ by at most
    one item; some may be empty when there are fewer items than ranks)."""
    n, r = divmod(len(items), world_size)
    start = rank * n + min(rank, r)
    return items[start : start + n + (rank < r)]
