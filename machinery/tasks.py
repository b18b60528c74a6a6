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
    resume, size/MD5/format checks; cached under $RLHF_CACHE or ~/.cache/rlhf-gpt2; the base URL
    can be replaced with $RLHF_DATA_URL), or come from local copies in the upstream format given by
    path (`query_data`, the --query-data option; layouts in LAYOUTS). ftfy.fix_text, which OpenAI
    ran on those texts, is used only if installed. Each query carries its reference summary (TL;DR:
    the post's `summary` field, the author's own TL;DR; CNN/DM: the @highlight lines).
  * Padding. OpenAI right-pads each query to query_length with token 50259 and then adds the
    prefix/suffix, so for summarization the pads sit in the middle, between the article and
    "TL;DR:". format_query builds exactly that layout for the summarization tasks; the model masks
    pad ids wherever they are and numbers real tokens by the exclusive cumsum of the mask
    (gpt2.GPT2.hidden_states, as OpenAI's model.py), so it computes what the context without pads
    would. The style tasks' queries are not padded (OpenAI's pads would only trail them):
    gpt2.left_pad pads the whole context on the left, which makes the last position the same
    column for every row, as batched sampling needs.
  * Scripted labelers. The paper's "mock sentiment" labeler was a sentiment classifier trained on
    review data. Ours use published scorers where one exists: `sentiment` is VADER's compound
    score (vaderSentiment, a lexicon rated by people), `rouge` (the summarization tasks) is ROUGE
    against the reference summary (Google's rouge-score). `descriptiveness` counts sensory words of
    a lexicon written for this project (assets/lexicon/descriptive.txt).
  * Model "tiny". A 2-layer GPT-2 (gpt2.PRESETS["tiny"]) fitted for about half a minute on the
    shipped passages so that it writes words (and sentiment words) on a CPU; cached on disk by a
    hash of data + config (machinery/tiny.py).

Run it to look at a task's queries and the scripted labelers' scores:
    python -m machinery.tasks --task sentiment --n 4
    # also sample 24-token continuations and score them
    python -m machinery.tasks --task sentiment --n 8 --model tiny

Shape letters: B = batch, Q = query length, R = response length.
"""

from __future__ import annotations

import base64
import codecs
import dataclasses
import hashlib
import http.client
import json
import os
import random
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpt2 import GPT2, PAD_ID, encode, get_tokenizer
from machinery import cli, summarization
from machinery.data import ASSETS, LAYOUTS, DataError, cache_dir, read_passages, shipped_passages
from machinery.labels import TASK_INSTRUCTIONS

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
    pad_query: bool = False
    """right-pad the raw query with PAD_ID to query_length before adding prefix and suffix, as
    OpenAI's code does, so the pads sit between the article and "TL;DR:" (on for summarization;
    for the style tasks, which have no suffix, OpenAI's pads would only trail the query and we
    leave them out)"""
    labeler: str = ""
    """the scripted labeler that stands in for people on this task (a key of LABELERS)"""
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
    "sentiment": TaskConfig(
        name="sentiment", **_BOOKS, labeler="sentiment", instruction=TASK_INSTRUCTIONS["sentiment"]
    ),
    "descriptiveness": TaskConfig(
        name="descriptiveness",
        **_BOOKS,
        labeler="descriptiveness",
        instruction=TASK_INSTRUCTIONS["descriptiveness"],
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
        pad_query=True,
        labeler="rouge",
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
        pad_query=True,
        labeler="rouge",
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
    """What the policy reads: prefix + raw query (+ PAD_ID up to query_length when
    task.pad_query) + suffix, OpenAI's query_formatter applied to its right-padded query.

    For TL;DR that is [post tokens, 50259 x (500 - len(post)), "\n\nTL;DR:"]: the pads sit in the
    middle. The model masks them and numbers real tokens by the exclusive cumsum of the mask
    (gpt2.GPT2.hidden_states), so this computes exactly what the context without the pads would.
    The reward model reads the raw query instead (OpenAI's rewards.py concatenates the raw query
    with the response): it never sees "Article:" or "TL;DR:". For the
    style tasks prefix and suffix are empty and nothing is padded, so the two are the same.
    """
    pads = [PAD_ID] * (task.query_length - len(raw)) if task.pad_query else []
    return encode(task.query_prefix) + list(raw) + pads + encode(task.query_suffix)


def policy_context(task: TaskConfig, raw: list[int]) -> list[int]:
    """What the model is fed for a raw query: format_query's layout with its pads dropped. That
    computes the same as the padded layout (pads are masked and do not advance positions; see
    tests/test_summarization.py) and keeps every row's padding on the left, the one kind of
    padding the fused attention kernel takes."""
    return strip_pad(format_query(task, raw))


@dataclass(frozen=True)
class Query:
    """One query: its raw tokens (no prefix, suffix or padding) and, where the dataset has one,
    the reference summary of its text (TL;DR: the author's own TL;DR; CNN/DM: the highlights)."""

    tokens: list[int]
    reference: str | None = None


class QuerySource:
    """A deterministic, resumable, endless stream of queries for a task.

    Like OpenAI's dataset: the texts are shuffled once with a fixed seed (OpenAI's is always 0,
    independent of the run's seed; lm-human-preference-details calls that a probable bug, so
    `seed` is exposed, default 0) and repeated in that same order. Texts whose query cannot be
    built are skipped and counted in `n_skipped`. Texts are tokenized on demand, so a large query
    set (TL;DR) starts at once.
    `query_data` reads the texts from a local file or folder in the upstream format instead of
    the default (see query_items).
    """

    def __init__(
        self,
        task: str | TaskConfig,
        split: str = "train",
        seed: int = 0,
        query_data: str | None = None,
    ):
        self.task = get_task(task)
        self.split, self.seed, self.query_data = split, seed, query_data or None
        self.items, self.read = query_items(self.task.query_dataset, split, self.query_data)
        if not self.items:
            raise ValueError(f"task {self.task.name}, split {split}: no query texts")
        self.order = list(range(len(self.items)))
        random.Random(seed).shuffle(self.order)
        self.start_token, self.end_token = (
            single_token(self.task.start_text),
            single_token(self.task.end_text),
        )
        self.pos, self.epoch, self.n_skipped = 0, 0, 0

    def _next(self) -> Query:
        for _ in range(len(self.items)):  # at most one full pass looking for a usable text
            item = self.items[self.order[self.pos]]
            self.pos += 1
            if self.pos == len(self.items):
                self.pos, self.epoch = 0, self.epoch + 1
            text, reference = self.read(item)
            q = build_query(
                encode(text),  # "<|endoftext|>" in a text is plain text
                self.task.query_length,
                self.start_token,
                self.end_token,
            )
            if q is not None:
                return Query(q, reference)
            self.n_skipped += 1
        raise ValueError(
            f"task {self.task.name}: no text in split {self.split} gives a query "
            f"(start_text={self.task.start_text!r}, end_text={self.task.end_text!r})"
        )

    def next_queries(self, B: int) -> list[Query]:
        """The next B queries, each with its reference summary (None where the data has none)."""
        return [self._next() for _ in range(B)]

    def next_batch(self, B: int, formatted: bool = True) -> list[list[int]]:
        """B queries as token lists: with prefix/suffix (formatted=True, what the policy reads)
        or raw (what the reward model and the comparison files hold)."""
        raw = [q.tokens for q in self.next_queries(B)]
        return [format_query(self.task, q) for q in raw] if formatted else raw

    def state_dict(self) -> dict:
        return dict(
            task=self.task.name,
            split=self.split,
            seed=self.seed,
            query_data=self.query_data,
            pos=self.pos,
            epoch=self.epoch,
            n_skipped=self.n_skipped,
        )

    def load_state_dict(self, state: dict) -> None:
        ours = (self.task.name, self.split, self.seed, self.query_data)
        theirs = (state["task"], state["split"], state["seed"], state.get("query_data"))
        if theirs != ours:
            raise ValueError(
                f"query state is for task={theirs[0]} split={theirs[1]} seed={theirs[2]} "
                f"query_data={theirs[3]}, not task={ours[0]} split={ours[1]} seed={ours[2]} "
                f"query_data={ours[3]}"
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
    log-probs and KL use all R sampled tokens, as in the released code (docs/released-code.md).
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
# Query data and OpenAI's released labels: local copies in the upstream layout, or downloads
# (docs/formats.md)

OPENAI_LABELS = {
    "sentiment": "labels/sentiment/offline_5k.json",
    "descriptiveness": "labels/descriptiveness/offline_5k.json",
    "tldr": "labels/tldr/online_45k.json",
    "cnndm": "labels/cnndm/online_45k.json",
}
# Where a file can be fetched by hand when OpenAI's bucket fails (a public mirror of the labels and
# the TL;DR subsets).
MIRROR_HINT = "the Hugging Face dataset vwxyzjn/lm-human-preferences mirrors the labels and TL;DR"


class DownloadError(cli.UserError, RuntimeError):
    """A download failed; the message names the url, says what happened and how to get the file by
    hand (a cli.UserError: a command says it in one line). Nothing incomplete or unchecked is ever
    left at the destination."""


def openai_base() -> str:
    """Base URL of OpenAI's public bucket; $RLHF_DATA_URL replaces it (a mirror, a local copy
    served over HTTP, the tests' server on 127.0.0.1)."""
    return os.environ.get("RLHF_DATA_URL") or OPENAI_BASE


def _md5_base64(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


def download(url: str, dest: Path, check=None, hint: str = "") -> Path:
    """Fetch url to dest once, resumably, and only ever put a complete, checked file at dest.

    1. dest exists: it is the cache, returned as is.
    2. The bytes go to dest.part, with a progress bar. A .part left by an interrupted try is
       resumed: we ask for the rest (HTTP Range); a server that sends the whole file instead (200)
       starts it over.
    3. The size must be what the server announced (Content-Length, or Content-Range's total), and
       the MD5 must match where the server gives one (Azure blob storage, OpenAI's bucket, sends
       the blob's MD5). A short file stays as .part for the next call to resume; a wrong one is
       deleted.
    4. check(part) (e.g. "parses as a JSON list") must not raise; if it does, the .part is deleted.
    5. An atomic rename makes it dest.
    Raises DownloadError naming the url, the destination and how to fetch the file by hand (hint
    adds where else it can come from).
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    by_hand = f"fetch it elsewhere and put it at {dest}, e.g. `curl -L -o {dest} {url}`" + (
        f"; {hint}" if hint else ""
    )
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send from `have`: the .part is not a prefix
            part.unlink()
            return download(url, dest, check, hint)
        if e.code == 404:
            raise DownloadError(
                f"{url} does not exist on the server (HTTP 404). Put the data there by hand: "
                f"{by_hand}"
            ) from None
        raise DownloadError(f"could not download {url} (HTTP {e.code} {e.reason}): {by_hand}")
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(
            f"could not download {url} ({getattr(e, 'reason', e)}). This machine may be offline: "
            f"{by_hand}"
        ) from None
    with response:
        start, total = 0, int(response.headers.get("Content-Length") or 0) or None
        if response.status == 206:  # Content-Range: bytes START-END/TOTAL
            m = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
            if not m or int(m[1]) != have:
                part.unlink()  # a range we did not ask for: start over
                return download(url, dest, check, hint)
            start, total = have, int(m[2])
        md5 = response.headers.get("x-ms-blob-content-md5") or (
            response.headers.get("Content-MD5") if response.status == 200 else None
        )
        desc = f"download {dest.name}"
        try:
            with (
                open(part, "ab" if start else "wb") as f,
                tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=desc) as bar,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (http.client.HTTPException, urllib.error.URLError, OSError):
            pass  # cut off: what arrived stays in .part, and the size check below reports it
    got = part.stat().st_size
    if total is not None and got < total:
        raise DownloadError(
            f"the download of {url} was cut off at {got:,} of {total:,} bytes. Run again to resume "
            f"(the partial file {part} is kept, and never used as {dest}), or {by_hand}"
        )
    bad = None
    if total is not None and got > total:
        bad = f"{got:,} bytes where the server announced {total:,}"
    elif md5 and _md5_base64(part) != md5:
        bad = f"its MD5 does not match the server's ({md5})"
    elif check is not None:
        try:
            check(part)
        except (ValueError, UnicodeDecodeError) as e:
            bad = f"it is not a valid {dest.suffix} file ({e})"
    if bad:
        part.unlink()
        raise DownloadError(
            f"the download of {url} is corrupt: {bad}. It was deleted and nothing was cached; run "
            f"again, or {by_hand}"
        )
    os.replace(part, dest)  # atomic: dest is either absent or the whole checked file
    return dest


def check_json_list(path: Path) -> None:
    """Raise ValueError unless the file is one whole JSON list (streamed: TL;DR's is 4.5 GB)."""
    for _ in iter_json_list(path):
        pass


def check_utf8(path: Path) -> None:
    """Raise UnicodeDecodeError unless the file is UTF-8 text (url lists, .story files)."""
    dec = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            dec.decode(chunk)
    dec.decode(b"", final=True)


def download_openai(relpath: str) -> Path:
    """A file of OpenAI's public bucket (openai_base() + relpath), downloaded once into the cache
    and checked: JSON files must parse as a JSON list, text files must be UTF-8."""
    check = check_json_list if relpath.endswith(".json") else check_utf8
    hint = MIRROR_HINT if relpath.startswith(("labels/", "tldr/")) else ""
    if not relpath.startswith("labels/"):
        hint += ("; " if hint else "") + "or give a local copy of the data with --query-data PATH"
    return download(openai_base() + relpath, cache_dir() / "openai" / relpath, check, hint)


def download_labels(task: str) -> Path:
    """OpenAI's released human labels for a task (the files launch.py trains on), downloaded
    once."""
    if task not in OPENAI_LABELS:
        raise ValueError(
            f"no released labels for task {task!r}; tasks with labels: {', '.join(OPENAI_LABELS)}"
        )
    return download_openai(OPENAI_LABELS[task])


_NUMBER_TAIL = re.compile(r"[0-9.eE+-]*")


def iter_json_list(path: Path, chunk: int = 1 << 20):
    """The elements of a JSON list file, one at a time, so TL;DR's 4.5 GB train-subset.json never
    sits in memory. Raises ValueError (json.JSONDecodeError) for a file that is not one whole JSON
    list, or not UTF-8."""
    try:
        yield from _iter_json_list(path, chunk)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason}); save the file as UTF-8") from None


def _iter_json_list(path: Path, chunk: int):
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, i, eof = "", 0, False

        def fill() -> bool:  # keep buf[i:], append the next chunk; False at the end of the file
            nonlocal buf, i, eof
            more = f.read(chunk)
            buf, i, eof = buf[i:] + more, 0, not more
            return bool(more)

        def skip_space():
            nonlocal i
            while True:
                while i < len(buf) and buf[i].isspace():
                    i += 1
                if i < len(buf) or not fill():
                    return

        skip_space()
        if not buf[i:].startswith("["):
            raise ValueError(f"{path}: expected a JSON list [...], found {buf[i : i + 20]!r}")
        i += 1
        skip_space()
        closed = buf[i:].startswith("]")
        i += closed
        while not closed:
            # 1. one element, followed by a comma or the closing bracket. When the chunk ends
            # inside the element, or before that delimiter shows (a number may go on: "7." of
            # "7.5"), read more and decode the element again.
            while True:
                try:
                    obj, end = dec.raw_decode(buf, i)
                except json.JSONDecodeError:
                    if not fill():
                        raise
                    continue
                j = end
                while j < len(buf) and buf[j].isspace():
                    j += 1
                if j < len(buf) and buf[j] in ",]":
                    break
                cut_number = isinstance(obj, (int, float)) and _NUMBER_TAIL.fullmatch(buf[end:])
                if not ((j == len(buf) or cut_number) and fill()):
                    raise json.JSONDecodeError(
                        "expected ',' or ']' after a list element (is the file cut off?)", buf, j
                    )
            yield obj
            # 2. past the delimiter
            closed, i = buf[j] == "]", j + 1
            if not closed:
                skip_space()
        skip_space()
        if i < len(buf):
            raise ValueError(f"{path}: text after the end of the JSON list")


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


def cnndm_highlights(story: str) -> str | None:
    """The reference summary of a .story file: the line after each "@highlight" marker, joined
    with newlines (None if the story has none)."""
    parts = story.split("@highlight")[1:]
    lines = [p.strip().split("\n")[0].strip() for p in parts]
    lines = [_fix_text(x) for x in lines if x]
    return "\n".join(lines) or None


def cnndm_story_name(url: str) -> str:
    """As the released code's cnndm.py::get_path_of_url: the story file of an article url,
    {cnn|dailymail}/stories/{sha1(url)}.story."""
    site = (
        "dailymail"
        if any(s in url for s in ("dailymail.co.uk", "mailonsunday.ie", "lib.store.yahoo.net"))
        else "cnn"
    )
    return f"{site}/stories/{hashlib.sha1(url.encode()).hexdigest()}.story"


def cnndm_story_path(url: str, split: str) -> str:
    """Where OpenAI's bucket keeps the story of an article url."""
    return f"datasets/cnndm/cache_{split}/{cnndm_story_name(url)}"


def read_tldr(path: Path) -> list[tuple[str, str | None]]:
    """(post, reference) pairs of a TL;DR file, cleaned as OpenAI's tldr.py (the reference is the
    post's `summary` field, None where absent). Only the first 8 characters per query token are
    kept: far more than 500 tokens of text, and a few GB less memory for the 4.5 GB train set."""
    keep = 8 * 500
    out = []
    try:
        for i, d in enumerate(tqdm(iter_json_list(path), desc="read TL;DR", unit=" posts")):
            if not isinstance(d, dict) or not isinstance(d.get("content"), str):
                raise DataError(
                    f"{path}: entry {i} is not an object with a string `content`; expected "
                    f"{LAYOUTS['tldr']}"
                )
            summary = d.get("summary")
            out.append(
                (
                    clean_tldr(d["content"])[:keep],
                    clean_tldr(summary) if isinstance(summary, str) else None,
                )
            )
    except DataError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a TL;DR file ({e}); expected {LAYOUTS['tldr']}") from None
    return out


def cnndm_local(folder: Path, mode: str):
    """(urls, read) for CNN/DM data in a local folder (LAYOUTS['cnndm']); every story is checked
    to exist up front, so a missing one fails now rather than hours into a run."""
    lists = folder / "url_lists" / f"all_{mode}.txt"
    if not lists.is_file():
        raise DataError(f"{folder}: no url list {lists}; expected {LAYOUTS['cnndm']}")
    try:
        urls = [
            line.strip() for line in lists.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    except UnicodeDecodeError as e:
        raise DataError(
            f"{lists}: not UTF-8 text ({e.reason}); expected one url per line"
        ) from None

    def where(url: str) -> list[Path]:
        return [folder / f"cache_{mode}" / cnndm_story_name(url), folder / cnndm_story_name(url)]

    path_of, missing = {}, []
    for url in urls:
        found = [p for p in where(url) if p.is_file()]
        if found:
            path_of[url] = found[0]
        else:
            missing.append(url)
    if missing:
        raise DataError(
            f"{folder}: {len(missing)} of the {len(urls)} stories of {lists} are missing, e.g. "
            f"{missing[0]} should be at {where(missing[0])[0]} or {where(missing[0])[1]}; "
            f"expected {LAYOUTS['cnndm']}"
        )

    def read(url: str):
        try:
            story = path_of[url].read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path_of[url]}: not UTF-8 text ({e.reason})") from None
        return clean_cnndm(story), cnndm_highlights(story)

    return urls, read


def query_items(dataset: str, split: str, query_data: str | Path | None = None):
    """(items, read) for a query dataset: read(item) gives (text, reference or None), fetched
    lazily where that is costly. query_data: a local file or folder in the upstream format
    (LAYOUTS) instead of the default (the shipped passages for books, downloads otherwise)."""
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown query dataset {dataset!r}")
    path = Path(query_data).expanduser() if query_data else None
    if path is not None and not path.exists():
        raise DataError(f"--query-data {path}: no such file or folder; expected {LAYOUTS[dataset]}")
    if dataset == "books":
        if path is None:
            return shipped_passages(split), lambda t: (t, None)
        if path.is_dir():
            path = path / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path}: missing; expected {LAYOUTS['books']}")
        return read_passages(path), lambda t: (t, None)
    if dataset == "tldr":
        # OpenAI has no TL;DR test set: "validation set serves as training set" (tldr.py maps test
        # -> valid).
        mode = {"train": "train", "test": "valid", "valid": "valid"}[split]
        if path is None:
            path = download_openai(f"tldr/{mode}-subset.json")
        elif path.is_dir():
            path = path / f"{mode}-subset.json"
            if not path.is_file():
                raise DataError(f"{path}: missing; expected {LAYOUTS['tldr']}")
        return read_tldr(path), lambda item: item
    mode = {"train": "train", "test": "test", "valid": "val", "val": "val"}[split]
    if path is not None:
        if not path.is_dir():
            raise DataError(f"--query-data {path}: a file; CNN/DM data is {LAYOUTS['cnndm']}")
        return cnndm_local(path, mode)
    with open(download_openai(f"datasets/cnndm/url_lists/all_{mode}.txt"), encoding="utf-8") as f:
        urls = [line.strip() for line in f if line.strip()]

    def read(url: str):
        story = download_openai(cnndm_story_path(url, mode)).read_text(encoding="utf-8")
        return clean_cnndm(story), cnndm_highlights(story)

    return urls, read


# --------------------------------------------------------------------------------------------------
# Scripted labelers (the paper's "mock" labeler), on published scorers where one exists

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lowercase words of a text; <|endoftext|> is a separator, not a word."""
    return _WORD.findall(text.replace("<|endoftext|>", " ").lower())


# assets/lexicon/descriptive.txt: one sensory or physical word per line, written for this project
DESCRIPTIVE = {
    w.strip()
    for w in (ASSETS / "lexicon" / "descriptive.txt").read_text().splitlines()
    if w.strip() and not w.startswith("#")
}

_VADER = None


def sentiment_score(text: str) -> float:
    """VADER's compound sentiment score, in [-1, 1] (the vaderSentiment package: ~7,500 words,
    emoticons and slang rated by people, plus rules for negation, intensifiers, "but",
    punctuation and capitals, validated against human ratings). <|endoftext|> is a separator.

    e.g. "She was happy." -> +0.5719, "She was not happy." -> -0.4585, "The door." -> 0.0
    """
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return float(_VADER.polarity_scores(text.replace("<|endoftext|>", " "))["compound"])


def descriptiveness_score(text: str) -> float:
    """Sensory/physical words per 10 words: 10 * #lexicon words / max(#words, 1).

    e.g. "The red door was cold." -> [the, red, door, was, cold]: red, cold -> 10*2/5 = 4.0
    """
    ws = words(text)
    return 10.0 * sum(w in DESCRIPTIVE for w in ws) / max(len(ws), 1)


def summary_score(summary: str, reference: str) -> float:
    """ROUGE of a summary against the reference summary: the mean of ROUGE-1, ROUGE-2 and ROUGE-L
    F1 (Google's rouge-score package, Porter stemming; see summarization.py), in [0, 1]."""
    return summarization.rouge_mean(summary, reference)


class ScriptedLabeler:
    """Scores texts; picks the best of N by score. Labelers that compare against a reference (the
    summarization one) take it with each item.

    Ties (equal scores, e.g. VADER's 0.0 for texts without sentiment words, or two summaries with
    the same ROUGE) are broken uniformly at random among the tied samples, by a generator seeded
    with a hash of the item's query and samples: the same item always gets the same answer, and no
    position is favoured, so a reward model cannot learn a position bias from ties.
    """

    def __init__(self, name: str, score_fn, needs_reference: bool = False):
        self.name, self.score_fn, self.needs_reference = name, score_fn, needs_reference

    def score(self, texts: list[str], references: list[str | None] | None = None) -> np.ndarray:
        """Scores (B,) of texts; references (one per text) for labelers that need them."""
        if not self.needs_reference:
            return np.array([self.score_fn(t) for t in texts], dtype=np.float64)
        refs = references if references is not None else [None] * len(texts)
        if len(refs) != len(texts) or any(r is None for r in refs):
            n = sum(r is None for r in refs) if len(refs) == len(texts) else len(texts)
            raise ValueError(
                f"the {self.name} labeler scores a summary against the reference summary, and "
                f"{n} of {len(texts)} texts have none: use queries from a dataset with references "
                "(TL;DR's `summary` field, CNN/DM's @highlight lines) or comparisons whose rows "
                "carry `reference`"
            )
        return np.array([self.score_fn(t, r) for t, r in zip(texts, refs)], dtype=np.float64)

    def pick_best(self, query: str, samples: list[str], reference: str | None = None) -> int:
        return self.pick(query, samples, reference)[0]

    def pick(self, query: str, samples: list[str], reference: str | None = None):
        """(best, tied): the picked index and the indices of every sample sharing the top score
        (more than one: a tie, broken as the class says). A label keeps `tied` so that a win rate
        can count the share of the tied samples on each side (online.win_rate) instead of the one
        the tie-break drew, which the order of the samples decides."""
        s = self.score(samples, None if reference is None else [reference] * len(samples))
        best = np.flatnonzero(s == s.max())
        seed = int.from_bytes(
            hashlib.sha256(json.dumps([query, samples]).encode()).digest()[:8], "little"
        )
        return int(best[random.Random(seed).randrange(len(best))]), best.tolist()


# name -> (score function, needs a reference)
LABELERS = {
    "sentiment": (sentiment_score, False),
    "descriptiveness": (descriptiveness_score, False),
    "rouge": (summary_score, True),
}


def get_labeler(name: str) -> ScriptedLabeler:
    if name not in LABELERS:
        raise ValueError(f"unknown scripted labeler {name!r}; valid: {', '.join(LABELERS)}")
    fn, needs_reference = LABELERS[name]
    return ScriptedLabeler(name, fn, needs_reference)


# --------------------------------------------------------------------------------------------------
# Base models: GPT-2 checkpoints, or "tiny" fitted briefly on the shipped passages


def load_base_model(name: str, device="cpu", use_kernels: str = "auto") -> GPT2:
    """The initial policy rho: a GPT-2 checkpoint (hub name or Hugging Face directory), or "tiny"
    (fitted once on the shipped passages and cached on disk, see machinery/tiny.py)."""
    return GPT2.from_pretrained(name, device=device, use_kernels=use_kernels)


# --------------------------------------------------------------------------------------------------
# Command line: show queries (and, with --model, sampled responses with their scripted scores)


@dataclass
class ShowArgs:
    task: str = "sentiment"
    """task whose queries to show"""
    split: str = "train"
    """query split: train or test"""
    query_data: str = ""
    """local query data in the upstream format (a file or folder, see LAYOUTS in
    machinery/data.py) instead of the default (the shipped passages for the style tasks, downloads
    for tldr and cnndm)"""
    n: int = 4
    """number of queries"""
    model: str = ""
    """if set (tiny, gpt2, ...), also sample one response per query and print the task's
    scripted labeler's score"""
    seed: int = 0
    """sampling seed"""


def main(argv=None):
    args = cli.parse(
        ShowArgs, argv, description="Show a task's queries and scripted-labeler scores."
    )
    task = get_task(args.task)
    print(json.dumps(dataclasses.asdict(task), indent=1))
    try:
        items = QuerySource(task, args.split, query_data=args.query_data).next_queries(args.n)
    except (ValueError, DownloadError) as e:
        sys.exit(f"error: {e}")
    queries = [format_query(task, q.tokens) for q in items]
    enc = get_tokenizer()
    if not args.model:
        for q, item in zip(queries, items):
            ref = f"\n--- reference\n{item.reference}" if item.reference is not None else ""
            print(f"--- query ({len(q)} tokens with padding)\n{enc.decode(strip_pad(q))}{ref}")
        return
    from gpt2 import generate, left_pad

    model = load_base_model(args.model)
    tokens, mask = left_pad([strip_pad(q) for q in queries])
    gen = torch.Generator().manual_seed(args.seed)
    # (B, R)
    resp, _ = generate(model, tokens, mask, task.response_length, task.temperature, generator=gen)
    truncated, valid = truncate_responses(resp, task)
    labeler = get_labeler(task.labeler)
    for q, item, r, v in zip(queries, items, truncated, valid.tolist()):
        text = enc.decode(strip_pad(r))
        score = labeler.score([text], [item.reference])[0]
        print(
            f"--- query: {enc.decode(strip_pad(q))}\n"
            f"    response{'' if v else ' (no stop token: penalty)'}: {text!r}\n"
            f"    {labeler.name} score {score:+.3f}"
        )


if __name__ == "__main__":
    cli.run_main(main)
