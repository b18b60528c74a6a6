"""Several processes (dist.py, torchrun): the reductions against the same math on the concatenated
data, and (below) N ranks against one rank on the same data. Everything runs on CPU with the gloo
backend on 127.0.0.1, 2 processes; the workers are real processes given the environment that
torchrun gives its workers (RANK, WORLD_SIZE, ...), or real `torchrun` launches for the command-line
tests."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import gpt2
from machinery import dist
from machinery.optim import AdamTF

REAL_GENERATE = gpt2.generate
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
        from machinery import dist
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


# --------------------------------------------------------------------------------------------------
# PPO: 2 ranks x B/2 episodes against 1 rank x B episodes on the same data


def make_setup(B=8):
    """ρ (random tiny GPT-2), π with a random value head, and a PPO config; the same in every
    process (imported by the workers)."""
    import copy

    import gpt2
    import ppo

    torch.manual_seed(0)
    ref = gpt2.GPT2.from_config("tiny").eval().requires_grad_(False)
    policy = ppo.PolicyAndValue(copy.deepcopy(ref).requires_grad_(True)).eval()
    torch.nn.init.normal_(policy.value_head.weight, std=0.1)  # values that are not all 0
    cfg = ppo.Config(
        model="tiny", batch_size=B, micro_batch_size=2, nminibatches=2, noptepochs=2, lr=1e-3,
        device="cpu",
    )  # fmt: skip
    return ref, policy, cfg


class ConstantRM:
    """A stand-in reward model (the test sets the rewards itself)."""

    def score(self, query, query_mask, response):
        return torch.zeros(len(response))


def test_first_update_two_ranks_equal_one_rank(tmp_path, monkeypatch):
    """One PPO update (ppo_update: whitening, GAE, losses, 2 epochs x 2 minibatches = 4 Adam steps)
    of a rollout batch of B = 8 on one process, against the same batch split 4 + 4 over 2 ranks.

    The same minibatches: a rank shuffles only its own 4 rows (with its own generator) and takes
    2 of them per minibatch, so global minibatch m is rank 0's local minibatch m plus rank 1's.
    The one-process reference is given exactly those minibatches (torch.randperm replaced by the
    permutations the ranks draw, rank 1's rows offset by 4), and micro-batches of 2, so each of
    its micro-batches is one rank's share: its accumulated gradient must equal the ranks'
    all-reduced one, and its per-micro-batch stats (E, M, 2) reduce to the ranks' (E, M, 1):
    mean for losses and fractions, max / min for ratio_max / ratio_min. Whitening of rewards and
    advantages must use the whole minibatch (mean/var all-reduced), or the advantages differ."""
    import ppo
    from machinery import tasks

    ref, policy, cfg = make_setup()

    task = tasks.get_task("sentiment")
    queries = tasks.QuerySource(task, "train", seed=0).next_batch(8, formatted=False)
    batch = ppo.rollout(
        policy, ref, ConstantRM(), task, queries, cfg, 0.1, torch.Generator().manual_seed(0), "cpu"
    )
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    # the random tiny model writes no stop token, so every score is the -1 penalty: give the
    # episodes varied scores (and per-token noise) so whitening and the losses have work to do
    batch["rewards"] += 0.1 * torch.randn(8, batch["rewards"].size(1))
    batch["rewards"][:, -1] += torch.randn(8)
    assert batch["values"].std() > 0
    torch.save(dict(batch=batch, policy=policy.state_dict()), tmp_path / "batch.pt")

    results = run_ranks(
        f"""
import sys
sys.path.insert(0, "tests")
import ppo
from machinery import dist
from machinery.optim import AdamTF
from test_dist import make_setup
dist.init("cpu")
ref, policy, cfg = make_setup()
saved = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=False)
policy.load_state_dict(saved["policy"])
batch = {{k: dist.shard(v) for k, v in saved["batch"].items()}}  # this rank's 4 rows
opt = AdamTF(policy.parameters(), lr=cfg.lr)
shuffle_gen = torch.Generator().manual_seed(100 + dist.rank)
stats = ppo.ppo_update(policy, opt, batch, cfg, batch["rewards"].size(1), shuffle_gen, "cpu")
result = dict(
    stats=stats, grads={{k: p.grad for k, p in policy.named_parameters()}},
    params={{k: p.detach() for k, p in policy.named_parameters()}},
)
dist.finish()
""",
        tmp_path,
    )

    # the reference: one process, the whole batch, the ranks' minibatches
    local = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    perms = []
    for _ in range(cfg.noptepochs):
        p0, p1 = (torch.randperm(4, generator=g) for g in local)
        perms.append(torch.cat([torch.cat([p0[m : m + 2], p1[m : m + 2] + 4]) for m in (0, 2)]))
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None: perms.pop(0))
    opt = AdamTF(policy.parameters(), lr=cfg.lr)
    R = batch["rewards"].size(1)
    stats = ppo.ppo_update(policy, opt, batch, cfg, R, torch.Generator(), "cpu")
    assert not perms  # one permutation per epoch was used

    tol = dict(rtol=1e-4, atol=1e-6)
    for r, res in enumerate(results):
        assert set(res["stats"]) == set(stats)
        for k, v in stats.items():
            reduce = {"_max": v.amax, "_min": v.amin}.get(k[-4:], v.mean)
            want = reduce(-1)
            torch.testing.assert_close(res["stats"][k][..., 0], want, **tol, msg=f"rank {r} {k}")
        for k, p in policy.named_parameters():
            # the last minibatch's gradient, then the weights after all 4 steps
            torch.testing.assert_close(res["grads"][k], p.grad, **tol, msg=f"rank {r} grad {k}")
            torch.testing.assert_close(res["params"][k], p.detach(), **tol, msg=f"rank {r} {k}")
    # the update did something: losses vary, the policy moved after the first step
    assert stats["ppo/policy/approxkl"][0, 0].max() == 0 < stats["ppo/policy/approxkl"][1].min()


def fake_generate(model, tokens, attention_mask, max_new_tokens, temperature, generator=None):
    """gpt2.generate, one query at a time with a generator seeded by the query's own tokens: each
    query gets the same response whatever its batch or rank, so 1 and 2 ranks see the same
    episodes (the real sampler draws from one stream per batch)."""
    rows = []
    for t, m in zip(tokens, attention_mask):
        query = t[m.bool()][None]  # (1, Q') without padding
        key = sum(x * 7919**i for i, x in enumerate(query[0].tolist())) % 2**31
        gen = torch.Generator(device=tokens.device).manual_seed(key)
        ones = torch.ones_like(query, dtype=torch.bool)
        rows.append(
            REAL_GENERATE(model, query, ones, max_new_tokens, temperature, generator=gen)[0]
        )
    return torch.cat(rows), None


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A reward model on the tiny base model: ρ's weights and a random head (no training)."""
    import reward
    from machinery import tasks

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rm") / "rm.pt"
    reward.save_reward_model(reward.RewardModel(tasks.load_base_model("tiny"), "tiny"), path)
    return str(path)


def metrics_of(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_a_few_updates_two_ranks_equal_one_rank(tmp_path, monkeypatch, tiny_rm):
    """The whole loop (ppo.main: rollout, rewards, the KL controller, ppo_update, metrics, the
    evaluations) for 3 updates of 8 episodes (one Adam step each), on one process and on 2 ranks
    of 4. Sampling is replaced by fake_generate, which gives each query the same response
    whatever its batch or rank; everything else is the real code. Each rank takes its block of
    the same 8 queries, so both runs see the same episodes; with one minibatch of 8 (and
    micro-batches of a whole minibatch) the shuffle only reorders rows within it. The metrics
    (scores, KL, β, losses, clip fractions, ...) after every update and the summary must agree
    to float tolerance, and rank 0 alone writes: one metrics line per update."""
    import ppo

    args = [
        "--model", "tiny", "--reward-model", tiny_rm, "--batch-size", "8",
        "--micro-batch-size", "8", "--nminibatches", "1", "--noptepochs", "1",
        "--total-episodes", "24", "--eval-episodes", "4", "--save-every", "10",
        "--sample-every", "0",
    ]  # fmt: skip
    monkeypatch.setattr(gpt2, "generate", fake_generate)
    one = ppo.main(args + ["--run-dir", str(tmp_path / "one")])
    run_ranks(
        f"""
import sys
sys.path.insert(0, "tests")
import gpt2, ppo
from test_dist import fake_generate
gpt2.generate = fake_generate
result = ppo.main({args + ["--run-dir", str(tmp_path / "two")]!r})
""",
        tmp_path,
    )
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    m1, m2 = metrics_of(tmp_path / "one"), metrics_of(tmp_path / "two")
    assert [m["update"] for m in m2] == [1, 2, 3]
    for a, b in zip(m1, m2):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    for key in ["score_before", "score_after", "kl", "kl_coef", "true_score_after"]:
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    # the runs did something: β moved, scores vary, the policy moved away from ρ
    assert m1[-1]["objective/kl_coef"] != m1[0]["objective/kl_coef"] and m1[-1]["objective/kl"] > 0


# --------------------------------------------------------------------------------------------------
# The command line, as a user runs it: torchrun --nproc_per_node 2 ...


def torchrun(args: list[str], out: Path, n: int = 2) -> subprocess.Popen:
    """Start `torchrun --nproc_per_node n ARGS` in the repository (rendezvous on a free local
    port), its output going to `out`."""
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd = launcher + [
        f"--nproc_per_node={n}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd + args, cwd=ROOT, stdout=open(out, "w"), stderr=subprocess.STDOUT, text=True
    )


def finished(proc: subprocess.Popen, out: Path, timeout: float = 240) -> str:
    proc.wait(timeout=timeout)
    return out.read_text()


def test_torchrun_reward_train(tmp_path):
    """`torchrun --nproc_per_node 2 reward.py train` on tiny: 11 training comparisons in steps of 4
    (one epoch, not the tiny preset's 8; the last step's 3 split 2 + 1), normalization over both
    ranks' samples; one checkpoint, written by rank 0, and its log once."""
    import reward
    from machinery import labels, tasks
    from machinery.comparisons import label_comparisons, sample_comparisons

    rows = sample_comparisons(tasks.load_base_model("tiny"), "sentiment", 13, n_samples=2)
    labels_path = tmp_path / "labels.jsonl"
    labels.write_comparisons(labels_path, label_comparisons(rows, "sentiment"))
    out = tmp_path / "rm.pt"
    log = tmp_path / "log.txt"
    proc = torchrun(
        ["reward.py", "train", "--model", "tiny", "--labels", str(labels_path), "--out", str(out),
         "--num-train", "11", "--batch-size", "4", "--epochs", "1", "--normalize-samples", "8",
         "--rollout-batch-size", "4", "--log-interval", "1", "--device", "cpu"],
        log,
    )  # fmt: skip
    text = finished(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert text.count("train: wrote") == 1 and text.count("step 3/3") == 1, text[-3000:]
    rm = reward.load_reward_model(out)
    norm = rm.meta["normalization"]["after"]
    assert norm["std"] > 0 and abs(norm["mean"] * norm["gain"] + norm["bias"]) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl", "log.txt", "rm.pt"]


def rank_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank: a descendant whose environment says so."""
    parent = {}
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit():
                stat = (p / "stat").read_text()
                parent[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    for pid in parent:
        up = pid
        while up in parent and up != torchrun_pid:
            up = parent[up]
        if up != torchrun_pid or pid == torchrun_pid:
            continue
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no worker with RANK={rank} under pid {torchrun_pid}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker to kill through /proc")
def test_torchrun_ppo_kill_one_rank_then_resume(tmp_path, tiny_rm):
    """torchrun runs of ppo.py on tiny (4 updates of 8 episodes, a checkpoint after each):
    1. uninterrupted: exit 0, and rank 0 alone writes (one metrics line per update, one
       checkpoint, the console lines once);
    2. the same run with rank 1 killed (SIGKILL) once the first checkpoint exists: the job ends
       with an error naming the failure instead of hanging, and the checkpoint is intact;
    3. resuming it on 1 process refuses, naming both sizes;
    4. resuming it with torchrun on 2 ranks finishes with the uninterrupted run's metrics."""
    import time

    args = [
        "ppo.py", "--model", "tiny", "--reward-model", tiny_rm, "--batch-size", "8",
        "--micro-batch-size", "4", "--noptepochs", "1", "--total-episodes", "32",
        "--eval-episodes", "4", "--save-every", "1", "--sample-every", "2", "--device", "cpu",
    ]  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    proc = torchrun(args + ["--run-dir", str(whole)], tmp_path / "whole.txt")
    killed = torchrun(args + ["--run-dir", str(parts)], tmp_path / "parts.txt")

    # 2. kill rank 1 once the first checkpoint exists
    while not (parts / "checkpoint.pt").exists():
        assert killed.poll() is None, (tmp_path / "parts.txt").read_text()[-3000:]
        time.sleep(0.05)
    os.kill(rank_pid(killed.pid, 1), signal.SIGKILL)
    text = finished(killed, tmp_path / "parts.txt", timeout=120)
    assert killed.returncode != 0
    # torchrun's report names the killed rank; rank 0 says why it stopped
    assert "exitcode  : -9" in text and "rank      : 1" in text, text[-3000:]
    assert "rank 0/2: stopped by torchrun" in text or "rank 0/2: a collective failed" in text
    ckpt = torch.load(parts / "checkpoint.pt", weights_only=False)
    assert 1 <= ckpt["update"] < 4

    # 1. the uninterrupted run
    text = finished(proc, tmp_path / "whole.txt")
    assert proc.returncode == 0, text[-3000:]
    names = {"checkpoint.pt", "config.json", "curves.png", "metrics.jsonl", "summary.json"}
    names |= {"policy", "value_head.safetensors"}
    assert names <= {p.name for p in whole.iterdir()} and not list(whole.rglob("*.tmp"))
    assert [m["update"] for m in metrics_of(whole)] == [1, 2, 3, 4]
    assert text.count("update     3/4") == 1 and text.count("response (truncated)") == 2, text[
        -3000:
    ]
    ckpt = torch.load(whole / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2

    # 3. another number of processes
    one = subprocess.run(
        [sys.executable, "ppo.py", "--resume", str(parts)], cwd=ROOT, capture_output=True, text=True
    )
    assert one.returncode != 0
    assert "2 processes" in one.stderr and "1 process" in one.stderr, one.stderr[-2000:]

    # 4. resume on 2 ranks
    proc = torchrun(["ppo.py", "--resume", str(parts)], tmp_path / "resume.txt")
    text = finished(proc, tmp_path / "resume.txt")
    assert proc.returncode == 0, text[-3000:]
    assert metrics_of(parts) == metrics_of(whole)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, parts))
    for key in ["score_after", "true_score_after", "kl", "kl_coef", "updates"]:
        assert a[key] == b[key], key
