"""
The paper's summarization measures, as pure functions of text: how much a summary copies, and how
close it is to the reference.

The paper's best-known summarization finding is that the RL policy learned to copy: labelers were
told to reward accuracy, and copying whole sentences is the easy way to be accurate. OpenAI's blog
post reports two measures of that, and the usual ROUGE scores; this file defines all three so that
every summarization run (ppo.py's summary.json) reports them:

  * sentence novelty: the share of summary sentences that do not appear in the source. The paper
    reports 96.7% (CNN/DM) and 98.9% (TL;DR) for the reference summaries, 2.5% and 29.0% for the
    RL-only policy.
  * lead copy: the share of summaries that copy the start of the input (the paper: 77.6% on
    CNN/DM, 28.3% on TL;DR for the RL policy).
  * ROUGE-1, ROUGE-2, ROUGE-L F1 against the reference summaries, computed with Google's
    `rouge-score` package (the implementation most summarization papers report), Porter stemming
    on. `rouge_mean` (the mean of the three) is also the scripted summarization labeler's score
    (tasks.py).

Exact definitions, since the paper gives only one line for each:

  * Sentences: a text is split at newlines and after '.', '!' or '?' followed by whitespace; each
    piece is stripped, and pieces without a letter or digit are dropped. A sentence "appears in the
    source" when it occurs there verbatim as a substring, after runs of whitespace are collapsed to
    one space in both (case and punctuation count). A summary's last sentence, possibly cut off
    by the response length, counts as copied if what is there is a substring of the source.
  * Lead copy: a summary copies the start of its input when its first LEAD_WORDS words
    (whitespace-separated, verbatim) equal the input's first LEAD_WORDS words. A summary with
    fewer words does not count.
  * Pooling over a batch: novelty pools sentences (novel sentences / all sentences of all
    summaries, so every sentence weighs the same); lead copy and ROUGE average over summaries.

Run it on a file of summaries: `python summarization.py FILE.jsonl` with one JSON object per line
holding `summary`, `source` and (for ROUGE) `reference`.
"""

from __future__ import annotations

import json
import re
import sys

LEAD_WORDS = 5
"""words that must match the input's first words for a summary to count as a lead copy"""

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_HAS_WORD = re.compile(r"\w")


def sentences(text: str) -> list[str]:
    """The sentences of a text (see the module docstring): split at newlines and after . ! ?
    followed by whitespace.

    e.g. "He left. She stayed!\\nThe end" -> ["He left.", "She stayed!", "The end"]
    """
    text = text.replace("<|endoftext|>", "\n")
    return [s.strip() for s in _SENTENCE_END.split(text) if _HAS_WORD.search(s)]


def _squash(text: str) -> str:
    return " ".join(text.split())


def novel_sentences(summary: str, source: str) -> tuple[int, int]:
    """(novel, total): how many of the summary's sentences do not occur verbatim in the source,
    and how many sentences it has."""
    src = _squash(source)
    sents = sentences(summary)
    return sum(_squash(s) not in src for s in sents), len(sents)


def sentence_novelty(summaries: list[str], sources: list[str]) -> float:
    """Novel sentences / all sentences, pooled over the summaries (nan when none has a
    sentence)."""
    novel = total = 0
    for summary, source in zip(summaries, sources, strict=True):
        n, t = novel_sentences(summary, source)
        novel, total = novel + n, total + t
    return novel / total if total else float("nan")


def copies_lead(summary: str, source: str, k: int = LEAD_WORDS) -> bool:
    """True when the summary's first k words equal the source's first k words (verbatim)."""
    s, a = summary.split()[:k], source.split()[:k]
    return len(s) == k and s == a


def lead_copy_share(summaries: list[str], sources: list[str], k: int = LEAD_WORDS) -> float:
    """The share of summaries that copy the start of their input (nan for no summaries)."""
    flags = [copies_lead(s, a, k) for s, a in zip(summaries, sources, strict=True)]
    return sum(flags) / len(flags) if flags else float("nan")


_SCORER = None


def rouge_scores(summary: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one summary against one reference (rouge-score: lowercased, non-
    alphanumerics dropped, Porter-stemmed words; ROUGE-L is the longest common subsequence over
    the whole text)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = _SCORER.score(reference, summary)  # (target, prediction)
    return {k: scores[k].fmeasure for k in ROUGE_TYPES}


def rouge_mean(summary: str, reference: str) -> float:
    """The mean of ROUGE-1, ROUGE-2 and ROUGE-L F1: one number in [0, 1] per summary."""
    return sum(rouge_scores(summary, reference).values()) / len(ROUGE_TYPES)


def summary_measures(
    summaries: list[str], sources: list[str], references: list[str | None] | None = None
) -> dict[str, float]:
    """All the measures of a batch: novelty, lead_copy, and (where every summary has a reference)
    rouge1, rouge2, rougeL (means over summaries)."""
    out = dict(
        novelty=sentence_novelty(summaries, sources),
        lead_copy=lead_copy_share(summaries, sources),
    )
    if references is not None and summaries and all(r is not None for r in references):
        per = [rouge_scores(s, r) for s, r in zip(summaries, references, strict=True)]
        out.update({k: sum(p[k] for p in per) / len(per) for k in ROUGE_TYPES})
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    rows = []
    with open(argv[0], encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or "summary" not in row or "source" not in row:
                print(
                    f"error: {argv[0]}:{i}: expected {{summary, source, reference?}}",
                    file=sys.stderr,
                )
                return 1
            rows.append(row)
    m = summary_measures(
        [r["summary"] for r in rows],
        [r["source"] for r in rows],
        [r.get("reference") for r in rows],
    )
    print(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
