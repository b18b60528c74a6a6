"""machinery/tasks.py: task settings, query building, truncation and penalty, the shipped passages
(machinery/data.py), scripted labelers, downloads (offline code paths), the tiny model's exact
softmax trick (machinery/tiny.py), and the padding equivalence the module docstring claims."""

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import pytest
import torch

from gpt2 import GPT2, PAD_ID, PRESETS, get_tokenizer, left_pad
from machinery import data, tasks, tiny


def test_task_values_follow_launch_py():
    s = tasks.get_task("sentiment")
    assert (
        s.query_length,
        s.response_length,
        s.truncate_token,
        s.truncate_after,
        s.temperature,
    ) == (64, 24, 13, 16, 0.7)
    assert (s.start_text, s.end_text, s.query_prefix, s.query_suffix, s.penalty_reward_value) == (
        ".",
        ".",
        "",
        "",
        -1,
    )
    c, t = tasks.get_task("cnndm"), tasks.get_task("tldr")
    assert (
        c.query_length,
        c.response_length,
        c.truncate_token,
        c.truncate_after,
        c.temperature,
    ) == (500, 75, 198, 55, 0.5)
    assert (c.query_prefix, c.query_suffix, c.start_text, c.end_text) == (
        "Article:\n\n",
        "\n\nTL;DR:",
        None,
        "\n",
    )
    assert (t.query_prefix, t.query_suffix, t.start_text, t.end_text, t.temperature) == (
        "",
        "\n\nTL;DR:",
        None,
        None,
        0.7,
    )
    with pytest.raises(ValueError, match="valid tasks: sentiment"):
        tasks.get_task("sentimnet")


def test_build_query_by_hand():
    # start token 13, end token 13: after the first 13 comes [2, 3, 13, 4, 5, 13, 6]; a 7-token
    # window ends at its last 13
    assert tasks.build_query([1, 13, 2, 3, 13, 4, 5, 13, 6], 7, 13, 13) == [2, 3, 13, 4, 5, 13]
    assert tasks.build_query([1, 2, 3], 6, 13, None) is None  # no start token: skipped, as OpenAI
    # start token last: text kept whole
    assert tasks.build_query([1, 2, 13], 6, 13, None) == [1, 2, 13]
    # no end token in the window: skipped
    assert tasks.build_query([13, 2, 3, 4], 6, 13, 13) is None
    assert tasks.build_query([5, 6, 7, 8], 2, None, None) == [5, 6]


def test_build_query_window_cut():
    # the window is cut to query_length first, then at its last end token
    assert tasks.build_query([1, 13, 2, 3, 13, 4, 5, 13, 6], 6, 13, 13) == [2, 3, 13, 4, 5, 13]
    assert tasks.build_query([1, 13, 2, 3, 13, 4, 5, 6, 13], 6, 13, 13) == [2, 3, 13]


def test_format_query_adds_prefix_pads_and_suffix():
    enc = get_tokenizer()
    q = enc.encode(" Some article text.")
    P, suffix = PAD_ID, [198, 198, 14990, 26, 7707, 25]
    # OpenAI's layout: the raw query right-padded to 500 with 50259, then prefix/suffix around it
    assert tasks.format_query(tasks.get_task("tldr"), q) == q + [P] * (500 - len(q)) + suffix
    assert tasks.format_query(tasks.get_task("cnndm"), q) == (
        [14906, 25, 628] + q + [P] * (500 - len(q)) + suffix
    )
    assert tasks.format_query(tasks.get_task("sentiment"), q) == q


def test_truncate_and_penalty_by_hand():
    task = dataclasses.replace(tasks.get_task("sentiment"), truncate_token=13, truncate_after=2)
    P = PAD_ID
    responses = torch.tensor(
        [
            [5, 13, 7, 13, 8, 9],  # the '.' at index 1 is before truncate_after: cut after index 3
            [5, 13, 7, 8, 9, 10],  # only an early '.': invalid, left whole
            [5, 6, 13, 8, 13, 10],  # '.' exactly at truncate_after: cut after index 2
            [5, 6, 7, 8, 9, 13],  # '.' last: nothing to pad
        ]
    )
    truncated, valid = tasks.truncate_responses(responses, task)
    assert truncated.tolist() == [
        [5, 13, 7, 13, P, P],
        [5, 13, 7, 8, 9, 10],
        [5, 6, 13, P, P, P],
        [5, 6, 7, 8, 9, 13],
    ]
    assert valid.tolist() == [True, False, True, True]
    scores = torch.tensor([0.5, 2.0, -0.25, 1.0])
    assert tasks.penalize(scores, valid, task).tolist() == [0.5, -1.0, -0.25, 1.0]
    assert tasks.strip_pad(truncated[0]) == [5, 13, 7, 13]


def test_shipped_passages_and_query_source():
    train, test = data.shipped_passages("train"), data.shipped_passages("test")
    assert len(train) + len(test) >= 300 and len(test) >= 30
    assert not set(train) & set(test)
    src = tasks.QuerySource("sentiment", "train")
    qs = src.next_batch(len(train))
    assert src.n_skipped == 0 and src.epoch == 1
    # whole sentences, at most query_length tokens
    assert all(16 <= len(q) <= 64 and q[-1] == 13 for q in qs)
    # deterministic, and resumable from state_dict
    a = tasks.QuerySource("sentiment", "train", seed=3)
    a.next_batch(7)
    state = json.loads(json.dumps(a.state_dict()))
    expected = a.next_batch(5)
    b = tasks.QuerySource("sentiment", "train", seed=3)
    b.load_state_dict(state)
    assert b.next_batch(5) == expected
    assert tasks.QuerySource("sentiment", "train", seed=4).next_batch(5) != tasks.QuerySource(
        "sentiment", "train", seed=3
    ).next_batch(5)
    with pytest.raises(ValueError, match="split=train seed=3"):
        tasks.QuerySource("sentiment", "test", seed=3).load_state_dict(state)


def test_left_padding_equals_openai_right_padding():
    """OpenAI pads the query on the right (pads between query and suffix); we pad the whole
    context on the left. With the mask and exclusive-cumsum positions, the next-token
    distribution after the context is the same."""
    torch.manual_seed(0)
    model = GPT2.from_config(dataclasses.replace(PRESETS["tiny"])).eval()
    query, suffix, Q = [464, 3290, 373, 922, 13], [198, 198, 14990, 26, 7707, 25], 9
    oai = torch.tensor([query + [PAD_ID] * (Q - len(query)) + suffix])  # (1, 15) pads in the middle
    oai_mask = oai != PAD_ID
    ours, ours_mask = left_pad([query + suffix, query + suffix + [11, 12]])  # left-padded batch
    with torch.no_grad():
        a = model(oai, oai_mask)[0, -1]  # last position is a real (suffix) token
        b = model(ours, ours_mask)[0, -1]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sentiment_is_vader_and_orders_hand_picked_sentences():
    # most positive to most negative, as a reader would rank them
    ranked = [
        "It was a wonderful, happy day and we loved it!",
        "It was a nice day.",
        "It was a day.",
        "It was not a nice day.",
        "It was a horrible, miserable day and we hated it.",
    ]
    scores = [tasks.sentiment_score(t) for t in ranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 5
    assert scores[2] == 0.0 and scores[0] > 0.5 and scores[-1] < -0.5
    assert all(-1 <= s <= 1 for s in scores)
    # the score is VADER's compound score, read through, with <|endoftext|> as a separator
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    for t in ranked:
        assert tasks.sentiment_score(t) == vader.polarity_scores(t)["compound"]
    assert tasks.sentiment_score("<|endoftext|>It was good.") == tasks.sentiment_score(
        " It was good."
    )


def test_descriptiveness_by_hand():
    assert tasks.descriptiveness_score("The red door was cold.") == pytest.approx(10 * 2 / 5)
    assert tasks.descriptiveness_score("He said that it was so.") == 0.0
    assert tasks.descriptiveness_score("") == 0.0


def test_pick_best_and_ties():
    lab = tasks.get_labeler("sentiment")
    assert (
        lab.pick_best("q", ["It was bad.", "It was good and happy.", "It was good.", "A door."])
        == 1
    )
    # ties (VADER gives 0.0 to all three): reproducible, and spread over positions (no position
    # bias for a reward model to learn)
    picks = [lab.pick_best(f"query {i}", ["A door.", "A chair.", "A box."]) for i in range(60)]
    assert picks == [
        lab.pick_best(f"query {i}", ["A door.", "A chair.", "A box."]) for i in range(60)
    ]
    assert set(picks) == {0, 1, 2}
    with pytest.raises(ValueError, match="valid: sentiment, descriptiveness, rouge"):
        tasks.get_labeler("happiness")
    assert {t.name: t.labeler for t in tasks.TASKS.values()} == {
        "sentiment": "sentiment",
        "descriptiveness": "descriptiveness",
        "tldr": "rouge",
        "cnndm": "rouge",
    }


def test_scripted_labeler_reports_its_ties():
    """pick gives the pick and every index of equal top score (a win rate counts their shares;
    online.win_rate); the tied texts are the same whatever the order of the samples, and the
    pick is pick_best's, drawn among them."""
    lab = tasks.get_labeler("sentiment")
    samples = ["A door.", "It was bad.", "A chair.", "A box."]  # VADER: 0.0 for all but "bad"
    for order in itertools.permutations(range(4)):
        shown = [samples[i] for i in order]
        best, tied = lab.pick("q", shown)
        assert {shown[i] for i in tied} == {"A door.", "A chair.", "A box."} and len(tied) == 3
        assert best in tied and best == lab.pick_best("q", shown)
    assert lab.pick("q", ["It was bad.", "It was good and happy.", "A box."]) == (1, [1])


def test_download_caches_and_fails_clearly(tmp_path, monkeypatch):
    src = tmp_path / "src.json"
    src.write_text("[1, 2, 3]")
    dest = tmp_path / "cache" / "labels" / "x.json"
    assert tasks.download(src.as_uri(), dest) == dest and dest.read_text() == "[1, 2, 3]"
    src.unlink()
    assert tasks.download(src.as_uri(), dest).read_text() == "[1, 2, 3]"  # served from the cache
    # offline: a clear error naming the url, the destination and a manual command; no half-written
    # file left
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "rc"))
    monkeypatch.setattr(tasks, "OPENAI_BASE", "http://127.0.0.1:9/lm-human-preferences/")
    with pytest.raises(
        tasks.DownloadError,
        match=r"127\.0\.0\.1:9/lm-human-preferences/labels/sentiment/offline_5k\.json.*curl",
    ):
        tasks.download_labels("sentiment")
    assert not list((tmp_path / "rc").rglob("*.part"))
    with pytest.raises(ValueError, match="tasks with labels"):
        tasks.download_labels("books")


def test_iter_json_list_streams_small_chunks(tmp_path):
    data = [{"content": "a" * i, "n": i, "s": 'x}]{,"y'} for i in range(40)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data, indent=1))
    assert list(tasks.iter_json_list(path, chunk=7)) == data
    # numbers and strings cut by a chunk end are read whole; an empty list is empty
    path.write_text('[123456, "abc,def" ,\n 7.5e3 ,[1, 2]]')
    assert list(tasks.iter_json_list(path, chunk=3)) == [123456, "abc,def", 7500.0, [1, 2]]
    path.write_text(" [ ] ")
    assert list(tasks.iter_json_list(path, chunk=2)) == []
    # a file that is not one whole JSON list raises
    for bad in ['[{"a": 1}, {"a": 2}', '[{"a": 1} {"a": 2}]', '[{"a": 1}] x', '{"a": 1}', ""]:
        path.write_text(bad)
        with pytest.raises(ValueError):
            list(tasks.iter_json_list(path, chunk=4))


def test_cnndm_helpers():
    url = "http://www.cnn.com/2014/01/01/world/story/index.html"
    assert tasks.cnndm_story_path(url, "train") == (
        f"datasets/cnndm/cache_train/cnn/stories/{hashlib.sha1(url.encode()).hexdigest()}.story"
    )
    assert "/dailymail/" in tasks.cnndm_story_path("http://www.dailymail.co.uk/a.html", "val")
    text = (
        "By Jane Doe\nPUBLISHED: today\n(CNN) -- The river rose.\n\n\n\nPeople left.\n"
        "@highlight\nRiver rises\n\n@highlight\n\nPeople leave\n"
    )
    assert tasks.clean_cnndm(text) == "The river rose.\n\nPeople left."
    assert tasks.cnndm_highlights(text) == "River rises\nPeople leave"
    assert tasks.cnndm_highlights("No highlights here.") is None


def test_shared_unseen_row_softmax_is_exact():
    """fit_tiny's speed trick: with all unseen tokens sharing one output row, the (S+1)-way
    softmax gives the same log-probs at the seen tokens as the full 50,257-way softmax."""
    torch.manual_seed(0)
    V, C = 1000, 8
    wte = torch.randn(V, C)
    seen = torch.tensor([3, 10, 500, 999])
    u = torch.randn(C)
    full_w = u.expand(V, C).clone()
    full_w[seen] = wte[seen]
    h = torch.randn(5, C)
    full = torch.log_softmax(h @ full_w.T, -1)[:, seen]  # (5, S)
    small = torch.log_softmax(tiny.seen_plus_unseen_logits(h, wte, seen, u, V - len(seen)), -1)[
        :, :-1
    ]
    torch.testing.assert_close(full, small)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    assert data.cache_dir() == tmp_path
    assert tiny.tiny_cache_path(PRESETS["tiny"]).parent == tmp_path
    monkeypatch.delenv("RLHF_CACHE")
    assert data.cache_dir() == Path("~/.cache/rlhf-gpt2").expanduser()


def test_tiny_cache_key_covers_the_code_that_fits_it(monkeypatch, tmp_path):
    """A fit from older code must not be reused: the key changes with the fitting code, the
    model's code, the preset and the fit config (a README demo once came from a stale fit)."""
    sources = [tmp_path / p.name for p in tiny.FIT_SOURCES]
    for src, copy in zip(tiny.FIT_SOURCES, sources):
        copy.write_bytes(src.read_bytes())
    monkeypatch.setattr(tiny, "FIT_SOURCES", tuple(sources))
    key = lambda: tiny.tiny_cache_path(PRESETS["tiny"]).name
    before = key()
    seen = {before}
    for copy in sources:  # one changed byte in any of them
        copy.write_bytes(copy.read_bytes() + b"\n# changed\n")
        seen.add(key())
    seen.add(tiny.tiny_cache_path(dataclasses.replace(PRESETS["tiny"], n_embd=64)).name)
    seen.add(tiny.tiny_cache_path(PRESETS["tiny"], tiny.TinyFitConfig(steps=10)).name)
    assert len(seen) == len(sources) + 3
    names = {p.name for p in tiny.FIT_SOURCES}
    assert {"tiny.py", "gpt2.py"} <= names and all(p.is_file() for p in tiny.FIT_SOURCES)
