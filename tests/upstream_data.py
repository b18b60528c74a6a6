"""Small data sets in the exact upstream formats, written by the tests into a temporary folder.

TL;DR: OpenAI's tldr/{train,valid}-subset.json, a JSON list of Reddit posts with the fields of the
Webis TL;DR corpus (`content` the post, `summary` the author's TL;DR, and a few more that readers
ignore). CNN/DM: OpenAI's datasets/cnndm/ folder, url_lists/all_{train,val,test}.txt and
cache_{split}/{cnn,dailymail}/stories/<sha1 of the url>.story, each story the article's paragraphs
followed by "@highlight" blocks (the reference summary).
"""

import hashlib
import json
from pathlib import Path

# 40 short posts whose words the tiny model knows (it was fitted on the shipped story passages)
_NAMES = ["Mara", "Tom", "Lena", "Sam", "Ada"]
_PLACES = ["the old house", "the river", "the market", "the quiet town"]


def tldr_posts(n: int = 40) -> list[dict]:
    posts = []
    for i in range(n):
        name, place = _NAMES[i % 5], _PLACES[i % 4]
        content = (
            f"{name} walked to {place} in the morning. The sky was grey and the wind was cold.\n\n"
            f"At {place} {name} met a friend, and they talked for a long time about the summer."
        )
        posts.append(
            {
                "id": f"t3_{i:05d}",
                "subreddit": "tifu",
                "title": f"post {i}",
                "content": content,
                "summary": f"{name} went to {place} and met a friend.",
            }
        )
    return posts


def write_tldr(folder: Path, n: int = 40) -> Path:
    """train-subset.json and valid-subset.json in `folder`; returns the train file."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, posts in (("train", tldr_posts(n)), ("valid", tldr_posts(n)[: n // 4])):
        (folder / f"{split}-subset.json").write_text(json.dumps(posts, indent=1))
    return folder / "train-subset.json"


def story_name(url: str) -> str:
    site = "dailymail" if "dailymail.co.uk" in url else "cnn"
    return f"{site}/stories/{hashlib.sha1(url.encode()).hexdigest()}.story"


def write_cnndm(folder: Path, stories: dict[str, str], split: str = "train") -> Path:
    """OpenAI's layout in `folder`: url_lists/all_{split}.txt, cache_{split}/.../*.story."""
    (folder / "url_lists").mkdir(parents=True, exist_ok=True)
    (folder / "url_lists" / f"all_{split}.txt").write_text("".join(u + "\n" for u in stories))
    for url, text in stories.items():
        path = folder / f"cache_{split}" / story_name(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder
