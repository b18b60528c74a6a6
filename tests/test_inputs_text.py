"""Text from outside (datasets, label files, instructions, names): "<|endoftext|>" is plain text
everywhere, as in OpenAI's encoder; text that cannot be written back as UTF-8 is refused when read,
naming the file and line; control characters are shown safely and never cost a label."""

import json
import unicodedata

import pytest

import gpt2
import label_tool
from gpt2 import EOT_ID
from machinery import data, labels, tasks, termtext
from machinery.labels import FormatError

EOT_TEXT = "<|endoftext|>"


def test_encode_is_plain_text():
    enc = gpt2.get_tokenizer()
    for text in ["a <|endoftext|> b", EOT_TEXT, "<|endoftext|><|endoftext|>", "<|fim_prefix|>"]:
        ids = gpt2.encode(text)
        assert EOT_ID not in ids
        assert ids == enc.encode(text, disallowed_special=())  # tiktoken's plain-text reading
        assert enc.decode(ids) == text
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode(EOT_TEXT)  # what QuerySource used to call
    # a lone surrogate (from a JSON escape) reads as U+FFFD, as tiktoken does
    assert gpt2.encode("x\ud800y") == gpt2.encode("x\ufffdy")


@pytest.fixture
def passages(tmp_path, monkeypatch):
    """Point the books task at our own passages file; returns a writer for it."""
    (tmp_path / "book_passages").mkdir()
    monkeypatch.setattr(data, "ASSETS", tmp_path)

    def write(lines: list[bytes]):
        (tmp_path / "book_passages" / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        return tmp_path / "book_passages" / "train.jsonl"

    return write


def test_query_source_reads_endoftext_as_text(passages):
    """The issue's failing input: a dataset passage quoting <|endoftext|>."""
    texts = [f"Start. He typed {EOT_TEXT} twice: {EOT_TEXT}. End.", "Plain. Second passage here."]
    passages([json.dumps(t).encode() for t in texts])
    src = tasks.QuerySource("sentiment", "train")
    queries = src.next_batch(2, formatted=False)
    enc = gpt2.get_tokenizer()
    decoded = [enc.decode(q) for q in queries]
    assert any(EOT_TEXT in d for d in decoded), decoded
    assert all(EOT_ID not in q for q in queries)


def test_query_prefix_with_endoftext_is_text():
    task = tasks.TaskConfig(
        name="t", query_dataset="books", query_length=8, response_length=4,
        query_prefix=EOT_TEXT, query_suffix="\n" + EOT_TEXT,
    )  # fmt: skip
    q = tasks.format_query(task, [100, 200])
    assert EOT_ID not in q and gpt2.get_tokenizer().decode(q).startswith(EOT_TEXT)


def test_tldr_file_with_special_text_and_surrogates(tmp_path, monkeypatch):
    """A TL;DR-style JSON list: <|endoftext|> in a post, a valid surrogate pair (an emoji, as
    Reddit dumps escape them) and a lone one."""
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    f = tmp_path / "openai" / "tldr" / "train-subset.json"
    f.parent.mkdir(parents=True)
    f.write_text('[{"content": "post <|endoftext|> \\ud83d\\ude00 and \\ud800 end"}]')
    (q,) = tasks.QuerySource("tldr", "train").next_batch(1, formatted=False)
    assert gpt2.get_tokenizer().decode(q) == "post <|endoftext|> 😀 and \ufffd end"
    f.write_bytes(b'[{"content": "bad \xff byte"}]')
    with pytest.raises(ValueError, match="train-subset.json: not UTF-8"):
        tasks.QuerySource("tldr", "train")


def test_dataset_errors_name_file_and_line(passages):
    path = passages([b'"ok."', b'{"not": "a string"}'])
    with pytest.raises(ValueError, match=f"{path}:2: a dict, not a string"):
        tasks.QuerySource("sentiment", "train")
    path = passages([b'"ok."', b'"fine."', b'"caf\xe9."'])  # Latin-1, not UTF-8
    with pytest.raises(ValueError, match=f"{path}:3: not UTF-8"):
        tasks.QuerySource("sentiment", "train")
    path = passages([b'"ok."', b'"unterminated'])
    with pytest.raises(ValueError, match=f"{path}:2: not valid JSON"):
        tasks.QuerySource("sentiment", "train")


# --------------------------------------------------------------------------------------------------
# Label files and the labeling session

HOSTILE = [
    "ESC \x1b[2J\x1b[31mred\x1b[0m clears the screen",
    "NUL \x00 BEL \x07 BS \x08 CR alone \r here",
    "C1 \x9b31m and DEL \x7f",
    "bidi \u202eevil\u202c and zero width \u200b",
    "line sep \u2028 para sep \u2029 tab \t end",
    EOT_TEXT,
]


def comparison(i, samples):
    return {
        "id": f"c{i}",
        "task": "sentiment",
        "query": samples[0],
        "query_tokens": [100 + i],
        "samples": samples,
        "sample_tokens": [[j + 1] for j in range(len(samples))],
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_lone_surrogate_is_refused_when_read(tmp_path):
    rows = [comparison(0, ["a", "b"]), comparison(1, ["fine", "broken \ud800 text"])]
    p = write_jsonl(tmp_path / "c.jsonl", rows)  # json.dumps writes the escape "\ud800"
    assert "\\ud800" in p.read_text()
    with pytest.raises(FormatError, match=r"c\.jsonl:2: holds '\\ud800'.*surrogate"):
        labels.read_comparisons(p)
    before = p.read_bytes()
    cfg = label_tool.Config(comparisons=str(p), out=str(tmp_path / "l.jsonl"), labeler="t")
    with pytest.raises(FormatError, match=r"c\.jsonl:2"):
        label_tool.load_session(cfg)
    assert p.read_bytes() == before and not (tmp_path / "l.jsonl").exists()


def test_hostile_text_is_shown_safely_and_every_label_is_kept(tmp_path):
    rows = [comparison(i, [HOSTILE[i], HOSTILE[(i + 1) % len(HOSTILE)]]) for i in range(6)]
    p = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "l.jsonl"
    cfg = label_tool.Config(comparisons=str(p), out=str(out), labeler="t")
    s = label_tool.load_session(cfg)
    for _ in rows:
        for width in (80, 12, 3):
            for line, _attr in label_tool.item_lines(s, width):
                # nothing the terminal would act on: no C0/C1 controls, no surrogates
                assert not [c for c in line if unicodedata.category(c) in ("Cc", "Cs")], line
                assert termtext.text_width(line) <= width
        s.choose(0, 1.0)
    saved = labels.read_labels(out)
    assert [r["samples"] for r in saved] == [r["samples"] for r in rows]  # byte-exact text kept
    # and a restart resumes with everything decided
    assert label_tool.load_session(cfg).done() == len(rows)


def test_labels_file_with_surrogate_is_refused_and_kept(tmp_path):
    rows = [comparison(0, ["a", "b"])]
    p = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "l.jsonl"
    out.write_text(json.dumps({**rows[0], "best": 0, "labeler": "x\udcff"}) + "\n")
    before = out.read_bytes()
    cfg = label_tool.Config(comparisons=str(p), out=str(out), labeler="t")
    with pytest.raises(FormatError, match=r"l\.jsonl:1: holds '\\udcff'"):
        label_tool.load_session(cfg)
    assert out.read_bytes() == before


def test_labeler_name_and_instructions_file_checked_before_labeling(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [comparison(0, ["a", "b"])])
    out = tmp_path / "l.jsonl"
    # a name from a non-UTF-8 argv byte arrives as a lone surrogate (surrogateescape)
    cfg = label_tool.Config(comparisons=str(p), out=str(out), labeler="b\udce9a")
    with pytest.raises(FormatError, match="--labeler"):
        label_tool.load_session(cfg)
    instr = tmp_path / "instructions.txt"
    instr.write_bytes(b"Pick the best.\nSecond line\nthird caf\xe9\n")
    cfg = label_tool.Config(comparisons=str(p), out=str(out), labeler="t", instructions=str(instr))
    with pytest.raises(FormatError, match=r"instructions\.txt:3: not UTF-8"):
        label_tool.load_session(cfg)
    assert not out.exists()


def test_openai_json_with_bad_bytes_is_named(tmp_path):
    d = tmp_path / "sentiment"
    d.mkdir()
    (d / "offline_5k.json").write_bytes(b'[{"query": [1], "sample0": [2], "best": 0, "x": "\xff"}]')
    with pytest.raises(FormatError, match="offline_5k.json: not UTF-8"):
        labels.read_labels(d / "offline_5k.json")
