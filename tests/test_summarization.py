"""Summarization: queries from local data in the upstream formats, built token for token as
OpenAI's code builds them (pads in the middle, the "Article:" prefix, the 500-token window), the
newline window 55..75 with its penalty, the ROUGE labeler, and the paper's copying measures
(summarization.py), each against hand-worked answers."""

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import terminal
import torch
from upstream_data import story_name, write_cnndm, write_tldr

from gpt2 import GPT2, PAD_ID, PRESETS, get_tokenizer
from machinery import labels, tasks
from machinery import summarization as S

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = [198, 198, 14990, 26, 7707, 25]  # "\n\nTL;DR:"
ARTICLE = [14906, 25, 628]  # "Article:\n\n"
P = PAD_ID

# --------------------------------------------------------------------------------------------------
# Query layout


def test_tldr_queries_token_for_token(tmp_path):
    enc = get_tokenizer()
    short = {"content": "  Hello world.\n\n\n\nBye. ", "summary": " Said hello. "}
    long = {"content": "x" + " a" * 700, "summary": "Many a."}
    path = tmp_path / "posts.json"
    path.write_text(json.dumps([short, long]))
    src = tasks.QuerySource("tldr", "train", query_data=str(path))
    got = {q.reference: q.tokens for q in src.next_queries(2)}
    # cleaned as OpenAI's tldr.py (3+ newlines -> 2, stripped): "Hello world.\n\nBye."
    hello = [15496, 995, 13, 198, 198, 3886, 68, 13]
    assert enc.encode("Hello world.\n\nBye.") == hello
    assert got == {"Said hello.": hello, "Many a.": [87] + [257] * 499}  # 500-token window
    task = tasks.get_task("tldr")
    # the policy's context: post, 50259 up to 500 tokens, "\n\nTL;DR:" (pads in the middle)
    assert tasks.format_query(task, hello) == hello + [P] * 492 + SUFFIX
    assert tasks.format_query(task, got["Many a."]) == [87] + [257] * 499 + SUFFIX


def test_cnndm_queries_token_for_token(tmp_path):
    # lines of 21 tokens: "x" (87) + 19 x " a" (257) + "\n" (198)... the last line has no newline
    line = "x" + " a" * 19 + "\n"
    enc = get_tokenizer()
    assert enc.encode(line + "x a") == [87] + [257] * 19 + [198, 87, 257]
    long_story = (
        "By A Reporter\nPUBLISHED: 12:00 GMT\n(CNN) -- "
        + line * 30
        + "x a a\n\n@highlight\n\nThe a rose\n\n@highlight\n\nThe x fell\n"
    )
    short_story = "x a a.\nx a\n\n@highlight\n\nShort one"
    cnn, dm = "http://www.cnn.com/2014/01/01/a/index.html", "http://www.dailymail.co.uk/b.html"
    folder = write_cnndm(tmp_path / "cnndm", {cnn: long_story, dm: short_story})
    # the second story in the other accepted layout: {site}/stories/ directly under the folder
    (folder / story_name(dm)).parent.mkdir(parents=True)
    (folder / "cache_train" / story_name(dm)).rename(folder / story_name(dm))
    src = tasks.QuerySource("cnndm", "train", query_data=str(folder))
    got = {q.reference: q.tokens for q in src.next_queries(2)}
    # 500-token window = 23 whole lines + 17 tokens of the 24th; cut after its last newline
    assert got["The a rose\nThe x fell"] == ([87] + [257] * 19 + [198]) * 23
    # "x a a.\nx a": the window ends at its last newline
    assert got["Short one"] == [87, 257, 257, 13, 198]
    task = tasks.get_task("cnndm")
    assert tasks.format_query(task, got["Short one"]) == (
        ARTICLE + [87, 257, 257, 13, 198] + [P] * 495 + SUFFIX
    )
    assert len(tasks.format_query(task, got["The a rose\nThe x fell"])) == 3 + 500 + 6


def test_style_task_queries_are_not_padded():
    raw = [464, 3290, 373, 922, 13]
    for name in ("sentiment", "descriptiveness"):
        assert tasks.format_query(tasks.get_task(name), raw) == raw


def test_middle_pads_compute_what_the_stripped_context_does():
    """OpenAI's layout [article, pads, TL;DR:] with pads masked and positions = exclusive cumsum
    of the mask gives the same next-token logits as the context with the pads removed."""
    torch.manual_seed(0)
    model = GPT2.from_config(dataclasses.replace(PRESETS["tiny"])).eval()
    task = tasks.get_task("tldr")
    ctx = torch.tensor([tasks.format_query(task, [464, 3290, 373, 922, 13])])  # (1, 506)
    stripped = torch.tensor([tasks.strip_pad(ctx[0])])  # (1, 11)
    with torch.no_grad():
        a = model(ctx, ctx != PAD_ID)[0, -1]
        b = model(stripped)[0, -1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_newline_window_55_to_75_and_penalty():
    task = tasks.get_task("tldr")
    assert (task.response_length, task.truncate_token, task.truncate_after) == (75, 198, 55)
    w = 11  # any word token

    def row(*newlines):
        r = [w] * 75
        for i in newlines:
            r[i] = 198
        return r

    responses = torch.tensor([row(54), row(55), row(74), row(20, 60, 70), row()])
    truncated, valid = tasks.truncate_responses(responses, task)
    assert (
        truncated.tolist()
        == [
            row(54),  # a newline before token 55 does not count: invalid, left whole
            row(55)[:56] + [P] * 19,  # cut right after the newline at 55
            row(74),  # newline last: nothing to cut
            row(20, 60, 70)[:61] + [P] * 14,  # the first newline at >= 55 ends it
            row(),  # no newline: invalid
        ]
    )
    assert valid.tolist() == [False, True, True, True, False]
    scores = torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7])
    assert tasks.penalize(scores, valid, task).tolist() == pytest.approx(
        [-1.0, 0.4, 0.5, 0.6, -1.0]
    )


# --------------------------------------------------------------------------------------------------
# Query data given by path: the wrong thing gets a clear message


def test_query_data_errors_name_the_path_and_the_layout(tmp_path):
    jsonl = tmp_path / "posts.jsonl"
    jsonl.write_text('{"content": "a"}\n{"content": "b"}\n')
    with pytest.raises(tasks.DataError, match=r"posts\.jsonl.*expected a JSON list.*content"):
        tasks.QuerySource("tldr", query_data=str(jsonl))
    no_content = tmp_path / "bad.json"
    no_content.write_text(json.dumps([{"content": "a"}, {"body": "b"}]))
    with pytest.raises(tasks.DataError, match=r"bad\.json: entry 1 is not an object with a str"):
        tasks.QuerySource("tldr", query_data=str(no_content))
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps([{"content": "a"}, {"content": "b"}])[:-5])
    with pytest.raises(tasks.DataError, match=r"cut\.json: not a TL;DR file"):
        tasks.QuerySource("tldr", query_data=str(cut))
    with pytest.raises(tasks.DataError, match=r"train-subset\.json: missing"):
        tasks.QuerySource("tldr", query_data=str(tmp_path))
    with pytest.raises(tasks.DataError, match="no such file or folder"):
        tasks.QuerySource("tldr", query_data=str(tmp_path / "nope.json"))
    # CNN/DM: a folder; a file, a folder without url lists, or a missing story say so
    with pytest.raises(tasks.DataError, match="a file; CNN/DM data is a folder with url_lists"):
        tasks.QuerySource("cnndm", query_data=str(jsonl))
    with pytest.raises(tasks.DataError, match=r"no url list .*all_train\.txt"):
        tasks.QuerySource("cnndm", query_data=str(tmp_path))
    url = "http://www.cnn.com/x.html"
    folder = write_cnndm(tmp_path / "cnndm", {url: "A.\n@highlight\n\nB"})
    (folder / "url_lists" / "all_train.txt").write_text(f"{url}\nhttp://www.cnn.com/gone.html\n")
    with pytest.raises(tasks.DataError, match=r"1 of the 2 stories .* missing, e.g. .*gone\.html"):
        tasks.QuerySource("cnndm", query_data=str(folder))
    # books: a .jsonl of strings
    bad_books = tmp_path / "books.jsonl"
    bad_books.write_text('"A passage. It ends."\n{"text": "no"}\n')
    with pytest.raises(tasks.DataError, match=r"books\.jsonl:2: a dict, not a string"):
        tasks.QuerySource("sentiment", query_data=str(bad_books))


def test_local_tldr_folder_and_books_file(tmp_path):
    write_tldr(tmp_path / "tldr", n=8)
    src = tasks.QuerySource("tldr", "test", query_data=str(tmp_path / "tldr"))  # test -> valid
    assert len(src.items) == 2 and all(q.reference for q in src.next_queries(3))
    books = tmp_path / "b.jsonl"
    books.write_text('"He sat down. The room was warm and quiet today."\n')
    (q,) = tasks.QuerySource("sentiment", query_data=str(books)).next_queries(1)
    assert get_tokenizer().decode(q.tokens) == " The room was warm and quiet today."
    assert q.reference is None
    # the state records which data it is about
    state = src.state_dict()
    with pytest.raises(ValueError, match="query_data"):
        tasks.QuerySource(
            "tldr", "test", query_data=str(tmp_path / "tldr" / "valid-subset.json")
        ).load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# The ROUGE labeler


def test_rouge_by_hand():
    # ref: the cat sat on the mat / summary: the cat is on the mat
    # 5 of 6 words shared each way -> F 5/6; R-2: the-cat, on-the, the-mat of 5 -> F 3/5;
    # R-L: LCS "the cat on the mat" = 5 -> F 5/6
    r = S.rouge_scores("the cat is on the mat", "the cat sat on the mat")
    assert r == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    assert S.rouge_mean("the cat is on the mat", "the cat sat on the mat") == pytest.approx(
        (5 / 6 + 3 / 5 + 5 / 6) / 3
    )
    # Porter stemming, case and punctuation: "The dog runs!" vs "the dogs were running":
    # stems the dog run / the dog were run: R-1 P 3/3, R 3/4 -> F 6/7; R-2 the-dog, dog-run vs
    # the-dog, dog-were, were-run: 1 shared -> P 1/2, R 1/3 -> F 2/5; R-L LCS 3 -> F 6/7
    r = S.rouge_scores("The dog runs!", "the dogs were running")
    assert r == pytest.approx({"rouge1": 6 / 7, "rouge2": 2 / 5, "rougeL": 6 / 7})
    assert S.rouge_scores("blue sky", "red door") == {"rouge1": 0, "rouge2": 0, "rougeL": 0}


def test_rouge_labeler_picks_the_closest_summary_and_needs_references():
    lab = tasks.get_labeler(tasks.get_task("tldr").labeler)
    ref = "Tom went to the market and met a friend."
    samples = ["A red door.", "Tom met a friend.", "Tom went to the market and met Ada.", "Tom."]
    assert lab.pick_best("q", samples, ref) == 2
    assert lab.score(samples, [ref] * 4).tolist() == pytest.approx(
        [S.rouge_mean(s, ref) for s in samples]
    )
    with pytest.raises(ValueError, match="reference summary, and 1 of 2 texts have none"):
        lab.score(["a", "b"], [ref, None])
    with pytest.raises(ValueError, match="reference summary"):
        lab.pick_best("q", samples)
    # ties (no shared word) are broken at random per item, reproducibly, over every position
    picks = [lab.pick_best(f"q{i}", ["A.", "B.", "C."], "Zed.") for i in range(60)]
    assert picks == [lab.pick_best(f"q{i}", ["A.", "B.", "C."], "Zed.") for i in range(60)]
    assert set(picks) == {0, 1, 2}


# --------------------------------------------------------------------------------------------------
# Copying measures

SOURCE = "The river rose overnight. Families left their homes.\nThe mayor called for calm."


def test_sentences():
    assert S.sentences("He left. She stayed!\nThe end") == ["He left.", "She stayed!", "The end"]
    assert S.sentences("Why? ... \n\n -- ") == ["Why?"]
    assert S.sentences("") == []


def test_novelty_by_hand():
    # one copied sentence, one new one
    assert S.novel_sentences("Families left their homes. Officials blamed the rain.", SOURCE) == (
        1,
        2,
    )
    # copied, the last one cut off mid-sentence; whitespace differences do not matter
    assert S.novel_sentences("The river  rose overnight.\nFamilies left", SOURCE) == (0, 2)
    # a sentence across the source's newline is still found (whitespace is collapsed)
    assert S.novel_sentences("Families left their homes. The mayor called", SOURCE) == (0, 2)
    # case counts: copying means verbatim
    assert S.novel_sentences("the river rose overnight.", SOURCE) == (1, 1)
    # pooled over summaries: (1 + 0 + 1) novel of (2 + 2 + 1) sentences; nothing -> nan
    summaries = [
        "Families left their homes. Officials blamed the rain.",
        "The river rose overnight. Families left",
        "A storm came.",
    ]
    assert S.sentence_novelty(summaries, [SOURCE] * 3) == pytest.approx(2 / 5)
    assert math.isnan(S.sentence_novelty([""], [SOURCE]))


def test_lead_copy_by_hand():
    assert S.LEAD_WORDS == 5
    assert S.copies_lead("The river rose overnight. Families fled.", SOURCE)  # first 5 words
    assert not S.copies_lead("Families left their homes. The river rose.", SOURCE)  # not the start
    assert not S.copies_lead("The river rose overnight.", SOURCE)  # only 4 words
    assert not S.copies_lead("The River rose overnight. Families", SOURCE)  # verbatim only
    summaries = [
        "The river rose overnight. Families fled.",
        "A storm.",
        "The river rose overnight.",
    ]
    assert S.lead_copy_share(summaries, [SOURCE] * 3) == pytest.approx(1 / 3)


def test_summary_measures_batch():
    m = S.summary_measures(
        ["The river rose overnight. Families fled.", "A storm came."],
        [SOURCE, SOURCE],
        ["The river rose.", "A storm came."],
    )
    # novelty: (1 + 1) of (2 + 1) sentences; lead copy 1 of 2
    assert m["novelty"] == pytest.approx(2 / 3) and m["lead_copy"] == pytest.approx(1 / 2)
    r = [S.rouge_scores("The river rose overnight. Families fled.", "The river rose."), None]
    r[1] = {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    for k in S.ROUGE_TYPES:
        assert m[k] == pytest.approx((r[0][k] + r[1][k]) / 2)
    # no references: no ROUGE keys
    assert set(S.summary_measures(["A."], [SOURCE])) == {"novelty", "lead_copy"}


# --------------------------------------------------------------------------------------------------
# label_tool.py on a summarization comparisons file: a long post scrolls, the label keeps the
# reference


@pytest.mark.skipif(terminal.missing() is not None, reason=str(terminal.missing()))
def test_label_tool_scrolls_a_long_tldr_post(tmp_path):
    enc = get_tokenizer()
    post = " ".join(f"Sentence {i} of a long post about the river and the town." for i in range(40))
    raw = enc.encode(post)[:500]
    summaries = [f"Summary {k}: the river rose and the town left.\n" for k in range(4)]
    row = dict(
        id="tldr-train-s0-0",
        task="tldr",
        query=enc.decode(raw),
        query_tokens=raw,
        samples=summaries,
        sample_tokens=[enc.encode(s) for s in summaries],
        reference="The river rose; people left town.",
    )
    comparisons, out = tmp_path / "c.jsonl", tmp_path / "l.jsonl"
    labels.write_comparisons(comparisons, [row])
    tool = terminal.Terminal(
        [sys.executable, str(ROOT / "label_tool.py"), str(comparisons), "--out", str(out)], 24, 80
    )
    try:
        scr = tool.wait_for("[more below", what="the first page of a long post")
        assert "Pick the best summary of the post" in scr and "Query: Sentence 0 of" in scr
        assert "Summary 0" not in scr  # not on the first page
        for _ in range(10):
            tool.send("pgdn")
        scr = tool.wait_for(lambda s: "[1] Summary" in s, what="the candidates after paging down")
        assert "[more above" in scr and "Sentence 0 of" not in scr
        # the end of the (500-token) post, just above them
        assert re.findall(r"Sentence \d+", row["query"])[-1] + " " in scr
        shown = re.search(r"^\[1\] Summary (\d)", scr, re.M)[1]
        tool.send("1")
        tool.wait_for("1/1 done")
        tool.send("q")
        assert tool.wait_exit() == 0
    finally:
        tool.reap()
    (label,) = labels.read_labels(out)
    assert label["best"] == int(shown) and label["reference"] == row["reference"]


# --------------------------------------------------------------------------------------------------
# The stages on local summarization data


def test_reward_sample_and_label_on_cnndm_folder(tmp_path, capsys):
    """`reward.py sample` on a CNN/DM folder gives rows carrying the highlights; `reward.py label`
    picks with the task's own labeler (ROUGE against them); tiny never writes a newline, so with
    the stop token required sampling stops with a message instead of looping forever."""
    import reward

    stories = {
        f"http://www.cnn.com/{i}.html": f"Mara walked to the river.\nIt was cold {i}.\n\n"
        f"@highlight\n\nMara went to the river"
        for i in range(3)
    }
    folder = write_cnndm(tmp_path / "cnndm", stories)
    cmp_path, lab_path = tmp_path / "c.jsonl", tmp_path / "l.jsonl"
    common = ["--task", "cnndm", "--model", "tiny", "--query-data", str(folder)]
    common += ["--num-comparisons", "2", "--out", str(cmp_path), "--device", "cpu"]
    assert reward.main(["sample", *common, "--max-rounds", "1"]) == 1
    assert "--no-require-stop" in capsys.readouterr().err and not cmp_path.exists()
    assert reward.main(["sample", *common, "--no-require-stop"]) == 0
    rows = labels.read_comparisons(cmp_path)
    assert [r["reference"] for r in rows] == ["Mara went to the river"] * 2
    assert rows[0]["query"].startswith("Mara walked to the river.\n")
    assert reward.main(["label", "--comparisons", str(cmp_path), "--out", str(lab_path)]) == 0
    lab = tasks.get_labeler("rouge")
    for r in labels.read_labels(lab_path):
        assert r["labeler"] == "script:rouge" and r["reference"] == "Mara went to the river"
        assert r["best"] == lab.pick_best(r["query"], r["samples"], r["reference"])


def test_ppo_smoke_run_on_a_tldr_fixture(tmp_path):
    """The whole pipeline on TL;DR data in the upstream format, smallest budgets: comparisons
    sampled and labeled by ROUGE against the posts' own summaries, a reward model, 2 PPO updates,
    and summary.json with the summarization measures. No learning is claimed."""
    data = write_tldr(tmp_path / "tldr")
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "ppo.py"), "--model", "tiny", "--task", "tldr"]
    cmd += ["--query-data", str(data), "--run-dir", str(run), "--device", "cpu"]
    cmd += ["--rm.num-comparisons", "4", "--rm.epochs", "1", "--rm.batch-size", "4"]
    cmd += ["--rm.normalize-samples", "4", "--rm.rollout-batch-size", "4", "--no-rm.require-stop"]
    cmd += ["--total-episodes", "8", "--batch-size", "4", "--nminibatches", "1"]
    cmd += ["--noptepochs", "1", "--micro-batch-size", "4", "--eval-episodes", "4"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "tldr" and summary["updates"] == 2
    for k in ("novelty", "lead_copy", "rouge1", "rouge2", "rougeL"):
        for when in ("before", "after"):
            assert 0.0 <= summary[f"{k}_{when}"] <= 1.0, (k, when, summary)
    # the true score is the ROUGE labeler's, a mean of three F1s in [0, 1]
    assert 0.0 <= summary["true_score_after"] <= 1.0
    rows = labels.read_labels(run / "labels.jsonl")
    posts = {p["summary"] for p in json.loads(data.read_text())}
    assert len(rows) == 4 and all(r["reference"] in posts for r in rows)
    assert all(r["labeler"] == "script:rouge" for r in rows)
    config = json.loads((run / "config.json").read_text())
    assert config["query_data"] == str(data)
