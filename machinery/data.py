"""
The shipped data and the download cache, with no model: where the repo's own files are (assets/),
how the passage files are read, and where downloads and the fitted tiny model are cached.

machinery/tasks.py reads its queries through this file, and gpt2.py fits its tiny model on the
passages through machinery/tiny.py; it imports neither, so both can.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from machinery import cli

ASSETS = Path(__file__).resolve().parent / "assets"


class DataError(cli.UserError, ValueError):
    """Query data given by path holds the wrong thing; the message names the path and the layout
    expected (a cli.UserError: a command says it in one line)."""


def cache_dir() -> Path:
    """Where downloads and the fitted tiny model live: $RLHF_CACHE, else ~/.cache/rlhf-gpt2."""
    return Path(os.environ.get("RLHF_CACHE", "~/.cache/rlhf-gpt2")).expanduser()


# The upstream layouts a --query-data path may hold, for the error messages.
LAYOUTS = {
    "books": "a .jsonl file with one JSON string (a passage) per line, or a folder holding "
    "{train,test}.jsonl",
    "tldr": 'a JSON list of posts [{"content": "...", "summary": "..."}, ...] (OpenAI\'s '
    "tldr/{train,valid}-subset.json; `summary` is the author's TL;DR, the reference), or a "
    "folder holding train-subset.json and valid-subset.json",
    "cnndm": "a folder with url_lists/all_{train,val,test}.txt (one article url per line) and "
    "the stories as {cnn,dailymail}/stories/<sha1 of the url>.story, either under "
    "cache_{train,val,test}/ (OpenAI's datasets/cnndm/ folder) or directly (the unpacked CNN and "
    "Daily Mail story archives)",
}


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


def read_passages(path: Path) -> list[str]:
    """A .jsonl file of passages, one JSON string per line (OpenAI's book_passages format). Lines
    split on "\n" only; a line that is not UTF-8 or not a JSON string is an error naming it."""
    out = []
    for i, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)
        except json.JSONDecodeError as e:
            where = f"{e.msg.removesuffix(' at')} at column {e.colno}"  # labels.json_error
            raise DataError(
                f"{path}:{i}: not valid JSON ({where}); expected {LAYOUTS['books']}"
            ) from None
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{i}: a {type(text).__name__}, not a string; expected {LAYOUTS['books']}"
            )
        out.append(text)
    return out


def shipped_passages(split: str) -> list[str]:
    """The repo's own story passages (assets/book_passages/{train,test}.jsonl)."""
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: the shipped passages have 'train' and 'test'")
    return read_passages(ASSETS / "book_passages" / f"{split}.jsonl")
