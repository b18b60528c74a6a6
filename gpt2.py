"""
GPT-2 from scratch: the model, checkpoint loading, the tokenizer, fast batched sampling, and
per-token log-probs.

Every other stage stands on this file: reward.py adds a scalar head, ppo.py adds a value head and
keeps a frozen copy as the reference policy. It follows the GPT-2 paper and OpenAI's code
(gpt-2/src/model.py), with two additions from lm-human-preferences (language/model.py) that RLHF
needs:

  * left-padded batches: an attention mask marks real tokens; pads are masked out of attention and
    position ids count only real tokens (exclusive cumsum of the mask), so a sequence's logits do
    not depend on its padding;
  * log-probs of the tempered distribution (logits / temperature) everywhere, which PPO's ratio and
    KL need.

Parameter names and layouts follow the Hugging Face checkpoints (wte, wpe, h.N.attn.c_attn, ...,
weights stored (in, out) as their Conv1D does), so loading is a plain copy loop. There is no
dropout: lm-human-preferences turns it off in every call (do_dropout=False), and so do we.

Run it:
    python gpt2.py --model gpt2 --prompt "Hello, my name is" --prompt "The meaning of life" \
        --max-new-tokens 40
    python gpt2.py --model ./my-hf-checkpoint-dir --greedy
    python gpt2.py --model runs/sentiment-tiny-s1      # a ppo.py run's trained policy
    python gpt2.py --model tiny --export tiny-hf       # write a model in the Hugging Face layout

Shape letters: B = batch, T = sequence length, C = channels (n_embd), H = heads, D = head size (C /
H), V = vocabulary (50257), R = response length (new tokens), N = flattened tokens (B * R).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

import gpt2_kernels  # attention and token log-probs: Triton kernels or PyTorch (imports no triton)
from machinery import amp, cli, hf, tiny, tokenizer

# OpenAI's padding id in label files (n_vocab + 2, "for historical reasons"); never fed to the model
PAD_ID = 50259
EOT_ID = 50256  # <|endoftext|>


# --------------------------------------------------------------------------------------------------
# Config


@dataclass
class GPT2Config:
    n_layer: int = 12
    """number of transformer blocks"""
    n_head: int = 12
    """attention heads per block"""
    n_embd: int = 768
    """channels (C)"""
    vocab_size: int = 50257
    """GPT-2's BPE vocabulary"""
    n_positions: int = 1024
    """longest sequence the position embedding covers"""
    layer_norm_epsilon: float = 1e-5
    """LayerNorm epsilon, as in the checkpoints"""
    n_inner: int | None = None
    """MLP hidden width (None: 4 * n_embd, as every released GPT-2)"""
    activation_function: str = "gelu_new"
    """MLP activation, by its transformers name: gelu_new (GPT-2's tanh approximation),
    gelu_pytorch_tanh, gelu_fast, gelu (exact erf), relu, silu, swish"""
    scale_attn_weights: bool = True
    """divide attention scores by sqrt(D) (False: no scaling)"""
    scale_attn_by_inverse_layer_idx: bool = False
    """also divide block i's attention scores by i + 1"""
    tie_word_embeddings: bool = True
    """the LM head reuses wte (False: a separate lm_head.weight)"""
    use_kernels: str = "auto"
    """Triton kernels: 'auto' (on CUDA tensors, for the shapes they support; otherwise PyTorch, said
    once), 'on' (always; CPU runs them under TRITON_INTERPRET=1), 'off'"""


PRESETS = {
    "gpt2": GPT2Config(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),  # 355M params
    "gpt2-large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),  # 774M params, the paper's model
    "gpt2-xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
    # 7.0M params (6.4M of them the embedding), tests and CPU demos
    "tiny": GPT2Config(n_layer=2, n_head=4, n_embd=128),
}

# MLP activations by their transformers name (ACT2FN). GPT-2's gelu_new is the tanh approximation;
# gelu_pytorch_tanh and gelu_fast compute the same function by other formulas (equal to ~1e-7).
ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


# --------------------------------------------------------------------------------------------------
# Attention: gpt2_kernels.attention runs the fused Triton kernel or PyTorch's SDPA


class KVCache:
    """Pre-allocated keys and values for every layer, written in place while sampling (no
    torch.cat per step)."""

    def __init__(self, config: GPT2Config, batch: int, max_len: int, device, dtype):
        D = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, max_len, D)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        # (B, max_len) real tokens
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.padded = False  # any pad cached? If not, attention skips the mask altogether
        self.len = 0  # positions filled so far

    def append(self, layer: int, k, v):
        """Write this step's k, v (B, H, T, D) for one layer; return all keys and values so far."""
        T = k.size(2)
        self.k[layer, :, :, self.len : self.len + T] = k
        self.v[layer, :, :, self.len : self.len + T] = v
        return self.k[layer, :, :, : self.len + T], self.v[layer, :, :, : self.len + T]


# --------------------------------------------------------------------------------------------------
# The model


class Linear(nn.Module):
    """y = x @ weight + bias with weight stored (in, out), the checkpoints' Conv1D layout:
    loading needs no transpose, and on CPU x @ W runs ~20% faster than nn.Linear's x @ W.T at
    decoding's small batches (measured, 2 cores)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def linear(x, weight, bias):
    """x (..., n_in) @ weight (n_in, n_out) + bias (n_out,), as one GEMM (addmm) over the
    flattened rows; weight may be a column slice of a larger matrix."""
    return torch.addmm(bias, x.reshape(-1, x.size(-1)), weight).view(*x.shape[:-1], -1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, layer: int):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.layer, self.use_kernels = config.n_head, layer, config.use_kernels
        # Both attention paths scale scores by 1/sqrt(D). A config asking for another scale s gets
        # it by multiplying q by s·sqrt(D) first, so neither path (nor the kernel) needs a knob.
        D = config.n_embd // config.n_head
        scale = D**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer + 1
        self.q_factor = scale * math.sqrt(D)
        # q, k, v for all heads in one matmul
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = Linear(config.n_embd, config.n_embd)

    def forward(self, x, key_mask, cache: KVCache | None = None, last: int | None = None):
        """x (B, T, C) -> (B, T, C); with `last`, the outputs of the last `last` positions only,
        (B, last, C): their queries attend over the keys and values of every position."""
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        if last is None:
            q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        else:
            W, b = self.c_attn.weight, self.c_attn.bias  # (C, 3C), (3C,): q, k, v side by side
            q = linear(x[:, -last:], W[:, :C], b[:C])  # (B, last, C)
            k, v = linear(x, W[:, C:], b[C:]).split(C, dim=2)  # 2 x (B, T, C)
        # (B, H, Tq, D) and 2 x (B, H, T, D)
        q, k, v = (t.view(B, t.size(1), H, D).transpose(1, 2) for t in (q, k, v))
        if self.q_factor != 1.0:
            q = q * self.q_factor
        if cache is not None:
            # (B, H, Tk, D): everything so far, this step included
            k, v = cache.append(self.layer, k, v)
            key_mask = cache.key_mask[:, : k.size(2)] if cache.padded else None
        # full sequences (training, scoring, prefill) may run the fused kernel, decoding steps SDPA
        y = gpt2_kernels.attention(q, k, v, key_mask, self.use_kernels)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, -1, C)  # re-assemble the heads side by side
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Linear(config.n_embd, inner)
        self.c_proj = Linear(inner, config.n_embd)
        if config.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"activation_function {config.activation_function!r} is not supported; "
                f"supported: {', '.join(ACTIVATIONS)}"
            )
        self.act = ACTIVATIONS[config.activation_function]

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, key_mask, cache=None, last: int | None = None):
        """x (B, T, C) -> (B, T, C), or (B, last, C) for the last `last` positions only."""
        # pre-norm residual blocks
        h = self.attn(self.ln_1(x), key_mask, cache, last)
        x = x + h if last is None else x[:, -last:] + h
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                # token embedding, tied to the LM head
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),  # learned position embedding
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # (V, C) weight
        # activation checkpointing (set_grad_checkpoint): an attribute, not a config field, so it
        # never enters saved configs or the tiny model's cache key
        self.grad_checkpoint = False
        self.apply(self._init_weights)
        # GPT-2 scales residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (Linear, nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, Linear):
            nn.init.zeros_(module.bias)

    def set_grad_checkpoint(self, on: bool = True) -> "GPT2":
        """Activation checkpointing: when gradients are on, keep only each block's input and
        recompute its activations in the backward (about one more forward's compute, for
        activation memory of one block instead of all n_layer). Same values and gradients; it is
        what lets gpt2-large and gpt2-xl train on one GPU."""
        self.grad_checkpoint = on
        return self

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """(V, C): GPT-2 ties input and output embeddings; a config may untie them."""
        if self.config.tie_word_embeddings:
            return self.transformer.wte.weight
        return self.lm_head.weight

    def hidden_states(
        self, idx, attention_mask=None, cache: KVCache | None = None, last: int | None = None
    ):
        """Final hidden states (after ln_f) for token ids idx (B, T): (B, T, C), or
        (B, min(last, T), C) for the last `last` positions only.

        attention_mask (B, T): 1 for real tokens, 0 for pads; PAD_ID is a pad whatever the mask
        says. Pads may sit anywhere: each row gives exactly what the row without its pads gives,
        and a pad's output is the last real token's before it (as lm-human-preferences). Pads are
        masked out of attention, get id 0 for the embedding lookup (PAD_ID is outside the
        vocabulary) and do not advance the position ids: positions are the exclusive cumsum of the
        mask, as in lm-human-preferences (positions_for). With a cache, idx are the next tokens
        after those already cached, and the first call's pads must be on the left (generate
        left-aligns its prompts).

        `last` (not with a cache) is for callers that read only the last positions (the response
        log-probs and values, the reward at the last token): the final block then computes its
        queries, attention output, MLP and ln_f at those positions only, over the keys and values
        of every position, which earlier blocks still compute everywhere. At 124M with 64 + 24
        tokens that is about 5% of a forward and backward. Equal to hidden_states(...)[:, -last:]
        up to float rounding (GEMMs of other shapes).
        """
        B, T = idx.shape
        if last is not None and (cache is not None or last < 1):
            raise ValueError(
                f"hidden_states: last={last}: give a positive number of positions, without a KV "
                "cache"
            )
        last = None if last is None or last >= T else last
        mask = real_tokens(idx, attention_mask)  # (B, T)
        if cache is None and not is_left_padded(mask):
            # pads after real tokens (OpenAI's right-padded queries, truncated responses): run
            # the left-aligned rows, the only layout the Triton kernel supports, then put each
            # output back in its place (pads: the last real token's output). Left-aligning moves
            # real tokens right, never left, so the last n positions read from the last n.
            n = T if last is None else last
            h = self.hidden_states(*left_align(idx, mask), last=last)  # (B, n, C)
            index = unalign_index(mask)[:, T - n :] - (T - n)  # (B, n)
            return h.gather(1, index[..., None].expand_as(h))
        if cache is None:
            # (B, T) exclusive cumsum: real tokens get 0, 1, 2, ...
            pos = torch.cumsum(mask, dim=1) - mask.long()
            # no mask at all lets attention take its fastest path
            key_mask = None if bool(mask.all()) else mask
        else:
            # (B, 1) real tokens already cached
            seen = cache.key_mask[:, : cache.len].sum(1, keepdim=True)
            pos = seen + torch.cumsum(mask, dim=1) - mask.long()
            cache.key_mask[:, cache.len : cache.len + T] = mask
            # one sync at the prefill (decode tokens are real)
            cache.padded = cache.padded or not bool(mask.all())
            key_mask = None  # the attention layers read the cache's mask
        # bounds every position id without a device sync
        end = T + (cache.len if cache is not None else 0)
        if end > self.config.n_positions:
            raise ValueError(
                f"sequence of {end} tokens exceeds n_positions={self.config.n_positions}"
            )
        idx = idx.masked_fill(~mask, 0)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        checkpointing = self.grad_checkpoint and cache is None and torch.is_grad_enabled()
        final = len(self.transformer.h) - 1
        for i, block in enumerate(self.transformer.h):
            keep = last if i == final else None  # the final block: the wanted positions only
            if checkpointing:
                # non-reentrant: works with inputs that need no grad, restores autocast on recompute
                x = torch.utils.checkpoint.checkpoint(
                    block, x, key_mask, None, keep, use_reentrant=False
                )
            else:
                x = block(x, key_mask, cache, keep)
        if cache is not None:
            cache.len += T
        return self.transformer.ln_f(x)  # (B, T, C) or (B, last, C)

    def response_states(self, idx, attention_mask, n_response: int):
        """(B, R, C): the hidden state before each of the last R = n_response tokens of idx (B, T),
        the state that predicts that token, where log-probs and values are read. The final block
        runs at the last R + 1 positions only (`last`), and the state after the last token, which
        predicts nothing in the sequence, is dropped."""
        return self.hidden_states(idx, attention_mask, last=n_response + 1)[:, :-1]

    def forward(self, idx, attention_mask=None):
        """Logits (B, T, V) for token ids idx (B, T). For training on long batches, prefer
        response_logprobs, which computes the logits at the response positions only, a chunk at a
        time."""
        return self.hidden_states(idx, attention_mask) @ self.lm_head_weight.T  # (B, T, V)

    # ----------------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_config(cls, config: GPT2Config | str) -> "GPT2":
        """A randomly initialized model (GPT-2 initialization) from a config or a preset name."""
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"unknown preset {config!r}; presets: {', '.join(PRESETS)}")
            config = dataclasses.replace(PRESETS[config])
        return cls(config)

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str, device="cpu", dtype=torch.float32, use_kernels="auto"
    ) -> "GPT2":
        """Load GPT-2 from a Hugging Face layout directory (config.json + model.safetensors or
        pytorch_model.bin), a ppo.py run folder (its policy/), or a hub name (gpt2, gpt2-medium,
        gpt2-large, gpt2-xl, openai-community/...), downloaded once into the standard Hugging Face
        cache; or "tiny": PRESETS["tiny"] fitted once to the shipped passages and cached on disk
        (machinery/tiny.py). The files are read and checked by machinery/hf.py: ValueError for an
        unknown name or a config or tensor GPT-2 cannot match, FileNotFoundError for a missing
        file, RuntimeError for a failed download."""
        if name_or_dir == "tiny":
            model = tiny.load(cls, PRESETS["tiny"], encode, EOT_ID, use_kernels)
        else:
            folder = hf.resolve_checkpoint(name_or_dir)
            model = hf.load_model(folder, cls, read_config(folder, use_kernels))
        return model.to(device=device, dtype=dtype).eval()


def read_config(name_or_dir, use_kernels: str = "auto") -> GPT2Config:
    """The GPT2Config of a checkpoint (a folder, a ppo.py run folder or a hub name, as
    from_pretrained takes), from its config.json alone (machinery/hf.py::read_hf_config)."""
    path = hf.resolve_checkpoint(name_or_dir) / "config.json"
    return GPT2Config(**hf.read_hf_config(path, ACTIVATIONS), use_kernels=use_kernels)


def save_pretrained(model: GPT2, folder) -> Path:
    """Write model to `folder` in the Hugging Face GPT-2 layout (config.json with every setting of
    model.config, machinery/hf.py::hf_config; model.safetensors, with lm_head.weight if untied;
    the tokenizer's vocab.json, merges.txt and tokenizer_config.json), so transformers'
    GPT2LMHeadModel, AutoTokenizer and pipeline, and our from_pretrained, all load the same model.
    Parameter names and (in, out) layouts are already the checkpoints' (see the model), so this is
    a plain copy, written atomically: a process killed at any moment leaves the previous folder or
    the new one whole (machinery/hf.py::write_checkpoint). Returns the folder's absolute path."""
    config = hf.hf_config(model.config, EOT_ID)
    files = tokenizer.hf_tokenizer_files(model.config.n_positions)  # for transformers' tokenizer
    return hf.write_checkpoint(folder, config, model.state_dict(), files)


# --------------------------------------------------------------------------------------------------
# Tokenizer and padding


def get_tokenizer():
    """tiktoken's 'gpt2' encoding (the same BPE as the checkpoints). Encode text with `encode`.
    Its files: tiktoken's cache ($TIKTOKEN_CACHE_DIR, else the checkout's .tiktoken_cache/) or a
    download; with neither, a one-line SystemExit says what to put where (machinery/tokenizer.py)"""
    return tokenizer.gpt2_encoding()


def encode(text: str) -> list[int]:
    """GPT-2 token ids of text, the one place the project encodes text.

    Everything is plain text, "<|endoftext|>" included: OpenAI's encoder had no special tokens, so
    a passage quoting it gets the same 8 tokens it got there, never id 50256 (tiktoken's encode
    would refuse it as a disallowed special token). Code that means <|endoftext|> appends EOT_ID.
    Lone surrogates (from JSON escapes like "\ud800") become U+FFFD, as tiktoken does."""
    return get_tokenizer().encode_ordinary(text)


def left_pad(seqs, pad_id=PAD_ID, device="cpu"):
    """Left-pad token lists into (tokens (B, T) long, mask (B, T) bool), so every row's last
    token is real.

    PAD_ID inside a list is dropped first: OpenAI's files right-pad queries and responses with it,
    and a list with pads anywhere must give exactly what the list without them gives."""
    seqs = [[t for t in map(int, s) if t != PAD_ID] for s in seqs]
    T = max((len(s) for s in seqs), default=0)
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            tokens[i, T - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, T - len(s) :] = True
    return tokens.to(device), mask.to(device)


def real_tokens(tokens, attention_mask=None):
    """(B, T) bool: the mask, less every PAD_ID (a pad is a pad whatever the mask says)."""
    mask = tokens != PAD_ID
    return mask if attention_mask is None else mask & attention_mask.bool()


def is_left_padded(mask) -> bool:
    """No pad after a real token in any row (mask (B, T) bool). One device sync."""
    return not bool((mask[:, :-1] & ~mask[:, 1:]).any())


def left_align(tokens, mask):
    """Move each row's pads to its left end, real tokens keeping their order: (tokens, mask) with
    the same shape, left-padded, as the Triton attention kernel and the KV cache need. The real
    tokens are those of left_pad(the rows without their pads), padded to the same width, so every
    result computed from it is exactly theirs."""
    # pads (0) first, stable
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices  # (B, T)
    return tokens.gather(1, order), mask.gather(1, order)


def unalign_index(mask):
    """(B, T) long: for each position of the original layout, where its output sits after
    left_align. A real token reads its own output; a pad reads the output of the last real token
    before it, as lm-human-preferences fills pad positions (model.py, `index_each`), so the state
    "before the next token" is right even with pads in between; a leading pad reads a pad."""
    T = mask.size(1)
    n = mask.sum(1, keepdim=True)  # (B, 1) real tokens per row
    seen = mask.long().cumsum(1)  # (B, T) real tokens up to and including each position
    own = torch.arange(T, device=mask.device).expand_as(seen)
    return torch.where(seen > 0, T - n + seen - 1, own)


# --------------------------------------------------------------------------------------------------
# Sampling


def filter_logits(logits, top_k=0, top_p=1.0):
    """Set logits outside the top-k / the top-p nucleus to -inf. logits: (B, V)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_inverse_cdf(probs, generator=None):
    """One draw per row of probs (B, V): the first token whose cumulative probability exceeds u ~
    U[0, total). Exact, and on CPU ~50x cheaper than torch.multinomial, whose exponential draw
    over all V tokens took ~9 ms of a ~70 ms decoding step at batch 8 (measured, 2 cores). A
    zero-probability token is never chosen (right=True)."""
    cdf = probs.cumsum(-1)  # (B, V)
    # (B, 1)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=probs.size(-1) - 1)


@torch.no_grad()
def generate(
    model: GPT2,
    tokens,
    attention_mask=None,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    stop_token: int | None = None,
):
    """Continue a left-padded batch of prompts with a pre-allocated KV cache.

    tokens, attention_mask: (B, T), pads anywhere (mask 0 or PAD_ID): a prompt gives exactly what
    it gives without them. Returns (new_tokens (B, R), logprobs (B, R)), R =
    max_new_tokens: every row gets exactly R tokens, as in the paper (EOS does not stop sampling),
    unless stop_token is given; then a row's tokens after its stop token are PAD_ID with log-prob 0,
    and sampling ends early once every row has stopped. logprobs are of the sampled tokens under the
    tempered distribution softmax(logits / temperature), before top-k / top-p, the quantity PPO's
    ratio and KL use (the paper samples with neither).
    """
    B, T = tokens.shape
    temperature = max(temperature, 1e-10)  # as lm-human-preferences: T = 0 would divide by zero
    # keys and values are written in the dtype the attention matmuls read (bf16 under autocast)
    cache_dtype = amp.autocast_dtype(tokens) or model.lm_head_weight.dtype
    cache = KVCache(model.config, B, T + max_new_tokens, tokens.device, cache_dtype)
    # pads anywhere (PAD_ID or mask 0) move to the left: the same prompts, and the last position
    # is real
    tokens, mask = left_align(tokens, real_tokens(tokens, attention_mask))
    # (B, C) prefill
    h = model.hidden_states(tokens, mask, cache)[:, -1]
    out_tokens = torch.full((B, max_new_tokens), PAD_ID, dtype=torch.long, device=tokens.device)
    out_logprobs = torch.zeros(B, max_new_tokens, device=tokens.device)
    done = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    for t in range(max_new_tokens):
        # W @ hᵀ, not h @ Wᵀ: BLAS then streams the (V, C) weight in its stored row order, which at
        # decoding's small batches is ~1.6x faster on CPU (14.6 vs 23.4 ms at B = 8 for GPT-2's 154
        # MB head, 2 cores); same values
        logits = (model.lm_head_weight @ h.T).T.float() / temperature  # (B, V)
        logprobs = F.log_softmax(logits, dim=-1)
        if greedy:
            nxt = logits.argmax(-1)  # (B,)
        else:
            probs = (
                logprobs.exp()
                if top_k == 0 and top_p >= 1.0
                else F.softmax(filter_logits(logits, top_k, top_p), -1)
            )
            nxt = sample_inverse_cdf(probs, generator)  # (B,)
        lp = logprobs.gather(-1, nxt[:, None])[:, 0]  # (B,)
        out_tokens[:, t] = torch.where(done, PAD_ID, nxt)
        out_logprobs[:, t] = torch.where(done, 0.0, lp)
        if stop_token is not None:
            done |= nxt == stop_token
            if bool(done.all()):
                return out_tokens[:, : t + 1], out_logprobs[:, : t + 1]
        if t + 1 < max_new_tokens:
            h = model.hidden_states(
                nxt[:, None], torch.ones(B, 1, dtype=torch.bool, device=tokens.device), cache
            )
            h = h[:, -1]  # (B, C)
    return out_tokens, out_logprobs


# --------------------------------------------------------------------------------------------------
# Per-token log-probs without the full (N, V) logits (gpt2_kernels.token_logprobs)


def response_logprobs(
    model: GPT2, tokens, attention_mask, n_response: int, temperature: float = 1.0
):
    """Per-token log-probs and entropy of the last n_response tokens of each row, in one forward
    pass.

    tokens, attention_mask: (B, T) = query + response, pads anywhere (mask 0 or PAD_ID). Returns
    logprobs (B, R), entropy (B, R) (0 where the response token is a pad) and h (B, R, C), the
    hidden state before each response token (it predicts that token; at a pad: the last real
    token's), which a value head reads.
    """
    B, T = tokens.shape
    R = n_response
    hidden = model.response_states(tokens, attention_mask, R)  # (B, R, C)
    # the LM head's GEMM in the autocast dtype (fp32 accumulation, fp32 softmax statistics): both
    # token_logprobs paths run their GEMMs in hidden's dtype, autocast or not
    h = hidden if amp.autocast_dtype(hidden) is None else hidden.to(amp.autocast_dtype(hidden))
    real = real_tokens(tokens, attention_mask)[:, T - R :]  # (B, R)
    targets = tokens[:, T - R :].masked_fill(~real, 0)  # (B, R)
    lp, ent = gpt2_kernels.token_logprobs(
        h.reshape(B * R, -1),
        model.lm_head_weight,
        targets.reshape(-1),
        temperature,
        model.config.use_kernels,
    )
    return lp.view(B, R).masked_fill(~real, 0.0), ent.view(B, R).masked_fill(~real, 0.0), hidden


# --------------------------------------------------------------------------------------------------
# Command line: sample continuations of prompts, all as one batch


@dataclass
class SampleArgs:
    model: str = "gpt2"
    """a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a directory in the Hugging Face
    layout, a ppo.py run folder (its policy/), or tiny (the 2-layer model fitted to the shipped
    passages, fitted once if needed)"""
    prompt: list[str] = field(default_factory=lambda: ["Hello, my name is"])
    """a prompt; repeat --prompt for several (they run as one left-padded batch)"""
    max_new_tokens: int = 40
    """tokens to sample per prompt"""
    temperature: float = 0.7
    """softmax temperature (the paper's style tasks use 0.7)"""
    top_k: int = 0
    """keep only the k most likely tokens (0: off, as in the paper)"""
    top_p: float = 1.0
    """nucleus sampling mass (1.0: off, as in the paper)"""
    greedy: bool = False
    """take the most likely token each step"""
    seed: int = 0
    """random seed"""
    stop_at_eos: bool = False
    """stop a continuation at <|endoftext|> (the paper never stops early)"""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu' or 'cuda'"""
    kernels: str = "auto"
    """Triton kernels: 'auto' (on CUDA), 'on', 'off'"""
    export: str = ""
    """instead of sampling, write the model to this directory in the Hugging Face layout
    (config.json, model.safetensors and the tokenizer's files) and exit"""
    overwrite: bool = False
    """with --export: replace the model an earlier --export wrote there"""


def main(argv=None):
    args = cli.parse(SampleArgs, argv, description="Sample continuations of prompts from GPT-2.")
    if args.export:  # before the model loads: hf.write_checkpoint replaces the folder whole
        own = ("config.json", "model.safetensors", *tokenizer.HF_FILES)
        cmd = cli.rerun("gpt2.py", argv)
        cli.check_folder_output(args.export, "--export", args.overwrite, cmd, own)
    device = cli.pick_device(args.device)
    enc = get_tokenizer()
    try:
        model = GPT2.from_pretrained(args.model, device=device, use_kernels=args.kernels)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"error: {e}")
    if args.export:
        folder = save_pretrained(model, args.export)
        names = ", ".join(sorted(p.name for p in folder.iterdir()))
        print(f"wrote {args.model} to {folder}: {names}")
        return
    # prompts are plain text, "<|endoftext|>" included (as every text in the project)
    tokens, mask = left_pad([encode(p) for p in args.prompt], device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    new, _ = generate(
        model,
        tokens,
        mask,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.greedy,
        gen,
        stop_token=EOT_ID if args.stop_at_eos else None,
    )
    for prompt, row in zip(args.prompt, new.tolist()):
        text = enc.decode([t for t in row if t < model.config.vocab_size])
        print(f"=== {prompt!r}\n{prompt}{text}\n")


if __name__ == "__main__":
    cli.run_main(main)  # expected errors and Ctrl-C: one line each
