"""label_tool.py, driven as a person would: the real program in a pseudo-terminal, keys in, screen
read back through a terminal emulator (tests/terminal.py, built on pyte). The kill test SIGKILLs the
tool at random moments of a long scripted run and checks, against an independent model of the
queue, that the labels file always parses and holds exactly the decisions the screen had confirmed.
"""

import json
import os
import random
import re
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
import terminal
import wcwidth

import label_tool
from machinery import labels, termtext

ROOT = Path(__file__).resolve().parent.parent
TOOL = str(ROOT / "label_tool.py")
FIXTURES = Path(__file__).parent / "fixtures"
MIXED = str(FIXTURES / "comparisons_mixed.jsonl")

_why_not = terminal.missing()
needs_terminal = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


@pytest.fixture
def cleanup():
    tools = []
    yield tools
    for t in tools:  # never leave a child running, even when a test fails
        t.reap()


def start(cleanup, args, rows=30, cols=100):
    """label_tool.py with `args` in a terminal of rows x cols."""
    t = terminal.Terminal(
        [sys.executable, TOOL, *args], rows, cols, env={"PYTHONDONTWRITEBYTECODE": "1"}
    )
    cleanup.append(t)
    return t


def mapping(tool):
    """Screen number -> the candidate's text as shown, for the item on screen (first line of each
    candidate)."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\[(\d)\] (.*)$", tool.text(), re.M)}


def pick(tool, startswith):
    """Press the number of the candidate whose text starts with `startswith`, paging down to find
    it as a person would."""
    for _ in range(20):
        for k, text in mapping(tool).items():
            if text.startswith(startswith):
                tool.send(str(k))
                return k
        before = tool.text()
        if "more below" not in before:
            break
        tool.send("pgdn")
        tool.wait_for(lambda s: s != before and "done | item" in s, what="the page to scroll")
    raise AssertionError(f"no candidate starting with {startswith!r} on screen:\n{tool.text()}")


def lines_of(path):
    return [obj for _, obj in labels.read_jsonl(path)]


# A 40-column screen: "[k] " + 36 cells fill a row. Each candidate as sampled, then the rows the
# screen must show for it ("[k] " left off), worked out by hand: soft hyphens (scraped news) and
# emoji joiners / variation selectors / skin tones are dropped, decomposed accents composed (NFC),
# 漢 字 😀 and U+4DC0 ䷀ take 2 cells, a combining mark 0.
COLS = 40
FULL_ROWS = [
    # 4 + 36 = 40 cells exactly, once the 5 soft hyphens are gone (on screen each took a cell)
    (
        "The Prime Min\xadis\xadter an\xadnounced a swift elec\xadtion on Thurs\xadday.",
        ["The Prime Minister announced a swift", "    election on Thursday."],
    ),
    # 40 cells exactly with 2-cell characters; ❤ + U+FE0F and 👍 + skin tone lose the modifier
    (
        "漢字 and 😀 with \u4dc0 hexagrams, \u2764\ufe0f and \U0001f44d\U0001f3fd too.",
        ["漢字 and 😀 with \u4dc0 hexagrams, \u2764 and", "    \U0001f44d too."],
    ),
    # one cell more: "crèmes" would end in cell 41; 'q' + U+0301 has no composed form
    (
        "Cafe\u0301 q\u0301 nai\u0308ve fac\u0327ade, de\u0301cor and cre\u0300mes "
        "bru\u0302le\u0301es now.",
        ["Caf\xe9 q\u0301 na\xefve fa\xe7ade, d\xe9cor and", "    cr\xe8mes br\xfbl\xe9es now."],
    ),
    # one cell more: " went" would end in cell 41 (3 soft hyphens before it)
    (
        "Vot\xaders in the north\xadern dis\xadtricts went to the polls to\xadday.",
        ["Voters in the northern districts", "    went to the polls today."],
    ),
    # a word of 2-cell characters broken by cells: 'a' + 17 漢 is 35 cells, the 18th would need
    # cells 40-41 and starts the next row; the family loses its zero-width joiners
    (
        "a" + "漢" * 18 + " \U0001f468\u200d\U0001f469\u200d\U0001f467 end.",
        ["a" + "漢" * 17, "    漢 \U0001f468\U0001f469\U0001f467 end."],
    ),
]
FULL_QUERY = ("(CNN) Vot\xaders said", "Query: (CNN) Voters said")


def full_rows_item(**fields):
    """One comparison holding the FULL_ROWS candidates."""
    n = len(FULL_ROWS)
    return {
        "task": "sentiment",
        "query": FULL_QUERY[0],
        "query_tokens": [1, 2],
        "samples": [text for text, _ in FULL_ROWS],
        "sample_tokens": [[100 + j] for j in range(n)],
        **fields,
    }


def assert_whole_candidates(screen):
    """Each FULL_ROWS candidate is on `screen` (a COLS-wide terminal's text) as its rows exactly,
    followed by a blank row: nothing cut off at the edge, nothing spilled into the next row."""
    rows = screen.split("\n")
    keys = []
    for _, want in FULL_ROWS:
        at = [i for i, r in enumerate(rows) if re.match(r"\[\d\] ", r) and r[4:] == want[0]]
        assert len(at) == 1, f"no row [k] {want[0]!r} on screen:\n{screen}"
        i = at[0]
        assert rows[i + 1 : i + len(want) + 1] == [*want[1:], ""], screen
        keys.append(rows[i][1])
    assert sorted(keys) == [str(k + 1) for k in range(len(FULL_ROWS))]
    assert FULL_QUERY[1] in rows


# --------------------------------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 13, 40, 97])
def test_wrap_fits_and_keeps_every_character(width):
    rows = labels.read_comparisons(MIXED)
    for text in [r["query"] for r in rows] + [s for r in rows for s in r["samples"]]:
        out = termtext.wrap(text, width, "[1] ", 4)
        # a 2-cell char needs 2 cells
        assert out and all(termtext.text_width(ln) <= max(width, 2) for ln in out)
        shown = "".join(ln for ln in out).replace(" ", "")
        assert shown == "[1]" + termtext.sanitize(text).replace(" ", "").replace("\n", "")


def test_sanitize_removes_every_control_character():
    out = termtext.sanitize("a\x1b[2Jb\x07c\x00d\x7fe\x9bf\tg\r\nh\u2028i")
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 for c in out)
    assert out == "a\u241b[2Jb\u2407c\u2400d\u2421e\ufffdf    g\nh\ni"


def test_char_width_is_wcwidths():
    # by hand: a letter, a composed accent, CJK, an emoji, the hexagram U+4DC0 (2 cells since
    # Unicode 16; Python 3.11's unicodedata said 1), a combining accent, a Devanagari vowel sign
    chars = "a\xe9漢😀\u4dc0\u0301\u093e"
    assert [termtext.char_width(c) for c in chars] == [1, 1, 2, 2, 2, 0, 1]
    # the package's own width on a sample of all planes, spacing marks (Mc) and controls aside
    sample = [chr(cp) for cp in range(0x20, 0x32000, 7) if not 0xD800 <= cp < 0xE000]
    sample += list("\xad\u200b\u200d\ufe0f\u2630\u3164\uffa0\U0001f3fd\U0001f1fa")
    for c in sample:
        if wcwidth.wcwidth(c) >= 0 and unicodedata.category(c) != "Mc":
            assert termtext.char_width(c) == wcwidth.wcwidth(c), hex(ord(c))


def test_sanitized_text_width_is_wcswidth():
    """What sanitize leaves measures the same per code point (curses, most terminals) as
    wcwidth.wcswidth measures its grapheme clusters: nothing joins two code points into one glyph
    of another width."""
    cases = {  # by hand: text -> (shown, cells)
        "Min\xadis\xadter": ("Minister", 8),  # soft hyphens
        "zero\u200bwidth\u2060joined\ufeff": ("zerowidthjoined", 15),
        "\u202eevil\u202c": ("evil", 4),  # bidi override: would reorder the screen
        "\u2764\ufe0f \u2764": ("\u2764 \u2764", 3),  # VS16: some terminals draw 2 cells
        "\U0001f44d\U0001f3fd": ("\U0001f44d", 2),  # skin tone: 2 cells or 4
        "\U0001f468\u200d\U0001f469\u200d\U0001f467": ("\U0001f468\U0001f469\U0001f467", 6),
        "e\u0301 q\u0301": ("\xe9 q\u0301", 3),  # NFC; q + U+0301 has no composed form
        "\u1112\u1161\u11ab \u3164.": ("\ud55c .", 4),  # NFD Hangul; the Hangul filler
        "漢\u4dc0😀 \u0915\u093f": ("漢\u4dc0😀 \u0915\u093f", 9),  # "ki": a spacing mark
    }
    for text, (shown, cells) in cases.items():
        out = termtext.sanitize(text)
        assert (out, termtext.text_width(out), wcwidth.wcswidth(out)) == (shown, cells, cells)
    # Every code point of a sample, alone and after a letter (spacing marks, Mc, left out: their
    # cluster width depends on the letter before; regional indicators: a flag is 2 cells or 4).
    for cp in range(0xA0, 0x32000, 3):
        c = chr(cp)
        if 0xD800 <= cp < 0xE000 or 0x1F1E6 <= cp <= 0x1F1FF or cp in (0x2028, 0x2029):
            continue
        if any(unicodedata.category(d) == "Mc" for d in unicodedata.normalize("NFC", c)):
            continue
        for s in (c, "a" + c):
            out = termtext.sanitize(s)
            assert termtext.text_width(out) == wcwidth.wcswidth(out), hex(cp)


def test_lines_fit_with_an_indented_query_and_status_bar():
    # A query that starts with spaces: its indent is kept only while the "Query: " prefix and a
    # 2-cell character still fit (the indent used to be measured from the hanging indent alone).
    for width in range(2, 30):
        out = termtext.wrap("          漢x yz", width, "Query: ", 2)
        assert all(termtext.text_width(ln) <= width for ln in out), (width, out)
        assert "".join(out).replace(" ", "") == "Query:漢xyz"
    # 12 cells: "Query: " (7) + 3 of the 10 spaces + "x", leaving 1 spare cell
    assert termtext.wrap("          x", 12, "Query: ", 2) == ["Query: " + "   " + "x"]
    # a status bar: exactly `width` cells, where str.ljust would count code points
    assert termtext.fit("漢字", 5) == "漢字 " and termtext.fit("漢字漢", 5) == "漢字 "
    assert termtext.fit("a\u0301b", 3) == "a\u0301b "


def test_shuffled_order_is_a_stable_permutation():
    orders = {tuple(label_tool.shuffled_order(f"c{i}", "ann", 0, 4)) for i in range(50)}
    # shuffled, not one fixed order
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and len(orders) > 10
    assert label_tool.shuffled_order("c1", "ann", 0, 4) == label_tool.shuffled_order(
        "c1", "ann", 0, 4
    )


# --------------------------------------------------------------------------------------------------
# The real program in a terminal


@needs_terminal
def test_label_skip_undo_help_quit_and_resume(tmp_path, cleanup):
    out = str(tmp_path / "labels.jsonl")
    t = start(cleanup, [MIXED, "--out", out, "--labeler", "ann"])
    scr = t.wait_for("0/4 done | item q-plain")
    assert "Pick the continuation with the most positive and happy sentiment" in scr
    assert "Query: The old house at the end of the lane" in scr and "-- labels/h" in scr
    pick(t, "a family of five")  # sample 0, wherever the shuffle put it
    scr = t.wait_for("1/4 done | item q-unicode")
    # Unicode, emoji and CJK arrive intact; the ESC inside a response is shown, not obeyed.
    assert "🎉😀" in scr and "日本語のテキスト" in scr and "Ça va? Très bien" in scr
    assert "␛[31mRED␛[0m" in scr and "(empty response)" in scr
    t.send("s")
    scr = t.wait_for("item q-long")
    assert (
        "skipped item q-unicode" in scr and "1 skipped" in scr and "[more below: Down/PgDn]" in scr
    )
    t.send("x")
    t.wait_for("key 'x' does nothing")
    t.send("7")
    t.wait_for("there are only 4 candidates")
    before = t.text()
    t.send("pgdn")
    scr = t.wait_for(lambda s: s != before and "more above" in s, what="the page to scroll")
    t.send("?")
    t.wait_for(["Keys", "undo the last decision", "and flushed to disk", "done | item"])
    t.send("z")  # any key closes help
    t.wait_for("Query: A very long query")
    pick(t, "short.")  # sample 1
    scr = t.wait_for("2/4 done | item q-empty")
    assert "(empty query)" in scr and scr.count("(empty response)") == 2
    t.send("u")
    scr = t.wait_for("undid the decision on item q-long")
    assert "1/4 done | item q-long" in scr
    t.send("q")
    assert t.wait_exit() == 0
    assert b"1/4 items labeled, 1 skipped" in t.output and b"Traceback" not in t.output

    log = lines_of(out)
    assert [(o["id"], o.get("best"), o.get("skip"), o.get("undo")) for o in log] == [
        ("q-plain", 0, None, None),
        ("q-unicode", None, True, None),
        ("q-long", 1, None, None),
        ("q-long", None, None, True),
    ]
    first = log[0]
    assert (
        first["labeler"] == "ann"
        and first["seconds"] > 0
        and sorted(first["order"]) == [0, 1, 2, 3]
    )
    assert first["query_tokens"] == labels.read_comparisons(MIXED)[0]["query_tokens"]

    # Restart: undecided items first in file order (q-long, q-empty), the skipped one last.
    t = start(cleanup, [MIXED, "--out", out, "--labeler", "ann"])
    t.wait_for("1/4 done | item q-long | 1 skipped")
    pick(t, "Rain.")  # sample 3
    t.wait_for("2/4 done | item q-empty")
    pick(t, "Only this one has words.")  # sample 1
    scr = t.wait_for("3/4 done | item q-unicode")
    pick(t, "Everyone cheered")  # sample 0
    scr = t.wait_for("All 4 items are labeled")
    t.send("1")
    t.wait_for("all items are labeled: u undoes")
    t.send("q")
    assert t.wait_exit() == 0
    rows = {r["id"]: r for r in labels.read_labels(out)}
    assert {k: r["best"] for k, r in rows.items()} == {
        "q-plain": 0,
        "q-long": 3,
        "q-empty": 1,
        "q-unicode": 0,
    }
    assert "🎉" in rows["q-unicode"]["samples"][0]  # the text round-trips through the log


@needs_terminal
def test_undo_works_across_restarts(tmp_path, cleanup):
    out = str(tmp_path / "labels.jsonl")
    t = start(cleanup, [MIXED, "--out", out])
    t.wait_for("item q-plain")
    t.send("1")
    t.wait_for("item q-unicode")
    t.send("q")
    t.wait_exit()
    t = start(cleanup, [MIXED, "--out", out])
    t.wait_for("1/4 done | item q-unicode")
    t.send("u")
    t.wait_for("0/4 done | item q-plain")
    t.send("u")
    t.wait_for("nothing to undo")
    t.send("q")
    t.wait_exit()
    assert [o.get("undo") for o in lines_of(out)] == [None, True]


@needs_terminal
def test_ctrl_c_quits_cleanly(tmp_path, cleanup):
    out = str(tmp_path / "labels.jsonl")
    t = start(cleanup, [MIXED, "--out", out])
    t.wait_for("item q-plain")
    t.send("2")
    t.wait_for("item q-unicode")
    t.send("ctrl-c")
    assert t.wait_exit() == 130
    assert b"Every decision is saved" in t.output and b"Traceback" not in t.output
    assert len(labels.read_labels(out)) == 1


@needs_terminal
def test_small_terminal_and_resize(tmp_path, cleanup):
    out = str(tmp_path / "labels.jsonl")
    t = start(cleanup, [MIXED, "--out", out], rows=30, cols=100)
    t.wait_for("item q-plain")
    t.resize(6, 24)  # 4 body rows: everything scrolls
    scr = t.wait_for(lambda s: "0/4 done" in s and "[more below" in s, what="a redraw at 24x6")
    assert all(len(ln) <= 24 for ln in scr.split("\n"))
    for _ in range(12):
        t.send("pgdn")
    t.wait_for("[more above")
    t.send("1")
    t.wait_for("1/4 done")
    t.resize(2, 8)  # absurdly small: still no crash, keys still work
    t.send("s")
    t.resize(1, 5)
    t.send("1")
    t.resize(24, 80)
    t.wait_for(lambda s: "2/4 done | item q-empty | 1 skipped" in s, what="a redraw at 80x24")
    t.send("q")
    assert t.wait_exit() == 0
    assert [o.get("skip", False) for o in lines_of(out)] == [False, True, False]
    # Starting in a tiny terminal works too.
    t = start(cleanup, [MIXED, "--out", out], rows=3, cols=12)
    t.wait_for("2/4 done")
    t.send("q")
    assert t.wait_exit() == 0


@needs_terminal
def test_full_width_rows_show_the_whole_candidate(tmp_path, cleanup):
    """Rows exactly as wide as the terminal, and one cell wider, with soft hyphens, 2-cell
    characters and combining marks: pyte (whose widths are wcwidth's) shows every candidate whole,
    wrapped where worked out by hand, and nothing runs into the next row."""
    path, out = tmp_path / "c.jsonl", str(tmp_path / "labels.jsonl")
    labels.write_comparisons(path, [full_rows_item(id="w漢\xadid")])
    t = start(cleanup, [str(path), "--out", out], rows=30, cols=COLS)
    scr = t.wait_for("0/1 done")
    assert_whole_candidates(scr)
    # The status bar measures the id as the screen does (its soft hyphen dropped too).
    assert scr.split("\n")[-1] == " 0/1 done | item w漢id | -- labels/h |"
    k = pick(t, FULL_ROWS[2][1][0])  # the pick still lands on the candidate shown
    t.wait_for("1/1 done")
    t.send("q")
    assert t.wait_exit() == 0
    [row] = labels.read_labels(out)
    assert row["best"] == 2 and row["order"][k - 1] == 2 and row["samples"][0] == FULL_ROWS[0][0]


@needs_terminal
def test_second_session_on_the_same_file_is_refused(tmp_path, cleanup):
    out = str(tmp_path / "labels.jsonl")
    first = start(cleanup, [MIXED, "--out", out])
    first.wait_for("0/4 done | item q-plain")
    second = start(cleanup, [MIXED, "--out", out])
    assert (
        second.wait_exit() == 2 and b"another label_tool.py session is writing to" in second.output
    )
    first.send("1")
    first.wait_for("1/4 done")
    first.kill()  # the lock goes with the process: a new session starts at once
    third = start(cleanup, [MIXED, "--out", out])
    third.wait_for("1/4 done | item q-unicode")
    third.send("q")
    assert third.wait_exit() == 0


@needs_terminal
def test_truncated_last_line_is_repaired_on_open(tmp_path, cleanup):
    out = tmp_path / "labels.jsonl"
    rows = labels.read_comparisons(MIXED)
    labels.append_jsonl(
        out, {**rows[0], "best": 2, "labeler": "x", "seconds": 1.0, "created": labels.now_iso()}
    )
    good = out.read_bytes()
    with open(out, "ab") as f:  # what a power cut in the middle of a write would leave
        f.write(json.dumps({**rows[1], "best": 1})[:50].encode())
    t = start(cleanup, [MIXED, "--out", str(out)])
    scr = t.wait_for("1/4 done | item q-unicode")
    assert "labels.jsonl:2: removed an incomplete last line" in scr.replace("\n", " ")
    assert out.read_bytes() == good
    t.send("3")
    t.wait_for("2/4 done")
    t.send("q")
    t.wait_exit()
    assert [r["id"] for r in labels.read_labels(out)] == ["q-plain", "q-unicode"]


@needs_terminal
def test_labels_per_hour_only_from_labels_that_took_a_readers_time(tmp_path, cleanup):
    """A file repaired on open whose label took ~0 s (a script wrote it), and a key pressed at once:
    no rate yet (this showed "3600000 labels/h | ETA 0s"). Three labels of 2 s each, resumed: 1800
    an hour, and the ETA of the one item left from it."""
    out = tmp_path / "labels.jsonl"
    rows = labels.read_comparisons(MIXED)
    labels.append_jsonl(
        out, {**rows[0], "best": 2, "labeler": "script:x", "seconds": 4e-5, "created": ""}
    )
    with open(out, "ab") as f:
        f.write(json.dumps({**rows[1], "best": 1})[:50].encode())
    t = start(cleanup, [MIXED, "--out", str(out)])
    scr = t.wait_for("1/4 done | item q-unicode")
    assert "removed an incomplete last line" in scr.replace("\n", " ")
    assert scr.split("\n")[-1].endswith("| -- labels/h | ETA --")
    t.send("1")
    scr = t.wait_for("2/4 done")
    assert scr.split("\n")[-1].endswith("| -- labels/h | ETA --"), scr
    t.send("q")
    assert t.wait_exit() == 0
    out.unlink()
    for row in rows[:3]:
        labels.append_jsonl(out, {**row, "best": 0, "labeler": "x", "seconds": 2.0, "created": ""})
    t = start(cleanup, [MIXED, "--out", str(out)])
    scr = t.wait_for("3/4 done")
    assert scr.split("\n")[-1].endswith("| 1800 labels/h | ETA 2s"), scr
    t.send("q")
    assert t.wait_exit() == 0


def make_comparisons(path, n_items, n=4):
    rows = [
        {
            "id": f"i{i:02d}",
            "task": "sentiment",
            "query": f"query of item {i}",
            "query_tokens": [i, 1, 2],
            "samples": [f"i{i:02d}-cand{j} text" for j in range(n)],
            "sample_tokens": [[100 + j, i] for j in range(n)],
        }
        for i in range(n_items)
    ]
    labels.write_comparisons(path, rows)
    return [r["id"] for r in rows]


class Model:
    """What the labels file and the screen should hold, written from the spec independently of
    label_tool.Session."""

    def __init__(self, ids):
        self.ids, self.log = ids, []  # log: (id, kind, best)
        self.rebuild()

    def rebuild(self):
        """The queue and undo history a fresh start derives from the log."""
        last = {}
        for id_, kind, _ in self.log:
            last.pop(id_, None)
            last[id_] = kind
        self.history = [i for i, k in last.items() if k in ("label", "skip")]
        self.queue = [i for i in self.ids if last.get(i) not in ("label", "skip")] + [
            i for i in self.ids if last.get(i) == "skip"
        ]

    def done(self):
        last = {}
        for id_, kind, _ in self.log:
            last[id_] = kind
        return sum(1 for k in last.values() if k == "label")

    def apply(self, action, best=None):
        """One key's effect: returns the message the tool must show once the decision is on disk."""
        if action == "label":
            id_ = self.queue.pop(0)
            self.log.append((id_, "label", best))
        elif action == "skip":
            id_ = self.queue.pop(0)
            self.queue.append(id_)
            self.log.append((id_, "skip", None))
        else:  # undo
            id_ = self.history.pop()
            self.log.append((id_, "undo", None))
            if id_ in self.queue:
                self.queue.remove(id_)
            self.queue.insert(0, id_)
            return
        if id_ in self.history:
            self.history.remove(id_)
        self.history.append(id_)

    def signature(self):
        return f"{self.done()}/{len(self.ids)} done | " + (
            f"item {self.queue[0]}" if self.queue else "finished"
        )


def file_log(path):
    if not os.path.exists(path):
        return []
    out = []
    for _, o in labels.read_jsonl(path):  # must always parse
        kind = "undo" if o.get("undo") else "skip" if o.get("skip") else "label"
        out.append((o["id"], kind, o.get("best")))
    return out


@needs_terminal
def test_sigkill_at_random_moments_loses_nothing_confirmed(tmp_path, cleanup):
    comp, out = str(tmp_path / "c.jsonl"), str(tmp_path / "labels.jsonl")
    ids = make_comparisons(comp, 30)
    rng = random.Random(1234)
    model = Model(ids)
    kills = {"confirmed": 0, "in flight": 0}
    for round_ in range(14):
        t = start(cleanup, [comp, "--out", out, "--labeler", "k"])
        t.wait_for(model.signature())
        n_steps = rng.randint(1, 12)
        kill_in_flight = rng.random() < 0.5
        for step in range(n_steps):
            prev_msg_screen = t.text()
            choices = (
                ["label"] * 5 + ["skip"] * (len(model.queue) > 1) + ["undo"] * bool(model.history)
            )
            action = rng.choice(choices) if model.queue else "undo"
            if action == "label":
                m = mapping(t)
                key = rng.randint(1, 4)
                # what the screen showed under that key
                best = int(re.match(r"i\d\d-cand(\d)", m[key]).group(1))
                before_id = model.queue[0]
                model.apply("label", best)
                t.send(str(key))
                expect = f"saved: item {before_id} -> [{key}]"
            elif action == "skip":
                before_id = model.queue[0]
                model.apply("skip")
                t.send("s")
                expect = f"skipped item {before_id}"
            else:
                undone = model.history[-1]
                model.apply("undo")
                t.send("u")
                expect = f"undid the decision on item {undone}"
            if step == n_steps - 1 and kill_in_flight:
                time.sleep(rng.choice([0, 0, 0.0005, 0.002, 0.005]))
                break
            sig = model.signature()
            t.wait_for(
                lambda s: expect in s and sig in s and s != prev_msg_screen,
                what=f"{expect!r} + {sig!r}",
            )
        t.kill()
        got = file_log(out)
        if kill_in_flight:
            kills["in flight"] += 1
            # The key was sent but not confirmed: the file holds every confirmed decision, plus this
            # one or not.
            assert got in (model.log[:-1], model.log), (
                f"round {round_}: {got[-3:]} vs {model.log[-3:]}"
            )
            model.log = got
        else:
            kills["confirmed"] += 1
            assert got == model.log, f"round {round_}: file differs from the confirmed decisions"
        model.rebuild()  # what a restart resumes from
    assert all(kills.values()), kills  # both kinds of kill happened
    # And reward.py's reader agrees with the model on the final labels.
    expect = {}
    for id_, kind, best in model.log:
        expect.pop(id_, None)
        if kind == "label":
            expect[id_] = best
    if expect:
        assert {r["id"]: r["best"] for r in labels.read_labels(out)} == expect


# --------------------------------------------------------------------------------------------------
# Refusals and errors (no terminal needed: files are checked first)


def run_tool(*args):
    return subprocess.run(
        [sys.executable, TOOL, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_refuses_without_a_terminal(tmp_path):
    r = run_tool(MIXED, "--out", str(tmp_path / "l.jsonl"))
    assert r.returncode == 2 and "needs an interactive terminal" in r.stderr
    assert not (tmp_path / "l.jsonl").exists()


def test_malformed_comparisons_names_the_line(tmp_path):
    bad = tmp_path / "c.jsonl"
    good = Path(MIXED).read_text(encoding="utf-8").split("\n")
    bad.write_text(
        "\n".join(good[:2] + ['{"id": "x", "task": "sentiment", ']) + "\n", encoding="utf-8"
    )
    r = run_tool(str(bad), "--out", str(tmp_path / "l.jsonl"))
    assert r.returncode == 1 and f"{bad}:3: not valid JSON" in r.stderr


def test_a_cut_off_comparisons_file_is_left_alone_with_the_fix_that_works(tmp_path):
    """label_tool.py repairs the labels file it appends to, never the comparisons file it reads;
    so the message about a comparisons file's incomplete last line must not send the labeler back
    to label_tool.py, and the file is not touched."""
    cut = tmp_path / "c.jsonl"
    data = Path(MIXED).read_bytes()
    cut.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 41])  # the last line: 40 bytes
    before = cut.read_bytes()
    r = run_tool(str(cut), "--out", str(tmp_path / "l.jsonl"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "the last line is incomplete" in r.stderr and "copy it again" in r.stderr
    assert "removes it when" not in r.stderr and " at at " not in r.stderr
    assert cut.read_bytes() == before and not (tmp_path / "l.jsonl").exists()


def test_labels_file_of_another_comparisons_file_is_refused(tmp_path):
    comp = str(tmp_path / "other.jsonl")
    make_comparisons(comp, 3)
    out = str(tmp_path / "l.jsonl")
    row = labels.read_comparisons(comp)[1]
    labels.append_jsonl(out, {**row, "best": 0, "labeler": "x", "seconds": 1.0, "created": ""})
    r = run_tool(MIXED, "--out", out)
    assert r.returncode == 1
    assert (
        f"{out}:1: id 'i01' is not in {MIXED}" in r.stderr
        and "different comparisons file" in r.stderr
    )
    # Same id, different content: also refused.
    mixed_row = labels.read_comparisons(MIXED)[0]
    os.remove(out)
    labels.append_jsonl(out, {**mixed_row, "sample_tokens": [[1], [2], [3], [4]], "best": 0})
    r = run_tool(MIXED, "--out", out)
    assert r.returncode == 1 and "has different tokens" in r.stderr


def test_unknown_task_needs_instructions(tmp_path):
    comp = tmp_path / "c.jsonl"
    row = labels.read_comparisons(MIXED)[0]
    labels.write_comparisons(comp, [{**row, "task": "poetry"}])
    r = run_tool(str(comp), "--out", str(tmp_path / "l.jsonl"))
    assert r.returncode == 1 and "no built-in instruction for task(s) poetry" in r.stderr


def test_stats_counts_times_and_agreement(tmp_path):
    comp = str(tmp_path / "c.jsonl")
    make_comparisons(comp, 4)
    rows = labels.read_comparisons(comp)
    # The hand-worked table of test_fleiss_kappa_hand_worked_best_of_4: items 0, 1 agree; item 2
    # disagrees (0 vs 2); item 3 is labeled once (not counted for agreement).
    for who, picks in (("alice", [0, 1, 0, 3]), ("bob", [0, 1, 2])):
        for r, b in zip(rows, picks):
            labels.append_jsonl(
                tmp_path / f"{who}.jsonl",
                {
                    **r,
                    "best": b,
                    "labeler": who,
                    "seconds": 2.0 + b,
                    "created": "",
                    "order": [0, 1, 2, 3],
                },
            )
    labels.append_jsonl(tmp_path / "bob.jsonl", {"id": rows[3]["id"], "skip": True})
    r = run_tool("--stats", str(tmp_path / "alice.jsonl"), str(tmp_path / "bob.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "alice.jsonl: 4 labels by alice (4)" in r.stdout
    assert "bob.jsonl: 3 labels by bob (3); 1 skipped, 0 undos, 4 lines" in r.stdout
    assert "median 2.5 s, mean 3.0 s" in r.stdout  # alice: 2, 3, 2, 5 seconds
    assert "agreement on 3 items labeled more than once (2 labels: 3 items)" in r.stdout
    assert "percent agreement (pairs of labels that agree): 66.7%" in r.stdout
    assert "Fleiss' kappa: 0.455" in r.stdout  # 5/11
