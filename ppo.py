"""
PPO fine-tuning of GPT-2 against a learned reward model: stage 3 of RLHF.

The policy π starts as a copy of the initial model ρ (gpt2.py); each update samples responses to
task queries (tasks.py), scores them with the reward model (reward.py), subtracts a per-token KL
penalty against the frozen ρ and runs PPO on the result. It follows Ziegler et al. 2019,
"Fine-Tuning Language Models from Human Preferences", as released in openai/lm-human-preferences @
cbfd210 (train_policy.py) and re-implemented in PyTorch by vwxyzjn/lm-human-preference-details @
ccc1953 (train_policy_accelerate.py); where the paper and the released code differ we follow the
code and say so (docs/ has the list).

One PPO update, the numbered steps used in the comments below, and the function doing each:
    1. rollout: fixed-length responses from π to a batch of queries .......... rollout()
    2. score: truncate at the stop token, reward-model score, -1 penalty ....... rollout()
    3. KL-penalized rewards: -β·(log π - log ρ) per token, score at the end .... compute_rewards()
    4. advantages: whitened rewards, GAE, whitened advantages .... ppo_update() with compute_gae()
    5. PPO epochs: clipped policy + value loss, one Adam step per minibatch .... ppo_update() with
       ppo_policy_loss() and value_loss()
    6. KL controller and logging: β toward the target KL, metrics.jsonl ........ train() with
       AdaptiveKLController.update()
The run around them: setup() (models, optimizer, data, resume), train() (the loop, checkpoints),
summarize() (summary.json). With no reward model given, setup() first makes one with ONE call,
reward.build_reward_model (sample comparisons from ρ, label them with the task's scripted labeler or
read --rm.labels, train, save); its options are the --rm.* flags, the same as `reward.py train`'s.

Run it:
    # offline CPU demo, the whole pipeline in under 10 minutes
    python ppo.py --model tiny
    # the released setting: gpt2 (124M), sentiment, 1M episodes, 1 GPU
    python ppo.py
    # PPO against a reward model trained with `reward.py train`
    python ppo.py --reward-model rm.pt
    # train the reward model from (human) labels first, then PPO
    python ppo.py --rm.labels labels.jsonl
    python ppo.py --model gpt2-large              # the paper's model size
    python ppo.py --resume runs/sentiment-tiny-s1 # continue an interrupted run where it stopped
    # time PPO updates of the 124M sentiment setting on random weights (bench_ppo.py)
    python ppo.py --bench
    python ppo.py --help                          # every option, with its default

    # online: labels of the current policy's samples during RL, the reward model retrained on them
    python ppo.py --model tiny --online --labeler sentiment      # scripted labels, CPU demo
    python ppo.py --model tiny --online --labeler human          # people label while it trains:
    python label_tool.py --follow runs/sentiment-tiny-s1         #   in a second terminal

Several GPUs or machines: the same script under torchrun, data parallel (dist.py; every distributed
line below is marked [dist]; see README):
    torchrun --nproc_per_node 8 ppo.py
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 ppo.py

What it does not do: DeepSpeed / model sharding, LoRA.

Shape letters: B = episodes (batch), Q = query length, R = response length, T = Q + R, C = channels,
E = PPO epochs, M = minibatches per epoch, U = micro-batches per minibatch (gradient accumulation).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import gpt2
import reward
from machinery import cli, dist, online, summarization, tasks
from machinery.optim import AdamTF  # noqa: F401 (the released code's Adam, for tests)
from reward import make_adam

# --------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    # what to train
    task: str = "sentiment"
    """task (tasks.py): sentiment, descriptiveness, tldr, cnndm"""
    model: str = "gpt2"
    """initial policy ρ: gpt2 (124M, the released code), gpt2-medium, gpt2-large (774M, the
    paper), gpt2-xl, a Hugging Face checkpoint dir, or tiny (2 layers, fitted briefly on the
    shipped passages; CPU demo and tests)"""
    reward_model: str = ""
    """reward model checkpoint from `reward.py train`; empty: make one first, into the run folder
    (reward.build_reward_model with the --rm.* options)"""
    labeler: str = ""
    """scripted labeler for the reward model's labels and for the true score (empty: the task's
    own: sentiment, descriptiveness, or rouge for tldr/cnndm); with --online, who labels the
    queue: a scripted labeler's name, or 'human' (people with `label_tool.py --follow RUN_DIR`;
    the true score is then the task's own labeler's)"""
    query_data: str = ""
    """local query data in the upstream format instead of the default (tldr: a JSON file, or a
    folder of {train,valid}-subset.json; cnndm: a folder with url_lists/ and the stories; books: a
    .jsonl of passages); empty: the shipped passages, or a download"""
    value_model: str = "shared"
    """'shared': a zero-initialized scalar head on the policy's trunk (as the released code);
    'reward': a separate value network initialized from the reward model (trunk and head, as
    Stiennon et al. 2020)"""
    rm: reward.TrainConfig = field(default_factory=reward.TrainConfig)
    """how the reward model is made when --reward-model is empty: --rm.<flag> takes the same
    options as `reward.py train --<flag>`"""

    # online label collection (online.py): labels of the current policy's samples during RL
    online: bool = False
    """collect labels during RL on the current policy's samples and retrain the reward model on
    them (online.py; the paper's summarization setting); off: one reward model from ρ's samples,
    frozen (the released code)"""
    labels_total: int = 4992
    """--online: labels over the whole run, N; after n of E episodes the run has l(n) = N0 + (N -
    N0)·(1 - (1 - n/E)²)"""
    labels_initial: int = 1248
    """--online: labels of ρ's samples before RL, N0 (the first reward model's)"""
    rm_trainings: int = 20
    """--online: reward model trainings in all (the paper: 20), at evenly spaced label counts
    from N0; each from ρ with a fresh head on all labels so far, re-normalized"""
    validation_every: int = 8
    """--online: every k-th comparison during RL holds 2 samples of ρ and 2 of π (π's win rate
    over ρ; also training labels); 0: none"""
    max_label_lag: int = 0
    """--online: updates PPO may go on with the old reward model when the labels a retraining
    needs have not arrived; then it waits for them"""

    # PPO (defaults: lm-human-preferences launch.py, books tasks; per-task and tiny overrides in
    # TASK_DEFAULTS, TINY_DEFAULTS)
    total_episodes: int = 1_000_000
    """episodes (query + response) over the whole run; updates = ceil(total_episodes /
    batch_size)"""
    batch_size: int = 512
    """episodes per PPO update (rollout batch)"""
    nminibatches: int = 1
    """minibatches per epoch: one optimizer step each (the released code: 1)"""
    noptepochs: int = 4
    """PPO epochs over each rollout batch, reshuffled every epoch"""
    micro_batch_size: int | str = 64
    """episodes per forward/backward; gradients are accumulated over a minibatch (memory only,
    not the math). Halved, and kept halved, when a micro-batch runs out of device memory. 'auto':
    start from the whole minibatch on CUDA (the first out-of-memory error finds the size that
    fits), the minibatch capped at 64 on CPU"""
    lr: float = 1e-5
    """Adam learning rate, annealed linearly to 0 over the updates"""
    adam: str = "tf"
    """'tf': TF1 epsilon placement as the released code (AdamTF); 'torch': torch.optim.Adam"""
    adam_eps: float = 1e-5
    """Adam epsilon (TF1 AdamOptimizer(epsilon=1e-5) in the released code)"""
    kl_coef: float = 0.15
    """initial KL coefficient β"""
    adaptive_kl: bool = True
    """adapt β toward --kl-target (off: β stays fixed)"""
    kl_target: float = 6.0
    """target KL(π‖ρ) per episode, in nats"""
    kl_horizon: int = 10_000
    """adaptive controller horizon, in episodes"""
    gamma: float = 1.0
    """discount"""
    lam: float = 0.95
    """GAE λ"""
    cliprange: float = 0.2
    """PPO policy clip range"""
    cliprange_value: float = 0.2
    """value clip range"""
    vf_coef: float = 0.1
    """value loss coefficient (loss = policy loss + vf_coef · value loss; no entropy bonus)"""
    whiten_rewards: bool = True
    """whiten rewards per minibatch, without shifting their mean"""
    temperature: float = 0.7
    """sampling temperature; logits are divided by it wherever log-probs are computed (per task:
    tasks.py)"""

    # run
    seed: int = 1
    """random seed (the released code: 1)"""
    name: str = ""
    """run name (empty: <task>-<model>-s<seed>)"""
    run_dir: str = ""
    """run folder (empty: runs/<name>/): config, metrics.jsonl, curves.png, checkpoint.pt,
    summary.json"""
    resume: str = ""
    """continue the run in this folder from its last checkpoint (its config.json; flags given
    here override it)"""
    stop_after: int = 0
    """stop once this many updates are done (0: run to the end); a later --resume continues the
    same run"""
    save_every: int = 50
    """checkpoint every N updates (and at the end)"""
    sample_every: int = 10
    """print a table of queries, responses and scores every N updates"""
    eval_episodes: int = 256
    """episodes on held-out queries for score_before / score_after in summary.json"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""
    precision: str = "auto"
    """'bf16' (autocast: bf16 matmuls, fp32 weights, log-probs and losses) or 'fp32'; 'auto': bf16
    on CUDA, fp32 on CPU. Also used for the reward model this run trains"""
    grad_checkpoint: bool = False
    """activation checkpointing: recompute each transformer block in the backward instead of
    storing its activations (less memory, ~1/3 more compute; gpt2-large/xl on one GPU). Also used
    for the reward model this run trains"""
    bench: bool = False
    """time PPO updates on random weights at this config (default: the 124M sentiment setting;
    bench_ppo.py) and exit"""
    bench_updates: int = 3
    """with --bench: timed updates after one warm-up"""


# Per-task defaults from the released launch.py, as dotted flag names ("rm.lr" is --rm.lr)
TASK_DEFAULTS = {
    "sentiment": {},
    "descriptiveness": {},
    # launch.py binds `rewards.whiten` = False, a key that does not exist; we do what it intends.
    "cnndm": dict(
        lr=2e-6,
        batch_size=32,
        kl_coef=0.01,
        adaptive_kl=False,
        whiten_rewards=False,
        micro_batch_size=16,
    ),
    "tldr": dict(
        lr=2e-6,
        batch_size=32,
        kl_coef=0.03,
        adaptive_kl=False,
        whiten_rewards=False,
        micro_batch_size=16,
    ),
}
# `--model tiny`: CPU-sized budgets picked so that the demo learns within 10 minutes on 2 cores.
TINY_DEFAULTS = {
    # 60 updates of 32 episodes, 2 minibatches of 16 (8 Adam steps per update): about 5 minutes of
    # PPO on 2 cores. The tiny model is 2 layers fitted on 600 passages, so it takes a larger step
    # (lr) than GPT-2, and a shorter horizon lets the controller react within 60 updates (β0 = 0.15
    # and the 6-nat target stay as released).
    "total_episodes": 32 * 60,
    "batch_size": 32,
    "nminibatches": 2,
    "micro_batch_size": 16,
    "lr": 2e-4,
    "kl_horizon": 300,
    # 800 scripted comparisons (~1 minute to sample): one epoch of them leaves the tiny reward model
    # near chance, eight at a lower lr reach ~50% held-out best-of-4 accuracy (chance 25%), enough
    # for PPO to raise the true score.
    "rm.num_comparisons": 800,
    "rm.lr": 3e-4,
    "rm.batch_size": 8,
    "rm.epochs": 8,
    "rm.normalize_samples": 128,
    "eval_episodes": 128,
    "sample_every": 10,
    "save_every": 10,
    # --online: the same 800-label budget as the offline demo, 320 of them before RL, and 5
    # trainings (20 trainings of 8 epochs would take longer than the whole offline demo)
    "labels_total": 800,
    "labels_initial": 320,
    "rm_trainings": 5,
}

PRECEDENCE = """\
where each option's value comes from (later wins), decided in resolve_config():
  1. the defaults listed above
  2. the task's defaults (and its sampling temperature, tasks.py)
  3. the tiny preset, with --model tiny
  4. with --resume DIR: that run's config.json (without its --stop-after)
  5. the flags given on this command line"""


def resolve_config(given: dict, saved: dict | None = None) -> Config:
    """The one place the configuration is decided (the layers are PRECEDENCE, shown in --help).
    given: the flags on the command line; saved: a resumed run's config.json; both keyed like the
    parser ("rm.lr"), saved may be nested. Derived fields (name, run_dir) are filled in here."""
    saved = cli.flatten(saved or {})
    if saved:
        saved["stop_after"] = 0  # a resumed run goes to the end unless told otherwise now
    chosen = {**saved, **given}  # the task and model the layers below depend on
    task_name = chosen.get("task", Config.task)
    if task_name not in TASK_DEFAULTS:
        raise SystemExit(f"error: unknown --task {task_name!r}; tasks: {', '.join(TASK_DEFAULTS)}")
    values = cli.flatten(asdict(Config()))  # 1
    values["temperature"] = tasks.get_task(task_name).temperature  # 2
    values.update(TASK_DEFAULTS[task_name])
    if chosen.get("model", Config.model) == "tiny":  # 3
        values.update(TINY_DEFAULTS)
    values.update(saved)  # 4
    values.update(given)  # 5
    try:
        cfg = cli.from_flat(Config, values, "config.json" if saved else "flags")
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if cfg.resume:  # a resumed run stays in its folder
        cfg.run_dir = cfg.resume
    cfg.name = cfg.name or f"{cfg.task}-{Path(cfg.model).name}-s{cfg.seed}"
    cfg.run_dir = cfg.run_dir or str(Path("runs") / cfg.name)
    return cfg


def parse_args(argv=None) -> Config:
    """--help from the dataclass; only the flags actually given reach resolve_config."""
    parser = cli.make_parser(
        Config,
        description=__doc__.split("\n\n")[1],
        epilog=PRECEDENCE
        + "\n\nper-task defaults: "
        + "; ".join(f"{k}: {v}" for k, v in TASK_DEFAULTS.items() if v)
        + f"\n--model tiny: {TINY_DEFAULTS}",
        only_given=True,
    )
    given = vars(parser.parse_args(argv))
    saved = None
    if given.get("resume"):
        saved_path = Path(given["resume"]) / "config.json"
        if not saved_path.exists():
            raise SystemExit(
                f"error: --resume {given['resume']}: no config.json there (is it a ppo.py run "
                f"folder?)"
            )
        saved = json.loads(saved_path.read_text())
    return resolve_config(given, saved)


# --------------------------------------------------------------------------------------------------
# The math: small pure functions, imported by tests/test_ppo.py


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(v - mean) / sqrt(var + 1e-8) over all elements, with the POPULATION variance, as TF's
    tf.nn.moments (lm-human-preferences utils/core.py::whiten; torch.var's default would be the
    unbiased one). shift_mean=False adds the mean back: the scale is normalized but the sign of
    the rewards is kept.

    Under torchrun the mean and variance are over every rank's rows (the whole minibatch), so N
    ranks whiten as one process would; the released code whitened each rank's share on its own."""
    mean, var = dist.mean_var(values)  # [dist] over all ranks; one process: values.mean(), .var()
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def compute_rewards(scores, logprobs, ref_logprobs, kl_coef: float):
    """Per-token rewards: -β·(log π - log ρ) at every response token, plus the score at the LAST
    token.

    scores (B,), logprobs/ref_logprobs (B, R) of the sampled tokens (tempered) -> rewards,
    non_score_reward, kl (B, R). The score is added at the last position of the fixed-length
    response even when the text was truncated earlier (lm-human-preferences compute_rewards:
    rewards[:, -1] += scores)."""
    kl = logprobs - ref_logprobs  # (B, R) sampled estimate of the per-token KL
    non_score_reward = -kl_coef * kl  # (B, R)
    rewards = non_score_reward.clone()
    rewards[:, -1] += scores  # score lands on the last response token
    return rewards, non_score_reward, kl


def compute_gae(rewards, values, gamma: float, lam: float):
    """Generalized advantage estimation over the response tokens; the value after the last token is
    0.

    δ_t = r_t + γ·V_{t+1} - V_t,  A_t = δ_t + γ·λ·A_{t+1},  returns = A + V.   rewards, values (B,
    R) -> (B, R), (B, R)

    Worked example (1 episode, 3 tokens, γ = 1, λ = 0.5): r = [0, 0, 1], V = [0.5, 0.25, 0.5]
      δ   = [0 + 0.25 - 0.5, 0 + 0.5 - 0.25, 1 + 0 - 0.5] = [-0.25, 0.25, 0.5]
      A_2 = 0.5;  A_1 = 0.25 + 0.5·0.5 = 0.5;  A_0 = -0.25 + 0.5·0.5 = 0.0
      returns = A + V = [0.5, 0.75, 1.0]
    """
    R = rewards.size(1)
    lastgaelam = torch.zeros_like(rewards[:, 0])  # (B,)
    advantages_reversed = []
    for t in reversed(range(R)):
        nextvalues = values[:, t + 1] if t + 1 < R else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, R)
    return advantages, advantages + values


def ppo_policy_loss(logprobs, old_logprobs, advantages, cliprange: float):
    """Clipped surrogate: mean over tokens of max(-A·ratio, -A·clip(ratio, 1-c, 1+c)), ratio =
    π_new/π_old per token. Returns (loss, stats). approxkl = 0.5·mean((log π_new - log π_old)^2),
    as lm-human-preferences logs it."""
    logratio = logprobs - old_logprobs  # (B, R)
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = torch.max(pg_losses, pg_losses2).mean()
    with torch.no_grad():
        stats = dict(
            clipfrac=(pg_losses2 > pg_losses).float().mean(),
            approxkl=0.5 * (logratio**2).mean(),
            ratio_mean=ratio.mean(),
            ratio_max=ratio.max(),
            ratio_min=ratio.min(),
        )
    return loss, stats


def value_loss(vpred, old_values, returns, cliprange_value: float):
    """Clipped value loss of Baselines PPO2: 0.5·mean(max((V - R)^2, (clip(V, V_old ± c) -
    R)^2)). Returns (loss, stats)."""
    vpredclipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    vf_losses1 = (vpred - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    loss = 0.5 * torch.max(vf_losses1, vf_losses2).mean()
    with torch.no_grad():
        stats = dict(
            clipfrac=(vf_losses2 > vf_losses1).float().mean(), error=((vpred - returns) ** 2).mean()
        )
    return loss, stats


class FixedKLController:
    """β stays where it starts (the released summarization runs: cnndm 0.01, tldr 0.03)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current: float, n_steps: int):
        pass

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Proportional controller in log space (lm-human-preferences train_policy.py
    AdaptiveKLController): e = clip(KL / target - 1, -0.2, 0.2);  β <- β·(1 + e·n_steps /
    horizon), n_steps = episodes in the update. (The paper writes K_β = 0.1; the code's
    equivalent is batch/horizon = 512/10,000 = 0.0512.)"""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current: float, n_steps: int):
        proportional_error = float(np.clip(current / self.target - 1, -0.2, 0.2))
        self.value *= 1 + proportional_error * n_steps / self.horizon


def exact_div(a: int, b: int, what: str) -> int:
    if b <= 0 or a % b:
        raise SystemExit(f"error: {what}: {a} is not a multiple of {b}")
    return a // b


# --------------------------------------------------------------------------------------------------
# Networks


class PolicyAndValue(nn.Module):
    """π and V. By default V is a scalar head on π's own trunk, zero-initialized so V starts at 0
    (lm-human-preferences policy.py: scalar_heads=['value'], fc_layer(scale=0)); value gradients
    flow into the shared trunk. With a separate value_trunk, V reads that network's hidden states
    instead."""

    def __init__(self, lm: gpt2.GPT2, value_trunk: gpt2.GPT2 | None = None):
        super().__init__()
        self.lm = lm
        self.value_trunk = value_trunk
        n_embd = (value_trunk or lm).config.n_embd
        self.value_head = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, tokens, mask, n_response: int, temperature: float):
        """tokens, mask (B, T) = left-padded query + response -> logprobs, entropy, values (B,
        R)."""
        # hidden (B, R, C): the state before each response token
        logprobs, entropy, hidden = gpt2.response_logprobs(
            self.lm, tokens, mask, n_response, temperature
        )
        if self.value_trunk is not None:
            hidden = self.value_trunk.response_states(tokens, mask, n_response)  # the same R states
        # V at the state before each response token: values[:, context_length - 1 : -1] in the
        # released code
        values = self.value_head(hidden).squeeze(-1).float()  # (B, R)
        return logprobs, entropy, values


def policy_with_reward_value(ref, reward_model) -> PolicyAndValue:
    """--value-model reward: π from ρ; V a separate network initialized from the reward model,
    trunk and head, with the reward normalization folded into the head so V starts equal to the
    normalized score (Stiennon et al. 2020)."""
    policy = PolicyAndValue(
        copy.deepcopy(ref).requires_grad_(True), copy.deepcopy(reward_model.lm).requires_grad_(True)
    )
    with torch.no_grad():
        gain, bias = reward_model.reward_gain.float(), reward_model.reward_bias.float()
        policy.value_head.weight.copy_(reward_model.head.weight * gain)
        policy.value_head.bias.copy_(reward_model.head.bias * gain + bias)
    return policy


def make_policy(cfg: Config, ref, reward_model) -> PolicyAndValue:
    """π starts as ρ; V per --value-model. Dropout off (eval mode), which does not stop
    gradients: GPT-2 is trained with dropout, the released code fine-tunes without."""
    policy = PolicyAndValue(copy.deepcopy(ref).requires_grad_(True))
    if cfg.value_model == "reward":
        policy = policy_with_reward_value(ref, reward_model)
    elif cfg.value_model != "shared":
        raise SystemExit(f"error: --value-model {cfg.value_model!r}: use 'shared' or 'reward'")
    for trunk in (policy.lm, policy.value_trunk):
        if trunk is not None:
            trunk.set_grad_checkpoint(cfg.grad_checkpoint)
    return policy.eval()


# --------------------------------------------------------------------------------------------------
# Rollout (steps 1-3) and the PPO update (steps 4-5)


def resolve_micro_batch_size(cfg: Config, device: str) -> int:
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


def shrink_micro_batch(cfg: Config, where: str) -> int:
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
def forward_in_chunks(fn, cfg: Config, *tensors):
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


@torch.no_grad()
def rollout(
    policy, ref, reward_model, task, raw_queries, cfg: Config, kl_coef: float, generator, device
):
    """Steps 1-3 for one batch of raw queries (token lists, without the task's prefix/suffix).
    Returns a dict of (B, ...) tensors plus timings."""
    t0 = time.perf_counter()
    R = task.response_length
    cfg.micro_batch_size = resolve_micro_batch_size(cfg, device)  # the chunk of the forwards
    # what the policy reads: prefix + query + suffix; the released code's pads between query and
    # suffix (summaries) are dropped, which computes the same (tasks.policy_context)
    queries = [tasks.policy_context(task, q) for q in raw_queries]
    q_tokens, q_mask = gpt2.left_pad(queries, device=device)  # (B, Q)
    # 1. rollout: fixed-length responses from π at the task's temperature (EOS does not stop
    #    sampling)
    with gpt2.autocast(device, cfg.precision):
        # (B, R)
        responses, _ = gpt2.generate(
            policy.lm, q_tokens, q_mask, R, cfg.temperature, generator=generator
        )
    if device == "cuda":
        torch.cuda.synchronize()
    t_generate = time.perf_counter() - t0
    tokens = torch.cat([q_tokens, responses], 1)  # (B, T)
    mask = torch.cat([q_mask, torch.ones_like(responses, dtype=torch.bool)], 1)  # (B, T)
    # old log-probs and values come from the SAME forward function as training (as
    # lm-human-preference-details), not from the sampling loop, so on the first minibatch of the
    # first epoch the ratio is exactly 1
    with gpt2.autocast(device, cfg.precision):
        logprobs, _, values = forward_in_chunks(
            lambda tok, msk: policy(tok, msk, R, cfg.temperature), cfg, tokens, mask
        )
        ref_logprobs, _ = forward_in_chunks(
            # (B, R)
            lambda tok, msk: gpt2.response_logprobs(ref, tok, msk, R, cfg.temperature)[:2],
            cfg,
            tokens,
            mask,
        )
        # 2. score: truncate at the stop token, score with the reward model, -1 where the stop token
        #    is missing
        # (B, R) PAD_ID after the stop token, (B,)
        truncated, valid = tasks.truncate_responses(responses, task)
        # the reward model reads the RAW query + response, as the released code does
        raw_tokens, raw_mask = gpt2.left_pad(raw_queries, device=device)  # (B, Q')
        (scores,) = forward_in_chunks(
            lambda q, msk, r: (reward_model.score(q, msk, r),),
            cfg,
            raw_tokens,
            raw_mask,
            truncated,
        )
    scores = tasks.penalize(scores.float(), valid, task)  # (B,) replacement, not addition
    # 3. rewards: per-token KL penalty against ρ, the score at the last token
    rewards, non_score_reward, kl = compute_rewards(scores, logprobs, ref_logprobs, kl_coef)
    return dict(
        tokens=tokens,
        mask=mask,
        responses=responses,
        truncated=truncated,
        valid=valid,
        scores=scores,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        rewards=rewards,
        non_score_reward=non_score_reward,
        kl=kl,
        t_generate=t_generate,
        t_rollout=time.perf_counter() - t0,
    )


def ppo_update(
    policy, optimizer, batch: dict, cfg: Config, n_response: int, shuffle_gen, device
) -> dict:
    """Steps 4-5: noptepochs passes over shuffled minibatches, one optimizer step per minibatch,
    gradients accumulated over micro-batches. Returns stats as (E, M, U) tensors (averaged for
    logging, so no minibatch is left out).

    A micro-batch that runs out of device memory halves cfg.micro_batch_size (kept for the rest of
    the run) and its minibatch's accumulation is redone from zero_grad: nothing was stepped, and
    each micro-batch's loss is weighted by its share of the minibatch, so the gradient is the same
    minibatch mean at any micro-batch size (up to float summation order)."""
    # [dist] B is this rank's share of --batch-size; a minibatch is every rank's mb_size rows
    B, E, M = dist.share(cfg.batch_size, "--batch-size"), cfg.noptepochs, cfg.nminibatches
    mb_size = exact_div(B, M, "--batch-size / --nminibatches (per process)")
    cfg.micro_batch_size = resolve_micro_batch_size(cfg, device)  # a number from here on
    exact_div(mb_size, cfg.micro_batch_size, "minibatch size / --micro-batch-size")
    stats = {}

    def record(epoch, minibatch, micro, name, value):
        stats.setdefault(name, torch.zeros(E, M, mb_size // cfg.micro_batch_size))[
            epoch, minibatch, micro
        ] = value.item() if torch.is_tensor(value) else value

    def accumulate(epoch, minibatch, idx, advantages, returns, old_values, old_logprobs):
        """5. PPO: clipped policy loss + vf_coef · clipped value loss, summed over micro-batches
        into the gradients; returns the minibatch's loss."""
        micro_size = cfg.micro_batch_size
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for micro in range(mb_size // micro_size):
            j = slice(micro * micro_size, (micro + 1) * micro_size)
            with gpt2.autocast(device, cfg.precision):
                new_logprobs, entropy, vpred = policy(
                    # (micro_size, R)
                    batch["tokens"][idx][j],
                    batch["mask"][idx][j],
                    n_response,
                    cfg.temperature,
                )
            # the losses and their statistics in fp32, outside autocast
            pg_loss, pg_stats = ppo_policy_loss(
                new_logprobs.float(), old_logprobs[j], advantages[j], cfg.cliprange
            )
            vf_loss, vf_stats = value_loss(
                vpred.float(), old_values[j], returns[j], cfg.cliprange_value
            )
            loss = pg_loss + cfg.vf_coef * vf_loss
            # each micro-batch is a mean over micro_size·R tokens: rescale to the minibatch mean
            (loss * (micro_size / mb_size)).backward()
            total += loss.detach() * (micro_size / mb_size)
            at = (epoch, minibatch, micro)
            for k, v in pg_stats.items():
                record(*at, f"ppo/policy/{k}", v)
            record(*at, "ppo/policy/entropy", entropy.float().mean())
            record(*at, "ppo/loss/policy", pg_loss)
            record(*at, "ppo/loss/value", vf_loss)
            record(*at, "ppo/val/clipfrac", vf_stats["clipfrac"])
            record(*at, "ppo/val/error", vf_stats["error"])
            record(*at, "ppo/val/vpred", vpred.mean())
            record(*at, "ppo/returns/mean", returns_mean)
            record(*at, "ppo/returns/var", returns_var)
        return total

    for epoch in range(E):
        perm = torch.randperm(B, generator=shuffle_gen).to(device)  # a fresh shuffle every epoch
        for minibatch in range(M):
            idx = perm[minibatch * mb_size : (minibatch + 1) * mb_size]
            # 4. advantages, per minibatch as the released code does (with nminibatches = 1: the
            #    whole batch): whiten rewards (scale only), GAE, whiten advantages (zero mean, unit
            #    variance)
            rewards = batch["rewards"][idx]  # (mb_size, R)
            if cfg.whiten_rewards:
                rewards = whiten(rewards, shift_mean=False)
            old_values, old_logprobs = batch["values"][idx], batch["logprobs"][idx]  # (mb_size, R)
            advantages, returns = compute_gae(rewards, old_values, cfg.gamma, cfg.lam)
            advantages = whiten(advantages)
            returns_mean, returns_var = dist.mean_var(returns)  # [dist] the whole minibatch's
            args = (epoch, minibatch, idx, advantages, returns, old_values, old_logprobs)
            while True:
                oom = False
                try:
                    total = accumulate(*args)
                except torch.OutOfMemoryError:
                    if cfg.micro_batch_size == 1:
                        raise
                    oom = True  # handled outside the except block, which holds the failed frames
                if not oom:
                    break
                optimizer.zero_grad(set_to_none=True)
                old = cfg.micro_batch_size
                shrink_micro_batch(cfg, f"the PPO update (epoch {epoch}, minibatch {minibatch})")
                # the stats recorded so far: each old micro-batch becomes old/new equal entries
                for k, v in stats.items():
                    stats[k] = v.repeat_interleave(old // cfg.micro_batch_size, dim=2)
            # [dist] average the minibatch's gradients over ranks: once per optimizer step, after
            # the last micro-batch; the mean loss too, so every rank sees a NaN and stops together
            dist.average_gradients(policy)
            total = dist.reduce(total)
            if not torch.isfinite(total):  # before the step, so no NaN ever reaches the weights
                raise FloatingPointError(
                    f"the PPO loss is {total.item()} (epoch {epoch}, minibatch {minibatch})"
                )
            optimizer.step()
    # [dist] every rank's stats -> the whole batch's: means of equal-sized micro-batches, and the
    # extremes of the ratio
    ops = {"ppo/policy/ratio_max": "max", "ppo/policy/ratio_min": "min"}
    if dist.world_size > 1:
        # a rank that ran out of memory halved its own micro-batches, so ranks may hold different
        # U: one entry per minibatch first (micro-batches within a rank are equal-sized)
        within = dict(max=torch.amax, min=torch.amin, mean=torch.mean)
        stats = {k: within[ops.get(k, "mean")](v, 2, keepdim=True) for k, v in stats.items()}
    return {k: dist.reduce(v, ops.get(k, "mean")) for k, v in stats.items()}


# --------------------------------------------------------------------------------------------------
# Evaluation and logging


@torch.no_grad()
def evaluate(policy, ref, reward_model, task, labeler, queries, cfg: Config, device) -> dict:
    """Reward-model score, scripted true score and KL of the current policy on fixed held-out
    queries (tasks.Query, with their references); its own generator (seed fixed) so evaluating
    never moves the training RNG. Summarization tasks add the paper's measures of the summaries
    (summarization.py): novelty, lead_copy and, with references, rouge1/rouge2/rougeL."""
    gen = torch.Generator(device=device).manual_seed(12345)
    enc = gpt2.get_tokenizer()
    stats, summaries = {}, []
    for i in range(0, len(queries), cfg.batch_size):
        chunk = queries[i : i + cfg.batch_size]
        raw, refs = [q.tokens for q in chunk], [q.reference for q in chunk]
        b = rollout(policy, ref, reward_model, task, raw, cfg, 0.0, gen, device)
        for k, v in [
            ("score", b["scores"]),
            ("kl", b["kl"].sum(1)),
            ("true_score", scripted_scores(labeler, b["truncated"], refs)),
        ]:
            if v is not None:
                stats.setdefault(k, []).append(v.float().cpu())
        summaries += [decode(enc, r) for r in b["truncated"].tolist()]
    out = {k: torch.cat(v).mean().item() for k, v in stats.items()}
    if "true_score" in stats:
        out["true_score_std"] = torch.cat(stats["true_score"]).std(unbiased=False).item()
    if task.query_dataset in ("tldr", "cnndm"):
        sources = [enc.decode(q.tokens) for q in queries]
        out.update(
            summarization.summary_measures(summaries, sources, [q.reference for q in queries])
        )
    return out


def decode(enc, row) -> str:
    return enc.decode([t for t in row if t < gpt2.EOT_ID])


def scripted_scores(labeler, truncated, references=None):
    """The scripted labeler's score of each truncated response (against its query's reference
    summary, for rouge): the true reward when measuring PPO offline (None without a labeler)."""
    if labeler is None:
        return None
    enc = gpt2.get_tokenizer()
    texts = [decode(enc, r) for r in truncated.tolist()]
    return torch.as_tensor(np.asarray(labeler.score(texts, references), dtype=np.float32))


def rollout_stats(batch: dict, true_scores: torch.Tensor | None, kl_coef: float) -> dict:
    """Per-update 'objective/...' metrics from a rollout batch (sums over tokens are per episode,
    then averaged). Under torchrun, over the whole batch: each rank's mean of its equal share,
    averaged over ranks (so the controller sees the whole batch's KL)."""
    means = {
        "objective/score": batch["scores"].mean(),
        "objective/kl": batch["kl"].sum(1).mean(),
        "objective/entropy": (-batch["logprobs"]).sum(1).mean(),
        "objective/score_total": (batch["scores"] + batch["non_score_reward"].sum(1)).mean(),
        "objective/valid_fraction": batch["valid"].float().mean(),
    }
    if true_scores is not None:
        means["objective/true_score"] = true_scores.mean()
    out = dist.mean_of(means)  # [dist] one all-reduce for all of them
    out["objective/kl_coef"] = kl_coef
    return out


def metric_line(update: int, n_updates: int, metrics: dict) -> str:
    """The fixed-format console line of one update."""
    true_part = (
        f"true {metrics['objective/true_score']:6.3f} | "
        if "objective/true_score" in metrics
        else ""
    )
    return (
        f"update {update:>5}/{n_updates} | score {metrics['objective/score']:6.3f} | {true_part}"
        f"kl {metrics['objective/kl']:6.3f} | beta {metrics['objective/kl_coef']:.4f} | "
        f"entropy {metrics['objective/entropy']:6.2f} | "
        f"clipfrac {metrics['ppo/policy/clipfrac']:.3f} | "
        f"approxkl {metrics['ppo/policy/approxkl']:.5f} | "
        f"vf_err {metrics['ppo/val/error']:.4f} | "
        f"{metrics['time/rollout_tokens_per_s']:7.0f} tok/s | "
        f"rollout {metrics['time/rollout']:5.1f}s train {metrics['time/train']:5.1f}s"
        + online.metric_part(metrics)  # --online: labels, trainings, win rate
    )


def print_samples(enc, queries, batch, true_scores, n: int = 4):
    """A plain-text table of a few queries, responses and scores (the lm-human-preference-details
    rich table)."""
    print(f"{'query (end)':<42} | {'response (truncated)':<60} | score  | true   | kl")
    for i in range(min(n, len(queries))):
        q = decode(enc, queries[i]).replace("\n", " ")[-40:]
        r = decode(enc, batch["truncated"][i].tolist()).replace("\n", " ")[:60]
        t = f"{true_scores[i].item():6.2f}" if true_scores is not None else "   -  "
        score, kl = batch["scores"][i].item(), batch["kl"][i].sum().item()
        print(f"{q:<42} | {r:<60} | {score:6.2f} | {t} | {kl:5.2f}")


def plot_curves(metrics: list[dict], path: Path, kl_target: float | None):
    """curves.png: score, true score, KL and β against episodes (--online: and π's win rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [row["episodes"] for row in metrics]
    keys = [
        ("objective/score", "reward-model score"),
        ("objective/true_score", "scripted labeler's true score"),
        ("objective/kl", "KL(π‖ρ), nats"),
        ("objective/kl_coef", "β"),
    ]
    if any("online/win_rate" in row for row in metrics):  # --online: π's win rate over ρ
        keys.append(("online/win_rate", "π's win rate over ρ (validation items, 95% interval)"))
    fig, axes = plt.subplots(2, (len(keys) + 1) // 2, figsize=(5 * ((len(keys) + 1) // 2), 6.5))
    for ax, (key, title) in zip(axes.flat, keys):
        if key == "online/win_rate":
            rows = [row for row in metrics if key in row]
            xs = [row["episodes"] for row in rows]
            ax.plot(xs, [row[key] for row in rows])
            low, high = [r[key + "_low"] for r in rows], [r[key + "_high"] for r in rows]
            ax.fill_between(xs, low, high, alpha=0.2)
            ax.axhline(0.5, color="gray", ls="--", lw=1)
        elif metrics and key in metrics[0]:
            ax.plot(x, [row[key] for row in metrics])
        if key == "objective/kl" and kl_target is not None:
            ax.axhline(kl_target, color="gray", ls="--", lw=1, label="target")
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("episodes")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Checkpoints and the reward model


def rng_state(sample_gen, shuffle_gen) -> dict:
    """Every random generator's state as tensors and plain values, so checkpoint.pt loads with
    weights_only=True (numpy's and Python's own state objects would need unpickling)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = dict(
        sample=sample_gen.get_state(),
        shuffle=shuffle_gen.get_state(),
        torch=torch.get_rng_state(),
        numpy=dict(
            kind=kind,
            keys=torch.from_numpy(keys.astype(np.int64)),  # (624,) uint32 words
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached_gaussian),
        ),
        python=dict(
            version=version,
            internal=torch.tensor(internal, dtype=torch.int64),
            gauss_next=gauss_next,
        ),
    )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, sample_gen, shuffle_gen):
    sample_gen.set_state(state["sample"])
    shuffle_gen.set_state(state["shuffle"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict:
    """checkpoint.pt, loaded with weights_only=True: tensors and plain values only, so a run folder
    from someone else cannot run code. Anything else is refused with a message; nothing in the
    run folder is touched."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(
            f"error: cannot resume from {path}: it holds something other than tensors and plain "
            f"values ({first}). Checkpoints are loaded without unpickling Python objects, so a run "
            f"folder cannot run code; one written by an older ppo.py (numpy/Python RNG objects) "
            f"cannot be resumed: start a new run."
        )
    except Exception as e:
        raise SystemExit(f"error: cannot resume from {path}: {e}")


def load_reward(path: str, ref: gpt2.GPT2, device):
    """Load a reward checkpoint made from the same base model as the policy; any failure is one
    clear message."""
    try:
        rm = reward.load_reward_model(path, device=device, expect_config=ref.config)
    except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise SystemExit(
            f"error: reward model {path}: {e}\n  (a reward model must be trained from the same "
            f"base model as the policy: `python reward.py train --model <the --model given here> "
            f"...`)"
        )
    return rm.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# The run: setup, the loop, the summary


@dataclass
class Run:
    """What setup() builds and the loop uses."""

    cfg: Config
    device: str
    run_dir: Path
    task: tasks.TaskConfig
    labeler: tasks.ScriptedLabeler | None
    ref: gpt2.GPT2  # ρ, frozen
    reward_model: reward.RewardModel
    policy: PolicyAndValue
    optimizer: torch.optim.Optimizer
    kl_ctl: FixedKLController
    source: tasks.QuerySource  # training queries
    eval_queries: list
    sample_gen: torch.Generator  # sampling responses
    shuffle_gen: torch.Generator  # minibatch shuffles
    n_updates: int
    start: int = 0  # updates already done (resumed runs)
    before: dict | None = None  # the evaluation before training
    seconds_before: float = 0.0  # time spent before a resume
    online: online.Online | None = None  # --online: the queue, labels and retrainings

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"


def setup(cfg: Config) -> Run:
    """Device, seeds, run folder, models (making the reward model first if none is given),
    optimizer, KL controller, data; a resumed run's state is loaded back."""
    device = cli.pick_device(cfg.device)
    dist.init(device)  # [dist] joins torchrun's process group; nothing without torchrun
    try:
        cfg.precision = gpt2.resolve_precision(cfg.precision, device)
    except ValueError as e:
        raise SystemExit(f"error: --precision: {e}")
    cfg.micro_batch_size = resolve_micro_batch_size(cfg, device)
    run_dir = Path(cfg.run_dir)
    if dist.is_main():  # [dist] rank 0 alone writes
        run_dir.mkdir(parents=True, exist_ok=True)
    # [dist] seeds differ per rank (rank 0: the seed itself); models are copied or broadcast, so
    # they start identical anyway
    torch.manual_seed(dist.seed(cfg.seed))
    np.random.seed(dist.seed(cfg.seed))
    random.seed(dist.seed(cfg.seed))
    task = tasks.get_task(cfg.task)
    labeler_name = cfg.labeler or task.labeler
    if labeler_name == "human":  # --online --labeler human: the true score is the task's labeler's
        labeler_name = task.labeler
    try:
        labeler = tasks.get_labeler(labeler_name) if labeler_name else None
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    ckpt = None
    # --online: a run killed before its first checkpoint resumes its labels, PPO from the start
    if cfg.resume and not (cfg.online and not (run_dir / "checkpoint.pt").exists()):
        ckpt = load_checkpoint(run_dir / "checkpoint.pt")
        n = ckpt.get("world_size", 1)
        if n != dist.world_size:  # [dist] each rank's random state is in the checkpoint
            raise SystemExit(
                f"error: cannot resume {run_dir}: it was run on {n} process{'es' * (n > 1)}, "
                f"this is {dist.world_size} process{'es' * (dist.world_size > 1)}. Resume with "
                f"the same number (torchrun --nproc_per_node ... --nnodes ...)."
            )

    # ρ: frozen, never optimized
    with dist.local_main_first():  # [dist] one process per machine fills the download cache
        ref = tasks.load_base_model(cfg.model, device=device).requires_grad_(False)
    dist.broadcast_module(ref)  # [dist] every rank starts from rank 0's weights
    online_run = None
    if cfg.online:  # online.py: the queue, the labels, the first reward model (waits for labels)
        if cfg.reward_model:
            raise SystemExit("error: --online trains its own reward models; drop --reward-model")
        if dist.world_size > 1:  # [dist] the queue and its labels have one writer
            raise SystemExit("error: --online runs in one process; start it without torchrun")
        n_updates = math.ceil(cfg.total_episodes / cfg.batch_size)
        settings = online.Settings(
            **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(online.Settings)
               if f.name not in ("labeler", "n_updates")},
            labeler=cfg.labeler or labeler_name, n_updates=n_updates,
        )  # fmt: skip
        # config.json before the queue: label_tool.py --follow tells an online run by its "online":
        # true, and a run killed from here on can be resumed (a resumed run keeps its own until
        # Online has checked the flags against its state.json)
        online.check_fresh(run_dir, bool(cfg.resume))
        if not cfg.resume:
            cli.atomic_write(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
        online_run = online.Online(settings, run_dir, ref, device, resume=bool(cfg.resume))
        reward_model = online_run.start()
    elif not cfg.reward_model:
        # the whole pipeline, one call: sample, label, train, save (reused by a resumed run)
        try:
            path = reward.build_reward_model(
                cfg.rm,
                cfg.model,
                cfg.task,
                run_dir / "rm.pt",
                cfg.seed,
                labeler_name,
                policy=ref,
                device=device,
                labels_out=run_dir / "labels.jsonl",
                reuse=True,
                query_data=cfg.query_data,
                precision=cfg.precision,
                grad_checkpoint=cfg.grad_checkpoint,
            )
        except (ValueError, tasks.DownloadError) as e:
            raise SystemExit(f"error: {e}")
        cfg.reward_model = str(path)
    if not cfg.online:
        reward_model = load_reward(cfg.reward_model, ref, device)
    policy = make_policy(cfg, ref, reward_model)
    params = [p for p in policy.parameters() if p.requires_grad]
    try:
        optimizer = make_adam(params, cfg.adam, lr=cfg.lr, eps=cfg.adam_eps)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.kl_coef)
    )
    # data order: OpenAI shuffles the query set with a fixed seed 0 whatever the run's seed; so do
    # we
    try:
        source = tasks.QuerySource(task, "train", seed=0, query_data=cfg.query_data)
        eval_queries = tasks.QuerySource(
            task, "test", seed=0, query_data=cfg.query_data
        ).next_queries(cfg.eval_episodes)
    except (ValueError, tasks.DownloadError) as e:
        raise SystemExit(f"error: {e}")
    if labeler is not None and labeler.needs_reference:
        if any(q.reference is None for q in eval_queries):
            print(
                f"note: the held-out queries have no reference summaries, so there is no true "
                f"score ({labeler.name} needs them)"
            )
            labeler = None
    run = Run(
        cfg=cfg,
        device=device,
        run_dir=run_dir,
        task=task,
        labeler=labeler,
        ref=ref,
        reward_model=reward_model,
        policy=policy,
        optimizer=optimizer,
        kl_ctl=kl_ctl,
        source=source,
        eval_queries=eval_queries,
        # [dist] each rank samples and shuffles its own share with its own seed
        sample_gen=torch.Generator(device=device).manual_seed(dist.seed(cfg.seed)),
        shuffle_gen=torch.Generator().manual_seed(dist.seed(cfg.seed + 1)),
        n_updates=math.ceil(cfg.total_episodes / cfg.batch_size),
        online=online_run,
    )
    if ckpt is not None:
        policy.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        kl_ctl.load_state_dict(ckpt["kl_ctl"])
        source.load_state_dict(ckpt["data"])
        rng = ckpt["rng"]  # [dist] one state per rank (a dict in checkpoints written before)
        set_rng_state(
            rng[dist.rank] if isinstance(rng, list) else rng, run.sample_gen, run.shuffle_gen
        )
        run.start, run.before, run.seconds_before = ckpt["update"], ckpt["before"], ckpt["seconds"]
        print(f"resumed {run_dir} at update {run.start}/{run.n_updates}")
    if not dist.is_main():  # [dist] rank 0 alone writes
        return run
    if ckpt is not None:
        # metrics written after the checkpoint (the run died later) are dropped: the resumed run
        # writes them again
        path = run.metrics_path
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if json.loads(line)["update"] <= run.start]
        cli.atomic_write(path, "".join(line + "\n" for line in kept))
    else:
        run.metrics_path.write_text("")
    cli.atomic_write(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    return run


def print_budget(run: Run):
    cfg, R = run.cfg, run.task.response_length
    Q = (
        max(len(tasks.policy_context(run.task, q.tokens)) for q in run.eval_queries[:8])
        if run.eval_queries
        else run.task.query_length
    )
    M, n = cfg.nminibatches, run.n_updates
    print(
        f"compute budget: {cfg.total_episodes:,} episodes / {cfg.batch_size} per update = "
        f"{n:,} updates ({n * cfg.noptepochs * M:,} Adam steps: {cfg.noptepochs} epochs x {M} "
        f"minibatches)\n"
        f"  per update: {cfg.batch_size} queries of ~{Q} tokens, {cfg.batch_size * R:,} tokens "
        f"generated, {cfg.noptepochs} x {cfg.batch_size} x {Q + R} tokens trained; total "
        f"{n * cfg.batch_size * R:,} tokens generated | model {cfg.model} on {run.device} | "
        f"run dir {run.run_dir}"
    )
    if dist.world_size > 1:
        print(
            f"  on {dist.world_size} processes (torchrun): {cfg.batch_size // dist.world_size} "
            f"episodes each per update; gradients and batch statistics all-reduced"
        )


def export_policy(policy: PolicyAndValue, run_dir: Path):
    """The policy as a plain GPT-2 in the Hugging Face layout (run_dir/policy/, loadable by
    transformers and `python gpt2.py --model RUN_DIR`); the value head beside it, not inside, as
    it is no part of a language model (value_head.safetensors, with the value trunk when it has
    its own). Both are replaced atomically."""
    gpt2.save_pretrained(policy.lm, run_dir / "policy")
    value = {f"value_head.{k}": v for k, v in policy.value_head.state_dict().items()}
    if policy.value_trunk is not None:
        value.update({f"value_trunk.{k}": v for k, v in policy.value_trunk.state_dict().items()})
    gpt2.write_safetensors(value, run_dir / "value_head.safetensors")


def save_checkpoint(run: Run, update: int, seconds: float):
    """checkpoint.pt (everything a resume needs, written atomically), the exported policy/ and
    curves.png. Called on every rank: each one's random state goes into the checkpoint, which rank
    0 writes."""
    rng = dist.gather_objects(rng_state(run.sample_gen, run.shuffle_gen))  # [dist] by rank
    if not dist.is_main():
        return
    ckpt = dict(
        policy=run.policy.state_dict(),
        optimizer=run.optimizer.state_dict(),
        kl_ctl=run.kl_ctl.state_dict(),
        data=run.source.state_dict(),
        rng=rng,
        world_size=dist.world_size,
        update=update,
        before=run.before,
        seconds=seconds,
        config=asdict(run.cfg),
    )
    cli.atomic_write(run.checkpoint_path, lambda f: torch.save(ckpt, f))
    export_policy(run.policy, run.run_dir)
    plot_curves(
        [json.loads(line) for line in run.metrics_path.read_text().splitlines()],
        run.run_dir / "curves.png",
        run.cfg.kl_target if run.cfg.adaptive_kl else None,
    )


def train(cfg: Config) -> dict:
    """The whole run: setup(), the PPO loop (steps 1-6 per update), summarize(). Returns
    summary.json ({} when stopped early by --stop-after)."""
    run = setup(cfg)
    policy, optimizer, kl_ctl, device = run.policy, run.optimizer, run.kl_ctl, run.device
    task, R, n_updates = run.task, run.task.response_length, run.n_updates
    print_budget(run)
    if run.before is None:
        run.before = evaluate(
            policy, run.ref, run.reward_model, task, run.labeler, run.eval_queries, cfg, device
        )
        print(
            f"before training (on {len(run.eval_queries)} held-out queries): "
            f"{json.dumps(run.before)}"
        )

    enc = gpt2.get_tokenizer()
    t_start = time.time()
    last = {}
    micro_saved = json.loads((run.run_dir / "config.json").read_text())["micro_batch_size"]
    stop = n_updates if not cfg.stop_after else min(n_updates, cfg.stop_after)
    bar = tqdm(
        range(run.start, stop),
        desc="ppo",
        unit="update",
        initial=run.start,
        total=n_updates,
        file=sys.stdout,
        dynamic_ncols=True,
        disable=None,
    )
    for update in bar:
        # annealed linearly to 0 over the updates (released code: per update)
        lr = cfg.lr * (1 - update / n_updates)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # --online: queue comparisons of the current policy, take in labels, retrain when due
        online_metrics = {}
        if run.online is not None:
            run.reward_model, online_metrics = run.online.before_update(update, policy.lm)
        # 1-3. rollout, score, rewards (see rollout())
        # [dist] every rank reads the same batch of queries and keeps its own block of it
        items = dist.shard(run.source.next_queries(cfg.batch_size))
        raw_queries = [q.tokens for q in items]
        batch = rollout(
            policy, run.ref, run.reward_model, task, raw_queries, cfg, kl_ctl.value,
            run.sample_gen, device,
        )  # fmt: skip
        true_scores = scripted_scores(run.labeler, batch["truncated"], [q.reference for q in items])
        # 4-5. advantages and PPO epochs (see ppo_update())
        t0 = time.perf_counter()
        try:
            stats = ppo_update(policy, optimizer, batch, cfg, R, run.shuffle_gen, device)
        except FloatingPointError as e:
            kept = run.checkpoint_path if run.checkpoint_path.exists() else "(none yet)"
            raise SystemExit(
                f"error: update {update + 1}: {e}. Stopped; the last good checkpoint is kept at "
                f"{kept}. Try a lower --lr or check the reward model's scores "
                f"(`python reward.py eval`)."
            )
        t_train = time.perf_counter() - t0
        if cfg.micro_batch_size != micro_saved:
            # out of memory halved it: a resumed run starts from the size that fits
            cli.atomic_write(run.run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
            micro_saved = cfg.micro_batch_size
        # 6. KL controller: adapt β toward the target with this batch's mean KL (released code:
        #    after every update), then log
        metrics = rollout_stats(batch, true_scores, kl_ctl.value)
        kl_ctl.update(metrics["objective/kl"], cfg.batch_size)
        metrics.update({k: v.mean().item() for k, v in stats.items()})
        metrics["ppo/val/var_explained"] = 1 - metrics["ppo/val/error"] / max(
            metrics["ppo/returns/var"], 1e-8
        )
        metrics.update(
            {
                "update": update + 1,
                "episodes": (update + 1) * cfg.batch_size,
                "ppo/lr": lr,
                "time/rollout": batch["t_rollout"],
                "time/train": t_train,
                "time/rollout_tokens_per_s": cfg.batch_size * R / max(batch["t_generate"], 1e-9),
                **online_metrics,
            }
        )
        if dist.is_main():  # [dist] rank 0 alone writes
            with open(run.metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        tqdm.write(metric_line(update + 1, n_updates, metrics), file=sys.stdout)
        if cfg.sample_every and (update + 1) % cfg.sample_every == 0:
            formatted = [tasks.policy_context(task, q) for q in raw_queries]
            print_samples(enc, formatted, batch, true_scores)
        last = metrics
        if (update + 1) % cfg.save_every == 0 or update + 1 == stop:
            save_checkpoint(run, update + 1, run.seconds_before + time.time() - t_start)
    bar.close()
    dist.finish()  # [dist] no collectives after the loop (evaluations run whole on every rank)
    if stop < n_updates:
        print(
            f"stopped after {stop}/{n_updates} updates (--stop-after); continue with: "
            f"python ppo.py --resume {run.run_dir}"
        )
        return {}
    return summarize(run, last, run.seconds_before + time.time() - t_start)


def summarize(run: Run, last: dict, seconds: float) -> dict:
    """Evaluate the trained policy on the held-out queries; write and return summary.json."""
    cfg = run.cfg
    after = evaluate(
        run.policy, run.ref, run.reward_model, run.task, run.labeler, run.eval_queries, cfg,
        run.device,
    )  # fmt: skip
    before = run.before
    summary = dict(
        score_before=before["score"],
        score_after=after["score"],
        true_score_before=before.get("true_score"),
        true_score_after=after.get("true_score"),
        true_score_std_before=before.get("true_score_std"),
        kl=after["kl"],
        kl_train_last=last.get("objective/kl"),
        kl_coef=run.kl_ctl.value,
        updates=run.n_updates,
        episodes=run.n_updates * cfg.batch_size,
        seconds=round(seconds, 1),
        eval_episodes=len(run.eval_queries),
        device=run.device,
        model=cfg.model,
        task=cfg.task,
        reward_model=cfg.reward_model,
        world_size=dist.world_size,
    )
    for k in ("novelty", "lead_copy", *summarization.ROUGE_TYPES):  # summarization tasks
        if k in after:
            summary[f"{k}_before"], summary[f"{k}_after"] = before.get(k), after[k]
    if run.online is not None:
        summary["reward_model"] = str(run.online.rm_path)
        summary["online"] = run.online.summary()
    # the paper's headline number, judged by the scripted labeler: evaluate.py does it (imported
    # here, not at the top: evaluate.py imports this file)
    from evaluate import end_of_run

    if dist.is_main():  # [dist] rank 0 alone judges (it writes eval/) and writes
        summary.update(end_of_run(run))
        cli.atomic_write(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"after training: {json.dumps(after)}\nsummary: {run.run_dir / 'summary.json'}")
    print(json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.bench:
        from bench import bench_ppo

        return bench_ppo.bench(cfg)
    return train(cfg)


if __name__ == "__main__":
    main()
