"""
Adam with TF1's epsilon placement, the optimizer of the reward model (reward.py) and of PPO
(ppo.py), as in lm-human-preferences (tf.train.AdamOptimizer), and make_adam, the factory both
call (--adam tf or torch).

One file so both trainers import the same class; it is small because torch's own Adam does all the
arithmetic, in its fused kernel (one pass over every tensor, on CPU and CUDA), or its foreach
implementation on a device without the fused kernel.

The two epsilon placements (t = the step being taken, m and v the usual moving averages, c1 = 1 -
beta1^t, c2 = 1 - beta2^t):

    TF1:    p -= lr * sqrt(c2) / c1 * m / (sqrt(v) + eps)
    torch:  p -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps')

Multiplying the torch fraction above and below by sqrt(c2) gives lr * sqrt(c2) / c1 * m / (sqrt(v)
+ eps' * sqrt(c2)): the same update as TF1's when eps' = eps / sqrt(c2). So TF1's Adam is torch's
Adam with a per-step epsilon eps / sqrt(1 - beta2^t), which AdamTF sets before every step. (Seen
the other way: torch's Adam with TF1's eps has the effective epsilon eps * sqrt(1 - beta2^t), ~30x
smaller at step 1 with beta2 = 0.999, so its first updates are much larger.)

Two steps by hand (numbers chosen so that every square root is exact): beta1 = 0.5, beta2 = 0.96,
lr = 1, eps = 0.2, p = 1.
    step 1, g = 1:    m = 0.5, v = 0.04, c1 = 0.5, sqrt(c2) = sqrt(0.04) = 0.2
        TF1:    p -= 0.2 / 0.5 * 0.5 / (sqrt(0.04) + 0.2) = 0.5                 -> p = 0.5
        torch:  eps' = 0.2 / 0.2 = 1; m / c1 = 1, sqrt(v) / sqrt(c2) = 1; p -= 1 / (1 + 1) = 0.5
                (torch with eps' = eps = 0.2 would take 1 / 1.2 = 0.833 instead)
    step 2, g = 0.2:  m = 0.25 + 0.1 = 0.35, v = 0.0384 + 0.0016 = 0.04, c1 = 0.75,
                      sqrt(c2) = sqrt(1 - 0.9216) = 0.28
        TF1:    p -= 0.28 / 0.75 * 0.35 / (0.2 + 0.2) = 49/150                  -> p = 13/75
        torch:  eps' = 0.2 / 0.28 = 5/7; m / c1 = 7/15, sqrt(v) / sqrt(c2) = 5/7;
                p -= (7/15) / (5/7 + 5/7) = 49/150
tests/test_optim.py checks these numbers, and checks AdamTF against the per-tensor loop it
replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# devices where torch's Adam has a fused kernel (CPU since torch 2.4); others use foreach
FUSED_DEVICES = ("cpu", "cuda")


def fused_supported(params) -> bool:
    """True when torch's fused Adam kernel can update all these tensors."""
    return all(p.device.type in FUSED_DEVICES and torch.is_floating_point(p) for p in params)


class AdamTF(torch.optim.Adam):
    """torch.optim.Adam (fused, else foreach) with TF1's epsilon: before each step, group['eps'] =
    eps / sqrt(1 - beta2^t) (see the module docstring). All parameters of a group take every step
    together in our trainers, so one step count t serves the group; it is read from the first
    parameter that has optimizer state.

    The state dict is torch's Adam's, plus 'tf_eps' in each group. Checkpoints written by the
    earlier per-tensor version (same keys, fused/foreach unset) load too: load_state_dict keeps
    this optimizer's fused/foreach choice rather than the saved one.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-5):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        fused = fused_supported([p for g in groups for p in g["params"]])
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=fused, foreach=not fused)
        for group in self.param_groups:
            group["tf_eps"] = eps

    def load_state_dict(self, state_dict):
        # the saved groups' fused/foreach flags would replace ours (an old checkpoint has neither)
        # and decide where state['step'] is loaded: set them to ours first
        saved = state_dict["param_groups"]
        if len(saved) == len(self.param_groups):  # else torch's own check says what is wrong
            flags = [dict(fused=g["fused"], foreach=g["foreach"]) for g in self.param_groups]
            saved = [{**g, **f} for g, f in zip(saved, flags)]
        super().load_state_dict({**state_dict, "param_groups": saved})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            state = next((self.state[p] for p in group["params"] if p in self.state), None)
            t = int(state["step"]) + 1 if state else 1  # the step about to be taken
            group["eps"] = group["tf_eps"] / math.sqrt(1 - group["betas"][1] ** t)
        return super().step(closure)


def make_adam(params, adam: str, lr: float, eps: float) -> torch.optim.Optimizer:
    """--adam tf: AdamTF (the released code's epsilon placement); --adam torch: torch.optim.Adam.
    The reward model and PPO both build their optimizer here. ValueError: another name."""
    if adam == "tf":
        return AdamTF(params, lr=lr, eps=eps)
    if adam == "torch":
        return torch.optim.Adam(params, lr=lr, eps=eps)
    raise ValueError(f"--adam {adam!r}: use 'tf' or 'torch'")


@dataclass
class AdamOptions:
    """Adam"""

    # --help: PPO
    adam: str = "tf"
    """'tf': TF1 epsilon placement as the released code (AdamTF); 'torch': torch.optim.Adam"""
    adam_eps: float = 1e-5
    """Adam epsilon (TF1 AdamOptimizer(epsilon=1e-5) in the released code)"""
