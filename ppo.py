"""
PPO fine-tuning of GPT-2 against a learned reward model: stage 3 of RLHF, end to end from `python ppo.py`.

The policy π starts as a copy of the initial model ρ (gpt2.py); each update samples responses to task queries
(tasks.py), scores them with the reward model (reward.py), subtracts a per-token KL penalty against the frozen ρ and
runs PPO on the result. It follows Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", as
released in openai/lm-human-preferences @ cbfd210 (train_policy.py) and re-implemented in PyTorch by
vwxyzjn/lm-human-preference-details @ ccc1953 (train_policy_accelerate.py); where the paper and the released code
differ we follow the code and say so (see ../shared/docs/paper-spec.md §3).

With no reward model given, `python ppo.py` runs the whole pipeline: it samples comparisons from ρ, labels them with
the task's scripted labeler, trains the reward model with reward.py's functions, then runs PPO.

Run it:
    python ppo.py --model tiny                    # offline CPU demo, the whole pipeline in under 10 minutes
    python ppo.py                                 # the released setting: gpt2 (124M), sentiment, 1M episodes, 1 GPU
    python ppo.py --reward rm.pt                  # PPO against a reward model trained with `reward.py train`
    python ppo.py --labels labels.jsonl           # train the reward model from (human) labels first, then PPO
    python ppo.py --model gpt2-large              # the paper's model size
    python ppo.py --resume runs/sentiment-tiny-s1 # continue an interrupted run exactly where it stopped
    python ppo.py --bench                         # time one PPO update of the 124M sentiment setting
    python ppo.py --help                          # every option, with its default

What it does not do: multi-GPU / DeepSpeed, LoRA, online label collection (the style tasks are offline in the paper).

Shape letters: B = episodes (batch), Q = query length, R = response length, T = Q + R, C = channels,
M = minibatches per epoch, A = micro-batches per minibatch (gradient accumulation), E = PPO epochs.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import gpt2
import reward
import tasks

# -----------------------------------------------------------------------------
# The math: small pure functions, imported by tests/test_ppo.py


def whiten(values: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(v - mean) / sqrt(var + 1e-8) over all elements, with the POPULATION variance, as TF's tf.nn.moments
    (lm-human-preferences utils/core.py::whiten; torch.var's default would be the unbiased one).
    shift_mean=False adds the mean back: the scale is normalized but the sign of the rewards is kept."""
    mean, var = values.mean(), values.var(unbiased=False)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def compute_rewards(scores, logprobs, ref_logprobs, kl_coef: float):
    """Per-token rewards: -β·(log π - log ρ) at every response token, plus the score at the LAST token.

    scores (B,), logprobs/ref_logprobs (B, R) of the sampled tokens (tempered) -> rewards, non_score_reward, kl (B, R).
    The score is added at the last position of the fixed-length response even when the text was truncated earlier
    (lm-human-preferences compute_rewards: rewards[:, -1] += scores)."""
    kl = logprobs - ref_logprobs  # (B, R) sampled estimate of the per-token KL
    non_score_reward = -kl_coef * kl  # (B, R)
    rewards = non_score_reward.clone()
    rewards[:, -1] += scores  # score lands on the last response token
    return rewards, non_score_reward, kl


def penalize_scores(scores, valid, penalty: float):
    """A response without its stop token (tasks.truncate_responses -> valid=False) gets `penalty` (-1) INSTEAD of the
    reward model's score: replacement, not addition (lm-human-preferences make_score_fn, paper-spec §1.6)."""
    return torch.where(valid, scores, torch.full_like(scores, penalty))


def compute_gae(rewards, values, gamma: float, lam: float):
    """Generalized advantage estimation over the response tokens; the value after the last token is 0.

    δ_t = r_t + γ·V_{t+1} - V_t,  A_t = δ_t + γ·λ·A_{t+1},  returns = A + V.   rewards, values (B, R) -> (B, R), (B, R)

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
    """Clipped surrogate: mean over tokens of max(-A·ratio, -A·clip(ratio, 1-c, 1+c)), ratio = π_new/π_old per token.
    Returns (loss, stats). approxkl = 0.5·mean((log π_new - log π_old)^2), as lm-human-preferences logs it."""
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
    """Clipped value loss of Baselines PPO2: 0.5·mean(max((V - R)^2, (clip(V, V_old ± c) - R)^2)). Returns (loss, stats)."""
    vpredclipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    vf_losses1 = (vpred - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    loss = 0.5 * torch.max(vf_losses1, vf_losses2).mean()
    with torch.no_grad():
        stats = dict(clipfrac=(vf_losses2 > vf_losses1).float().mean(), error=((vpred - returns) ** 2).mean())
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
    """Proportional controller in log space (lm-human-preferences train_policy.py AdaptiveKLController):
    e = clip(KL / target - 1, -0.2, 0.2);  β <- β·(1 + e·n_steps / horizon), n_steps = episodes in the update.
    (The paper writes K_β = 0.1; the code's equivalent is batch/horizon = 512/10,000 = 0.0512.)"""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current: float, n_steps: int):
        proportional_error = float(np.clip(current / self.target - 1, -0.2, 0.2))
        self.value *= 1 + proportional_error * n_steps / self.horizon


class AdamTF(torch.optim.Adam):
    """Adam with TF1's epsilon placement ([BLOG] §3.8 item 21; lm-human-preferences uses tf.train.AdamOptimizer).

    TF1:   θ -= lr·sqrt(1-β2^t)/(1-β1^t) · m / (sqrt(v) + ε)            (ε outside the bias correction)
    torch: θ -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + ε')
    These agree when ε' = ε/sqrt(1-β2^t), so we set that before every step and let torch's (fused) Adam do the rest.
    With the same ε, torch's effective epsilon is ε·sqrt(1-β2^t), tiny early on, which makes its first updates much
    larger (the blog measured approxkl 0.00237 vs TF's 0.00037)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-5):
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        for group in self.param_groups:
            group["tf_eps"] = eps

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            steps = [self.state[p]["step"] for p in group["params"] if "step" in self.state.get(p, {})]
            t = int(steps[0]) + 1 if steps else 1  # the step about to be taken
            group["eps"] = group["tf_eps"] / math.sqrt(1 - group["betas"][1] ** t)
        return super().step(closure)


# -----------------------------------------------------------------------------
# Config


@dataclass
class Config:
    # what to train
    task: str = "sentiment"
    """task (tasks.py): sentiment, descriptiveness, tldr, cnndm"""
    model: str = "gpt2"
    """initial policy ρ: gpt2 (124M, the released code), gpt2-medium, gpt2-large (774M, the paper), gpt2-xl, a Hugging Face
    checkpoint dir, or tiny (2 layers, fitted briefly on the shipped passages; CPU demo and tests)"""
    reward: str = ""
    """reward model checkpoint from `reward.py train`; empty: train one first (from --labels, or scripted labels)"""
    labels: str = ""
    """labels file (our labels.jsonl or OpenAI's released JSON) to train the reward model from when --reward is empty;
    empty: sample comparisons from ρ and label them with the task's scripted labeler"""
    rm_comparisons: int = 4992
    """comparisons to sample and label with the scripted labeler when neither --reward nor --labels is given
    (4,992 = the released style-task label count)"""
    labeler: str = ""
    """scripted labeler for the labels and for the true score (empty: the task's own, where tasks.py has one)"""
    value_model: str = "shared"
    """'shared': a zero-initialized scalar head on the policy's trunk (as the released code); 'reward': a separate
    value network initialized from the reward model (trunk and head, as Stiennon et al. 2020)"""

    # PPO (defaults: lm-human-preferences launch.py, books tasks; per-task and tiny overrides in TASK_DEFAULTS)
    total_episodes: int = 1_000_000
    """episodes (query + response) over the whole run; updates = ceil(total_episodes / batch_size)"""
    batch_size: int = 512
    """episodes per PPO update (rollout batch)"""
    nminibatches: int = 1
    """minibatches per epoch: one optimizer step each (the released code: 1)"""
    noptepochs: int = 4
    """PPO epochs over each rollout batch, reshuffled every epoch"""
    micro_batch_size: int = 64
    """episodes per forward/backward; gradients are accumulated over a minibatch (memory only, not the math)"""
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
    """sampling temperature; logits are divided by it wherever log-probs are computed (per task: tasks.py)"""

    # run
    seed: int = 1
    """random seed (the released code: 1)"""
    name: str = ""
    """run name (empty: <task>-<model>-s<seed>)"""
    run_dir: str = ""
    """run folder (empty: runs/<name>/): config, metrics.jsonl, curves.png, checkpoint.pt, summary.json"""
    resume: str = ""
    """continue the run in this folder from its last checkpoint (its config.json; flags given here override it)"""
    stop_after: int = 0
    """stop once this many updates are done (0: run to the end); a later --resume continues the same run"""
    save_every: int = 50
    """checkpoint every N updates (and at the end)"""
    sample_every: int = 10
    """print a table of queries, responses and scores every N updates"""
    eval_episodes: int = 256
    """episodes on held-out queries for score_before / score_after in summary.json"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""
    bench: bool = False
    """time PPO updates on random weights at this config (default: the 124M sentiment setting) and exit"""


# Per-task defaults from the released launch.py; `tiny` runs get CPU-sized budgets picked so that the demo learns
# within 10 minutes on 2 cores. Order of precedence: Config defaults < task < tiny < command line.
TASK_DEFAULTS = {
    "sentiment": {},
    "descriptiveness": {},
    # launch.py binds `rewards.whiten` = False, a key that does not exist (paper-spec §8.8); we do what it intends.
    "cnndm": dict(lr=2e-6, batch_size=32, kl_coef=0.01, adaptive_kl=False, whiten_rewards=False, micro_batch_size=16),
    "tldr": dict(lr=2e-6, batch_size=32, kl_coef=0.03, adaptive_kl=False, whiten_rewards=False, micro_batch_size=16),
}
TINY_DEFAULTS = dict(
    total_episodes=64 * 40, batch_size=64, micro_batch_size=64, lr=1e-4, kl_coef=0.05, kl_target=3.0, kl_horizon=1000,
    rm_comparisons=256, eval_episodes=64, sample_every=10, save_every=10,
)


def field_docs(cls) -> dict:
    """Each field's docstring: the string literal right after it in the class source."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {
        a.target.id: " ".join(b.value.value.split())
        for a, b in zip(body, body[1:])
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
    }


def parse_args(argv=None) -> tuple[Config, dict]:
    """--help from the dataclass. Returns the resolved config and the flags actually given (for --resume)."""
    docs = field_docs(Config)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="per-task defaults: " + "; ".join(f"{k}: {v}" for k, v in TASK_DEFAULTS.items() if v)
        + f"; --model tiny: {TINY_DEFAULTS}",
    )
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":  # SUPPRESS: only flags actually given reach the namespace
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=docs[f.name])
        else:
            parser.add_argument(flag, type=types[f.type], default=argparse.SUPPRESS, help=docs[f.name] + f" (default: {f.default!r})")
    given = vars(parser.parse_args(argv))
    return resolve_config(given), given


def resolve_config(given: dict) -> Config:
    """Config defaults < task defaults < tiny defaults < the flags given. Derived fields are filled in here."""
    task_name = given.get("task", Config.task)
    if task_name not in TASK_DEFAULTS:
        raise SystemExit(f"error: unknown --task {task_name!r}; tasks: {', '.join(TASK_DEFAULTS)}")
    values = dict(temperature=tasks.get_task(task_name).temperature, **TASK_DEFAULTS[task_name])
    if given.get("model", Config.model) == "tiny":
        values.update(TINY_DEFAULTS)
    values.update(given)
    cfg = Config(**values)
    cfg.name = cfg.name or f"{cfg.task}-{Path(cfg.model).name}-s{cfg.seed}"
    cfg.run_dir = cfg.run_dir or str(Path("runs") / cfg.name)
    return cfg


def exact_div(a: int, b: int, what: str) -> int:
    if b <= 0 or a % b:
        raise SystemExit(f"error: {what}: {a} is not a multiple of {b}")
    return a // b


# -----------------------------------------------------------------------------
# Networks


class PolicyAndValue(nn.Module):
    """π and V. By default V is a scalar head on π's own trunk, zero-initialized so V starts at 0 (lm-human-preferences
    policy.py: scalar_heads=['value'], fc_layer(scale=0)); value gradients flow into the shared trunk. With a separate
    value_trunk, V reads that network's hidden states instead."""

    def __init__(self, lm: gpt2.GPT2, value_trunk: gpt2.GPT2 | None = None):
        super().__init__()
        self.lm = lm
        self.value_trunk = value_trunk
        n_embd = (value_trunk or lm).config.n_embd
        self.value_head = nn.Linear(n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, tokens, mask, n_response: int, temperature: float):
        """tokens, mask (B, T) = left-padded query + response -> logprobs, entropy, values (B, R)."""
        logprobs, entropy, hidden = gpt2.response_logprobs(self.lm, tokens, mask, n_response, temperature)
        if self.value_trunk is not None:
            hidden = self.value_trunk.hidden_states(tokens, mask)  # (B, T, C)
        T = tokens.size(1)
        # V at the state before each response token: values[:, context_length - 1 : -1] in the released code
        values = self.value_head(hidden[:, T - n_response - 1 : T - 1]).squeeze(-1).float()  # (B, R)
        return logprobs, entropy, values
