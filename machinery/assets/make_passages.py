"""Writes the shipped prompt set: short story passages that stand in for OpenAI's lost book
passages.

The style tasks (sentiment, descriptiveness) of lm-human-preferences took 64-token excerpts from
BookCorpus passages (`datasets/book_passages/{train,test}.jsonl`). Those files were lost in the
GCP->Azure move (openai/lm-human-preferences issue #17), and BookCorpus itself is not
redistributable, so this repo writes its own passages with a small seeded story grammar. They are
plain fiction-like prose, several sentences each, that:
  - start and end with whole sentences, so the query rule "start after the first '.', end after the
    last '.'" of the original code cuts them the same way it cut book excerpts;
  - mix happy, sad and neutral sentences (each passage draws its own mood) and sensory detail
    (colours, sounds, smells, textures), so the sentiment and descriptiveness labelers in tasks.py
    have something to react to, both in the passages and in what a small model fitted on them
    writes.

Output (committed): assets/book_passages/train.jsonl and test.jsonl, one JSON string per line, the
same format as OpenAI's book_passages files. Run from the repo root to regenerate (deterministic,
same bytes every time):

    python assets/make_passages.py            # 540 train + 60 test passages
"""

import json
import random
from pathlib import Path

SHE = [
    "Anna",
    "Clara",
    "Elena",
    "Grace",
    "Iris",
    "Kate",
    "Maria",
    "Olivia",
    "Rosa",
    "Vera",
    "Lucy",
    "Nora",
    "Ruth",
]
HE = [
    "Ben",
    "David",
    "Frank",
    "Henry",
    "Jack",
    "Leo",
    "Noah",
    "Peter",
    "Sam",
    "Tom",
    "Will",
    "Marcus",
    "Owen",
]
NAMES = SHE + HE
PLACES = [
    "kitchen",
    "garden",
    "station",
    "library",
    "harbor",
    "market",
    "forest",
    "village",
    "hallway",
    "attic",
    "beach",
    "bridge",
    "farm",
    "church",
    "cafe",
    "hospital",
    "school",
    "river bank",
    "hotel",
    "barn",
]
OBJECTS = [
    "letter",
    "lamp",
    "box",
    "door",
    "window",
    "coat",
    "book",
    "cup",
    "key",
    "photograph",
    "basket",
    "chair",
    "bottle",
    "ring",
    "map",
    "blanket",
    "bicycle",
    "boat",
    "candle",
    "suitcase",
]
ANIMALS = ["dog", "cat", "horse", "bird", "fox", "crow", "goat", "rabbit"]
KIN = [
    "mother",
    "father",
    "sister",
    "brother",
    "friend",
    "aunt",
    "uncle",
    "neighbor",
    "teacher",
    "grandmother",
]

# Mood words: positive and negative ones, so that the `sentiment` labeler (VADER) has something to
# tell apart.
POS_ADJ = [
    "happy",
    "warm",
    "kind",
    "cheerful",
    "calm",
    "lovely",
    "bright",
    "wonderful",
    "beautiful",
    "gentle",
    "glad",
    "hopeful",
    "peaceful",
    "proud",
    "delighted",
    "safe",
    "pleasant",
    "joyful",
    "grateful",
    "lucky",
]
NEG_ADJ = [
    "sad",
    "cold",
    "cruel",
    "angry",
    "afraid",
    "lonely",
    "gloomy",
    "terrible",
    "ugly",
    "bitter",
    "tired",
    "worried",
    "miserable",
    "upset",
    "awful",
    "nervous",
    "hopeless",
    "scared",
    "sick",
    "broken",
]
POS_NOUN = [
    "joy",
    "hope",
    "love",
    "comfort",
    "relief",
    "peace",
    "delight",
    "kindness",
    "laughter",
    "gratitude",
]
NEG_NOUN = [
    "fear",
    "grief",
    "anger",
    "pain",
    "dread",
    "sorrow",
    "shame",
    "worry",
    "despair",
    "regret",
]
POS_VERB = [
    "smiled",
    "laughed",
    "hugged her",
    "thanked him",
    "sang softly",
    "cheered",
    "relaxed",
    "grinned",
]
NEG_VERB = ["cried", "frowned", "sighed", "shouted", "trembled", "wept", "groaned", "winced"]
POS_SAY = [
    "This is wonderful",
    "I love it here",
    "What a lovely day",
    "Thank you so much",
    "We did it",
    "Everything will be fine",
    "I am so happy for you",
    "That was perfect",
]
NEG_SAY = [
    "This is awful",
    "I hate this place",
    "Leave me alone",
    "It is all my fault",
    "We are lost",
    "Nothing ever works",
    "I am so tired of this",
    "That was terrible",
]

# Sensory words. They feed the descriptiveness labeler's lexicon (assets/lexicon/descriptive.txt).
COLORS = [
    "red",
    "blue",
    "green",
    "golden",
    "silver",
    "gray",
    "white",
    "black",
    "yellow",
    "purple",
    "brown",
    "pale",
]
TEXTURES = [
    "soft",
    "rough",
    "smooth",
    "wet",
    "dry",
    "sticky",
    "velvet",
    "cracked",
    "damp",
    "dusty",
    "silky",
    "icy",
]
SOUNDS = [
    "the hum of bees",
    "a distant bell",
    "rain on the roof",
    "the creak of old boards",
    "a dog barking",
    "the crackle of the fire",
    "wind in the trees",
    "the rustle of leaves",
    "waves on the rocks",
]
SMELLS = [
    "fresh bread",
    "wet earth",
    "pine needles",
    "smoke",
    "coffee",
    "roses",
    "salt and seaweed",
    "old paper",
    "lavender",
    "burnt sugar",
]
LIGHTS = [
    "The sun was low and orange",
    "Gray clouds hung over the roofs",
    "Moonlight fell across the floor",
    "A thin mist covered the fields",
    "The morning light was pale and clear",
    "Snow glittered under the lamps",
    "The sky turned purple and gold",
    "Heavy rain darkened the street",
]
SIZES = ["tiny", "huge", "narrow", "wide", "tall", "heavy", "round", "crooked"]
TIMES = [
    "That morning",
    "In the evening",
    "After lunch",
    "Later that night",
    "At dawn",
    "On Sunday",
    "Years later",
    "The next day",
    "Before the storm",
    "That winter",
]


def passage(rng: random.Random) -> str:
    """One story passage of 7 to 10 sentences with its own mood (probability of a happy
    sentence)."""
    name, other = rng.sample(NAMES, 2)
    he = "she" if name in SHE else "he"
    his = {"he": "his", "she": "her"}[he]
    place = rng.choice(PLACES)
    mood = rng.choice([0.15, 0.3, 0.5, 0.7, 0.85])  # a mix of sad, mixed and happy passages

    def adj():
        return rng.choice(POS_ADJ) if rng.random() < mood else rng.choice(NEG_ADJ)

    # (adjective, noun, verb) of one polarity, so a sentence does not contradict itself
    def feeling():
        if rng.random() < mood:
            return (
                rng.choice(POS_ADJ),
                rng.choice(POS_NOUN),
                rng.choice(POS_VERB),
                rng.choice(POS_SAY),
            )
        return rng.choice(NEG_ADJ), rng.choice(NEG_NOUN), rng.choice(NEG_VERB), rng.choice(NEG_SAY)

    def negated():  # "not happy" reads as negative: exercises the labeler's negation rule
        if rng.random() < mood:
            return f"{name} was not {rng.choice(NEG_ADJ)} anymore."
        return f"{he.capitalize()} was not {rng.choice(POS_ADJ)} at all."

    templates = [
        lambda: f"{rng.choice(TIMES)}, {name} walked into the {place}.",
        lambda: f"{rng.choice(LIGHTS)}.",
        lambda: (
            f"The {place} smelled of {rng.choice(SMELLS)}, and {he} could hear "
            f"{rng.choice(SOUNDS)}."
        ),
        lambda: (
            f"{name} felt {feeling()[0]} when {he} saw the {rng.choice(COLORS)} "
            f"{rng.choice(OBJECTS)}."
        ),
        lambda: (
            f"A {rng.choice(SIZES)} {rng.choice(COLORS)} {rng.choice(ANIMALS)} sat by the "
            f"{rng.choice(OBJECTS)}."
        ),
        lambda: f"{his.capitalize()} {rng.choice(KIN)} had always been {adj()} and {adj()}.",
        lambda: (lambda f: f'"{f[3]}," said {other}, and {name} {f[2]}.')(feeling()),
        lambda: (
            f"The {rng.choice(OBJECTS)} was {rng.choice(TEXTURES)} and {rng.choice(COLORS)} in "
            f"{his} hands."
        ),
        lambda: (
            lambda f: f"{name} remembered the {f[0]} days at the {rng.choice(PLACES)} with {f[1]}."
        )(feeling()),
        lambda: (
            f"{other} opened the {rng.choice(OBJECTS)} and found a {rng.choice(TEXTURES)} "
            f"{rng.choice(OBJECTS)}."
        ),
        lambda: (lambda f: f"There was {f[1]} in {his} voice, and the room felt {f[0]}.")(
            feeling()
        ),
        lambda: (
            f"It was a {adj()} {rng.choice(['day', 'night', 'week', 'year', 'moment'])} for "
            "everyone."
        ),
        negated,
        lambda: f"{name} and {other} sat together and said nothing for a long time.",
        lambda: (
            f"Outside, the {rng.choice(['air', 'wind', 'water', 'grass'])} was "
            f"{rng.choice(TEXTURES)} and "
            f"{rng.choice(['cold', 'warm', 'still', 'sweet'])}."
        ),
        lambda: (lambda f: f"{he.capitalize()} {f[2]} and thought about {his} {rng.choice(KIN)}.")(
            feeling()
        ),
    ]
    n = rng.randint(7, 10)
    sentences = [templates[0]()] + [rng.choice(templates[1:])() for _ in range(n - 1)]
    return " ".join(sentences)


def main(n_train: int = 540, n_test: int = 60, seed: int = 1234) -> None:
    rng = random.Random(seed)
    texts, seen = [], set()
    while len(texts) < n_train + n_test:
        t = passage(rng)
        if t not in seen:  # no duplicate can cross the train/test split
            seen.add(t)
            texts.append(t)
    out = Path(__file__).resolve().parent / "book_passages"
    out.mkdir(exist_ok=True)
    for split, rows in [("train", texts[:n_train]), ("test", texts[n_train:])]:
        with open(out / f"{split}.jsonl", "w") as f:
            for t in rows:
                f.write(json.dumps(t) + "\n")
        print(f"wrote {len(rows)} passages to {out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
