"""
The tasks of lm-human-preferences, written once: their settings, where queries come from, how a
query and a response are cut, the -1 penalty, the scripted ("mock") labelers, and the small base
model used on CPU.

reward.py and ppo.py both import this file. It follows openai/lm-human-preferences (launch.py,
lm_tasks.py, language/datasets.py, datasets/*.py; more in docs/) and says where it differs:

  * Books. OpenAI's book passages are lost (openai/lm-human-preferences#17) and BookCorpus is not
    redistributable, so the style tasks (sentiment, descriptiveness) read a prompt set this repo
    writes itself: 600 short story passages from a seeded story grammar (assets/make_passages.py;
    assets/book_passages/{train,test}.jsonl, the same one JSON string per line as OpenAI's files).
    Everything runs offline with them.
  * TL;DR and CNN/DM queries, and OpenAI's released human labels, download on demand (progress bar,
    cached under $RLHF_CACHE or ~/.cache/rlhf-gpt2). ftfy.fix_text, which OpenAI ran on those texts,
    is used only if installed.
  * Padding. OpenAI right-pads each query to query_length with token 50259 and then adds the
    prefix/suffix, so pads can sit in the middle of a context. We keep queries as unpadded token
    lists and gpt2.left_pad pads the whole context on the left. The two are the same computation:
    pads are masked out of attention and position ids are the exclusive cumsum of the mask
    (gpt2.GPT2.hidden_states, as OpenAI's model.py), so every real token sees the same tokens at the
    same positions and the last position is the last real token. Left padding only makes that last
    position the same column for every row, which batched sampling needs.
  * Scripted labelers. The paper's "mock sentiment" labeler was a sentiment classifier trained on
    review data. Ours are lexicons written for this project (assets/lexicon/), transparent and
    instant: `sentiment` counts positive minus negative words (a negator within 3 words before flips
    a word), `descriptiveness` counts sensory words.
  * Model "tiny". A 2-layer GPT-2 (gpt2.PRESETS["tiny"]) fitted for about half a minute on the
    shipped passages so that it writes words (and sentiment words) on a CPU; cached on disk by a
    hash of data + config (see fit_tiny).

Run it to look at a task's queries and the scripted labelers' scores:
    python tasks.py --task sentiment --n 4
    # also sample 24-token continuations and score them
    python tasks.py --task sentiment --n 8 --model tiny

Shape letters: B = batch, Q = query length, R = response length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import cli
from gpt2 import EOT_ID, GPT2, PAD_ID, PRESETS, encode, get_tokenizer
from labels import TASK_INSTRUCTIONS

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
OPENAI_BASE = "https://openaipublic.blob.core.windows.net/lm-human-preferences/"

# --------------------------------------------------------------------------------------------------
# Task definitions (the released code's launch.py books_task / summarize_*_task,
# lm_tasks.py::TaskHParams)


@dataclass(frozen=True)
class TaskConfig:
    name: str
    """task name: sentiment, descriptiveness, tldr, cnndm"""
    query_dataset: str
    """where queries come from: books (the shipped passages), tldr, cnndm"""
    query_length: int
    """tokens kept of the raw query (before prefix/suffix)"""
    response_length: int
    """tokens the policy writes"""
    query_prefix: str = ""
    """text put before every query for the policy (the reward model sees the raw query, as
    OpenAI's code)"""
    query_suffix: str = ""
    """text put after every query for the policy"""
    start_text: str | None = "."
    """a query starts right after the first occurrence of this token (None: at the start of the
    text)"""
    end_text: str | None = None
    """a query ends after the last occurrence of this token inside its query_length window (None:
    no cut)"""
    truncate_token: int | None = None
    """responses end at the first occurrence of this token at index >= truncate_after (13 '.',
    198 newline)"""
    truncate_after: int = 0
    """the stop token must come at or after this response index for the response to count as
    valid"""
    temperature: float = 1.0
    """sampling temperature of the policy (and of rho, the initial policy, when collecting
    comparisons)"""
    penalty_reward_value: float = -1.0
    """the score a response without its stop token gets instead of the reward model's score"""
    instruction: str = ""
    """one line shown to labelers"""


_BOOKS = dict(
    query_dataset="books",
    query_length=64,
    response_length=24,
    start_text=".",
    end_text=".",
    truncate_token=13,
    truncate_after=16,
    temperature=0.7,
)
TASKS: dict[str, TaskConfig] = {
    "sentiment": TaskConfig(name="sentiment", **_BOOKS, instruction=TASK_INSTRUCTIONS["sentiment"]),
    "descriptiveness": TaskConfig(
        name="descriptiveness", **_BOOKS, instruction=TASK_INSTRUCTIONS["descriptiveness"]
    ),
    "tldr": TaskConfig(
        name="tldr",
        query_dataset="tldr",
        query_length=500,
        response_length=75,
        query_suffix="\n\nTL;DR:",
        start_text=None,
        end_text=None,
        truncate_token=198,
        truncate_after=55,
        temperature=0.7,
        instruction=TASK_INSTRUCTIONS["tldr"],
    ),
    "cnndm": TaskConfig(
        name="cnndm",
        query_dataset="cnndm",
        query_length=500,
        response_length=75,
        query_prefix="Article:\n\n",
        query_suffix="\n\nTL;DR:",
        start_text=None,
        end_text="\n",
        truncate_token=198,
        truncate_after=55,
        temperature=0.5,
        instruction=TASK_INSTRUCTIONS["cnndm"],
    ),
}


def get_task(name: str | TaskConfig) -> TaskConfig:
    if isinstance(name, TaskConfig):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


# --------------------------------------------------------------------------------------------------
# Queries (the released code's language/datasets.py::Dataset.tf_dataset,
# lm_tasks.py::query_formatter)


def single_token(text: str | None) -> int | None:
    """The one token id of start_text/end_text (OpenAI: `start_token, =
    encoder.encode(start_text)`)."""
    if text is None:
        return None
    ids = encode(text)
    if len(ids) != 1:
        raise ValueError(f"start/end text {text!r} must be a single GPT-2 token, got {ids}")
    return ids[0]


def build_query(
    tokens: list[int], query_length: int, start_token: int | None, end_token: int | None
):
    """Cut a text's tokens into a raw query, or None when the text has no usable query (OpenAI skips
    it).

    1. start after the first start_token (kept whole if that token is the text's last one; skipped
       if it is absent);
    2. keep the first query_length tokens;
    3. end after the last end_token in that window (skipped if there is none).
    OpenAI then right-pads to query_length; we leave padding to gpt2.left_pad (see the module
    docstring).
    """
    if start_token is not None:
        if start_token not in tokens:
            return None
        first = tokens.index(start_token) + 1
        if first < len(tokens):
            tokens = tokens[first:]
    tokens = tokens[:query_length]
    if end_token is not None:
        if end_token not in tokens:
            return None
        tokens = tokens[: len(tokens) - tokens[::-1].index(end_token)]
    return tokens or None


def format_query(task: TaskConfig, raw: list[int]) -> list[int]:
    """What the policy reads: prefix + raw query + suffix. The reward model reads the raw query
    (OpenAI's rewards.py concatenates the raw query with the response; paper-spec §1.2 item 7).
    For the style tasks prefix and suffix are empty, so the two are the same."""
    return encode(task.query_prefix) + list(raw) + encode(task.query_suffix)


def shipped_passages(split: str) -> list[str]:
    """The repo's own story passages (assets/book_passages/{train,test}.jsonl)."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: the shipped passages have 'train' and 'test'")
    return read_jsonl_texts(ASSETS / "book_passages" / f"{split}.jsonl")


def read_text_lines(path) -> list[str]:
    """The lines of a UTF-8 text file. A line that is not UTF-8 is an error naming the file and
    line (a text must survive being encoded, shown and written back)."""
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    out = []
    for i, raw in enumerate(raw_lines, 1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}:{i}: not UTF-8 ({e.reason} at byte {e.start} of the line); save the file "
                f"as UTF-8"
            ) from None
    return out


def read_jsonl_texts(path) -> list[str]:
    """A JSON-lines file of strings (one passage per line), blank lines skipped; errors name the
    file and line."""
    out = []
    for i, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not valid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(text, str):
            raise ValueError(f"{path}:{i}: expected a JSON string, got {type(text).__name__}")
        out.append(text)
    return out


class QuerySource:
    """A deterministic, resumable, endless stream of queries for a task.

    Like OpenAI's dataset: the texts are shuffled once with a fixed seed (OpenAI's is always 0,
    independent of the run's seed; lm-human-preference-details calls that a probable bug, so
    `seed` is exposed, default 0) and repeated in that same order. Texts whose query cannot be
    built are skipped and counted in `n_skipped`. Texts are tokenized on demand, so a large query
    set (TL;DR) starts at once.
    """

    def __init__(self, task: str | TaskConfig, split: str = "train", seed: int = 0):
        self.task = get_task(task)
        self.split, self.seed = split, seed
        self.items, self.text_of = query_items(self.task.query_dataset, split)
        if not self.items:
            raise ValueError(f"task {self.task.name}, split {split}: no query texts")
        self.order = list(range(len(self.items)))
        random.Random(seed).shuffle(self.order)
        self.start_token, self.end_token = (
            single_token(self.task.start_text),
            single_token(self.task.end_text),
        )
        self.pos, self.epoch, self.n_skipped = 0, 0, 0

    def _next_raw(self) -> list[int]:
        for _ in range(len(self.items)):  # at most one full pass looking for a usable text
            item = self.items[self.order[self.pos]]
            self.pos += 1
            if self.pos == len(self.items):
                self.pos, self.epoch = 0, self.epoch + 1
            q = build_query(
                encode(self.text_of(item)),  # "<|endoftext|>" in a text is plain text
                self.task.query_length,
                self.start_token,
                self.end_token,
            )
            if q is not None:
                return q
            self.n_skipped += 1
        raise ValueError(
            f"task {self.task.name}: no text in split {self.split} gives a query "
            f"(start_text={self.task.start_text!r}, end_text={self.task.end_text!r})"
        )

    def next_batch(self, B: int, formatted: bool = True) -> list[list[int]]:
        """B queries as token lists: with prefix/suffix (formatted=True, what the policy reads)
        or raw (what the reward model and the comparison files hold)."""
        raw = [self._next_raw() for _ in range(B)]
        return [format_query(self.task, q) for q in raw] if formatted else raw

    def state_dict(self) -> dict:
        return dict(
            task=self.task.name,
            split=self.split,
            seed=self.seed,
            pos=self.pos,
            epoch=self.epoch,
            n_skipped=self.n_skipped,
        )

    def load_state_dict(self, state: dict) -> None:
        if (state["task"], state["split"], state["seed"]) != (
            self.task.name,
            self.split,
            self.seed,
        ):
            raise ValueError(
                f"query state is for task={state['task']} split={state['split']} "
                f"seed={state['seed']}, "
                f"not task={self.task.name} split={self.split} seed={self.seed}"
            )
        self.pos, self.epoch, self.n_skipped = state["pos"], state["epoch"], state["n_skipped"]


# --------------------------------------------------------------------------------------------------
# Responses (the released code's lm_tasks.py::postprocess_fn_from_hparams, filter_fn_from_hparams)


def truncate_responses(responses: torch.Tensor, task: TaskConfig):
    """Cut each response after its stop token and say which responses have one.

    responses (B, R) long -> (truncated (B, R): PAD_ID after the first truncate_token at index >=
    truncate_after, the stop token itself kept; valid (B,) bool: such a stop token exists). A
    response without one is left whole (OpenAI's mask is all zero then) and is invalid: its score is
    replaced by the penalty (see `penalize`). Only the score uses the truncated response; PPO's
    log-probs and KL use all R sampled tokens (paper-spec §1.6).
    """
    B, R = responses.shape
    if task.truncate_token is None:
        return responses.clone(), torch.ones(B, dtype=torch.bool, device=responses.device)
    is_stop = responses == task.truncate_token  # (B, R)
    is_stop[:, : task.truncate_after] = False  # stops before truncate_after do not count
    # (B, R) strictly after the first counted stop
    after_stop = (is_stop.long().cumsum(1) - is_stop.long()) > 0
    return responses.masked_fill(after_stop, PAD_ID), is_stop.any(1)


def penalize(scores: torch.Tensor, valid: torch.Tensor, task: TaskConfig) -> torch.Tensor:
    """Score of each response: the reward model's where valid, else penalty_reward_value (a
    replacement, not an addition, as OpenAI's train_policy.py::make_score_fn). scores, valid:
    (B,)."""
    return torch.where(valid, scores, torch.full_like(scores, task.penalty_reward_value))


def strip_pad(tokens) -> list[int]:
    """Real tokens of one row (PAD_ID dropped), e.g. a truncated response for saving or decoding."""
    return [int(t) for t in tokens if int(t) != PAD_ID]


# --------------------------------------------------------------------------------------------------
# Downloads: OpenAI's released labels and the summarization query sets (paper-spec §5)

OPENAI_LABELS = {
    "sentiment": "labels/sentiment/offline_5k.json",
    "descriptiveness": "labels/descriptiveness/offline_5k.json",
    "tldr": "labels/tldr/online_45k.json",
    "cnndm": "labels/cnndm/online_45k.json",
}


class DownloadError(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where downloads and the fitted tiny model live: $RLHF_CACHE, else ~/.cache/rlhf-gpt2."""
    return Path(os.environ.get("RLHF_CACHE", "~/.cache/rlhf-gpt2")).expanduser()


def download(url: str, dest: Path) -> Path:
    """Fetch url to dest once (a progress bar while it runs; written to dest.part, then renamed,
    so an interrupted download never looks finished). Raises DownloadError naming the url and how
    to fetch it by hand."""
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"could not download {url} ({getattr(e, 'reason', e)}). This machine may be offline: "
            f"fetch it elsewhere and put it at {dest}, e.g. `curl -L -o {dest} {url}`"
        ) from None
    part.rename(dest)
    return dest


def download_openai(relpath: str) -> Path:
    """A file of OpenAI's public bucket
    (https://openaipublic.blob.core.windows.net/lm-human-preferences/...)."""
    return download(OPENAI_BASE + relpath, cache_dir() / "openai" / relpath)


def download_labels(task: str) -> Path:
    """OpenAI's released human labels for a task (the files launch.py trains on), downloaded
    once."""
    if task not in OPENAI_LABELS:
        raise ValueError(
            f"no released labels for task {task!r}; tasks with labels: {', '.join(OPENAI_LABELS)}"
        )
    return download_openai(OPENAI_LABELS[task])


def iter_json_list(path: Path, chunk: int = 1 << 20):
    """The elements of a JSON list file, one at a time, so TL;DR's 4.5 GB train-subset.json never
    sits in memory."""
    try:
        yield from _iter_json_list(path, chunk)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason}); save the file as UTF-8") from None


def _iter_json_list(path: Path, chunk: int):
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf = f.read(chunk).lstrip()
        if not buf.startswith("["):
            raise ValueError(f"{path}: expected a JSON list")
        buf, eof = buf[1:], False
        while True:
            buf = buf.lstrip().removeprefix(",").lstrip()
            if buf.startswith("]"):
                return
            try:
                obj, end = dec.raw_decode(buf)  # elements are objects: a cut-off one never decodes
            except json.JSONDecodeError:
                if eof:
                    raise
                more = f.read(chunk)
                eof, buf = not more, buf + more
                continue
            yield obj
            buf = buf[end:]


def _fix_text(text: str) -> str:
    try:
        import ftfy  # optional: OpenAI ran ftfy.fix_text on TL;DR and CNN/DM texts

        return ftfy.fix_text(text)
    except ImportError:
        return text


def clean_tldr(text: str) -> str:
    """As the released code's datasets/tldr.py: ftfy, collapse 3+ newlines to 2, strip."""
    return re.sub(r"\n{3,}", "\n\n", _fix_text(text)).strip()


def clean_cnndm(text: str) -> str:
    """As the released code's datasets/cnndm.py: drop bylines and "(CNN) --" openers, ftfy,
    collapse newlines, cut at @highlight."""
    if text[:2] == "By":
        text = "\n".join(text.split("\n")[2:])
    text = re.split(r"\(CNN\) +--", text)[-1]
    text = re.split(r"\(CNN\)", text[:100])[-1] + text[100:]
    text = re.sub(r"^and \w+\n", "", text)
    # sic: a char class
    text = re.split(r".*UPDATED:\s+[0-9]{2}:[0-9]{2}.*[2011|2012|2013|2014|2015]", text)[-1]
    text = text.replace("\u2019", "'").replace("\u2018", "'").strip()
    text = re.sub(r"\n{3,}", "\n\n", _fix_text(text))
    return text.split("@highlight")[0].strip()


def cnndm_story_path(url: str, split: str) -> str:
    """As the released code's cnndm.py::get_path_of_url: the cached story file of an article url."""
    site = (
        "dailymail"
        if any(s in url for s in ("dailymail.co.uk", "mailonsunday.ie", "lib.store.yahoo.net"))
        else "cnn"
    )
    digest = hashlib.sha1(url.encode()).hexdigest()
    return f"datasets/cnndm/cache_{split}/{site}/stories/{digest}.story"


def query_items(dataset: str, split: str):
    """(items, text_of) for a query dataset: text_of(item) gives the text, fetched lazily where
    that is costly."""
    if dataset == "books":
        return shipped_passages(split), lambda t: t
    if dataset == "tldr":
        # OpenAI has no TL;DR test set: "validation set serves as training set" (tldr.py maps test
        # -> valid).
        mode = {"train": "train", "test": "valid", "valid": "valid"}[split]
        path = download_openai(f"tldr/{mode}-subset.json")
        # Keep the first 8 characters per query token: far more than 500 tokens of text, and a few
        # GB less memory.
        keep = 8 * 500
        return [
            clean_tldr(d["content"])[:keep]
            for d in tqdm(iter_json_list(path), desc="read TL;DR", unit=" posts")
        ], lambda t: t
    if dataset == "cnndm":
        mode = {"train": "train", "test": "test", "valid": "val"}[split]
        url_list = download_openai(f"datasets/cnndm/url_lists/all_{mode}.txt")
        urls = [line.strip() for line in read_text_lines(url_list) if line.strip()]
        return urls, lambda url: clean_cnndm(
            "\n".join(read_text_lines(download_openai(cnndm_story_path(url, mode))))
        )
    raise ValueError(f"unknown query dataset {dataset!r}")


# --------------------------------------------------------------------------------------------------
# Scripted labelers (the paper's "mock" labeler, from lexicons written for this project)

NEGATORS = {
    "not",
    "no",
    "never",
    "nothing",
    "nobody",
    "none",
    "neither",
    "nor",
    "without",
    "hardly",
    "barely",
}
# a sentiment word counts with the opposite sign if a negator is among the 3 words before it
NEGATION_WINDOW = 3
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lowercase words of a text; <|endoftext|> is a separator, not a word."""
    return _WORD.findall(text.replace("<|endoftext|>", " ").lower())


def _lexicon(name: str) -> dict[str, int]:
    """assets/lexicon/<name>.txt: '+ word' / '- word' lines (sentiment) or bare words
    (descriptive = +1)."""
    out = {}
    for line in (ASSETS / "lexicon" / f"{name}.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sign, _, word = line.partition(" ")
        if sign in "+-" and word:
            out[word] = 1 if sign == "+" else -1
        else:
            out[line] = 1
    return out


SENTIMENT = _lexicon("sentiment")
DESCRIPTIVE = _lexicon("descriptive")


def is_negator(word: str) -> bool:
    return word in NEGATORS or word.endswith("n't")


def sentiment_score(text: str) -> float:
    """Net sentiment words per 10 words: 10 * (positive - negative) / max(#words, 1), with negation.

    e.g. "She was happy, not sad." -> words [she, was, happy, not, sad]: +1 (happy) +1 (sad,
    negated) -> 10*2/5 = 4.0
    """
    ws = words(text)
    total = 0
    for i, w in enumerate(ws):
        if w in SENTIMENT:
            negated = any(is_negator(v) for v in ws[max(0, i - NEGATION_WINDOW) : i])
            total += -SENTIMENT[w] if negated else SENTIMENT[w]
    return 10.0 * total / max(len(ws), 1)


def descriptiveness_score(text: str) -> float:
    """Sensory/physical words per 10 words: 10 * #lexicon words / max(#words, 1).

    e.g. "The red door was cold." -> [the, red, door, was, cold]: red, cold -> 10*2/5 = 4.0
    """
    ws = words(text)
    return 10.0 * sum(w in DESCRIPTIVE for w in ws) / max(len(ws), 1)


class ScriptedLabeler:
    """Scores texts; picks the best of N by score. Ties are broken at random, seeded by the
    item's text, so the choice is reproducible and carries no position bias a reward model could
    learn from."""

    def __init__(self, name: str, score_fn):
        self.name, self.score_fn = name, score_fn

    def score(self, texts: list[str]) -> np.ndarray:
        return np.array([self.score_fn(t) for t in texts], dtype=np.float64)  # (B,)

    def pick_best(self, query: str, samples: list[str]) -> int:
        s = self.score(samples)
        best = np.flatnonzero(s == s.max())
        seed = int.from_bytes(
            hashlib.sha256(json.dumps([query, samples]).encode()).digest()[:8], "little"
        )
        return int(best[random.Random(seed).randrange(len(best))])


LABELERS = {"sentiment": sentiment_score, "descriptiveness": descriptiveness_score}


def get_labeler(name: str) -> ScriptedLabeler:
    if name not in LABELERS:
        raise ValueError(f"unknown scripted labeler {name!r}; valid: {', '.join(LABELERS)}")
    return ScriptedLabeler(name, LABELERS[name])


# --------------------------------------------------------------------------------------------------
# Base models: GPT-2 checkpoints, or "tiny" fitted briefly on the shipped passages


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


def tiny_cache_path(fit: TinyFitConfig = TinyFitConfig()) -> Path:
    """The cache file of the fitted tiny model, keyed by a hash of the passages, the model and
    the fit config."""
    h = hashlib.sha256()
    h.update((ASSETS / "book_passages" / "train.jsonl").read_bytes())
    h.update(repr(dataclasses.replace(PRESETS["tiny"], use_kernels="auto")).encode())
    h.update(repr(fit).encode())
    h.update(TINY_FIT_VERSION.encode())
    return cache_dir() / f"tiny-{h.hexdigest()[:16]}.pt"


# part of the cache key: bump when fit_tiny's method changes
TINY_FIT_VERSION = "shared-unseen-row-v1"


def seen_plus_unseen_logits(h, wte, seen, unseen_row, n_unseen: int):
    """Logits over the seen tokens plus one class standing for all n_unseen tokens that share the
    output row unseen_row: log_softmax of these equals the full-vocabulary log_softmax at the
    seen tokens (see fit_tiny). h (..., C), wte (V, C), seen (S,) ids, unseen_row (C,) -> (...,
    S+1)."""
    return torch.cat([h @ wte[seen].T, (h @ unseen_row)[..., None] + float(np.log(n_unseen))], -1)


def fit_tiny(fit: TinyFitConfig = TinyFitConfig()) -> GPT2:
    """Train gpt2.PRESETS['tiny'] from scratch as a language model on the training passages (packed,
    separated by <|endoftext|>), so samples are English-like sentences with the passages' words,
    sentiment words included.

    Speed trick, exact: the passages use only a few hundred of the 50,257 tokens (set S; the rest U
    never occurs). We tie the output vectors of all unseen tokens to one shared row u. A full
    softmax over the vocabulary then has |U| identical logits h.u, so it equals a softmax over S
    plus one extra class with logit h.u + log|U|: the same loss and gradients as full-vocabulary
    training with tied rows, at |S|+1 logits per token instead of 50,257. After the fit every unseen
    row is set to u, so the saved model is an ordinary GPT-2 whose unseen tokens carry exactly the
    (tiny) probability the fit gave them.
    """
    torch.manual_seed(fit.seed)
    model = GPT2.from_config(dataclasses.replace(PRESETS["tiny"]))
    stream = []
    for text in shipped_passages("train"):
        stream += encode(text) + [EOT_ID]
    data = torch.tensor(stream)  # (N,)
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


def load_base_model(name: str, device="cpu", use_kernels: str = "auto") -> GPT2:
    """The initial policy rho: a GPT-2 checkpoint (hub name or Hugging Face directory), or "tiny"
    (fitted once on the shipped passages and cached on disk, see tiny_cache_path)."""
    if name != "tiny":
        return GPT2.from_pretrained(name, device=device, use_kernels=use_kernels)
    config = dataclasses.replace(PRESETS["tiny"], use_kernels=use_kernels)
    path = tiny_cache_path()
    if path.exists():
        model = GPT2.from_config(config)
        try:  # tensors only: a cache file cannot run code
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.to(device).eval()
        except Exception as e:  # derived data: fit it again
            print(f"tasks: {path} is unreadable ({e}); fitting again", file=sys.stderr)
    print(
        f"tasks: fitting the tiny model on the shipped passages (once; cached at {path})",
        file=sys.stderr,
    )
    t0 = time.time()
    model = fit_tiny()
    # several processes may fit at once: each writes its own temporary file, the rename is atomic
    cli.atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    print(f"tasks: tiny model fitted in {time.time() - t0:.0f} s", file=sys.stderr)
    if use_kernels != model.config.use_kernels:
        model = GPT2.from_config(config)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Command line: show queries (and, with --model, sampled responses with their scripted scores)


@dataclass
class ShowArgs:
    task: str = "sentiment"
    """task whose queries to show"""
    split: str = "train"
    """query split: train or test"""
    n: int = 4
    """number of queries"""
    model: str = ""
    """if set (tiny, gpt2, ...), also sample one response per query and print both labelers'
    scores"""
    seed: int = 0
    """sampling seed"""


def main(argv=None):
    args = cli.parse(
        ShowArgs, argv, description="Show a task's queries and scripted-labeler scores."
    )
    task = get_task(args.task)
    print(json.dumps(dataclasses.asdict(task), indent=1))
    src = QuerySource(task, args.split)
    queries = src.next_batch(args.n)
    enc = get_tokenizer()
    if not args.model:
        for q in queries:
            print(f"--- query ({len(q)} tokens)\n{enc.decode(q)}")
        return
    from gpt2 import generate, left_pad

    model = load_base_model(args.model)
    tokens, mask = left_pad(queries)
    gen = torch.Generator().manual_seed(args.seed)
    # (B, R)
    resp, _ = generate(model, tokens, mask, task.response_length, task.temperature, generator=gen)
    truncated, valid = truncate_responses(resp, task)
    for q, r, v in zip(queries, truncated, valid.tolist()):
        text = enc.decode(strip_pad(r))
        print(
            f"--- query: {enc.decode(q)}\n    response{'' if v else ' (no stop token: penalty)'}: "
            f"{text!r}\n"
            f"    sentiment {sentiment_score(text):+.2f}  descriptiveness "
            f"{descriptiveness_score(text):.2f}"
        )


if __name__ == "__main__":
    main()
