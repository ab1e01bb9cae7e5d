"""The shipped sample conversations (data/sample_conversations.jsonl), generated here.

Synthetic ShareGPT rows in FineTome's shape (`conversations`, `source`, `score`):
answers follow fixed patterns, so even a tiny model's loss falls visibly; lengths
vary from one line to a few paragraphs, some conversations have several turns and
some a system prompt that changes the style of the answer. Rows whose last reply has one
right answer (arithmetic, capitals, spelling backwards, unit conversion, sorting) carry it
as `answer`: evaluation scores exact-match accuracy on them.

No row appears twice. Each row is drawn noisy with probability 0.2 (once repeats are redrawn, 100
of the shipped 400 are noisy), as scraped data is: a wrong answer or a reply cut off part-way,
with a low quality `score` (1.0-2.5; clean rows 3.5-5.0), for a data-centric experiment to find. `answer` is always the
right answer. A second file in Alpaca's format (`data/sample_alpaca.jsonl`: one-answer tasks,
no scores, none equal to a row of the first) is another source to mix in.
`python -m tools.sample_data [path]` rewrites both; a test checks the shipped files match.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DEFAULT_PATH = Path("data/sample_conversations.jsonl")

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Sweden": "Stockholm",
    "Norway": "Oslo", "Finland": "Helsinki", "Japan": "Tokyo", "Canada": "Ottawa", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago", "Poland": "Warsaw", "Greece": "Athens",
    "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin", "Denmark": "Copenhagen", "India": "New Delhi",
}
WORDS = ["banana", "lantern", "gradient", "harbor", "pencil", "orbit", "marble", "tensor", "violet", "canyon",
         "kernel", "meadow", "quartz", "rocket", "saddle", "thunder", "walnut", "zephyr", "puzzle", "falcon"]
UNITS = [("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("kilograms", "grams", 1000),
         ("hours", "minutes", 60), ("minutes", "seconds", 60), ("litres", "millilitres", 1000)]
CONCEPTS = {
    "overfitting": [
        "Overfitting happens when a model learns the training data too closely.",
        "It then scores well on data it has seen and badly on data it has not.",
        "A gap between training loss and validation loss is the usual sign.",
        "More data, regularisation and early stopping all reduce it.",
        "Held-out evaluation is the only honest way to detect it.",
    ],
    "learning rate": [
        "The learning rate sets how far each optimiser step moves the weights.",
        "Too small a learning rate makes training slow.",
        "Too large a learning rate makes the loss jump or diverge.",
        "Schedules often warm up first and then decay the learning rate.",
        "It is usually the first hyperparameter worth tuning.",
    ],
    "LoRA": [
        "LoRA fine-tunes a model by learning small low-rank updates to frozen weights.",
        "Each adapted matrix gets two thin matrices whose product is added to it.",
        "The rank r controls how many parameters the adapter has.",
        "Because the base weights stay frozen, training needs far less memory.",
        "The adapter can be merged back into the base weights after training.",
    ],
    "tokenization": [
        "Tokenization splits text into the units a language model reads.",
        "Most modern models use subword tokens learned from data.",
        "Common words become one token and rare words become several.",
        "Special tokens mark where messages start and end.",
        "The same tokenizer must be used for training and inference.",
    ],
    "perplexity": [
        "Perplexity is the exponential of the average loss per token.",
        "It measures how surprised a model is by held-out text.",
        "Lower perplexity means the model predicts the text better.",
        "It is only comparable between models that share a tokenizer.",
        "A perplexity of one would mean perfect prediction.",
    ],
}
SYSTEM_STYLES = {
    "You are a concise assistant. Answer in one short sentence.": lambda text: text.split(". ")[0].rstrip(".") + ".",
    "You are an enthusiastic assistant.": lambda text: f"Great question! {text}",
    "You are a formal assistant.": lambda text: f"Certainly. {text}",
}


def _arithmetic(rng: random.Random) -> list[tuple[str, str]]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op, sym, result = rng.choice([("plus", "+", a + b), ("minus", "-", a - b), ("times", "*", a * b)])
    turns = [(f"What is {a} {op} {b}?", f"{a} {op} {b} is {result}.", str(result))]
    if rng.random() < 0.4:  # a follow-up turn that depends on the first answer
        turns.append(("And what is that doubled?", f"{result} doubled is {2 * result}.", str(2 * result)))
    return turns


def _capital(rng: random.Random) -> list[tuple[str, str]]:
    countries = rng.sample(sorted(CAPITALS), k=rng.choice([1, 1, 2, 3]))
    turns = []
    for country in countries:
        turns.append((f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}.", CAPITALS[country]))
    return turns


def _reverse(rng: random.Random) -> list[tuple[str, str]]:
    word = rng.choice(WORDS)
    return [(f"Spell the word '{word}' backwards.", f"'{word}' spelled backwards is '{word[::-1]}'.", word[::-1])]


def _convert(rng: random.Random) -> list[tuple[str, str]]:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(1, 12)
    return [(f"How many {small} are in {n} {big}?", f"There are {n * factor} {small} in {n} {big}.", str(n * factor))]


def _sort(rng: random.Random) -> list[tuple[str, str]]:
    numbers = rng.sample(range(1, 100), k=rng.randint(3, 9))
    listed = ", ".join(map(str, numbers))
    ordered = ", ".join(map(str, sorted(numbers)))
    return [(f"Sort these numbers from smallest to largest: {listed}.", f"From smallest to largest: {ordered}.", ordered)]


def _explain(rng: random.Random) -> list[tuple[str, str]]:
    concept = rng.choice(sorted(CONCEPTS))
    n = rng.randint(1, 5)
    sentences = " ".join(CONCEPTS[concept][:n])
    turns = [(f"Explain {concept} in {n} sentence{'s' if n > 1 else ''}.", sentences, None)]
    if rng.random() < 0.3:
        turns.append(("Summarise that in a few words.", CONCEPTS[concept][0], None))
    return turns


def _long_report(rng: random.Random) -> list[tuple[str, str]]:
    # Long enough to pass a 512-token max_seq_length: exercises truncation.
    countries = sorted(CAPITALS)
    rng.shuffle(countries)
    lines = [f"{i + 1}. The capital of {c} is {CAPITALS[c]}." for i, c in enumerate(countries)]
    body = "\n".join(lines * 3)
    return [("List every capital you know, three times over, numbered.", body, None)]


TASKS = [(_arithmetic, 6), (_capital, 5), (_reverse, 4), (_convert, 4), (_sort, 3), (_explain, 5), (_long_report, 0.15)]


NOISE_SHARE = 0.2


def _wrong(answer: str, key: str, rng: random.Random) -> tuple[str, str]:
    """The reply with its one answer replaced by a wrong one of the same kind."""
    if key.lstrip("-").isdigit():
        wrong = str(int(key) + rng.choice([-10, -3, -1, 1, 2, 7, 11]))
    elif "," in key:
        parts = key.split(", ")
        rng.shuffle(parts)
        wrong = ", ".join(parts) if ", ".join(parts) != key else ", ".join(reversed(parts))
    elif key in CAPITALS.values():
        wrong = rng.choice(sorted(set(CAPITALS.values()) - {key}))
    else:
        wrong = key[1:] + key[0]
    return answer.replace(key, wrong), wrong


def _cut(answer: str, rng: random.Random) -> str:
    """The reply stopped part-way, as a truncated scrape."""
    words = answer.split()
    return " ".join(words[: max(1, len(words) * rng.randint(2, 6) // 10)])


def _conversation(rng: random.Random, makers, weights) -> tuple[dict, bool]:
    maker = rng.choices(makers, weights=weights)[0]
    turns = maker(rng)
    conversation, style = [], None
    if rng.random() < 0.2:
        style = rng.choice(sorted(SYSTEM_STYLES))
        conversation.append({"from": "system", "value": style})
    noisy = rng.random() < NOISE_SHARE
    for i, (question, answer, key) in enumerate(turns):
        if style is not None:
            answer = SYSTEM_STYLES[style](answer)
        assert key is None or key in answer, (key, answer)
        if noisy and i == len(turns) - 1:
            answer = _wrong(answer, key, rng)[0] if key is not None and rng.random() < 0.7 else _cut(answer, rng)
        conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    score = round(rng.uniform(1.0, 2.5) if noisy else rng.uniform(3.5, 5.0), 2)
    row = {"conversations": conversation, "source": f"lab2-synthetic/{maker.__name__[1:]}", "score": score}
    if key is not None:  # the last reply's one right answer
        row["answer"] = key
    return row, noisy


def generate(n: int = 400, seed: int = 2223) -> list[dict]:
    """n distinct conversations (no two with the same turns)."""
    rng = random.Random(seed)
    makers, weights = zip(*TASKS)
    rows, seen = [], set()
    while len(rows) < n:
        row, _ = _conversation(rng, makers, weights)
        key = json.dumps(row["conversations"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def generate_alpaca(n: int = 200, seed: int = 5, avoid: list[dict] = ()) -> list[dict]:
    """Alpaca rows (instruction/output) of the one-answer tasks, none equal to a row of `avoid`."""
    rng = random.Random(seed)
    makers = [_arithmetic, _capital, _reverse, _convert, _sort]
    seen = {json.dumps([t["value"] for t in r["conversations"] if t["from"] != "system"][:2]) for r in avoid}
    rows = []
    while len(rows) < n:
        question, answer, key = rng.choice(makers)(rng)[0]
        marker = json.dumps([question, answer])
        if marker in seen:
            continue
        seen.add(marker)
        rows.append({"instruction": question, "input": "", "output": answer, "answer": key, "source": "lab2-synthetic/alpaca"})
    return rows


ALPACA_PATH = Path("data/sample_alpaca.jsonl")


def write(path: str | Path = DEFAULT_PATH, n: int = 400, seed: int = 2223, alpaca_path: str | Path | None = None) -> Path:
    """Write the ShareGPT sample to `path`, and the Alpaca source beside it (`alpaca_path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = generate(n, seed)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    alpaca = Path(alpaca_path) if alpaca_path else path.with_name(ALPACA_PATH.name)
    alpaca.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in generate_alpaca(avoid=rows)))
    return path


if __name__ == "__main__":
    import sys

    print(f"sample conversations written to {write(*sys.argv[1:2])}")
