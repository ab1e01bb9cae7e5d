"""Conversations -> train/validation/test token ids with the loss on replies only.

1. `load_rows`: the hub (FineTome-100k by default) or a local jsonl/json/parquet file.
2. `to_messages`: ShareGPT, OpenAI and Alpaca rows become one `[{role, content}]`
   form; malformed rows are dropped and counted by reason. A row's `answer` (its last
   reply's one right answer) rides on that reply as `answer`, for exact-match scoring.
3. `split_conversations`: validation and test are carved from the pool (`data.source`) first,
   with `split_seed`: the same held-out conversations for every run of a sweep.
4. Training rows: the pool's rest and any other `train_sources` (lab2.data_selection), minus every
   row equal or near-equal to a held-out one, then the run's data-centric `select` rules.
5. `tokenize_conversation`: the chat template is applied once (one BOS), and
   labels are -100 everywhere except the assistant's replies.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lab2.config import LOCAL_DATA_SUFFIXES, ConfigError, DataSection, looks_like_local_path

IGNORE_INDEX = -100
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
LOCAL_BUILDERS = dict(zip(LOCAL_DATA_SUFFIXES, ("json", "json", "parquet")))


# --------------------------------------------------------------------------- loading


def load_rows(source: str, hub_split: str = "train", subset: int | None = None):
    """A `datasets.Dataset` of raw rows, from a local file, a local dataset folder or the hub."""
    from datasets import load_dataset

    path = Path(source)
    if path.is_file():
        builder = LOCAL_BUILDERS.get(path.suffix)
        if builder is None:
            raise ConfigError(f"data.source: {source}: unsupported file type (use .jsonl, .json or .parquet)")
        rows = load_dataset(builder, data_files=str(path), split="train")
    elif path.is_dir() or not looks_like_local_path(source):
        # A hub id, or a local copy of a hub dataset repo: the same call either way.
        rows = load_dataset(source, split=hub_split)
    else:
        raise ConfigError(f"data.source: {source}: no such file")
    if subset is not None and subset < len(rows):
        rows = rows.select(range(subset))
    return rows


# --------------------------------------------------------------------------- normalising


def detect_format(row: dict) -> str:
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        turns = row["messages"] or [{}]
        return "sharegpt" if isinstance(turns[0], dict) and "from" in turns[0] else "openai"
    if "instruction" in row and "output" in row:
        return "alpaca"
    raise ValueError("no 'conversations', 'messages' or 'instruction'/'output' column")


def to_messages(row: dict, fmt: str) -> tuple[list[dict] | None, str | None]:
    """(messages, None) for a usable row, or (None, reason) for a malformed one."""
    if fmt == "auto":
        try:
            fmt = detect_format(row)
        except ValueError as exc:
            return None, str(exc)
    if fmt == "alpaca":
        instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str):
            return None, "alpaca row without instruction/output text"
        prompt = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
        turns = [("user", prompt), ("assistant", output)]
    else:
        raw = row.get("conversations") if "conversations" in row else row.get("messages")
        if not isinstance(raw, list) or not raw:
            return None, "no turns"
        role_key, text_key, roles = ("from", "value", SHAREGPT_ROLES) if fmt == "sharegpt" else ("role", "content", OPENAI_ROLES)
        turns = []
        for turn in raw:
            if not isinstance(turn, dict):
                return None, "turn is not a mapping"
            role = roles.get(str(turn.get(role_key, "")).lower())
            if role is None:
                return None, "unknown role"
            turns.append((role, turn.get(text_key)))
    messages = []
    for i, (role, content) in enumerate(turns):
        if not isinstance(content, str) or not content.strip():
            return None, "empty content"
        if role == "system" and i != 0:
            return None, "system message after the first turn"
        messages.append({"role": role, "content": content})
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if "assistant" not in roles:
        return None, "no assistant reply"
    if roles[0] != "user":
        return None, "conversation does not start with the user"
    if isinstance(row.get("answer"), str) and row["answer"].strip():
        # The last reply's one right answer, for exact-match scoring; chat templates never read it.
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages[last]["answer"] = row["answer"].strip()
    return messages, None


def normalise(rows, fmt: str = "auto", origin: str = "pool") -> tuple[list[dict], Counter]:
    """Usable rows as records {messages, score, source, origin}, and the malformed ones counted by reason.
    `score` (a quality score, FineTome's) and `source` (the row's own collection) are kept for
    data-centric selection; `origin` is the train source the row came from."""
    records, dropped = [], Counter()
    for row in rows:
        messages, reason = to_messages(row, fmt)
        if messages is None:
            dropped[reason] += 1
        else:
            score = row.get("score")
            records.append({"messages": messages, "score": float(score) if isinstance(score, (int, float)) else None,
                            "source": row.get("source") if isinstance(row.get("source"), str) else None, "origin": origin})
    return records, dropped


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
    """Tokenized datasets for training plus the conversations they came from."""

    train: object
    validation: object
    test: object
    conversations: dict[str, list] = field(repr=False)
    stats: dict = field(default_factory=dict)


def tokenize_split(conversations: list, tokenizer, max_length: int, min_reply_tokens: int = 0) -> tuple[object, Counter]:
    from datasets import Dataset

    rows, counts = [], Counter()
    for messages in conversations:
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
    return Dataset.from_list(rows), counts


def build_splits(data: DataSection, tokenizer, max_seq_length: int) -> Splits:
    from lab2 import data_selection

    rows = load_rows(data.source, data.hub_split, data.subset)
    pool, dropped = normalise(rows, data.format)
    if not pool:
        reasons = ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "the source is empty"
        raise ConfigError(f"data.source: {data.source}: no valid conversation ({reasons})")
    # Held-out first, from the pool alone: every run of the sweep sees the same conversations there.
    parts = split_conversations(pool, data.val_size, data.test_size, data.split_seed)
    held_out = parts["validation"] + parts["test"]
    training, selection = data_selection.training_rows(data, parts["train"], held_out)
    conversations = {"train": [r["messages"] for r in training], "validation": [r["messages"] for r in parts["validation"]],
                     "test": [r["messages"] for r in parts["test"]]}
    datasets, stats = {}, {"rows": len(rows), "dropped_malformed": dict(dropped), "dropped_total": sum(dropped.values())}
    for name, convs in conversations.items():
        datasets[name], counts = tokenize_split(convs, tokenizer, max_seq_length, data.select.min_reply_tokens if name == "train" else 0)
        stats[name] = {"conversations": len(convs), "examples": len(datasets[name]), **counts}
    selection["rules"]["min_reply_tokens"] = stats["train"].pop("dropped_min_reply_tokens", 0)
    stats["selection"] = selection
    stats["fingerprint"] = fingerprint([conversations["validation"], conversations["test"]])
    stats["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    return Splits(**datasets, conversations=conversations, stats=stats)
