"""
The "tiny" model's fit: gpt2.PRESETS["tiny"], a 2-layer GPT-2, trained for about half a minute on
the shipped passages so that it writes words (and sentiment words) on a CPU, then cached on disk
by a hash of data + config. `GPT2.from_pretrained("tiny")` (gpt2.py) loads it through `load`.

This file never imports gpt2.py (gpt2.py imports it): the model, a fresh one of it and the
tokenizer are handed in by the caller.

Shape letters: B = batch, T = window length, C = channels, V = vocabulary, N = stream length,
S = seen tokens (those that occur in the passages).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from machinery import cli
from machinery.data import ASSETS, cache_dir, shipped_passages


@dataclass(frozen=True)
class TinyFitConfig:
    steps: int = 600
    """optimizer steps (well under a minute on 2 CPU cores)"""
    batch_size: int = 16
    """windows per step"""
    seq_len: int = 96
    """tokens per window: a 64-token query plus a 24-token response fit in one"""
    lr: float = 3e-3
    """peak AdamW learning rate (cosine decay to lr/10 after 20 warmup steps)"""
    seed: int = 0
    """seed of the initialization and the window order"""


def tiny_cache_path(preset, fit: TinyFitConfig = TinyFitConfig()) -> Path:
    """The cache file of the fitted tiny model, keyed by a hash of everything that decides its
    weights: the passages, the model's config (preset: gpt2.PRESETS["tiny"]), the fit config, the
    code that fits and runs it (FIT_SOURCES) and torch's version."""
    h = hashlib.sha256()
    h.update((ASSETS / "book_passages" / "train.jsonl").read_bytes())
    h.update(repr(dataclasses.replace(preset, use_kernels="auto")).encode())
    h.update(repr(fit).encode())
    for path in FIT_SOURCES:  # the code that fits it, whole: any edit refits (about a minute)
        h.update(path.read_bytes())
    h.update(torch.__version__.encode())  # another torch may round the fit differently
    return cache_dir() / f"tiny-{h.hexdigest()[:16]}.pt"


# part of the cache key: the files whose code decides the fitted weights (this fit, the model's
# forward and backward, and its attention on the CPU)
_ROOT = Path(__file__).resolve().parents[1]
FIT_SOURCES = (
    _ROOT / "machinery" / "tiny.py",
    _ROOT / "gpt2.py",
    _ROOT / "gpt2_kernels" / "pytorch.py",
    _ROOT / "gpt2_kernels" / "__init__.py",
)


def passage_stream(encode: Callable[[str], list[int]], eot_id: int) -> torch.Tensor:
    """(N,) the training passages' token ids, packed, each followed by <|endoftext|> (eot_id)."""
    stream = []
    for text in shipped_passages("train"):
        stream += encode(text) + [eot_id]
    return torch.tensor(stream)


def seen_plus_unseen_logits(h, wte, seen, unseen_row, n_unseen: int):
    """Logits over the seen tokens plus one class standing for all n_unseen tokens that share the
    output row unseen_row: log_softmax of these equals the full-vocabulary log_softmax at the
    seen tokens (see fit_tiny). h (..., C), wte (V, C), seen (S,) ids, unseen_row (C,) -> (...,
    S+1)."""
    return torch.cat([h @ wte[seen].T, (h @ unseen_row)[..., None] + float(np.log(n_unseen))], -1)


def fit_tiny(new_model: Callable[[], torch.nn.Module], data: torch.Tensor, fit=TinyFitConfig()):
    """Train new_model() (a fresh gpt2.PRESETS['tiny'], built after seeding) from scratch as a
    language model on data (N,), the packed passages (passage_stream), so samples are English-like
    sentences with the passages' words, sentiment words included. Returns the model, in eval mode.

    Speed trick, exact: the passages use only a few hundred of the 50,257 tokens (set S; the rest U
    never occurs). We tie the output vectors of all unseen tokens to one shared row u. A full
    softmax over the vocabulary then has |U| identical logits h.u, so it equals a softmax over S
    plus one extra class with logit h.u + log|U|: the same loss and gradients as full-vocabulary
    training with tied rows, at |S|+1 logits per token instead of 50,257. After the fit every unseen
    row is set to u, so the saved model is an ordinary GPT-2 whose unseen tokens carry exactly the
    (tiny) probability the fit gave them.
    """
    torch.manual_seed(fit.seed)
    model = new_model()
    seen = torch.unique(data)  # (S,) sorted token ids that occur
    to_seen = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    to_seen[seen] = torch.arange(len(seen))  # token id -> index into seen
    n_unseen = model.config.vocab_size - len(seen)
    # (C,) the shared row u
    unseen_row = torch.nn.Parameter(model.transformer.wte.weight[0].detach().clone())
    wte = model.transformer.wte.weight
    gen = torch.Generator().manual_seed(fit.seed)
    opt = torch.optim.AdamW(
        list(model.parameters()) + [unseen_row], lr=fit.lr, weight_decay=0.0, betas=(0.9, 0.95)
    )
    bar = tqdm(
        range(fit.steps), desc="fit tiny model on the shipped passages", unit="step", disable=None
    )
    for step in bar:
        # 1. learning rate: linear warmup, then cosine decay to lr/10
        warm = min(1.0, (step + 1) / 20)
        lr = fit.lr * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / fit.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        # 2. a batch of random windows of the passage stream
        starts = torch.randint(0, len(data) - fit.seq_len - 1, (fit.batch_size,), generator=gen)
        idx = torch.stack([data[s : s + fit.seq_len + 1] for s in starts.tolist()])  # (B, T+1)
        # 3. next-token cross-entropy over S + the shared unseen class (see the docstring)
        h = model.hidden_states(idx[:, :-1])  # (B, T, C)
        logits = seen_plus_unseen_logits(h, wte, seen, unseen_row, n_unseen)  # (B, T, S+1)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), to_seen[idx[:, 1:]].flatten()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [unseen_row], 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    with torch.no_grad():
        unseen = torch.ones(model.config.vocab_size, dtype=torch.bool)
        unseen[seen] = False
        wte[unseen] = unseen_row  # every unseen token gets the shared output (and input) vector
    return model.eval()


def load(model_class, preset, encode: Callable[[str], list[int]], eot_id: int, use_kernels="auto"):
    """The fitted tiny model, on the CPU: read from its cache file (tiny_cache_path), or fitted once
    and cached there. An unreadable cache file is derived data: the model is fitted again.

    model_class: gpt2.GPT2, built here from preset (gpt2.PRESETS["tiny"]) with use_kernels, before
    its weights are read or fitted; encode (gpt2.encode) and eot_id (<|endoftext|>) give the
    passages' tokens (passage_stream)."""

    def new_model(kernels: str):  # a fresh, randomly initialized tiny model
        return model_class(dataclasses.replace(preset, use_kernels=kernels))

    path = tiny_cache_path(preset)
    if path.exists():
        model = new_model(use_kernels)
        try:  # tensors only: a cache file cannot run code
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model
        except Exception as e:  # derived data: fit it again
            print(f"tiny: {path} is unreadable ({e}); fitting again", file=sys.stderr)
    print(
        f"tiny: fitting the tiny model on the shipped passages (once; cached at {path})",
        file=sys.stderr,
    )
    t0 = time.time()
    model = fit_tiny(lambda: new_model(preset.use_kernels), passage_stream(encode, eot_id))
    # several processes may fit at once: each writes its own temporary file, the rename is atomic
    cli.atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    print(f"tiny: tiny model fitted in {time.time() - t0:.0f} s", file=sys.stderr)
    if use_kernels != model.config.use_kernels:
        model = new_model(use_kernels)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
