"""
The reward model of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences", §2),
learned from best-of-N comparisons: collect them, label them (a person with label_tool.py, or a
scripted labeler here), train.

It follows openai/lm-human-preferences (train_reward.py, rewards.py, label_types.py::PickBest; more
in docs/) and says where it differs. In short:
  * the reward model is a GPT-2 initialized from the policy's checkpoint (rho) plus a scalar head
    (weight ~ N(0, 1/sqrt(n_embd + 1)), bias 0) read at the last real token of concat(query,
    response);
  * reward = gain * head + bias, with gain/bias set so that rewards of rho's responses have mean 0
    and (population) std 1, before training and again after it (so PPO's KL coefficient always means
    the same thing);
  * loss = softmax cross-entropy over the N candidates against the labeled best (N = 2 is
    Bradley-Terry);
  * one epoch (--epochs for more: the tiny CPU demo needs several), learning rate annealed linearly
    to 0, Adam with TF1's epsilon (1e-5), no dropout, no clipping.

Four subcommands; each has a real --help:
    python reward.py sample --task sentiment --model gpt2 --num-comparisons 1000 \
                            --out comparisons.jsonl
    python reward.py label  --labeler sentiment --comparisons comparisons.jsonl --out labels.jsonl
    python reward.py train  --labels labels.jsonl --model gpt2 --out rm.pt
    python reward.py eval   --reward-model rm.pt --labels test.jsonl
On a CPU, use --model tiny (a 2-layer GPT-2 fitted on the shipped passages, see tasks.py).
`--labels` also takes OpenAI's released JSON (e.g. tasks.download_labels("sentiment"), then --labels
that path --task sentiment). `reward.py train` without --labels does all three steps at once
(sample --num-comparisons from rho, label them with the task's scripted labeler, train); that is
build_reward_model, the one function ppo.py calls when it is given no reward model (its --rm.*
flags are the same options as `reward.py train`'s).

Several GPUs or machines: `torchrun --nproc_per_node 8 reward.py train ...` splits each step's
comparisons and the normalization samples over the processes and all-reduces gradients and
statistics (dist.py; the distributed lines are marked [dist]).

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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from gpt2 import (
    GPT2,
    PAD_ID,
    GPT2Config,
    autocast,
    generate,
    get_tokenizer,
    left_pad,
    resolve_precision,
)
from machinery import cli, dist, labels, tasks
from machinery.optim import AdamTF

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
    """Fraction of comparisons whose highest reward is the labeled best. rewards (B, N), best
    (B,) -> scalar."""
    return (rewards.argmax(-1) == best).float().mean()


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


def make_adam(params, adam: str, lr: float, eps: float) -> torch.optim.Optimizer:
    """--adam tf: AdamTF (the released code's epsilon placement); --adam torch: torch.optim.Adam.
    The reward model and PPO both build their optimizer here."""
    if adam == "tf":
        return AdamTF(params, lr=lr, eps=eps)
    if adam == "torch":
        return torch.optim.Adam(params, lr=lr, eps=eps)
    raise ValueError(f"--adam {adam!r}: use 'tf' or 'torch'")


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
# 1. Comparisons: queries from the task, N responses each from rho


@torch.no_grad()
def sample_responses(
    policy: GPT2, task: tasks.TaskConfig, raw_queries: list[list[int]], generator, device="cpu"
):
    """rho's responses (B, R) to raw queries (formatted for the policy here) at the task's
    temperature, untruncated."""
    tokens, mask = left_pad([tasks.policy_context(task, q) for q in raw_queries], device=device)
    responses, _ = generate(
        policy, tokens, mask, task.response_length, task.temperature, generator=generator
    )
    return responses  # (B, R)


def sample_comparisons(
    policy: GPT2,
    task,
    n: int,
    n_samples: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    split: str = "train",
    max_rounds: int = 10,
    device="cpu",
    query_data: str = "",
    require_stop: bool = True,
) -> list[dict]:
    """n comparisons (labels.py rows): a query and n_samples responses from the policy, truncated at
    the stop token; rows of a query with a reference summary carry it (`reference`).

    Rejection sampling as the paper does for what people see: only responses that contain the stop
    token in [truncate_after, R) are kept, so every candidate ends at its period (books) or newline
    (summaries). Queries still short of n_samples valid responses after max_rounds are dropped; the
    count is printed. A policy that never writes the stop token (tiny on the summarization tasks
    never writes a newline) is an error, unless require_stop is off: then responses without it are
    kept whole. query_data: local query data (tasks.QuerySource).
    """
    task = tasks.get_task(task)
    enc = get_tokenizer()
    src = tasks.QuerySource(task, split, seed=seed, query_data=query_data)
    gen = torch.Generator(device=device).manual_seed(seed)
    rows, n_dropped, n_drawn, n_valid = [], 0, 0, 0
    # disable=None: a progress bar in a terminal, none in a log file (the summary lines are printed
    # either way)
    bar = tqdm(total=n, desc=f"sample comparisons ({task.name})", unit=" cmp", disable=None)
    while len(rows) < n:
        items = src.next_queries(min(max(1, batch_size // n_samples), n - len(rows)))
        queries = [q.tokens for q in items]
        found: list[list[list[int]]] = [[] for _ in queries]
        for _ in range(max_rounds):
            need = [i for i, f in enumerate(found) if len(f) < n_samples]
            if not need:
                break
            # one draw per missing response
            todo = [i for i in need for _ in range(n_samples - len(found[i]))]
            truncated, valid = tasks.truncate_responses(
                sample_responses(policy, task, [queries[i] for i in todo], gen, device), task
            )
            n_drawn, n_valid = n_drawn + len(todo), n_valid + int(valid.sum())
            for i, row, ok in zip(todo, truncated.cpu(), valid.tolist()):
                if (ok or not require_stop) and len(found[i]) < n_samples:
                    found[i].append(tasks.strip_pad(row))
        if n_valid == 0 and require_stop:
            stop = enc.decode([task.truncate_token])
            raise ValueError(
                f"sample: none of {n_drawn} responses had the stop token {stop!r} at or after "
                f"token {task.truncate_after}, so no comparison can be made: the policy may never "
                "write it (tiny, fitted on story passages, never writes a newline). Pass "
                "--no-require-stop (ppo.py: --no-rm.require-stop) to keep such responses whole."
            )
        for q, item, f in zip(queries, items, found):
            if len(f) < n_samples:
                n_dropped += 1
                continue
            row = dict(
                id=f"{task.name}-{split}-s{seed}-{len(rows)}",
                task=task.name,
                query=enc.decode(q),
                query_tokens=q,
                samples=[enc.decode(s) for s in f],
                sample_tokens=f,
            )
            if item.reference is not None:
                row["reference"] = item.reference
            rows.append(row)
            bar.update(1)
    bar.close()
    print(
        f"sample: {len(rows)} comparisons x {n_samples} responses; {n_valid}/{n_drawn} draws had "
        "the stop token "
        f"({n_valid / max(n_drawn, 1):.0%}); {n_dropped} queries dropped (no {n_samples} valid "
        "responses in "
        f"{max_rounds} rounds); {src.n_skipped} texts skipped (no query)"
    )
    return rows


# --------------------------------------------------------------------------------------------------
# 2. Labels: the scripted ("mock") labeler picks the best candidate


def label_comparisons(rows: list[dict], labeler: str | tasks.ScriptedLabeler) -> list[dict]:
    """Label rows (labels.py format): each comparison plus best, labeler, seconds, created. A
    labeler that compares with a reference (rouge) reads each row's `reference`."""
    lab = tasks.get_labeler(labeler) if isinstance(labeler, str) else labeler
    out = []
    for r in rows:
        t0 = time.perf_counter()
        best = lab.pick_best(r["query"], r["samples"], r.get("reference"))
        out.append(
            dict(
                r,
                best=best,
                labeler=f"script:{lab.name}",
                seconds=round(time.perf_counter() - t0, 6),
                created=labels.now_iso(),
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# 3. Training


@dataclass
class TrainConfig:
    """The reward model's own options: where its labels come from and how it trains. `reward.py
    train` takes them as flags, ppo.py as --rm.<flag> (the same names)."""

    labels: str = ""
    """labels file: our labels.jsonl or OpenAI's released JSON ({query, sample0..N-1, best}
    lists); empty: sample --num-comparisons from rho and label them with the scripted labeler"""
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


def comparison_batch(rows: list[dict], device="cpu"):
    """B comparisons of N candidates -> (tokens (B*N, T), mask (B*N, T), best (B,)); row b's
    candidate i is b*N+i."""
    queries = [r["query_tokens"] for r in rows for _ in r["sample_tokens"]]
    responses = [s for r in rows for s in r["sample_tokens"]]
    tokens, mask = pack(queries, responses, device)
    return tokens, mask, torch.tensor([r["best"] for r in rows], device=device)


def comparison_rewards(rm: RewardModel, rows: list[dict], device="cpu"):
    """rewards (B, N) and best (B,) for a batch of label rows."""
    tokens, mask, best = comparison_batch(rows, device)
    return rm(tokens, mask).view(len(rows), -1), best  # (B, N)


@torch.no_grad()
def evaluate(rm: RewardModel, rows: list[dict], batch_size: int = 64) -> dict:
    """Held-out accuracy (argmax == best), loss, and mean reward of all candidates."""
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
    n_samples: int,
    batch_size: int,
    seed: int,
    truncated: bool = False,
    device="cpu",
    query_data: str = "",
) -> dict:
    """Set gain/bias so rewards of (x ~ task queries, y ~ rho) have mean 0, std 1
    (train_reward.py::normalize).

    Returns the raw stats it found and the stats after normalizing (a check on a fresh sample,
    like OpenAI's debug_normalize), e.g. {"mean": 0.31, "std": 0.02, "after_mean": 0.0,
    "after_std": 1.0}. Queries use their own seed stream (OpenAI draws them from a separate
    'ref_queries' sampler)."""
    rm.reset_normalization()
    src = tasks.QuerySource(task, "train", seed=seed + 1, query_data=query_data)
    # [dist] each rank samples its block of every batch of queries, with its own seed
    gen = torch.Generator(device=device).manual_seed(dist.seed(seed))

    def draw():
        qs_all, rs_all = [], []
        # OpenAI: ceil(samples / rollout batch) batches
        for _ in range(math.ceil(n_samples / batch_size)):
            qs = dist.shard(src.next_batch(batch_size, formatted=False), "--rollout-batch-size")
            rs = sample_responses(policy, task, qs, gen, device)
            if truncated:
                rs = tasks.truncate_responses(rs, task)[0]
            qs_all += qs
            rs_all += rs.tolist()
        return score_tokens(rm, qs_all, rs_all, batch_size)

    mean, std = population_mean_std(draw())
    rm.set_normalization(mean, std)
    after_mean, after_std = population_mean_std(draw())
    return dict(
        mean=mean,
        std=std,
        gain=rm.reward_gain.item(),
        bias=rm.reward_bias.item(),
        after_mean=after_mean,
        after_std=after_std,
    )


def split_rows(rows: list[dict], num_train: int, test_fraction: float):
    """First num_train rows train, the rest test (as OpenAI uses the file's first num_train
    labels, and lm-human-preference-details tests on the rows after them). num_train 0: hold out
    the last test_fraction."""
    if num_train <= 0:
        num_train = (
            len(rows) - max(1, round(test_fraction * len(rows))) if test_fraction > 0 else len(rows)
        )
    if not 0 < num_train <= len(rows):
        raise ValueError(f"num_train={num_train} but the labels file has {len(rows)} labels")
    return rows[:num_train], rows[num_train:]


def resolve_task(rows: list[dict], task: str, path: str = "labels") -> tasks.TaskConfig:
    found = sorted({r.get("task", "") for r in rows})
    if task:
        return tasks.get_task(task)
    if len(found) != 1 or found[0] not in tasks.TASKS:
        raise ValueError(
            f"{path}: cannot tell the task from the labels (task fields: {found}); pass --task "
            f"({', '.join(tasks.TASKS)})"
        )
    return tasks.get_task(found[0])


def check_rows_fit(rows: list[dict], config: GPT2Config, path: str = "labels"):
    """Token ids inside the model's vocabulary and query+response inside its context, or a clear
    error."""
    for i, r in enumerate(rows):
        n = len(r["query_tokens"]) + max(len(s) for s in r["sample_tokens"])
        if n > config.n_positions:
            raise ValueError(
                f"{path}: label {r.get('id', i)} has {n} query+response tokens, more than the "
                "model's "
                f"n_positions={config.n_positions}"
            )
        ids = r["query_tokens"] + [t for s in r["sample_tokens"] for t in s]
        if ids and max(ids) >= config.vocab_size and max(ids) != PAD_ID:
            raise ValueError(
                f"{path}: label {r.get('id', i)} has token id {max(ids)} >= the model's vocab size "
                f"{config.vocab_size}"
            )


def train_step(rm: RewardModel, opt, rows: list[dict], device="cpu", precision="auto"):
    """One optimizer step on a batch of label rows: the rewards under gpt2.autocast, the
    preference loss and its gradient's start in fp32 outside it. Returns the whole batch's
    (loss, accuracy).

    [dist] Each rank takes its part of the rows; weighting its mean by its share (1 on one process)
    makes the rank-averaged gradient and statistics the whole batch's mean even when the batch does
    not split evenly (a rank with no rows reads one at weight 0)."""
    mine = dist.split(rows)
    weight = len(mine) * dist.world_size / len(rows)
    with autocast(device, precision):
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
    task: str = "",
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
    test_rows). model: rho's name (tiny, gpt2, ...); task: empty to take it from the labels; seed:
    head init, data order and normalization samples (OpenAI: run.seed 1). policy: rho if already
    loaded, else tasks.load_base_model(model). It is used frozen, for the normalization samples
    (on the task's queries, from query_data when given); the reward model gets its own copy of
    its weights. precision: gpt2.autocast's (every forward, sampling included); grad_checkpoint:
    activation checkpointing of the trained copy.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    task = resolve_task(rows, task, cfg.labels)
    train_rows, held_out = (
        split_rows(rows, cfg.num_train, cfg.test_fraction)
        if test_rows is None
        else (rows, test_rows)
    )
    if policy is None:
        policy = tasks.load_base_model(model, device)
    policy = policy.to(device).eval()
    check_rows_fit(rows + list(held_out), policy.config, cfg.labels)
    # rho's weights, a fresh random head
    rm = RewardModel(copy.deepcopy(policy), base_model=model).to(device)
    dist.broadcast_module(rm)  # [dist] every rank starts from rank 0's weights
    rm.requires_grad_(True)  # every weight trains, even if the caller froze rho (ppo.py does)
    rm.lm.set_grad_checkpoint(grad_checkpoint)
    N = len(train_rows[0]["sample_tokens"])
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
    n_seen = len(train_rows) * cfg.epochs
    n_steps = math.ceil(n_seen / cfg.batch_size)
    print(
        f"train: task {task.name}, {len(train_rows)} train / {len(held_out)} held-out comparisons "
        f"of N={N}, "
        f"{cfg.epochs} epoch(s), {n_steps} steps of {cfg.batch_size}, lr {cfg.lr} -> 0, base model "
        f"{model}"
    )
    metrics: dict = dict(num_train=len(train_rows), num_test=len(held_out), N=N)

    # 1. normalize the random head's rewards under rho (OpenAI: normalize_before)
    if cfg.normalize_before:
        with autocast(device, precision):
            metrics["norm_before"] = normalize(
                rm,
                policy,
                task,
                cfg.normalize_samples,
                cfg.rollout_batch_size,
                seed,
                cfg.normalize_truncated,
                device,
                query_data,
            )
        print(_norm_line("before", metrics["norm_before"]))
    if held_out:
        with autocast(device, precision):
            metrics["test_before"] = evaluate(rm, held_out, cfg.eval_batch_size)
        print(
            f"train: held-out accuracy before training {metrics['test_before']['accuracy']:.3f} "
            f"(chance {1 / N:.3f}), loss {metrics['test_before']['loss']:.4f} (uniform "
            f"{math.log(N):.4f})"
        )

    # 2. one epoch (OpenAI; more with --epochs) over seeded permutations, lr annealed linearly to 0
    #    over all of training (train_reward.py line 249)
    params = [p for p in rm.parameters() if p.requires_grad]  # includes reward_gain/bias, as OpenAI
    opt = make_adam(params, cfg.adam, lr=cfg.lr, eps=cfg.adam_eps)
    rng = np.random.default_rng(seed)
    # a fresh order per epoch
    order = np.concatenate([rng.permutation(len(train_rows)) for _ in range(cfg.epochs)])
    rm.train()  # no dropout anywhere; train() only for form
    running_loss, running_acc, t0 = [], [], time.time()
    bar = tqdm(range(n_steps), desc="train reward model", unit="step", disable=None)
    for step in bar:
        start = step * cfg.batch_size
        batch = [train_rows[i] for i in order[start : start + cfg.batch_size]]
        lr = cfg.lr * (1 - start / n_seen)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, accuracy = train_step(rm, opt, batch, device, precision)
        running_loss.append(loss)
        running_acc.append(accuracy)
        bar.set_postfix(
            loss=f"{np.mean(running_loss[-10:]):.3f}", acc=f"{np.mean(running_acc[-10:]):.2f}"
        )
        if (step + 1) % cfg.log_interval == 0 or step + 1 == n_steps:
            tqdm.write(
                f"step {step + 1}/{n_steps} | loss "
                f"{np.mean(running_loss[-cfg.log_interval :]):.4f} | "
                f"acc {np.mean(running_acc[-cfg.log_interval :]):.3f} | lr {lr:.2e} | "
                f"{(time.time() - t0) / (step + 1) * 1000:.0f} ms/step"
            )
    bar.close()
    rm.eval()
    metrics["train_loss"], metrics["train_accuracy"] = (
        float(np.mean(running_loss)),
        float(np.mean(running_acc)),
    )

    # 3. normalize again under rho, discarding the trained gain/bias (OpenAI: normalize_after)
    if cfg.normalize_after:
        with autocast(device, precision):
            metrics["norm_after"] = normalize(
                rm,
                policy,
                task,
                cfg.normalize_samples,
                cfg.rollout_batch_size,
                seed + 1000,
                cfg.normalize_truncated,
                device,
                query_data,
            )
        print(_norm_line("after", metrics["norm_after"]))

    # 4. held-out accuracy, and one example pair so a person can see what the model prefers
    if held_out:
        with autocast(device, precision):
            metrics["test"] = evaluate(rm, held_out, cfg.eval_batch_size)
        print(
            f"train: held-out accuracy {metrics['test']['accuracy']:.3f} on {len(held_out)} "
            "comparisons "
            f"(chance {1 / N:.3f}), loss {metrics['test']['loss']:.4f}"
        )
        with autocast(device, precision):
            print_example(rm, held_out[0])
    rm.meta.update(
        task=task.name,
        seed=seed,
        train_config=dict(
            model=model, task=task.name, seed=seed, query_data=query_data, **dataclasses.asdict(cfg)
        ),
        metrics=metrics,
        normalization=dict(
            gain=rm.reward_gain.item(),
            bias=rm.reward_bias.item(),
            before=metrics.get("norm_before"),
            after=metrics.get("norm_after"),
        ),
    )
    return rm, metrics


def _norm_line(when: str, s: dict) -> str:
    return (
        f"normalize {when}: raw rewards under rho {s['mean']:+.4f} +- {s['std']:.4f} -> gain "
        f"{s['gain']:.4f}, "
        f"bias {s['bias']:+.4f}; check on fresh samples {s['after_mean']:+.3f} +- "
        f"{s['after_std']:.3f}"
    )


@torch.no_grad()
def print_example(rm: RewardModel, row: dict):
    rewards, _ = comparison_rewards(rm, [row], rm.reward_gain.device)
    r = rewards[0].tolist()
    chosen = row["best"]
    rejected = min(range(len(r)), key=lambda i: r[i] if i != chosen else float("inf"))
    print(f"example query: {row['query'][-200:]!r}")
    print(f"  labeled best ({r[chosen]:+.2f}): {row['samples'][chosen]!r}")
    print(f"  lowest other ({r[rejected]:+.2f}): {row['samples'][rejected]!r}")


# --------------------------------------------------------------------------------------------------
# 4. The whole stage in one call: labels (read, or sampled and scripted) -> train -> save


def build_reward_model(
    cfg: TrainConfig,
    model: str,
    task: str,
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
    (when it is given no reward model) both run this.

    1. labels: cfg.labels if given (ours or OpenAI's released JSON); otherwise sample
       cfg.num_comparisons comparisons from rho (`policy`, or tasks.load_base_model(model)) on the
       task's train queries (query_data: local query data, see tasks.QuerySource) and label them
       with the scripted labeler (`labeler`, empty: the task's own), keeping them in `labels_out`
       (default: next to `out`) for `reward.py eval`;
    2. train_reward_model; 3. save_reward_model.
    reuse: if `out` already exists, return it untouched (ppo.py's resumed runs)."""
    out = Path(out)
    if reuse and out.exists():
        print(f"reward model: reusing {out}")
        return out
    if cfg.labels:
        # ours or OpenAI's released JSON; prints what it did not use
        rows = read_label_rows(cfg.labels)
    else:
        labeler = labeler or (tasks.TASKS[task].labeler if task in tasks.TASKS else "")
        if not labeler:
            raise ValueError(
                f"task {task or '(none given)'} has no scripted labeler to make labels with; give "
                "a "
                f"labels file (`reward.py train --labels`, `ppo.py --rm.labels`; OpenAI's released "
                f"labels: see `python reward.py --help`) or a trained reward model"
            )
        labeler = tasks.get_labeler(labeler)
        if policy is None:
            policy = tasks.load_base_model(model, device)
        print(
            f"reward model: sampling {cfg.num_comparisons} comparisons from ρ, labeling them with "
            f"the scripted '{labeler.name}' labeler, then training"
        )
        with autocast(device, precision):
            comparisons = sample_comparisons(
                policy,
                task,
                cfg.num_comparisons,
                seed=seed,
                device=device,
                query_data=query_data,
                require_stop=cfg.require_stop,
            )
        rows = label_comparisons(comparisons, labeler)
        labels_out = Path(labels_out or out.with_suffix(".labels.jsonl"))
        if dist.is_main():  # [dist] rank 0 alone writes (every rank sampled the same rows)
            labels.write_comparisons(labels_out, rows)  # kept for `python reward.py eval`
        cfg = dataclasses.replace(cfg, labels=str(labels_out))
    rm, metrics = train_reward_model(
        rows,
        cfg,
        model,
        task,
        seed,
        policy=policy,
        device=device,
        query_data=query_data,
        precision=precision,
        grad_checkpoint=grad_checkpoint,
    )
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
    """A reward model from save_reward_model's file, with clear errors: a missing file, a file
    that is not a reward model checkpoint, or (with expect_config, e.g. the policy's config) a
    model of another size or vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such reward model checkpoint (train one with `python reward.py train`)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file at all, or an unpicklable one
        raise ValueError(
            f"{path}: not a reward model checkpoint ({type(e).__name__}: {str(e)[:200]}); "
            f"train one with `python reward.py train`"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path}: not a reward model checkpoint written by reward.py (found {keys}); a policy "
            "or "
            f"GPT-2 checkpoint cannot be used as a reward model"
        )
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: reward model checkpoint version {ckpt.get('version')}, this code reads "
            f"{CHECKPOINT_VERSION}; retrain it"
        )
    config = GPT2Config(**ckpt["gpt2_config"])
    if expect_config is not None:
        keys = ("vocab_size", "n_layer", "n_head", "n_embd")
        got, want = (
            {k: getattr(config, k) for k in keys},
            {k: getattr(expect_config, k) for k in keys},
        )
        if got != want:
            raise ValueError(
                f"{path}: reward model was trained from base model {ckpt.get('base_model')!r} with "
                f"{got}, but the policy has {want}; train a reward model from the policy's base "
                "model "
                f"(`python reward.py train --model ...`)"
            )
    if expect_config is not None:
        config.use_kernels = expect_config.use_kernels
    rm = RewardModel(GPT2(config))
    try:
        rm.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(
            f"{path}: weights do not match the stored config: {str(e)[:300]}"
        ) from None
    rm.meta = {
        k: v for k, v in ckpt.items() if k not in ("format", "version", "gpt2_config", "state_dict")
    }
    return rm.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Command line: sample / label / train / eval


@dataclass
class SampleArgs:
    task: str = "sentiment"
    """task whose queries to use: sentiment, descriptiveness, tldr, cnndm"""
    model: str = "gpt2"
    """rho, the policy that writes the candidates: tiny, gpt2, ... or a Hugging Face directory"""
    num_comparisons: int = 1000
    """number of comparisons"""
    n_samples: int = 4
    """candidates per comparison (the paper: 4)"""
    out: str = "comparisons.jsonl"
    """output file (comparisons.jsonl format, see labels.py)"""
    split: str = "train"
    """query split: train or test (use test for held-out comparisons)"""
    batch_size: int = 64
    """responses sampled per batch"""
    max_rounds: int = 10
    """rejection-sampling rounds before a query without enough valid responses is dropped"""
    require_stop: bool = True
    """keep only responses with the task's stop token (off: keep responses without it whole, for
    a model that never writes it)"""
    query_data: str = ""
    """local query data in the upstream format instead of the default (tldr: a JSON file or a
    folder of {train,valid}-subset.json; cnndm: a folder with url_lists/ and the stories; books:
    a .jsonl of passages); empty: the shipped passages, or a download"""
    seed: int = 0
    """seed of the query order and the sampling"""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda"""


@dataclass
class LabelArgs:
    labeler: str = ""
    """scripted labeler: sentiment (VADER), descriptiveness (a sensory-word lexicon) or rouge
    (ROUGE against each row's `reference`); empty: the labeler of the comparisons' task"""
    comparisons: str = "comparisons.jsonl"
    """comparisons file to label (from `reward.py sample`)"""
    out: str = "labels.jsonl"
    """labels file to write"""


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


@dataclass
class EvalArgs:
    reward_model: str = "rm.pt"
    """reward model checkpoint"""
    labels: str = "test.jsonl"
    """labels to evaluate on (our JSONL or OpenAI's JSON)"""
    batch_size: int = 64
    """comparisons per batch"""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda"""


def read_label_rows(path: str) -> list[dict]:
    """labels.read_labels with the count of anything not used printed (nothing is dropped
    silently)."""
    counts: dict = {}
    rows = labels.read_labels(path, counts=counts)
    print(
        f"labels: {path}: {counts.get('labels')} labels from {counts.get('lines')} lines; "
        f"{counts.get('undone', 0)} undone and {counts.get('skipped', 0)} skipped ids not used"
    )
    return rows


def cmd_sample(argv):
    a = cli.parse(
        SampleArgs, argv, description="Sample comparisons (a query and N responses) from rho."
    )
    device = cli.pick_device(a.device)
    policy = tasks.load_base_model(a.model, device)
    rows = sample_comparisons(
        policy,
        a.task,
        a.num_comparisons,
        a.n_samples,
        a.batch_size,
        a.seed,
        a.split,
        a.max_rounds,
        device,
        a.query_data,
        a.require_stop,
    )
    labels.write_comparisons(a.out, rows)
    print(f"sample: wrote {len(rows)} comparisons to {a.out}")


def cmd_label(argv):
    a = cli.parse(LabelArgs, argv, description="Label comparisons with a scripted labeler.")
    rows = labels.read_comparisons(a.comparisons)
    if not a.labeler:
        task = rows[0]["task"]
        if task not in tasks.TASKS:
            raise ValueError(
                f"{a.comparisons}: task {task!r} has no scripted labeler; pass --labeler"
            )
        a.labeler = tasks.TASKS[task].labeler
    out = label_comparisons(rows, a.labeler)
    Path(a.out).unlink(missing_ok=True)  # a fresh file: scripted labels are not a log to append to
    for r in out:
        labels.append_jsonl(a.out, r)
    picks = np.bincount([r["best"] for r in out], minlength=len(out[0]["samples"]))
    print(
        f"label: wrote {len(out)} labels to {a.out} (labeler {a.labeler}; picks per position "
        f"{picks.tolist()})"
    )


def cmd_train(argv):
    a = cli.parse(
        TrainArgs,
        argv,
        description="Train a reward model on best-of-N labels (or, without --labels, on "
        "comparisons sampled from rho and labeled by the task's scripted labeler).",
        flat=("train",),
    )
    device = cli.pick_device(a.device)
    dist.init(device)  # [dist] under torchrun: joins the process group; nothing otherwise
    try:
        precision = resolve_precision(a.precision, device)
    except ValueError as e:
        raise SystemExit(f"error: --precision: {e}")
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
    a = cli.parse(
        EvalArgs, argv, description="Accuracy and mean reward of a reward model on labels."
    )
    device = cli.pick_device(a.device)
    rm = load_reward_model(a.reward_model, device)
    rows = read_label_rows(a.labels)
    check_rows_fit(rows, rm.lm.config, a.labels)
    result = evaluate(rm, rows, a.batch_size)
    N = len(rows[0]["sample_tokens"])
    print(
        f"eval: {a.reward_model} (task {rm.meta.get('task')}, base {rm.meta.get('base_model')}) "
        f"on {result['n']} comparisons: accuracy {result['accuracy']:.3f} (chance {1 / N:.3f}) | "
        f"loss {result['loss']:.4f} | mean reward {result['mean_reward']:+.3f}"
    )


COMMANDS = {"sample": cmd_sample, "label": cmd_label, "train": cmd_train, "eval": cmd_eval}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.split("Shape letters")[0].rstrip())
        print("\nrun `python reward.py COMMAND --help` for a command's options")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except (labels.FormatError, ValueError, FileNotFoundError, tasks.DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
