"""
PPO fine-tuning of GPT-2 against a learned reward model: stage 3 of RLHF.

The policy π starts as a copy of the initial model ρ (gpt2.py); each update samples responses to
task queries, scores them with the reward model (reward.py), subtracts a per-token KL penalty
against the frozen ρ and runs PPO on the result. It follows Ziegler et al. 2019, "Fine-Tuning
Language Models from Human Preferences", as released in openai/lm-human-preferences @ cbfd210
(train_policy.py) and re-implemented in PyTorch by vwxyzjn/lm-human-preference-details @ ccc1953;
where the paper and the released code differ we follow the code and say so (docs/ has the list).

One PPO update, in the order train() runs it:
    1. rollout: fixed-length responses from π to a batch of queries ............. rollout()
    2. score: truncate at the stop token, reward-model score, -1 penalty .......... rollout()
    3. KL-penalized rewards: -β·(log π - log ρ) per token, score at the end .... compute_rewards()
    4. advantages: whitened rewards, GAE, whitened advantages .......... whiten(), compute_gae()
    5. PPO epochs: clipped policy + value loss, one Adam step per minibatch ....... ppo_update(),
       ppo_policy_loss(), value_loss()
    6. KL controller: β toward the target KL ........................ AdaptiveKLController.update()
The run around it (folder, resume, logging, checkpoints, summary) is machinery/runs.py; the
presets and the order in which options are decided, machinery/presets.py. With no --reward-model,
the run first makes one (reward.build_reward_model: sample comparisons from ρ, label them, train).

    python ppo.py --model tiny     # the whole pipeline on a CPU, ~6 minutes; --help: every option
    python ppo.py                  # the released setting: gpt2, 1M episodes; --resume RUN_DIR
    torchrun --nproc_per_node 8 ppo.py   # data parallel; [dist] marks the lines that make it so

Shape letters: B = episodes (batch), Q = query length, R = response length, T = Q + R, C = channels,
E = PPO epochs, M = minibatches per epoch.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import evaluate
import gpt2
from machinery import amp, cli, dist, microbatch, online, presets, runs, tasks
from machinery.microbatch import Stats, accumulate, exact_div, fix_size, forward_in_chunks
from machinery.optim import AdamOptions, make_adam

# --------------------------------------------------------------------------------------------------
# Hyperparameters (defaults: lm-human-preferences launch.py, books tasks; per-task and tiny
# overrides in machinery/presets.py; the options shared with other stages are inherited)


@dataclass
class Config(runs.Inputs, AdamOptions, online.Options, runs.RunOptions):
    """PPO"""

    value_model: str = "shared"
    """'shared': a zero-initialized scalar head on π's trunk (the released code); 'reward': a
    separate value network initialized from the reward model (Stiennon et al. 2020)"""
    total_episodes: int = 1_000_000
    """episodes (query + response) over the whole run; updates = ceil(total / batch_size)"""
    batch_size: int = 512
    """episodes per PPO update (rollout batch)"""
    nminibatches: int = 1
    """minibatches per epoch: one optimizer step each (the released code: 1)"""
    noptepochs: int = 4
    """PPO epochs over each rollout batch, reshuffled every epoch"""
    micro_batch_size: int | str = 64  # --help: performance
    """episodes per forward/backward, gradients accumulated (memory, not math); halved on out of
    memory; 'auto': the whole minibatch on CUDA, at most 64 on CPU (machinery/microbatch.py)"""
    lr: float = 1e-5
    """Adam learning rate, annealed linearly to 0 over the updates"""
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
    """sampling temperature; logits are divided by it wherever log-probs are computed"""


# --------------------------------------------------------------------------------------------------
# The math: small pure functions, imported by tests/test_ppo.py


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


def whiten(values: torch.Tensor, shift_mean: bool = True, moments=None) -> torch.Tensor:
    """(v - mean) / sqrt(var + 1e-8) over all elements, with the POPULATION variance, as TF's
    tf.nn.moments (lm-human-preferences utils/core.py::whiten; torch.var's default would be the
    unbiased one). shift_mean=False adds the mean back: the scale is normalized but the sign of
    the rewards is kept.

    moments: (mean, var) to use instead of values' own. Under torchrun ppo_update passes the
    whole minibatch's over every rank (dist.mean_var), so N ranks whiten as one process would;
    the released code whitened each rank's share on its own."""
    mean, var = moments if moments is not None else (values.mean(), values.var(unbiased=False))
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


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


# --------------------------------------------------------------------------------------------------
# The policy and its value function


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


def make_policy(cfg: Config, ref, reward_model) -> PolicyAndValue:
    """π starts as ρ; V per --value-model: 'shared' (a head on π's trunk), or 'reward': a separate
    network initialized from the reward model, trunk and head, with the reward normalization
    folded into the head so V starts equal to the normalized score (Stiennon et al. 2020).
    Dropout off (eval mode), which does not stop gradients: GPT-2 is trained with dropout, the
    released code fine-tunes without."""
    policy = PolicyAndValue(copy.deepcopy(ref).requires_grad_(True))
    if cfg.value_model == "reward":
        value_trunk = copy.deepcopy(reward_model.lm).requires_grad_(True)
        policy = PolicyAndValue(copy.deepcopy(ref).requires_grad_(True), value_trunk)
        with torch.no_grad():
            gain, bias = reward_model.reward_gain.float(), reward_model.reward_bias.float()
            policy.value_head.weight.copy_(reward_model.head.weight * gain)
            policy.value_head.bias.copy_(reward_model.head.bias * gain + bias)
    elif cfg.value_model != "shared":
        raise SystemExit(f"error: --value-model {cfg.value_model!r}: use 'shared' or 'reward'")
    for trunk in (policy.lm, policy.value_trunk):
        if trunk is not None:
            trunk.set_grad_checkpoint(cfg.grad_checkpoint)
    return policy.eval()


# --------------------------------------------------------------------------------------------------
# Rollout (steps 1-3) and the PPO update (steps 4-5)


@torch.no_grad()
def rollout(policy, ref, reward_model, task, raw_queries, cfg: Config, kl_coef, generator, device):
    """Steps 1-3 for one batch of raw queries (token lists, without the task's prefix/suffix).
    Returns a dict of (B, ...) tensors plus timings."""
    t0 = time.perf_counter()
    R = task.response_length
    cfg.micro_batch_size = microbatch.resolve_micro_batch_size(cfg, device)  # forwards' chunk
    # what the policy reads: prefix + query + suffix; the released code's pads between query and
    # suffix (summaries) are dropped, which computes the same (tasks.policy_context)
    queries = [tasks.policy_context(task, q) for q in raw_queries]
    q_tokens, q_mask = gpt2.left_pad(queries, device=device)  # (B, Q)
    # 1. rollout: fixed-length responses from π at the task's temperature (EOS does not stop
    #    sampling)
    with amp.autocast(device, cfg.precision):
        responses, _ = gpt2.generate(
            policy.lm, q_tokens, q_mask, R, cfg.temperature, generator=generator
        )  # (B, R)
    if device == "cuda":
        torch.cuda.synchronize()
    t_generate = time.perf_counter() - t0
    tokens = torch.cat([q_tokens, responses], 1)  # (B, T)
    mask = torch.cat([q_mask, torch.ones_like(responses, dtype=torch.bool)], 1)  # (B, T)
    # old log-probs and values come from the SAME forward function as training (as
    # lm-human-preference-details), not from the sampling loop, so on the first minibatch of the
    # first epoch the ratio is exactly 1
    with amp.autocast(device, cfg.precision):
        logprobs, _, values = forward_in_chunks(
            lambda tok, msk: policy(tok, msk, R, cfg.temperature), cfg, tokens, mask
        )  # (B, R) each
        ref_forward = lambda tok, msk: gpt2.response_logprobs(ref, tok, msk, R, cfg.temperature)
        ref_logprobs, _ = forward_in_chunks(lambda *x: ref_forward(*x)[:2], cfg, tokens, mask)
        # 2. score: truncate at the stop token, score with the reward model, -1 where the stop token
        #    is missing; (B, R) PAD_ID after the stop token, (B,)
        truncated, valid = tasks.truncate_responses(responses, task)
        # the reward model reads the RAW query + response, as the released code does
        raw_tokens, raw_mask = gpt2.left_pad(raw_queries, device=device)  # (B, Q')
        (scores,) = forward_in_chunks(
            lambda q, msk, r: (reward_model.score(q, msk, r),), cfg, raw_tokens, raw_mask, truncated
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


def ppo_update(policy, optimizer, batch, cfg: Config, n_response: int, shuffle_gen, device) -> dict:
    """Steps 4-5: noptepochs passes over shuffled minibatches, one optimizer step per minibatch,
    gradients accumulated over micro-batches (machinery/microbatch.py, which also halves the
    micro-batch on an out-of-memory error). Returns stats as (E, M, U) tensors."""
    # [dist] B is this rank's share of --batch-size; a minibatch is every rank's mb_size rows
    B, E, M = dist.share(cfg.batch_size, "--batch-size"), cfg.noptepochs, cfg.nminibatches
    mb_size = exact_div(B, M, "--batch-size / --nminibatches (per process)")
    fix_size(cfg, mb_size, device)  # --micro-batch-size: a divisor of mb_size from here on
    stats = Stats(E, M)
    for epoch in range(E):
        perm = torch.randperm(B, generator=shuffle_gen).to(device)  # a fresh shuffle every epoch
        for minibatch in range(M):
            idx = perm[minibatch * mb_size : (minibatch + 1) * mb_size]
            # 4. advantages, per minibatch as the released code does (with nminibatches = 1: the
            #    whole batch): whiten rewards (scale only), GAE, whiten advantages (zero mean, unit
            #    variance); [dist] the moments are the whole minibatch's, over every rank
            rewards = batch["rewards"][idx]  # (mb_size, R)
            if cfg.whiten_rewards:
                rewards = whiten(rewards, shift_mean=False, moments=dist.mean_var(rewards))
            old_values, old_logprobs = batch["values"][idx], batch["logprobs"][idx]  # (mb_size, R)
            advantages, returns = compute_gae(rewards, old_values, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, moments=dist.mean_var(advantages))
            mean, var = dist.mean_var(returns)  # [dist] the whole minibatch's, for the log
            returns_stats = {"ppo/returns/mean": mean, "ppo/returns/var": var}

            def loss_fn(j):
                """5. PPO: clipped policy loss + vf_coef · clipped value loss of the micro-batch
                at rows j of the minibatch."""
                with amp.autocast(device, cfg.precision):
                    new_logprobs, entropy, vpred = policy(
                        batch["tokens"][idx][j], batch["mask"][idx][j], n_response, cfg.temperature
                    )  # (micro, R) each
                # the losses and their statistics in fp32, outside autocast
                pg_loss, pg_stats = ppo_policy_loss(
                    new_logprobs.float(), old_logprobs[j], advantages[j], cfg.cliprange
                )
                vf_loss, vf_stats = value_loss(
                    vpred.float(), old_values[j], returns[j], cfg.cliprange_value
                )
                logged = runs.ppo_stats(pg_stats, entropy, pg_loss, vf_loss, vf_stats, vpred)
                return pg_loss + cfg.vf_coef * vf_loss, logged | returns_stats

            total = accumulate(loss_fn, cfg, optimizer, mb_size, stats, epoch, minibatch)
            # [dist] average the minibatch's gradients over ranks: once per optimizer step, after
            # the last micro-batch; the mean loss too, so every rank sees a NaN and stops together
            dist.average_gradients(policy)
            total = dist.reduce(total)
            if not torch.isfinite(total):  # before the step, so no NaN ever reaches the weights
                raise FloatingPointError(
                    f"the PPO loss is {total.item()} (epoch {epoch}, minibatch {minibatch})"
                )
            optimizer.step()
    return stats.reduce()


# --------------------------------------------------------------------------------------------------
# The run: setup and the loop


def setup(cfg: Config) -> runs.Run:
    """Models (making the reward model first if none is given), optimizer, KL controller, data;
    the run folder and a resumed run's state through machinery/runs.py."""
    device, run_dir, ckpt = runs.start(cfg)  # device, [dist], seeds, folder, a resumed checkpoint
    task = tasks.get_task(cfg.task)
    labeler_name, labeler = runs.labelers(cfg, task)
    ref = runs.load_ref(cfg.model, device)  # ρ: frozen, never optimized
    online_run = None
    if cfg.online:  # machinery/online.py: the queue, the labels, the first reward model
        online_run, reward_model = online.start(cfg, run_dir, ref, device, labeler_name)
    else:
        reward_model = runs.reward_model_for(cfg, run_dir, ref, device, labeler_name)
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
    source, eval_queries, labeler = runs.queries(cfg, task, labeler)
    run = runs.Run(
        cfg, device, run_dir, task, labeler, ref, reward_model, policy, optimizer, kl_ctl,
        source, eval_queries,
        # [dist] each rank samples and shuffles its own share with its own seed
        sample_gen=torch.Generator(device=device).manual_seed(dist.seed(cfg.seed)),
        shuffle_gen=torch.Generator().manual_seed(dist.seed(cfg.seed + 1)),
        n_updates=math.ceil(cfg.total_episodes / cfg.batch_size),
        online=online_run,
    )  # fmt: skip
    runs.resume(run, ckpt)  # a resumed run's state; config.json and metrics.jsonl
    return run


def train(cfg: Config) -> dict:
    """The whole run: setup(), the PPO loop (steps 1-6 per update), the summary. Returns
    summary.json ({} when stopped early by --stop-after)."""
    run = setup(cfg)
    policy, optimizer, kl_ctl, device = run.policy, run.optimizer, run.kl_ctl, run.device
    R, n_updates = run.task.response_length, run.n_updates
    runs.print_budget(run)
    if run.before is None:
        run.before = runs.evaluate_policy(run, rollout, "before training")
    t_start, last = time.time(), {}
    stop = n_updates if not cfg.stop_after else min(n_updates, cfg.stop_after)
    for update in runs.progress(run, stop):
        lr = cfg.lr * (1 - update / n_updates)  # annealed linearly to 0 (released code: per update)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # --online: queue comparisons of the current policy, take in labels, retrain when due
        run.reward_model, online_metrics = runs.online_step(run, update)
        # 1-3. rollout, score, rewards; [dist] every rank reads the same batch of queries and
        #      keeps its own block of it
        items = dist.shard(run.source.next_queries(cfg.batch_size))
        raw_queries = [q.tokens for q in items]
        batch = rollout(
            policy, run.ref, run.reward_model, run.task, raw_queries, cfg, kl_ctl.value,
            run.sample_gen, device,
        )  # fmt: skip
        references = [q.reference for q in items]
        true_scores = runs.scripted_scores(run.labeler, batch["truncated"], references)
        # 4-5. advantages and PPO epochs
        t0 = time.perf_counter()
        try:
            stats = ppo_update(policy, optimizer, batch, cfg, R, run.shuffle_gen, device)
        except FloatingPointError as e:
            raise runs.stopped_on_nan(run, update, e)
        t_train = time.perf_counter() - t0
        runs.keep_micro_batch_size(run)  # out of memory halved it: a resumed run starts there
        # 6. KL controller: adapt β toward the target with this batch's mean KL (released code:
        #    after every update), then log
        metrics = runs.rollout_stats(batch, true_scores, kl_ctl.value)
        kl_ctl.update(metrics["objective/kl"], cfg.batch_size)
        metrics |= runs.update_metrics(run, update, stats, batch, lr, t_train) | online_metrics
        last = runs.log_update(run, update, metrics, batch, raw_queries, true_scores)
        if (update + 1) % cfg.save_every == 0 or update + 1 == stop:
            runs.save_checkpoint(run, update + 1, run.seconds_before + time.time() - t_start)
    dist.finish()  # [dist] no collectives after the loop (evaluations run whole on every rank)
    if stop < n_updates:
        return runs.stopped_early(run, stop)
    seconds = run.seconds_before + time.time() - t_start
    after = runs.evaluate_policy(run, rollout)
    summary = runs.summary(run, run.before, after, last, seconds)
    if dist.is_main():  # [dist] rank 0 alone judges (it writes eval/): the paper's headline number
        summary.update(evaluate.end_of_run(run))
    runs.write_summary(run, summary, after)
    return summary


def main(argv=None):
    cfg = presets.parse_args(Config, __doc__.split("\n\n")[1], argv)
    if cfg.bench:  # the timing lives in bench/bench_ppo.py, which imports this file
        bench = Path(__file__).resolve().parent / "bench" / "bench_ppo.py"
        os.execv(sys.executable, [sys.executable, str(bench), *(argv or sys.argv[1:])])
    return train(cfg)


if __name__ == "__main__":
    cli.run_main(main)  # expected errors and Ctrl-C: one line each (what is saved, how to resume)
