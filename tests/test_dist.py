"""Several processes (dist.py, torchrun): the reductions against the same math on the concatenated
data, and (below) N ranks against one rank on the same data. Everything runs on CPU with the gloo
backend on 127.0.0.1, 2 processes; the workers are real processes given the environment that
torchrun gives its workers (RANK, WORLD_SIZE, ...), or real `torchrun` launches for the command-line
tests."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dist

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(code: str, tmp_path: Path, n: int = 2, timeout: float = 120) -> list:
    """Run `code` in n processes joined like torchrun's workers; each saves `result` (a torch-
    picklable object) to $OUT. Returns the results by rank; a failing rank fails the test with its
    output."""
    port, procs = free_port(), []
    for r in range(n):
        env = dict(
            os.environ,
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(n),
            LOCAL_WORLD_SIZE=str(n),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OUT=str(tmp_path / f"rank{r}.pt"),
            PYTHONPATH=str(ROOT),
            OMP_NUM_THREADS="1",
        )
        prog = f"import os, torch\n{textwrap.dedent(code)}\ntorch.save(result, os.environ['OUT'])\n"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", prog],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-3000:]}"
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(n)]


# --------------------------------------------------------------------------------------------------
# dist.py itself


def test_one_process_is_the_plain_math():
    # without torchrun nothing is initialized and every helper is the single-process computation
    assert (dist.rank, dist.world_size) == (0, 1) and dist.is_main()
    x = torch.randn(5, 7) * 3 + 1
    mean, var = dist.mean_var(x)
    assert torch.equal(mean, x.mean()) and torch.equal(var, x.var(unbiased=False))
    assert dist.reduce(x) is x and dist.seed(7) == 7 and dist.shard([1, 2, 3]) == [1, 2, 3]
    assert dist.mean_of(dict(a=x.mean(), b=x.max())) == dict(a=x.mean().item(), b=x.max().item())
    assert dist.gather_objects({"r": 0}) == [{"r": 0}]


def test_share_refuses_an_uneven_split(monkeypatch):
    monkeypatch.setattr(dist, "world_size", 4)
    monkeypatch.setattr(dist, "rank", 1)
    assert dist.share(8, "--batch-size") == 2 and dist.shard(list(range(8))) == [2, 3]
    with pytest.raises(SystemExit, match=r"--batch-size = 10 does not split evenly over 4"):
        dist.share(10, "--batch-size")


def test_reductions_over_two_ranks_equal_the_math_on_all_the_data(tmp_path):
    """Rank r holds different data (rank 1 more rows than rank 0); every reduction must equal the
    same computation on the concatenation of both, and every rank must get the same answer."""
    results = run_ranks(
        """
        import dist
        dist.init("cpu")
        g = torch.Generator().manual_seed(dist.rank)
        x = torch.randn(3 + dist.rank, 5, generator=g) * 2 + dist.rank  # (3 or 4, 5)
        m, v = dist.mean_var(x)
        net = torch.nn.Linear(5, 1)
        torch.manual_seed(dist.rank)  # different weights per rank before the broadcast
        torch.nn.init.normal_(net.weight)
        dist.broadcast_module(net)
        net(x).sum().backward()
        own_grad = net.weight.grad.clone()
        dist.average_gradients(net)
        result = dict(
            x=x, mean=m, var=v, weight=net.weight.detach(), own_grad=own_grad,
            avg_grad=net.weight.grad, max=dist.reduce(x[:3], "max"), min=dist.reduce(x[:3], "min"),
            mean3=dist.reduce(x[:3]), stats=dist.mean_of(dict(a=x.mean(), b=x[0, 0])),
            gathered=dist.gather_objects(dict(rank=dist.rank)), seed=dist.seed(1),
            shard=dist.shard(list(range(8))),
        )
        dist.finish()
        """,
        tmp_path,
    )
    r0, r1 = results
    both = torch.cat([r0["x"], r1["x"]])
    for r in results:
        torch.testing.assert_close(r["mean"], both.mean())
        torch.testing.assert_close(r["var"], both.var(unbiased=False))
        torch.testing.assert_close(r["max"], torch.maximum(r0["x"][:3], r1["x"][:3]))
        torch.testing.assert_close(r["min"], torch.minimum(r0["x"][:3], r1["x"][:3]))
        torch.testing.assert_close(r["mean3"], (r0["x"][:3] + r1["x"][:3]) / 2)
        torch.testing.assert_close(r["avg_grad"], (r0["own_grad"] + r1["own_grad"]) / 2)
        assert r["stats"]["a"] == pytest.approx((r0["x"].mean() + r1["x"].mean()).item() / 2)
        assert r["gathered"] == [dict(rank=0), dict(rank=1)]
        assert torch.equal(r["weight"], r0["weight"])  # rank 0's weights everywhere
    assert not torch.equal(r0["own_grad"], r1["own_grad"])  # so the average above can fail
    assert (r0["seed"], r1["seed"]) == (1, 1 + dist.SEED_STRIDE)
    assert (r0["shard"], r1["shard"]) == ([0, 1, 2, 3], [4, 5, 6, 7])
