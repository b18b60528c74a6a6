"""The two files human (or scripted) labels travel in, defined once: comparisons.jsonl and
labels.jsonl.

Every stage that reads or writes labels goes through this module: `reward.py sample` writes
comparisons, `label_tool.py` (a person) or `reward.py label` (a scripted labeler) writes labels,
`reward.py train` reads them. It is based on the best-of-N label type of openai/lm-human-preferences
(`label_types.py::PickBest`): a query, N candidate responses, and the index of the best one. It
imports only the standard library (no torch), so label_tool.py starts instantly.

comparisons.jsonl: one JSON object per line (UTF-8, lines end in "\\n"):
    id            str          unique within the file
    task          str          a key of TASK_INSTRUCTIONS, e.g. "sentiment"
    query         str          the query text shown to the labeler
    query_tokens  list[int]    its GPT-2 token ids (no padding)
    samples       list[str]    the N candidate responses (N is the same for every line, 2 <= N)
    sample_tokens list[list[int]]  their token ids, already truncated at the task's stop token
                                   (no padding)
and, optionally,
    reference     str | null   a reference summary of the query's text (summarization tasks: the
                               TL;DR author's own summary, CNN/DM's highlights), which the scripted
                               ROUGE labeler compares the samples with; files without it stay valid

labels.jsonl: an append-only log, one JSON object per line. A label line holds the comparison's
fields plus
    best          int          index into `samples` (the ORIGINAL order, whatever order the
                               labeler saw)
    labeler       str          who decided
    seconds       float        time the labeler took to decide
    created       str          ISO-8601 time of the decision
(label_tool.py adds `order`: the original indices in the order they were shown, for position-bias
checks.) Two more kinds of line may follow: {"id": ..., "undo": true} withdraws the id's label, and
{"id": ..., "skip": true} records that a labeler passed on it (label_tool shows skipped items last).
The last line about an id wins, so the file never needs rewriting and a crash can only cut its very
end.

OpenAI's released labels (e.g. labels/sentiment/offline_5k.json: a JSON list of {query,
sample0..sample3, best} as token ids right-padded with 50259) are read by `read_labels` too and
converted to label rows.

Run `python -m machinery.labels FILE` to validate a comparisons or labels file and print what it
holds. Also here: file_kind, what a file given in the wrong place is (a reward model, a ppo.py
checkpoint, labels, ...), for the one line that says so. And for the labelers: their default
name, the one-writer lock on a labels file, and the agreement statistics that `label_tool.py
--stats` and `evaluate.py --report` print.
"""

import collections
import datetime
import fcntl
import getpass
import hashlib
import json
import math
import os
import statistics
import sys
from pathlib import Path

from machinery import cli

VOCAB_SIZE = 50257
# OpenAI's padding id in their label files, outside the vocab (same as gpt2.PAD_ID)
OPENAI_PAD_ID = 50259
MAX_CANDIDATES = 9  # label_tool picks with the keys 1..9

# One line shown above every item. The paper's labelers got written instructions (their full text
# was never released); these follow its wording: sentiment = "positive and happy",
# descriptiveness = "vivid".
TASK_INSTRUCTIONS: dict[str, str] = {
    "sentiment": "Pick the continuation with the most positive and happy sentiment.",
    "descriptiveness": "Pick the continuation that is the most vividly descriptive: "
    "physical detail of how things look, sound, smell, feel.",
    "tldr": "Pick the best summary of the post: accurate first, then covering the main points, "
    "then concise.",
    "cnndm": "Pick the best summary of the article: accurate first, then covering the main points, "
    "then concise.",
}

COMPARISON_FIELDS = ("id", "task", "query", "query_tokens", "samples", "sample_tokens")


class FormatError(cli.UserError, ValueError):
    """A comparisons or labels file is malformed. The message names the file and line and says
    how to fix it (a cli.UserError: a command says it in one line)."""


# --------------------------------------------------------------------------------------------------
# Writing


def append_jsonl(path, obj) -> None:
    """Append one JSON line and make it durable (flush + fsync) before returning.

    One os.write of the whole line on an O_APPEND descriptor: a process killed at any moment (even
    kill -9) leaves either no line or the whole line; only a power cut mid-write could leave a
    partial last line, which `repair_truncated_tail` removes. The directory is fsynced when the file
    is new, so the file itself survives too.
    """
    data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    is_new = not os.path.exists(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            # disk full mid-line: take the partial line back so later lines stay separate
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
    if is_new:
        cli.fsync_dir(path)


def write_comparisons(path, rows) -> None:
    """Validate `rows` and write them as comparisons.jsonl, atomically (temp file + rename)."""
    rows = list(rows)
    _validate_comparisons(
        [(i + 1, r) for i, r in enumerate(rows)], f"<rows for {path}>", VOCAB_SIZE
    )
    # the format's fields first, then any extra ones
    lines = [
        json.dumps({**{k: r[k] for k in COMPARISON_FIELDS}, **r}, ensure_ascii=False) + "\n"
        for r in rows
    ]
    cli.atomic_write(path, "".join(lines))


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# Reading


# What to do about a last line cut off mid-write (no final newline, not JSON), by the kind of
# file: read_jsonl's `cut` hint. label_tool.py repairs the labels file it appends to (--out), never
# the comparisons file it reads.
CUT_LABELS = "label_tool.py removes it when it opens this file as --out, or delete that line"
CUT_COMPARISONS = (
    "wait if a program is still writing the file; otherwise make or copy it again, or delete that "
    "line (label_tool.py never changes the comparisons file it reads)"
)
CUT_ANY = "delete that line (label_tool.py removes it from the labels file it opens as --out)"


def read_jsonl(path, cut: str = CUT_ANY) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line. FormatError names the first bad line, and
    for a last line cut off mid-write, what to do about it (`cut`: CUT_LABELS, CUT_COMPARISONS).

    Lines are split on "\\n" only: str.splitlines would also split on U+2028 and friends, which
    json.dumps leaves unescaped inside strings (ensure_ascii=False).
    """
    kind = file_kind(path)
    if kind in NOT_TEXT or "zip" in kind:  # a checkpoint, a folder, ...: say what it is
        raise FormatError(f"{path} is {kind}, not a JSON-lines file (labels, comparisons)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror}") from None
    out = []
    lines = data.split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue  # blank lines hold nothing (a trailing "\n" makes the last one)
        is_cut = i == len(lines) and not data.endswith(b"\n")
        out.append((i, parse_line(raw, f"{path}:{i}", cut if is_cut else "")))
    return out


def parse_line(raw: bytes, where: str, cut: str = "") -> dict:
    """One line of a JSONL file as a dict; FormatError names `where` (file:line). `cut`: this is a
    last line without its newline, and what to do about it (read_jsonl), said if it does not
    parse."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise FormatError(
            f"{where}: not UTF-8 ({e.reason} at byte {e.start}); save the file as UTF-8"
        ) from None
    except json.JSONDecodeError as e:
        hint = f" (the last line is incomplete, as a write or copy cut off leaves it: {cut})"
        hint = hint if cut else ""
        raise FormatError(f"{where}: not valid JSON: {json_error(e)}{hint}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object {{...}}, got {type(obj).__name__}")
    check_text(obj, where)
    return obj


def json_error(e: json.JSONDecodeError) -> str:
    """json's message and column, as one phrase: some of json's messages end in "at" (its str()
    adds ": line 1 column 9"), as in "Unterminated string starting at column 9"."""
    return f"{e.msg.removesuffix(' at')} at column {e.colno}"


def check_text(obj, where) -> None:
    """FormatError if a string in obj cannot be written back as UTF-8: a lone UTF-16 surrogate,
    which JSON's "\\ud800" escapes can produce and no UTF-8 file can hold. Caught when a file is
    read, so a label about that line can never fail to save later."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end]
        raise FormatError(
            f"{where}: holds {bad!r}, a lone UTF-16 surrogate (a JSON escape with no partner), "
            f"which is not text; fix or remove that escape"
        ) from None


def _check_tokens(toks, where, what, vocab_size):
    if not isinstance(toks, list) or not all(type(t) is int for t in toks):
        raise FormatError(f"{where}: `{what}` must be a list of integer token ids")
    bad = [t for t in toks if not 0 <= t < vocab_size]
    if bad:
        pad = (
            " (50259 is OpenAI's padding id: strip padding before writing)"
            if OPENAI_PAD_ID in bad
            else ""
        )
        raise FormatError(
            f"{where}: `{what}` has token id {bad[0]} outside the vocabulary [0, {vocab_size}){pad}"
        )


def _check_comparison(obj, where, vocab_size, need_text=True) -> int:
    """Validate one comparison object; return its N."""
    missing = [
        k
        for k in COMPARISON_FIELDS
        if k not in obj and (need_text or k not in ("task", "query", "samples"))
    ]
    if missing:
        raise FormatError(
            f"{where}: missing field(s) {', '.join(missing)}; a comparison needs "
            f"{', '.join(COMPARISON_FIELDS)}"
        )
    if not isinstance(obj["id"], str) or not obj["id"]:
        raise FormatError(f"{where}: `id` must be a non-empty string, got {obj['id']!r}")
    for k in ("task", "query"):
        if k in obj and not isinstance(obj[k], str):
            raise FormatError(f"{where}: `{k}` must be a string")
    if obj.get("reference") is not None and not isinstance(obj["reference"], str):
        raise FormatError(
            f"{where}: `reference` must be a string (the reference summary) or null, got "
            f"{type(obj['reference']).__name__}"
        )
    _check_tokens(obj["query_tokens"], where, "query_tokens", vocab_size)
    st = obj["sample_tokens"]
    if not isinstance(st, list) or len(st) < 2:
        raise FormatError(f"{where}: `sample_tokens` must be a list of N >= 2 token lists")
    if len(st) > MAX_CANDIDATES:
        raise FormatError(
            f"{where}: {len(st)} candidates; at most {MAX_CANDIDATES} are supported (keys 1-9)"
        )
    for j, toks in enumerate(st):
        _check_tokens(toks, where, f"sample_tokens[{j}]", vocab_size)
    if "samples" in obj:
        s = obj["samples"]
        if not isinstance(s, list) or not all(isinstance(x, str) for x in s):
            raise FormatError(f"{where}: `samples` must be a list of strings")
        if len(s) != len(st):
            raise FormatError(
                f"{where}: {len(s)} `samples` but {len(st)} `sample_tokens`; they must match"
            )
    return len(st)


def _validate_comparisons(items, path, vocab_size) -> None:
    checker = _FileChecker(vocab_size)
    for lineno, obj in items:
        checker.check(obj, path, lineno)
        checker.add(obj, lineno)


class _FileChecker:
    """What holds across the lines of one comparisons file: the same N, unique ids."""

    def __init__(self, vocab_size):
        self.vocab_size, self.seen, self.n_first = vocab_size, {}, None

    def check(self, obj, path, lineno) -> None:
        """FormatError if line `lineno` does not fit the file; add() it once it is accepted."""
        where = f"{path}:{lineno}"
        n = _check_comparison(obj, where, self.vocab_size)
        if self.n_first is not None and n != self.n_first[0]:
            raise FormatError(
                f"{where}: {n} candidates, but line {self.n_first[1]} has {self.n_first[0]}; "
                f"every line of a file must have the same N"
            )
        if obj["id"] in self.seen:
            raise FormatError(
                f"{where}: id {obj['id']!r} already used on line {self.seen[obj['id']]}; ids must "
                "be unique"
            )

    def add(self, obj, lineno) -> None:
        self.n_first = self.n_first or (len(obj["sample_tokens"]), lineno)
        self.seen[obj["id"]] = lineno


def read_comparisons(path, vocab_size=VOCAB_SIZE) -> list[dict]:
    """All comparisons in the file, validated (fields, token ids < vocab_size, same N everywhere,
    unique ids)."""
    check_kind(path, COMPARISONS)
    items = read_jsonl(path, CUT_COMPARISONS)
    if not items:
        raise FormatError(
            f"{path}: empty; expected one comparison per line (make one with `python reward.py "
            "sample`)"
        )
    _validate_comparisons(items, path, vocab_size)
    return [obj for _, obj in items]


class ComparisonsTail:
    """A comparisons file that another process is still appending to (the queue of a `ppo.py
    --online` run), read as it grows: `read()` returns the comparisons on the complete lines
    that appeared since the last call.

    - Each line is checked as read_comparisons checks a file (fields, token ids, the same N on
      every line, unique ids), then by `check(obj, "file:line")` if given, which raises FormatError.
    - A last line without its "\\n" is still being written: it is left for a later call.
    - At a bad line, read() returns the good lines before it and sets `problem` (a FormatError
      naming the line); later calls start again at that line, so once someone fixes or deletes it,
      reading goes on. Nothing after it is skipped.
    - The lines already read must stay as they were (the writer only appends): if they change or
      vanish, read() raises FormatError.
    read() costs one stat() while the file is unchanged, so it can be called a few times a second.
    """

    def __init__(self, path, check=None, vocab_size=VOCAB_SIZE):
        self.path, self.check = str(path), check
        self.lineno = 0  # complete lines read (blank ones included)
        self.problem: FormatError | None = None
        self._checker = _FileChecker(vocab_size)
        self._offset = 0  # bytes of those lines
        self._digest = hashlib.sha256()  # of those bytes: an edit before _offset is noticed
        self._seen_stat = None

    def read(self) -> list[dict]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._offset == 0:
                return []
            raise FormatError(f"{self.path}: deleted after {self.lineno} lines were read") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == self._seen_stat:
            return []
        with open(self.path, "rb") as f:
            data = f.read()
        self._seen_stat = key
        if hashlib.sha256(data[: self._offset]).digest() != self._digest.digest():
            raise FormatError(
                f"{self.path}: lines 1-{self.lineno} changed since they were read (the file was "
                "edited or replaced, but its writer only appends). Put them back as they were; if "
                "the run was started again from scratch, start again too."
            )
        rows, self.problem = [], None
        while (end := data.find(b"\n", self._offset)) >= 0:
            raw, lineno = data[self._offset : end], self.lineno + 1
            if raw.strip():
                try:
                    obj = parse_line(raw, f"{self.path}:{lineno}")
                    self._checker.check(obj, self.path, lineno)
                    if self.check is not None:
                        self.check(obj, f"{self.path}:{lineno}")
                except FormatError as e:
                    self.problem = e
                    break
                self._checker.add(obj, lineno)
                rows.append(obj)
            self._digest.update(data[self._offset : end + 1])
            self._offset, self.lineno = end + 1, lineno
        return rows


def classify_line(obj, where) -> str:
    """'label', 'undo' or 'skip'; FormatError for anything else."""
    if "id" not in obj or not isinstance(obj["id"], str) or not obj["id"]:
        raise FormatError(f"{where}: every line needs a non-empty string `id`")
    if obj.get("undo") is True:
        return "undo"
    if obj.get("skip") is True:
        return "skip"
    if "best" not in obj:
        raise FormatError(
            f"{where}: neither a label (no `best`) nor an undo/skip line "
            f'({{"id": ..., "undo": true}})'
        )
    return "label"


def resolve(items, path):
    """Apply the log: the last line about an id wins.

    Returns (final, order, counts): final maps id -> (line number, kind, object) of its last line;
    order lists ids by the position of that last line (the order decisions were made); counts
    tallies the kinds of every line.
    """
    final, counts = {}, {"label": 0, "undo": 0, "skip": 0}
    for lineno, obj in items:
        kind = classify_line(obj, f"{path}:{lineno}")
        counts[kind] += 1
        final.pop(obj["id"], None)  # re-insert so dict order = order of last word
        final[obj["id"]] = (lineno, kind, obj)
    return final, list(final), counts


def read_labels(path, vocab_size=VOCAB_SIZE, counts: dict | None = None) -> list[dict]:
    """The labels in a file, resolved (undo/skip applied, last word wins) and validated.

    Accepts our labels.jsonl and OpenAI's released JSON (detected by a leading "["). Validation:
    every line parses, `best` is an int in range, token ids < vocab_size, the same N on every row;
    no labels at all is an error. Pass a dict as `counts` to receive {"lines", "labels", "undone",
    "skipped", "undos"} so callers can print what they did not use (nothing is dropped silently):
    undone and skipped count ids whose last word is an undo or a skip; undos counts undo lines
    (the times u was pressed, as `label_tool.py --stats` says).
    """
    check_kind(path, LABELS)  # a reward model, a run folder, comparisons...: say what it is
    if is_json_list(path):
        rows = _read_openai_json(path, vocab_size)
        if counts is not None:
            counts.update(lines=len(rows), labels=len(rows), undone=0, skipped=0, undos=0)
        return rows
    items = read_jsonl(path, CUT_LABELS)
    if not items:
        raise FormatError(
            f"{path}: empty; expected one label per line (label with `python label_tool.py` or "
            f"`python reward.py label`)"
        )
    final, order, c = resolve(items, path)
    rows, n_first = [], None
    for id_ in order:
        lineno, kind, obj = final[id_]
        if kind != "label":
            continue
        where = f"{path}:{lineno}"
        n = _check_comparison(obj, where, vocab_size, need_text=False)
        if type(obj["best"]) is not int or not 0 <= obj["best"] < n:
            raise FormatError(
                f"{where}: `best` = {obj['best']!r} must be an integer index 0..{n - 1} into "
                "`samples`"
            )
        if "seconds" in obj and (
            not isinstance(obj["seconds"], (int, float)) or obj["seconds"] < 0
        ):
            raise FormatError(f"{where}: `seconds` must be a non-negative number")
        if n_first is None:
            n_first = (n, lineno)
        elif n != n_first[0]:
            raise FormatError(
                f"{where}: {n} candidates, but line {n_first[1]} has {n_first[0]}; a labels file "
                "must "
                f"have the same N on every line"
            )
        rows.append(obj)
    n_undone = sum(1 for _, k, _ in final.values() if k == "undo")
    n_skipped = sum(1 for _, k, _ in final.values() if k == "skip")
    if not rows:
        raise FormatError(
            f"{path}: no labels left ({len(items)} lines: {n_undone} ids undone, {n_skipped} "
            "skipped)"
        )
    if counts is not None:
        counts.update(
            lines=len(items), labels=len(rows), undone=n_undone, skipped=n_skipped, undos=c["undo"]
        )
    return rows


def is_json_list(path) -> bool:
    """True for OpenAI's released JSON (a list), False for our JSONL logs."""
    try:
        with open(path, "rb") as f:
            return f.read(256).lstrip().startswith(b"[")
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror}") from None


def read_json(path: Path, missing_ok=False, quiet=False) -> dict:
    """A JSON object from `path` (a followed run's state.json or config.json); {} if missing
    (missing_ok) or, with quiet, if it does not parse (progress only: the next change is read
    again). Otherwise FormatError says what is wrong."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise FormatError(f"{path}: missing") from None
    except (ValueError, OSError) as e:
        if quiet:
            return {}
        raise FormatError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(obj, dict):
        if quiet:
            return {}
        raise FormatError(f"{path}: expected a JSON object {{...}}")
    return obj


def last_json_line(path: Path) -> dict:
    """The last complete line of a JSONL file (a run's metrics.jsonl) as a dict ({} if none);
    reads only its end."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            lines = f.read().split(b"\n")[:-1]  # after the last "\n": not written yet
    except OSError:
        return {}
    for raw in reversed(lines):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return {}


def _read_openai_json(path, vocab_size) -> list[dict]:
    """OpenAI's released label file -> our label rows (padding stripped, text decoded with
    GPT-2's BPE)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}:{e.lineno}: not valid JSON: {json_error(e)}") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 ({e.reason}); save the file as UTF-8") from None
    if not data:
        raise FormatError(
            f"{path}: an empty JSON list; expected OpenAI's [{{query, sample0..sampleN-1, best}}, "
            "...]"
        )
    task = os.path.basename(os.path.dirname(os.path.abspath(path)))  # labels/<task>/offline_5k.json
    rows, n = [], None
    for i, e in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(e, dict) or "query" not in e or "best" not in e or "sample0" not in e:
            raise FormatError(
                f"{where}: expected {{query, sample0..sampleN-1, best}} (OpenAI's best-of-N format)"
            )
        k = 0
        while f"sample{k}" in e:
            k += 1
        if n is None:
            n = k
        elif k != n:
            raise FormatError(
                f"{where}: {k} samples, but entry 0 has {n}; every entry must have the same N"
            )
        # Padding (50259) is not text: OpenAI right-pads queries and pads responses after truncation
        # (docs/formats.md). We store the real tokens only; reward.py pads again (on the left) for
        # the model.
        strip = lambda toks: [t for t in toks if t != OPENAI_PAD_ID]  # noqa: E731
        row = {
            "id": f"{os.path.basename(path)}:{i}",
            "task": task,
            "query_tokens": strip(e["query"]),
            "sample_tokens": [strip(e[f"sample{j}"]) for j in range(k)],
            "best": e["best"],
            "labeler": "openai-scale",
            "seconds": 0.0,
            "created": "",
        }
        _check_comparison(row, where, vocab_size, need_text=False)
        if type(row["best"]) is not int or not 0 <= row["best"] < k:
            raise FormatError(
                f"{where}: `best` = {row['best']!r} must be an integer index 0..{k - 1}"
            )
        rows.append(row)
    _decode_text(rows)
    return rows


def _decode_text(rows) -> None:
    """Fill `query`/`samples` text for converted OpenAI rows (the tokenizer is loaded only here)."""
    from machinery import tokenizer

    enc = tokenizer.gpt2_encoding()
    for r in rows:
        r["query"] = enc.decode(r["query_tokens"])
        r["samples"] = [enc.decode(t) for t in r["sample_tokens"]]


def repair_truncated_tail(path) -> str | None:
    """If the file's last line is incomplete (no final newline), fix it; return a message saying
    what was done.

    A last line that parses is kept (a newline is added); one that does not is cut off, keeping
    every complete line. Returns None when there was nothing to repair.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return None
        cut = data.rfind(b"\n") + 1  # start of the partial line (0 when it is the only line)
        tail = data[cut:]
        try:
            ok = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if ok:
            f.write(b"\n")
            msg = f"{path}: the last line had no newline; added one (nothing lost)"
        else:
            f.truncate(cut)
            lineno = data.count(b"\n") + 1
            preview = tail[:60].decode("utf-8", "replace")
            msg = (
                f"{path}:{lineno}: removed an incomplete last line ({len(tail)} bytes: "
                f"{preview!r}...), left by "
                f"a write that was cut off; all {lineno - 1} complete lines are kept"
            )
        f.flush()
        os.fsync(f.fileno())
    return msg


# --------------------------------------------------------------------------------------------------
# What a file is: the one line for a file given where another kind was asked for (a ppo.py
# checkpoint as --reward-model, a reward model as --labels, ...) says what it is and what to give

# file_kind's answers that callers test for (noun phrases: "X is <kind>, not a labels file")
REWARD_MODEL = "a reward model (rm.pt from `reward.py train`)"
PPO_CHECKPOINT = "a ppo.py checkpoint (a run's policy and optimizer, for --resume)"
RUN_FOLDER = "a ppo.py run folder"
LABELS = "a labels file"
COMPARISONS = "a comparisons file (no labels in it: no `best`)"
OPENAI_LABELS = "a JSON list (OpenAI's released labels)"
TORCH_FILE, PICKLE = "a PyTorch file", "a pickle file"
SAFETENSORS, BINARY = "a safetensors file (weights)", "a binary file"
FOLDER, MISSING = "a folder", "no such file"
_RM_MARK = b"rlhf-gpt2 reward model"  # reward.CHECKPOINT_FORMAT, as rm.pt's pickle holds it


def file_kind(path) -> str:
    """What the file or folder at `path` is, as a noun phrase: one of the constants above, or "a
    zip file", "a JSON file", "an empty file", "a text file". Reads only what it needs: a torch
    file's pickle (not its tensors), a JSONL file's first line. No torch here: a torch file is a
    zip archive whose data.pkl holds the dict's keys and strings."""
    p = Path(path)
    if p.is_dir():
        made = ("metrics.jsonl", "checkpoint.pt", "rm.pt", "online")
        return RUN_FOLDER if any((p / n).exists() for n in made) else FOLDER
    try:
        with open(p, "rb") as f:
            head = f.read(4096).lstrip()
            f.seek(0)
            first = f.readline(2**22) if head.startswith(b"{") else b""
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return f"a file that cannot be read ({e.strerror})"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(p)
    if head.startswith(b"\x80"):  # torch.save's legacy format, or any other pickle
        return PICKLE
    if len(head) > 10 and head[8:10] == b'{"':  # 8 bytes of header length, then its JSON
        return SAFETENSORS
    if b"\0" in head:
        return BINARY
    if not head:
        return "an empty file"
    if head.startswith(b"["):
        return OPENAI_LABELS
    try:
        obj = json.loads(first) if first else None
    except ValueError:
        obj = None
    if isinstance(obj, dict) and ("best" in obj or obj.get("undo") or obj.get("skip")):
        return LABELS
    if isinstance(obj, dict) and "sample_tokens" in obj:
        return COMPARISONS
    return "a JSON file" if head.startswith(b"{") else "a text file"


def _zip_kind(path: Path) -> str:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.endswith("data.pkl")]
            data = z.read(pickles[0]) if pickles else b""
    except (zipfile.BadZipFile, OSError, EOFError):
        return "a damaged zip file"
    if not pickles:
        return "a zip file"
    if _RM_MARK in data:
        return REWARD_MODEL
    if b"kl_ctl" in data and b"optimizer" in data:
        return PPO_CHECKPOINT
    return TORCH_FILE


# file_kind's answers that a command asking for a labels or comparisons file refuses at once
# (anything else is read, and its first bad line named)
NOT_TEXT = (
    REWARD_MODEL,
    PPO_CHECKPOINT,
    TORCH_FILE,
    PICKLE,
    SAFETENSORS,
    BINARY,
    RUN_FOLDER,
    FOLDER,
)
_WANTED = {
    REWARD_MODEL: "reward model checkpoint",
    LABELS: "labels file",
    COMPARISONS: "comparisons file",
}


def wrong_file(path, want: str) -> str:
    """The message for `path` given where `want` (REWARD_MODEL, LABELS or COMPARISONS) was asked
    for: what it is (file_kind), and what to give instead."""
    kind, p = file_kind(path), Path(path)
    folder = p if kind == RUN_FOLDER else p.parent
    run_rm = next((f for f in (folder / "rm.pt", folder / "online" / "rm.pt") if f.is_file()), None)
    hint = {
        LABELS: "labels are a .jsonl from label_tool.py or `reward.py label`, or OpenAI's released "
        "JSON",
        COMPARISONS: "comparisons are a .jsonl from `python reward.py sample`",
        REWARD_MODEL: "a reward model is the rm.pt that `python reward.py train` writes (ppo.py "
        "makes one into its run folder when given no --reward-model)",
    }[want]
    if want == REWARD_MODEL and kind in (PPO_CHECKPOINT, RUN_FOLDER) and run_rm:
        hint = f"its run's reward model is {run_rm}"
    elif want == REWARD_MODEL and kind in (LABELS, OPENAI_LABELS):
        hint = (
            f"train a reward model on it: `python reward.py train --labels {path}` (ppo.py: "
            f"--rm.labels {path} instead of --reward-model)"
        )
    elif want == LABELS and kind == COMPARISONS:
        hint = f"label it first: `python label_tool.py --comparisons {path}`, or `python reward.py "
        hint += f"label --comparisons {path}` (a scripted labeler)"
    elif want == REWARD_MODEL and kind == COMPARISONS:
        hint = "label it first (label_tool.py, `reward.py label`), then train a reward model on "
        hint += "the labels (`reward.py train --labels`)"
    elif want == LABELS and kind == REWARD_MODEL:
        hint = f"a reward model is read by --reward-model (`reward.py eval`, ppo.py); {hint}"
    elif want == LABELS and kind == RUN_FOLDER and (p / "labels.jsonl").is_file():
        hint = f"its reward model's labels are {p / 'labels.jsonl'}"
    if kind == MISSING:
        return f"{path}: no such {_WANTED[want]}; {hint}"
    return f"{path} is {kind}, not a {_WANTED[want]}; {hint}"


def check_kind(path, want: str) -> None:
    """FormatError (wrong_file's line) when `path` is plainly not `want` (LABELS or COMPARISONS):
    a torch file, a folder, a binary file, or comparisons where labels are asked for."""
    kind = file_kind(path)
    if kind in NOT_TEXT or (want == LABELS and kind == COMPARISONS):
        raise FormatError(wrong_file(path, want))


# --------------------------------------------------------------------------------------------------
# Labelers: who they are, one writer per labels file, and how much they agree (`label_tool.py
# --stats`, `evaluate.py --report`)


def login_name() -> str:
    """The labeler's default name: the login name, or "anonymous" without one."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "anonymous"


def lock_labels_file(path):
    """One writer per labels file: two sessions would show the same items and interleave their
    lines. Returns the open file that holds the lock, or None if another session holds it. The
    lock dies with the process (kill -9 included), so a crash never leaves a stale lock behind."""
    lock = open(path, "ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def percent_agreement(table: list[list[int]]) -> float:
    """Fraction of agreeing pairs of labels on the same item, averaged over items: the P-bar of
    Fleiss' kappa.

    table[i][j] = how many labelers picked candidate j on item i; every item needs >= 2 labels.
    """
    p_i = []
    for row in table:
        n = sum(row)
        p_i.append((sum(c * c for c in row) - n) / (n * (n - 1)))
    return sum(p_i) / len(p_i)


def fleiss_kappa(table: list[list[int]]) -> float:
    """Fleiss' kappa: (P-bar - P_e) / (1 - P_e), chance agreement P_e from the pooled category
    frequencies.

    Items may have different numbers of labels (n_i >= 2): each item's agreement P_i is averaged
    with equal weight, and category proportions p_j are pooled over all labels; with a constant n
    this is Fleiss (1971) exactly. Returns nan when every label is the same category (P_e = 1:
    agreement beyond chance is undefined).
    """
    total = sum(sum(r) for r in table)
    p_j = [sum(r[j] for r in table) / total for j in range(len(table[0]))]
    p_e = sum(p * p for p in p_j)
    if p_e >= 1.0:
        return float("nan")
    return (percent_agreement(table) - p_e) / (1.0 - p_e)


def item_key(row: dict) -> str:
    """Items are the same if they show the same tokens (ids may differ between comparisons
    files)."""
    return json.dumps([row["query_tokens"], row["sample_tokens"]])


def stats_report(paths: list[str]) -> str:
    """Counts, time per label, position bias and inter-labeler agreement for one or more labels
    files."""
    out, ratings, n_cand = [], collections.defaultdict(list), None
    for path in paths:
        if is_json_list(path):  # OpenAI's released JSON: labels only, no log
            rows, c = read_labels(path), None
        else:
            items = read_jsonl(path, CUT_LABELS)
            final, order, c = resolve(items, path)
            rows = [final[i][2] for i in order if final[i][1] == "label"]
        if not rows:
            out.append(f"{path}: no labels")
            continue
        who = collections.Counter(r.get("labeler", "?") for r in rows)
        line = f"{path}: {len(rows)} labels by " + ", ".join(
            f"{k} ({v})" for k, v in who.most_common()
        )
        if c is not None:
            skipped = sum(1 for i in order if final[i][1] == "skip")
            line += f"; {skipped} skipped, {c['undo']} undos, {len(items)} lines"
        out.append(line)
        secs = sorted(r["seconds"] for r in rows if r.get("seconds"))
        if secs:
            p90 = secs[min(len(secs) - 1, math.ceil(0.9 * len(secs)) - 1)]
            out.append(
                f"  time per label: median {statistics.median(secs):.1f} s, "
                f"mean {statistics.fmean(secs):.1f} s, "
                f"90th percentile {p90:.1f} s ({3600 / statistics.fmean(secs):.0f} labels/hour)"
            )
        n = len(rows[0]["sample_tokens"])
        n_cand = n_cand or n
        shown = [
            r["order"].index(r["best"])
            for r in rows
            if isinstance(r.get("order"), list) and r["best"] in r["order"]
        ]
        if shown:  # a labeler who mostly presses "1" is not reading
            hist = collections.Counter(shown)
            out.append(
                "  picked screen position: "
                + "  ".join(f"{k + 1}: {hist[k] / len(shown):.0%}" for k in range(n))
            )
        hist = collections.Counter(r["best"] for r in rows)
        out.append(
            "  picked sample index:    "
            + "  ".join(f"{k}: {hist[k] / len(rows):.0%}" for k in range(n))
        )
        for r in rows:
            if len(r["sample_tokens"]) == n_cand:
                ratings[item_key(r)].append(r["best"])
    multi = [v for v in ratings.values() if len(v) >= 2]
    if not multi:
        out.append(
            "agreement: no item is labeled more than once across these files "
            "(give several labelers the same comparisons file, each with their own --out)"
        )
        return "\n".join(out)
    table = [[v.count(j) for j in range(n_cand)] for v in multi]
    sizes = collections.Counter(len(v) for v in multi)
    out.append(
        f"agreement on {len(multi)} items labeled more than once ("
        + ", ".join(f"{k} labels: {v} items" for k, v in sorted(sizes.items()))
        + "):"
    )
    out.append(
        f"  percent agreement (pairs of labels that agree): {percent_agreement(table):.1%}"
        f"   (chance with uniform picks: {1 / n_cand:.1%})"
    )
    kappa = fleiss_kappa(table)
    out.append(
        f"  Fleiss' kappa: {kappa:.3f}"
        if not math.isnan(kappa)
        else "  Fleiss' kappa: undefined (every label picked the same candidate index)"
    )
    return "\n".join(out)


def main(argv=None) -> int:
    """Validate a file and summarize it: `python -m machinery.labels comparisons.jsonl` or
    `python -m machinery.labels labels.jsonl`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(f"usage: python -m machinery.labels FILE\n\n{__doc__.strip()}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    path = argv[0]
    try:
        items = None if is_json_list(path) else read_jsonl(path)
        if items and "best" not in items[0][1] and not ({"undo", "skip"} & set(items[0][1])):
            rows = read_comparisons(path)
            print(
                f"{path}: {len(rows)} comparisons, N = {len(rows[0]['samples'])}, "
                f"tasks: {sorted({r['task'] for r in rows})}"
            )
        else:
            c = {}
            rows = read_labels(path, counts=c)
            print(  # the words and order of label_tool.py --stats (stats_report)
                f"{path}: {c['labels']} labels, N = {len(rows[0]['sample_tokens'])} "
                f"({c['skipped']} skipped, {c['undos']} undos, {c['lines']} lines)"
            )
    except (FormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run_main(main)  # a closed pipe (--help | head) or Ctrl-C: one line, no traceback


# --------------------------------------------------------------------------------------------------
# The win rate's interval: one definition for evaluate.py and ppo.py --online

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion `rate` observed over n trials.

    Unlike rate ± z·sqrt(rate(1 - rate)/n) it stays inside [0, 1] and does not collapse to a point
    at 0% or 100%, which matters at the win rates RLHF reaches (the paper's 88%) and at small n.
    With ties counted as half a win, rate need not be k/n for an integer k; the formula is the same.
    """
    if n == 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    center = (rate + z * z / (2 * n)) / denom
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)
