"""
The reward model of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences", §2),
as openai/lm-human-preferences (train_reward.py, rewards.py, label_types.py::PickBest; more in
docs/) with the differences said where they are. The stage, in order:
  1. comparisons: a query and N responses from the initial policy rho (`reward.py sample`);
  2. labels: a person picks the best (label_tool.py), or a scripted labeler (`reward.py label`);
  3. the model: GPT-2 with rho's weights plus a scalar head (weight ~ N(0, 1/sqrt(n_embd + 1)),
     bias 0) read at the last real token of concat(query, response); reward = gain * head + bias;
  4. normalize: gain/bias set so that rewards of rho's responses have mean 0 and (population) std
     1, before training and again after it (so PPO's KL coefficient always means the same thing);
  5. train (`reward.py train`): softmax cross-entropy over the N candidates against the labeled
     best (N = 2: Bradley-Terry); one epoch (the tiny CPU demo needs several), learning rate
     annealed linearly to 0, Adam with TF1's epsilon (1e-5), no dropout, no clipping.

    python reward.py sample --task sentiment --model gpt2 --num-comparisons 1000 --out cmp.jsonl
    python reward.py label  --labeler sentiment --comparisons cmp.jsonl --out labels.jsonl
    python reward.py train  --labels labels.jsonl --model gpt2 --out rm.pt
    python reward.py eval   --reward-model rm.pt --labels test_labels.jsonl
Each has a --help. On a CPU: --model tiny. --labels also takes OpenAI's released JSON (and --task).
`reward.py train` without --labels does steps 1 to 5 (scripted labels): build_reward_model, the
one call ppo.py makes when it has no reward model (its --rm.* flags are `reward.py train`'s).
`torchrun --nproc_per_node 8 reward.py train ...` splits each step over the processes ([dist]).

Shape letters: B = batch (comparisons), N = candidates per comparison, T = sequence length, C =
channels, Q = query length, R = response length.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2 import GPT2, PAD_ID, GPT2Config, left_pad
from machinery import amp, cli, comparisons, dist, labels, presets, tasks
from machinery.comparisons import EvalArgs, cmd_label, cmd_sample
from machinery.optim import make_adam

CHECKPOINT_FORMAT = "rlhf-gpt2 reward model"
CHECKPOINT_VERSION = 1

# --------------------------------------------------------------------------------------------------
# The math: small pure functions


def preference_loss(rewards: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of the labeled best among N candidates (label_types.py::PickBest).

    rewards (B, N), best (B,) -> scalar. loss = -mean_b log( exp r_b,best / sum_i exp r_b,i ). With
    N = 2 this is the Bradley-Terry loss -log sigmoid(r_best - r_other). (The paper's eq. 1 is
    printed without the minus sign.)
    """
    return F.cross_entropy(rewards, best)


def preference_accuracy(rewards: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Fraction of comparisons whose highest reward is the labeled best; a tie counts 1/k when the
    best is among the k candidates sharing the top reward (argmax would credit the first of them),
    so the order of the candidates cannot change it: a constant model scores 1/N. rewards (B, N),
    best (B,) -> scalar."""
    top = rewards == rewards.max(-1, keepdim=True).values  # (B, N) the tied highest
    return (top.gather(-1, best[:, None])[:, 0] / top.sum(-1)).mean()


def population_mean_std(x: torch.Tensor) -> tuple[float, float]:
    """Mean and POPULATION std (divide by n, as OpenAI's stats(): sqrt(E[x^2] - E[x]^2);
    lm-human-preference-details uses the unbiased std). Under torchrun: over every rank's x."""
    mean, var = dist.mean_var(x.double())  # [dist] all ranks' samples
    return mean.item(), var.sqrt().item()


def gain_bias(
    mean: float, std: float, target_mean: float = 0.0, target_std: float = 1.0
) -> tuple[float, float]:
    """gain, bias with gain * r + bias having target mean/std when r has mean/std
    (rewards.py::set_reward_norm)."""
    gain = target_std / std
    return gain, target_mean - gain * mean


# --------------------------------------------------------------------------------------------------
# The model


class RewardModel(nn.Module):
    """GPT-2 (its own copy of rho's weights) + a scalar head on the final hidden state (after ln_f)
    at the last real token, then reward = reward_gain * head + reward_bias.

    reward_gain and reward_bias are trainable parameters, as in OpenAI's code (tf.get_variable, in
    get_params), so Adam moves them during training too; normalization resets and re-sets them
    (set_normalization).
    """

    def __init__(self, lm: GPT2, base_model: str = ""):
        super().__init__()
        self.lm = lm
        C = lm.config.n_embd
        self.head = nn.Linear(C, 1)
        # fc_layer init: std 1/sqrt(n_in + 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(C + 1))
        nn.init.zeros_(self.head.bias)
        self.reward_gain = nn.Parameter(torch.ones(()))
        self.reward_bias = nn.Parameter(torch.zeros(()))
        # task, seed, config, normalization: filled by training
        self.meta: dict = dict(base_model=base_model)

    def raw_rewards(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head output before gain/bias at each row's last real token. tokens, attention_mask (B, T)
        -> (B,).

        Pads may sit anywhere (mask 0 or PAD_ID: left padding, OpenAI's right-padded queries,
        PAD_ID after a truncated response): the model removes them from attention and positions.
        We read position -1, as OpenAI does: a pad there holds the output of the last real token
        before it (hidden_states copies it, as OpenAI's model.py does), so it is the last real
        token's output either way."""
        # (B, C), with the final block run at that one position only
        h_last = self.lm.hidden_states(tokens, attention_mask, last=1)[:, 0]
        return self.head(h_last)[:, 0].float()  # (B,) fp32, also under autocast

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalized rewards (B,) of sequences concat(query, response), tokens/attention_mask
        (B, T)."""
        return self.reward_gain * self.raw_rewards(tokens, attention_mask) + self.reward_bias

    def score(
        self, query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor
    ) -> torch.Tensor:
        """Rewards (B,) for queries (B, Q) with mask, and responses (B, R) holding PAD_ID after
        their stop token (tasks.truncate_responses); pads anywhere in either are ignored. The RM
        reads the RAW query, as OpenAI (no prefix/suffix)."""
        tokens = torch.cat([query, response], 1)  # (B, Q + R)
        mask = torch.cat([query_mask.bool(), response != PAD_ID], 1)
        return self(tokens, mask)

    def reset_normalization(self):
        with torch.no_grad():
            self.reward_gain.fill_(1.0)
            self.reward_bias.fill_(0.0)

    def set_normalization(
        self, mean: float, std: float, target_mean: float = 0.0, target_std: float = 1.0
    ):
        """From raw-reward stats (gain 1, bias 0) to gain/bias giving target mean/std
        (rewards.py::set_reward_norm)."""
        if not (self.reward_gain.item() == 1.0 and self.reward_bias.item() == 0.0):
            raise RuntimeError(
                "set_normalization expects gain 1 and bias 0: call reset_normalization first"
            )
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise ValueError(f"cannot normalize rewards with mean {mean} and std {std}")
        gain, bias = gain_bias(mean, std, target_mean, target_std)
        with torch.no_grad():
            self.reward_gain.fill_(gain)
            self.reward_bias.fill_(bias)


def pack(queries: list[list[int]], responses: list[list[int]], device="cpu"):
    """concat(query, response) per row, pads dropped (left_pad drops PAD_ID), left-padded:
    (tokens (B, T), mask (B, T)). Dropping pads in the middle changes nothing (masked, and
    positions count real tokens only) and keeps T small."""
    return left_pad([list(q) + list(r) for q, r in zip(queries, responses)], device=device)


@torch.no_grad()
def score_tokens(
    rm: RewardModel, queries: list[list[int]], responses: list[list[int]], batch_size: int = 64
):
    """Rewards (B,) for token lists (raw queries; responses already truncated; PAD_ID anywhere is
    ignored)."""
    device = rm.reward_gain.device
    out = []
    for i in range(0, len(queries), batch_size):
        tokens, mask = pack(queries[i : i + batch_size], responses[i : i + batch_size], device)
        out.append(rm(tokens, mask).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


# --------------------------------------------------------------------------------------------------
# Training: held-out accuracy, normalization under rho, the loop


@dataclass
class TrainConfig:
    """The reward model's own options: where its labels come from and how it trains. `reward.py
    train` takes them as flags, ppo.py as --rm.<flag> (the same names)."""

    labels: str = ""
    """labels file: our labels.jsonl or OpenAI's released JSON ({query, sample0..N-1, best}
    lists); empty: sample num-comparisons from rho and label them with the scripted labeler"""
    num_comparisons: int = 4992
    """comparisons to sample and label with the scripted labeler when --labels is empty (4,992 =
    the released style-task label count)"""
    num_train: int = 0
    """labels to train on, taken from the start of the file (OpenAI: 4,992); 0: all but the
    held-out part"""
    test_fraction: float = 0.1
    """with num_train 0: the last fraction of the labels is held out for accuracy"""
    batch_size: int = 32
    """comparisons per step (OpenAI books: 32; summaries: 16)"""
    lr: float = 5e-5
    """peak learning rate, annealed linearly to 0 over training (OpenAI books: 5e-5; summaries:
    2.5e-5)"""
    epochs: int = 1
    """passes over the labels (OpenAI and the paper: 1; the tiny CPU demo has few labels and
    needs several)"""
    adam: str = "tf"
    """'tf': TF1's Adam epsilon placement, as OpenAI (AdamTF); 'torch': torch.optim.Adam"""
    adam_eps: float = 1e-5
    """Adam epsilon (OpenAI: 1e-5)"""
    normalize_before: bool = True
    """set gain/bias so rewards of rho's responses have mean 0, std 1 before training"""
    normalize_after: bool = True
    """and again after training (gain/bias reset first)"""
    require_stop: bool = True
    """sampled comparisons keep only responses with the task's stop token, as the paper's rejection
    sampling for people (off: responses without it are kept whole; for a model that never writes
    it, e.g. tiny on tldr/cnndm)"""
    normalize_samples: int = 256
    """responses from rho used to estimate the reward mean and std"""
    normalize_truncated: bool = False
    """normalize on truncated responses (what PPO scores); off follows OpenAI, which normalizes
    on raw ones"""
    rollout_batch_size: int = 64
    """queries per sampling batch during normalization"""
    eval_batch_size: int = 64
    """comparisons per batch when measuring held-out accuracy"""
    log_interval: int = 10
    """print a line every this many steps"""


def comparison_rewards(rm: RewardModel, rows: list[dict], device="cpu"):
    """rewards (B, N) and best (B,) for B label rows of N candidates: row b's candidate i is
    sequence b*N+i of the packed batch."""
    queries = [r["query_tokens"] for r in rows for _ in r["sample_tokens"]]
    responses = [s for r in rows for s in r["sample_tokens"]]
    tokens, mask = pack(queries, responses, device)  # (B*N, T)
    best = torch.tensor([r["best"] for r in rows], device=device)
    return rm(tokens, mask).view(len(rows), -1), best  # (B, N)


@torch.no_grad()
def evaluate(rm: RewardModel, rows: list[dict], batch_size: int = 64) -> dict:
    """Held-out accuracy (preference_accuracy: ties count 1/k), loss, and mean reward of all
    candidates."""
    device = rm.reward_gain.device
    rewards, best = [], []
    for i in range(0, len(rows), batch_size):
        r, b = comparison_rewards(rm, rows[i : i + batch_size], device)
        rewards.append(r.float().cpu())
        best.append(b.cpu())
    if not rewards:
        return dict(accuracy=float("nan"), loss=float("nan"), mean_reward=float("nan"), n=0)
    rewards, best = torch.cat(rewards), torch.cat(best)
    return dict(
        accuracy=preference_accuracy(rewards, best).item(),
        loss=preference_loss(rewards, best).item(),
        mean_reward=rewards.mean().item(),
        n=len(rows),
    )


@torch.no_grad()
def normalize(
    rm: RewardModel,
    policy: GPT2,
    task: tasks.TaskConfig,
    cfg: TrainConfig,
    seed: int,
    device="cpu",
    query_data: str = "",
) -> dict:
    """Set gain/bias so rewards of (x ~ task queries, y ~ rho) have mean 0, std 1
    (train_reward.py::normalize), on cfg.normalize_samples responses sampled in batches of
    cfg.rollout_batch_size queries (truncated first if cfg.normalize_truncated).

    Returns the raw stats it found and the stats after normalizing (a check on a fresh sample,
    like OpenAI's debug_normalize), e.g. {"mean": 0.31, "std": 0.02, "after_mean": 0.0,
    "after_std": 1.0}. Queries use their own seed stream (OpenAI draws them from a separate
    'ref_queries' sampler)."""
    rm.reset_normalization()
    batch_size = cfg.rollout_batch_size
    src = tasks.QuerySource(task, "train", seed=seed + 1, query_data=query_data)
    # [dist] each rank samples its block of every batch of queries, with its own seed
    gen = torch.Generator(device=device).manual_seed(dist.seed(seed))

    def draw():
        qs_all, rs_all = [], []
        # OpenAI: ceil(samples / rollout batch) batches
        for _ in range(math.ceil(cfg.normalize_samples / batch_size)):
            qs = dist.shard(src.next_batch(batch_size, formatted=False), "--rollout-batch-size")
            rs = comparisons.sample_responses(policy, task, qs, gen, device)
            if cfg.normalize_truncated:
                rs = tasks.truncate_responses(rs, task)[0]
            qs_all += qs
            rs_all += rs.tolist()
        return score_tokens(rm, qs_all, rs_all, batch_size)

    mean, std = population_mean_std(draw())
    rm.set_normalization(mean, std)
    stats = dict(mean=mean, std=std, gain=rm.reward_gain.item(), bias=rm.reward_bias.item())
    after_mean, after_std = population_mean_std(draw())  # the check, on fresh samples
    return dict(stats, after_mean=after_mean, after_std=after_std)


def train_step(rm: RewardModel, opt, rows: list[dict], device="cpu", precision="auto"):
    """One optimizer step on a batch of label rows: the rewards under amp.autocast, the
    preference loss and its gradient's start in fp32 outside it. Returns the whole batch's
    (loss, accuracy).

    [dist] Each rank takes its part of the rows; weighting its mean by its share (1 on one process)
    makes the rank-averaged gradient and statistics the whole batch's mean even when the batch does
    not split evenly (a rank with no rows reads one at weight 0)."""
    mine = dist.split(rows)
    weight = len(mine) * dist.world_size / len(rows)
    with amp.autocast(device, precision):
        rewards, best = comparison_rewards(rm, mine or rows[:1], device)  # (B, N), (B,)
    rewards = rewards.float()
    loss = preference_loss(rewards, best) * weight
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_gradients(rm)  # [dist] once per step
    opt.step()
    accuracy = preference_accuracy(rewards.detach(), best) * weight
    stats = dist.mean_of(dict(loss=loss, accuracy=accuracy))  # [dist] the whole batch's
    return stats["loss"], stats["accuracy"]


def train_reward_model(
    rows: list[dict],
    cfg: TrainConfig,
    model: str,
    task: str | tasks.TaskConfig = "",
    seed: int = 1,
    policy: GPT2 | None = None,
    device="cpu",
    test_rows: list[dict] | None = None,
    query_data: str = "",
    precision: str = "auto",
    grad_checkpoint: bool = False,
):
    """Train a reward model on label rows; returns (RewardModel, metrics).

    rows: labels (labels.read_labels); the first cfg.num_train train, the rest are held out (or pass
    test_rows). model: rho's name (tiny, gpt2, ...); task: a name or a tasks.TaskConfig (the
    normalization samples are drawn at its temperature), empty to take it from the labels; seed:
    head init, data order and normalization samples (OpenAI: run.seed 1). policy: rho if already
    loaded, else tasks.load_base_model(model). It is used frozen, for the normalization samples
    (on the task's queries, from query_data when given); the reward model gets its own copy.
    precision: amp.autocast's (every forward, sampling included); grad_checkpoint: activation
    checkpointing of the trained copy.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    task, train_rows, held_out = comparisons.task_and_split(rows, task, cfg, test_rows)
    if policy is None:
        policy = tasks.load_base_model(model, device)
    policy = policy.to(device).eval()
    comparisons.check_rows_fit(rows + list(held_out), policy.config, cfg.labels)
    # rho's weights, a fresh random head
    rm = RewardModel(copy.deepcopy(policy), base_model=model).to(device)
    dist.broadcast_module(rm)  # [dist] every rank starts from rank 0's weights
    rm.requires_grad_(True)  # every weight trains, even if the caller froze rho (ppo.py does)
    rm.lm.set_grad_checkpoint(grad_checkpoint)
    N = len(train_rows[0]["sample_tokens"])
    n_seen = len(train_rows) * cfg.epochs
    n_steps = math.ceil(n_seen / cfg.batch_size)
    log = comparisons.TrainLog(task.name, model, cfg, len(train_rows), len(held_out), N, n_steps)
    metrics: dict = dict(num_train=len(train_rows), num_test=len(held_out), N=N)

    # 1. normalize the random head's rewards under rho (OpenAI: normalize_before)
    if cfg.normalize_before:
        with amp.autocast(device, precision):
            metrics["norm_before"] = normalize(rm, policy, task, cfg, seed, device, query_data)
        log.normalized("before", metrics["norm_before"])
    if held_out:
        with amp.autocast(device, precision):
            metrics["test_before"] = evaluate(rm, held_out, cfg.eval_batch_size)
        log.held_out(metrics["test_before"], before=True)

    # 2. one epoch (OpenAI; more with --epochs) over seeded permutations, a fresh one per epoch; lr
    #    annealed linearly to 0 over all of training (train_reward.py line 249)
    params = [p for p in rm.parameters() if p.requires_grad]  # includes reward_gain/bias, as OpenAI
    opt = make_adam(params, cfg.adam, lr=cfg.lr, eps=cfg.adam_eps)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(train_rows)) for _ in range(cfg.epochs)])
    rm.train()  # no dropout anywhere; train() only for form
    for step in log.steps():
        start = step * cfg.batch_size
        batch = [train_rows[i] for i in order[start : start + cfg.batch_size]]
        lr = cfg.lr * (1 - start / n_seen)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, accuracy = train_step(rm, opt, batch, device, precision)
        log.step(step, loss, accuracy, lr)
    metrics["train_loss"], metrics["train_accuracy"] = log.done()
    rm.eval()

    # 3. normalize again under rho, discarding the trained gain/bias (OpenAI: normalize_after)
    if cfg.normalize_after:
        with amp.autocast(device, precision):
            metrics["norm_after"] = normalize(
                rm, policy, task, cfg, seed + 1000, device, query_data
            )
        log.normalized("after", metrics["norm_after"])

    # 4. held-out accuracy, and one example pair so a person can see what the model prefers
    if held_out:
        with amp.autocast(device, precision), torch.no_grad():
            metrics["test"] = evaluate(rm, held_out, cfg.eval_batch_size)
            rewards, _ = comparison_rewards(rm, [held_out[0]], rm.reward_gain.device)  # (1, N)
        log.held_out(metrics["test"])
        log.example(held_out[0], rewards[0].tolist())
    rm.meta.update(comparisons.training_record(rm, cfg, model, task, seed, query_data, metrics))
    return rm, metrics


# --------------------------------------------------------------------------------------------------
# The whole stage in one call: labels (read, or sampled and scripted) -> train -> save


def build_reward_model(
    cfg: TrainConfig,
    model: str,
    task: str | tasks.TaskConfig,
    out,
    seed: int = 1,
    labeler: str = "",
    policy: GPT2 | None = None,
    device="cpu",
    labels_out=None,
    reuse: bool = False,
    query_data: str = "",
    precision: str = "auto",
    grad_checkpoint: bool = False,
) -> Path:
    """Make a reward model and save it to `out`; returns its path. `reward.py train` and ppo.py
    (when it is given no reward model) both run this. 1. labels: cfg.labels if given (ours or
    OpenAI's released JSON); otherwise comparisons.sample_and_label (from rho: `policy`, or
    tasks.load_base_model(model); `labeler`, empty: the task's own), kept in `labels_out` (default:
    next to `out`) for `reward.py eval`; 2. train_reward_model; 3. save_reward_model.
    task: a name (`reward.py train`: the task's temperature) or a tasks.TaskConfig; every sample,
    comparisons and normalization alike, is drawn at task.temperature (ppo.py passes the task at
    the run's --temperature, as the released code samples everything at one temperature).
    reuse: if `out` already exists, return it untouched (ppo.py's resumed runs)."""
    out = Path(out)
    if reuse and out.exists():
        print(f"reward model: reusing {out}")
        return out
    if cfg.labels:  # ours or OpenAI's released JSON; prints what it did not use
        rows = comparisons.read_label_rows(cfg.labels)
    else:  # sampled from rho, labeled by the scripted labeler, kept for `python reward.py eval`
        labels_out = Path(labels_out or out.with_suffix(".labels.jsonl"))
        rows, policy = comparisons.sample_and_label(
            cfg, policy, model, task, labeler, seed, labels_out, device, query_data, precision
        )
        cfg = dataclasses.replace(cfg, labels=str(labels_out))
    rm, metrics = train_reward_model(
        rows, cfg, model, task, seed, policy=policy, device=device, query_data=query_data,
        precision=precision, grad_checkpoint=grad_checkpoint,
    )  # fmt: skip
    print(f"reward model: {json.dumps(metrics)}")
    if dist.is_main():  # [dist] rank 0 alone writes; the others wait for the file (ppo.py reads it)
        save_reward_model(rm, out)
    dist.barrier()
    return out


# --------------------------------------------------------------------------------------------------
# Checkpoints


def save_reward_model(rm: RewardModel, path) -> None:
    """rm.pt: weights plus everything needed to rebuild and trust it (config, base model, task,
    seed, normalization, metrics), written atomically."""
    ckpt = dict(
        format=CHECKPOINT_FORMAT,
        version=CHECKPOINT_VERSION,
        gpt2_config=dataclasses.asdict(rm.lm.config),
        state_dict={k: v.detach().cpu() for k, v in rm.state_dict().items()},
        **rm.meta,
    )
    cli.atomic_write(path, lambda f: torch.save(ckpt, f))


def load_reward_model(path, device="cpu", expect_config: GPT2Config | None = None) -> RewardModel:
    """A reward model from save_reward_model's file, with clear errors (checked by
    comparisons.read_rm_checkpoint): FileNotFoundError for a missing file; ValueError for a file
    that is not a reward model checkpoint of this version, a model of another size or vocabulary
    than expect_config (e.g. the policy's config), or weights that do not match its config."""
    ckpt, config = comparisons.read_rm_checkpoint(
        path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, expect_config
    )
    rm = RewardModel(GPT2(config))
    try:
        rm.load_state_dict(ckpt.pop("state_dict"))
    except RuntimeError as e:
        raise ValueError(
            f"{Path(path)}: weights do not match the stored config: {str(e)[:300]}"
        ) from None
    rm.meta = {k: v for k, v in ckpt.items() if k not in ("format", "version", "gpt2_config")}
    return rm.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Command line: sample / label (machinery/comparisons.py) / train / eval


@dataclass
class TrainArgs:
    model: str = "gpt2"
    """rho, the initial policy the reward model starts from: tiny, gpt2, gpt2-medium, ... or a HF
    directory"""
    task: str = ""
    """task (sentiment, descriptiveness, tldr, cnndm); empty: from the labels' `task` field"""
    labeler: str = ""
    """scripted labeler when --labels is empty (empty: the task's own)"""
    query_data: str = ""
    """local query data in the upstream format (see `reward.py sample --help`); empty: the
    shipped passages, or a download"""
    out: str = "rm.pt"
    """where to write the reward model checkpoint"""
    overwrite: bool = False
    """replace --out (and, without --labels, the labels file beside it) if they exist"""
    seed: int = 1
    """seed of the head init, data order and normalization samples (OpenAI: run.seed 1)"""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda"""
    precision: str = "auto"
    """'bf16' (autocast: bf16 matmuls, fp32 weights and losses) or 'fp32'; 'auto': bf16 on CUDA,
    fp32 on CPU"""
    grad_checkpoint: bool = False
    """activation checkpointing: recompute each transformer block in the backward (less memory)"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """the reward model's own options (flags without a prefix here; --rm.<flag> in ppo.py)"""


def cmd_train(argv):
    a = presets.parse(TrainArgs, argv, description=comparisons.TRAIN_HELP, flat=("train",))
    device, precision = comparisons.train_device(a, argv)  # --out checked; [dist] joins the group
    presets.tiny_reward_options(a, argv)  # --model tiny: the CPU demo's reward-model options
    out = build_reward_model(
        a.train,
        a.model,
        a.task,
        a.out,
        a.seed,
        a.labeler,
        device=device,
        query_data=a.query_data,
        precision=precision,
        grad_checkpoint=a.grad_checkpoint,
    )
    print(f"train: wrote {out}")
    dist.finish()


def cmd_eval(argv):
    a = presets.parse(
        EvalArgs, argv, description="Accuracy and mean reward of a reward model on labels."
    )
    device = cli.pick_device(a.device)
    rm = load_reward_model(a.reward_model, device)
    rows = comparisons.read_label_rows(a.labels)
    comparisons.check_rows_fit(rows, rm.lm.config, a.labels, rm.meta.get("task"))
    comparisons.print_eval(a.reward_model, rm.meta, evaluate(rm, rows, a.batch_size), rows)


COMMANDS = {"sample": cmd_sample, "label": cmd_label, "train": cmd_train, "eval": cmd_eval}


def main(argv=None):
    try:  # no command, or an unknown one: the docstring, or one line naming the commands
        return cli.dispatch("reward.py", COMMANDS, argv, __doc__.split("Shape letters")[0])
    except (labels.FormatError, ValueError, FileNotFoundError, tasks.DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    cli.run_main(main)  # expected errors and Ctrl-C: one line each
