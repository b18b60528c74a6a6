"""machinery/labels.py: the comparisons / labels file formats. Round trips, the undo/skip log,
OpenAI's JSON, every bad input giving a FormatError that names the file and line, and the
agreement statistics on hand-worked tables."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from machinery import labels
from machinery.labels import FormatError

FIXTURES = Path(__file__).parent / "fixtures"


def comparison(i, n=4, task="sentiment"):
    return {
        "id": f"c{i}",
        "task": task,
        "query": f"query {i}",
        "query_tokens": [100 + i, 7],
        "samples": [f"s{j}" for j in range(n)],
        "sample_tokens": [[j + 1] * (j + 1) for j in range(n)],
    }


def label(i, best, n=4, **kw):
    return {
        **comparison(i, n),
        "best": best,
        "labeler": "t",
        "seconds": 1.5,
        "created": labels.now_iso(),
        **kw,
    }


def write_lines(path, objs_or_strs):
    with open(path, "w", encoding="utf-8") as f:
        for o in objs_or_strs:
            f.write((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n")
    return str(path)


def test_comparisons_round_trip_keeps_unicode_and_line_separators(tmp_path):
    rows = [comparison(i) for i in range(3)]
    # U+2028 is legal unescaped in JSON strings: a reader that used str.splitlines() would cut this
    # line in two.
    rows[1]["samples"][2] = "emoji 😀, CJK 日本, sep\u2028here, tab\t, empty next"
    rows[1]["samples"][3] = ""
    rows[2]["extra"] = {"seed": 3}  # extra keys survive
    p = tmp_path / "c.jsonl"
    labels.write_comparisons(p, rows)
    assert labels.read_comparisons(p) == rows
    assert len(p.read_bytes().split(b"\n")) == 4  # 3 lines + the final newline


def test_reference_is_optional_and_kept(tmp_path):
    """Comparisons of summarization tasks carry the reference summary; older files have none."""
    rows = [comparison(0, task="tldr"), comparison(1, task="tldr"), comparison(2, task="tldr")]
    rows[0]["reference"] = "Tom met a friend."
    rows[1]["reference"] = None
    p = tmp_path / "c.jsonl"
    labels.write_comparisons(p, rows)
    assert labels.read_comparisons(p) == rows
    lp = write_lines(tmp_path / "l.jsonl", [{**r, "best": 1} for r in rows])
    assert [r.get("reference") for r in labels.read_labels(lp)] == ["Tom met a friend.", None, None]


def test_fixture_comparisons_parse():
    rows = labels.read_comparisons(FIXTURES / "comparisons_mixed.jsonl")
    assert [r["id"] for r in rows] == ["q-plain", "q-unicode", "q-long", "q-empty"]
    assert "" in rows[3]["samples"] and rows[3]["query"] == ""


def test_undo_and_skip_resolve_last_word_wins(tmp_path):
    p = write_lines(
        tmp_path / "l.jsonl",
        [
            label(0, 1),
            label(1, 2),
            {"id": "c0", "undo": True},  # c0 withdrawn ...
            label(2, 0),
            {"id": "c3", "skip": True},  # c3 skipped: not a label
            label(0, 3),  # ... and c0 relabeled: this line wins
            label(4, 1),
            {"id": "c4", "undo": True},  # c4 withdrawn for good
        ],
    )
    counts = {}
    rows = labels.read_labels(p, counts=counts)
    # order of the last word
    assert [(r["id"], r["best"]) for r in rows] == [("c1", 2), ("c2", 0), ("c0", 3)]
    # undone: ids whose last word is an undo (c4); undos: undo lines (c0's too)
    assert counts == {"lines": 8, "labels": 3, "undone": 1, "skipped": 1, "undos": 2}


def test_append_jsonl_writes_whole_lines(tmp_path):
    p = tmp_path / "sub" / "l.jsonl"
    p.parent.mkdir()
    labels.append_jsonl(p, label(0, 1))
    labels.append_jsonl(p, {"id": "c0", "undo": True})
    labels.append_jsonl(p, label(0, 2, note="naïve 😀\u2028"))
    data = p.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 3
    assert [r["best"] for r in labels.read_labels(p)] == [2]


def test_openai_json_is_converted():
    rows = labels.read_labels(FIXTURES / "openai_best_of_4.json")
    assert [r["best"] for r in rows] == [0, 3, 2]
    r = rows[0]
    assert labels.OPENAI_PAD_ID not in r["query_tokens"]
    assert all(labels.OPENAI_PAD_ID not in t for t in r["sample_tokens"])
    assert r["query"] == "He smiled at" and r["samples"][1] == "the dog."
    assert r["task"] == "fixtures" and len(r["sample_tokens"]) == 4


def test_repair_truncated_tail(tmp_path):
    p = tmp_path / "l.jsonl"
    good = [label(0, 1), label(1, 2)]
    write_lines(p, good)
    before = p.read_bytes()
    with open(p, "ab") as f:
        f.write(json.dumps(label(2, 3)).encode()[:37])  # a write cut off mid-line
    with pytest.raises(FormatError, match=r"l.jsonl:3: .*incomplete"):
        labels.read_labels(p)
    msg = labels.repair_truncated_tail(p)
    assert "l.jsonl:3" in msg and "removed" in msg and "2 complete lines are kept" in msg
    assert p.read_bytes() == before
    assert labels.repair_truncated_tail(p) is None  # nothing left to do
    # A complete last line that only lacks its newline is kept.
    with open(p, "ab") as f:
        f.write(json.dumps(label(2, 3)).encode())
    assert "nothing lost" in labels.repair_truncated_tail(p)
    assert [r["best"] for r in labels.read_labels(p)] == [1, 2, 3]
    # A file that is only a partial line becomes empty, not corrupt.
    q = tmp_path / "only.jsonl"
    q.write_bytes(b'{"id": "c0", "be')
    assert labels.repair_truncated_tail(q) and q.read_bytes() == b""


@pytest.mark.parametrize(
    "lines, match",
    [
        ([comparison(0), "{not json"], r"c.jsonl:2: not valid JSON"),
        ([comparison(0), "[1, 2]"], r"c.jsonl:2: expected a JSON object"),
        (
            [{k: v for k, v in comparison(0).items() if k != "samples"}],
            r"c.jsonl:1: missing field\(s\) samples",
        ),
        (
            [comparison(0), {**comparison(1), "sample_tokens": [[1], [2], [3], [50259]]}],
            r"c.jsonl:2: .*50259.*padding",
        ),
        (
            [comparison(0), {**comparison(1), "query_tokens": [1, "2"]}],
            r"c.jsonl:2: `query_tokens` must be a list of int",
        ),
        ([comparison(0), comparison(1, n=2)], r"c.jsonl:2: 2 candidates, but line 1 has 4"),
        ([comparison(0), comparison(0)], r"c.jsonl:2: id 'c0' already used on line 1"),
        (
            [{**comparison(0), "samples": ["a", "b", "c"]}],
            r"c.jsonl:1: 3 `samples` but 4 `sample_tokens`",
        ),
        ([comparison(0, n=10)], r"c.jsonl:1: 10 candidates; at most 9"),
        ([{**comparison(0), "reference": ["a"]}], r"c.jsonl:1: `reference` must be a string"),
        ([], r"c.jsonl: empty"),
    ],
)
def test_bad_comparisons_name_file_and_line(tmp_path, lines, match):
    p = write_lines(tmp_path / "c.jsonl", lines)
    with pytest.raises(FormatError, match=match):
        labels.read_comparisons(p)


def test_not_utf8_names_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(json.dumps(comparison(0)).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(FormatError, match=r"c.jsonl:2: not UTF-8"):
        labels.read_comparisons(p)


@pytest.mark.parametrize(
    "lines, match",
    [
        ([label(0, 4)], r"l.jsonl:1: `best` = 4 must be an integer index 0..3"),
        ([label(0, -1)], r"l.jsonl:1: `best` = -1"),
        ([label(0, True)], r"l.jsonl:1: `best` = True"),
        ([label(0, 1), label(1, 1, n=2)], r"l.jsonl:2: 2 candidates, but line 1 has 4"),
        (
            [label(0, 1), {**label(1, 1), "query_tokens": [50257]}],
            r"l.jsonl:2: .*token id 50257 outside",
        ),
        ([label(0, 1), {"id": "c1"}], r"l.jsonl:2: neither a label"),
        ([label(0, 1), {"best": 1}], r"l.jsonl:2: every line needs a non-empty string `id`"),
        ([label(0, 1), {**label(1, 1), "seconds": -3}], r"l.jsonl:2: `seconds`"),
        (
            [label(0, 1), {"id": "c0", "undo": True}],
            r"l.jsonl: no labels left \(2 lines: 1 ids undone",
        ),
        ([], r"l.jsonl: empty"),
    ],
)
def test_bad_labels_name_file_and_line(tmp_path, lines, match):
    p = write_lines(tmp_path / "l.jsonl", lines)
    with pytest.raises(FormatError, match=match):
        labels.read_labels(p)


def test_bad_labels_line_is_found_even_when_later_undone(tmp_path):
    # An invalid label that was later undone is not used, but a broken JSON line is always an error:
    # nothing parses around it silently.
    p = write_lines(tmp_path / "l.jsonl", [label(0, 1), "{oops", {"id": "c0", "undo": True}])
    with pytest.raises(FormatError, match=r"l.jsonl:2: not valid JSON"):
        labels.read_labels(p)


def test_bad_openai_json(tmp_path):
    p = tmp_path / "o.json"
    p.write_text(json.dumps([{"query": [1], "sample0": [2], "sample1": [3], "best": 2}]))
    with pytest.raises(FormatError, match=r"entry 0: `best` = 2"):
        labels.read_labels(p)
    p.write_text(
        json.dumps(
            [
                {"query": [1], "sample0": [2], "sample1": [3], "best": 0},
                {"query": [1], "sample0": [2], "best": 0},
            ]
        )
    )
    with pytest.raises(FormatError, match=r"entry 1: 1 samples, but entry 0 has 2"):
        labels.read_labels(p)


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        labels.read_labels(tmp_path / "nope.jsonl")
    with pytest.raises(FormatError, match="cannot read"):
        labels.read_comparisons(tmp_path / "nope.jsonl")


def test_task_instructions_cover_every_task():
    assert set(labels.TASK_INSTRUCTIONS) == {"sentiment", "descriptiveness", "tldr", "cnndm"}
    assert "most positive and happy sentiment" in labels.TASK_INSTRUCTIONS["sentiment"]


def test_labels_and_label_tool_import_no_torch():
    # label_tool.py must start fast: importing labels must not pull in torch (or numpy).
    code = (
        "import sys, label_tool; from machinery import labels; "
        "bad = [m for m in ('torch', 'numpy') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fleiss_kappa_wikipedia_example():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories.
    # P-bar = 0.378, P_e = 0.213, kappa = 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert labels.percent_agreement(table) == pytest.approx(0.378, abs=5e-4)
    assert labels.fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_hand_worked_best_of_4():
    """3 items, 2 labels each, 4 candidates. Item A: both pick 0; B: both pick 1; C: one picks 0,
    one picks 2. P_i = 1, 1, 0 -> P-bar = 2/3. Pooled p = (3, 2, 1, 0)/6 -> P_e = (9 + 4 + 1)/36
    = 7/18. kappa = (2/3 - 7/18) / (1 - 7/18) = (5/18) / (11/18) = 5/11."""
    table = [[2, 0, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0]]
    assert labels.percent_agreement(table) == pytest.approx(2 / 3)
    assert labels.fleiss_kappa(table) == pytest.approx(5 / 11)
    # Items with different numbers of labels: A has 3 labels (0, 0, 1): P_A = (4 + 1 - 3) / 6 = 1/3;
    # B: (2, 2) -> 1. P-bar = 2/3; pooled p = (2, 1, 2, 0)/5 -> P_e = 9/25; kappa = (2/3 - 9/25) /
    # (16/25) = (23/75) / (16/25) = 23/48.
    assert labels.fleiss_kappa([[2, 1, 0, 0], [0, 0, 2, 0]]) == pytest.approx(23 / 48)
    # everyone picked the same index: undefined
    assert math.isnan(labels.fleiss_kappa([[2, 0], [2, 0]]))


def test_cli_summary(tmp_path):
    p = write_lines(tmp_path / "l.jsonl", [label(0, 1), {"id": "c1", "skip": True}])
    out = subprocess.run(
        [sys.executable, "-m", "machinery.labels", p],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "1 labels, N = 4 (1 skipped, 0 undos, 2 lines)" in out.stdout


def test_the_summary_and_stats_count_undos_alike(tmp_path):
    """`python -m machinery.labels` and `label_tool.py --stats` (stats_report) count the same
    thing, undo lines, under the same word: two items undone and labeled again leave no id
    undone, and 2 undos."""
    lines = [label(0, 1), {"id": "c0", "undo": True}, label(0, 2)]
    lines += [label(1, 0), {"id": "c1", "undo": True}, label(1, 3)]
    p = write_lines(tmp_path / "l.jsonl", lines)
    out = subprocess.run(
        [sys.executable, "-m", "machinery.labels", p],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
    )
    assert "2 labels, N = 4 (0 skipped, 2 undos, 6 lines)" in out.stdout, out.stdout
    assert "2 labels by t (2); 0 skipped, 2 undos, 6 lines" in labels.stats_report([p])


def test_a_cut_off_last_line_gets_the_fix_for_its_kind_of_file(tmp_path):
    """label_tool.py repairs the labels file it appends to, never the comparisons file it reads:
    each message gives the fix that works for its file. json's messages that end in "at" read as
    one phrase ("Unterminated string starting at column 9", not "... at at column 9")."""
    cut = json.dumps(comparison(2))
    cut = cut[: cut.index("query") + 10]  # inside the value of "query"
    for rows, read, fix in (
        ([comparison(0), comparison(1)], labels.read_comparisons, "copy it again"),
        ([label(0, 1), label(1, 2)], labels.read_labels, "label_tool.py removes it when"),
    ):
        p = tmp_path / "f.jsonl"
        write_lines(p, rows)
        with open(p, "a", encoding="utf-8") as f:
            f.write(cut)
        with pytest.raises(FormatError) as e:
            read(p)
        msg = str(e.value)
        assert msg.startswith(f"{p}:3: not valid JSON: Unterminated string starting at column ")
        assert "at at" not in msg and "the last line is incomplete" in msg and fix in msg
        if read is labels.read_comparisons:
            assert "label_tool.py never changes the comparisons file" in msg
    # a whole JSON file (OpenAI's labels) and a passages file say it the same way
    p.write_text('[{"query": "cut')
    at_12 = r"f.jsonl:1: not valid JSON: Unterminated string starting at column 12$"
    with pytest.raises(FormatError, match=at_12):
        labels.read_labels(p)
    from machinery import data

    p.write_text('"a passage\n')
    at_1 = r"not valid JSON \(Unterminated string starting at column 1\)"
    with pytest.raises(data.DataError, match=at_1):
        data.read_passages(p)
