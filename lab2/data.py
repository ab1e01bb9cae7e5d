"""Conversations -> train/validation/test token ids with the loss on replies only.

1. lab2.conversations: rows from the hub (FineTome-100k by default) or a local file, as
   `[{role, content}]` conversations; malformed rows dropped and counted by reason.
2. `split_conversations`: validation and test are carved from the pool (`data.source`) first,
   with `split_seed`: the same held-out conversations for every run of a sweep.
3. Training rows: the pool's rest and any other `train_sources` (lab2.data_selection), minus every
   row equal or near-equal to a held-out one, then the run's data-centric `select` rules.
4. `tokenize_conversation`: the chat template is applied once (one BOS), and
   labels are -100 everywhere except the assistant's replies.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lab2 import data_selection
from lab2.config import ConfigError, DataSection
from lab2.conversations import load_rows, normalise

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- splitting


def split_conversations(conversations: list, val_size: int, test_size: int, seed: int) -> dict[str, list]:
    """A seeded permutation: the first `test_size` are the test set, the next `val_size` validation,
    the rest the pool's training rows."""
    n = len(conversations)
    if val_size + test_size >= n:
        raise ConfigError(
            f"data.val_size + data.test_size = {val_size + test_size} leaves no training rows: "
            f"the source has only {n} usable conversations"
        )
    order = np.random.default_rng(seed).permutation(n)
    pick = lambda idx: [conversations[i] for i in idx]  # noqa: E731
    return {
        "test": pick(order[:test_size]),
        "validation": pick(order[test_size : test_size + val_size]),
        "train": pick(order[test_size + val_size :]),
    }


def fingerprint(conversations: list) -> str:
    """Identity of a split's content, so runs on different data are never ranked together."""
    blob = json.dumps(conversations, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of what a per-token loss means: the vocabulary and the chat template. Two runs whose
    tokenizers differ are compared per byte of reply text, never per token."""
    blob = json.dumps({"vocab": sorted(tokenizer.get_vocab().items()), "template": tokenizer.chat_template}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- tokenising


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant reply.

    A reply's span runs from the end of the prompt that asks for it (the template with
    the generation prompt) to the end of the conversation rendered through it, so it
    covers the reply and its end-of-turn token, and nothing the user wrote.
    """
    render = lambda msgs, gen=False: tokenizer.apply_chat_template(  # noqa: E731
        msgs, tokenize=False, add_generation_prompt=gen
    )
    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, through = render(messages[:i], gen=True), render(messages[: i + 1])
        if not (text.startswith(through) and through.startswith(prompt)):
            raise ValueError("data.chat_template: the template is not prefix-stable, so replies cannot be located")
        spans.append((len(prompt), len(through)))
    return text, spans


def tokenize_conversation(messages: list[dict], tokenizer, max_length: int) -> dict:
    text, spans = assistant_spans(messages, tokenizer)
    # The template already holds BOS; tokenizing it with special tokens would double it.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"]
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(input_ids, encoded["offset_mapping"])
    ]
    truncated = len(input_ids) > max_length
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length], "truncated": truncated,
            "reply_bytes": reply_bytes(text, messages, spans, encoded["offset_mapping"][:max_length], labels[:max_length])}


def reply_bytes(text: str, messages: list[dict], spans: list[tuple[int, int]], offsets, labels) -> int:
    """UTF-8 bytes of the reply text that the kept, loss-bearing tokens cover: the yardstick of bits per
    byte, which does not depend on the tokenizer (the template's own markers are not counted)."""
    contents = []
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    for (start, end), content in zip(spans, replies):
        at = text.find(content, start, end)
        if at >= 0:
            contents.append((at, at + len(content)))
    covered = set()
    for (begin, finish), label in zip(offsets, labels):
        if label == IGNORE_INDEX:
            continue
        for c0, c1 in contents:
            covered.update(range(max(begin, c0), min(finish, c1)))
    return sum(len(text[i].encode()) for i in covered)


def show_label_mask(example: dict, tokenizer) -> str:
    """The example's text with the trained (loss-bearing) spans in [[double brackets]]."""
    pieces, current, trained = [], [], None
    for token, label in zip(example["input_ids"], example["labels"]):
        is_trained = label != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            pieces.append((trained, current))
            current = []
        current.append(token)
        trained = is_trained
    if current:
        pieces.append((trained, current))
    return "".join(f"[[{tokenizer.decode(ids)}]]" if t else tokenizer.decode(ids) for t, ids in pieces)


@dataclass
class Splits:
    """Tokenized datasets plus the conversations they came from; `train` is None when built by
    `build_held_out` (evaluation and export need the held-out rows only)."""

    train: object
    validation: object
    test: object
    conversations: dict[str, list] = field(repr=False)
    stats: dict = field(default_factory=dict)
    # Each held-out example's quality `score` (None where the source has none), in its dataset's order:
    # what the clean yardstick (eval.clean_min_score) is chosen by.
    scores: dict[str, list] = field(default_factory=dict, repr=False)


def tokenize_split(conversations: list, tokenizer, max_length: int, min_reply_tokens: int = 0) -> tuple[object, Counter, list[int]]:
    """The conversations' examples, what was dropped and why, and which conversations were kept (indices)."""
    from datasets import Dataset

    rows, counts, kept = [], Counter(), []
    for index, messages in enumerate(conversations):
        example = tokenize_conversation(messages, tokenizer, max_length)
        counts["truncated"] += example.pop("truncated")
        reply_tokens = sum(label != IGNORE_INDEX for label in example["labels"])
        if reply_tokens == 0:
            counts["no_reply_left_after_truncation"] += 1
            continue
        if reply_tokens < min_reply_tokens:
            counts["dropped_min_reply_tokens"] += 1
            continue
        counts["tokens"] += len(example["input_ids"])
        counts["reply_tokens"] += reply_tokens
        rows.append(example)
        kept.append(index)
    return Dataset.from_list(rows), counts, kept


def held_out_split(data: DataSection) -> tuple[dict[str, list], dict]:
    """The pool's rows split: test and validation first, with the split seed, so every run of a sweep
    sees the same held-out conversations; the rest are the pool's training rows. Plus what reading it
    dropped."""
    rows = load_rows(data.source, data.hub_split, data.subset)
    pool, dropped = normalise(rows, data.format)
    if not pool:
        reasons = ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "the source is empty"
        raise ConfigError(f"data.source: {data.source}: no valid conversation ({reasons})")
    parts = split_conversations(pool, data.val_size, data.test_size, data.split_seed)
    return parts, {"rows": len(rows), "dropped_malformed": dict(dropped), "dropped_total": sum(dropped.values())}


def _tokenized(parts: dict[str, list], data: DataSection, tokenizer, max_seq_length: int, stats: dict) -> Splits:
    """`parts`: each split's records ({messages, score, ...})."""
    datasets, scores = {"train": None}, {}
    conversations = {name: [r["messages"] for r in records] for name, records in parts.items()}
    for name, convs in conversations.items():
        datasets[name], counts, kept = tokenize_split(convs, tokenizer, max_seq_length, data.select.min_reply_tokens if name == "train" else 0)
        stats[name] = {"conversations": len(convs), "examples": len(datasets[name]), **counts}
        if name != "train":
            scores[name] = [parts[name][i].get("score") for i in kept]
    stats["fingerprint"] = fingerprint([conversations["validation"], conversations["test"]])
    stats["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    return Splits(**datasets, conversations=conversations, stats=stats, scores=scores)


def build_held_out(data: DataSection, tokenizer, max_seq_length: int) -> Splits:
    """Validation and test only (`train` is None), for evaluation and export: the same conversations and
    fingerprint as `build_splits` gives training, without gathering, filtering or tokenising training rows."""
    parts, stats = held_out_split(data)
    return _tokenized({"validation": parts["validation"], "test": parts["test"]}, data, tokenizer, max_seq_length, stats)


def build_splits(data: DataSection, tokenizer, max_seq_length: int) -> Splits:
    """Training, validation and test: the held-out split, then the training rows chosen for this run
    (lab2.data_selection: other sources, held-out copies removed, the `select` rules)."""
    parts, stats = held_out_split(data)
    training, selection = data_selection.training_rows(data, parts["train"], parts["validation"] + parts["test"])
    splits = _tokenized({"train": training, "validation": parts["validation"], "test": parts["test"]}, data, tokenizer, max_seq_length, stats)
    selection["rules"]["min_reply_tokens"] = stats["train"].pop("dropped_min_reply_tokens", 0)
    stats["selection"] = selection
    return splits
