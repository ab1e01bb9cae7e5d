"""Training rows: where they come from, what the held-out set forbids, and the data-centric rules.

Every rule here acts on training rows only; the held-out conversations are carved from the pool
before this module sees anything (lab2.data.split_conversations), so they are the same for every
run of a sweep. In order:

1. `train_sources`: the pool's training rows and/or other datasets, `rows` of each drawn at random
   with the split seed;
2. contamination: a training row equal to a held-out one (after normalising case and spaces) or
   near-equal (MinHash over word 5-grams, estimated Jaccard >= NEAR_THRESHOLD) is removed, always,
   and counted;
3. `select`: min_score, sources / exclude_sources, dedup (exact or near), then max_rows (a seeded
   random cap: the size-matched control of a filter). min_reply_tokens needs the tokenizer and is
   applied when the rows are tokenized (lab2.data.tokenize_split).

What each step kept and dropped, by rule and by source, goes to metrics.json (`data.selection`).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np

from lab2.config import ConfigError, DataSection
from lab2.conversations import load_rows, normalise

NEAR_THRESHOLD = 0.8  # estimated Jaccard similarity of word 5-gram sets
SHINGLE_WORDS = 5
NUM_PERM = 128


# --------------------------------------------------------------------------- what "the same" means


def conversation_text(messages: list[dict]) -> str:
    """The words of a conversation, normalised: case, spacing and punctuation runs do not count."""
    return " ".join(re.findall(r"\w+", " ".join(f"{m['role']} {m['content']}" for m in messages).lower()))


def exact_key(messages: list[dict]) -> str:
    return json.dumps(conversation_text(messages))


def minhash(messages: list[dict]):
    from datasketch import MinHash

    words = conversation_text(messages).split()
    shingles = {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
    signature = MinHash(num_perm=NUM_PERM, seed=1)
    signature.update_batch([s.encode() for s in shingles])
    return signature


def near_index(records: list[dict]):
    from datasketch import MinHashLSH

    index = MinHashLSH(threshold=NEAR_THRESHOLD, num_perm=NUM_PERM)
    for i, record in enumerate(records):
        index.insert(str(i), minhash(record["messages"]))
    return index


# --------------------------------------------------------------------------- the steps


def gather(data: DataSection, pool_train: list[dict]) -> tuple[list[dict], dict]:
    """Rows of every train source, each drawn with the split seed; counts offered per source."""
    rng = np.random.default_rng(data.split_seed)
    rows, offered = [], {}
    for spec in data.train_sources:
        if spec.source == "pool":
            records = list(pool_train)
        else:
            raw = load_rows(spec.source, spec.hub_split)
            records, _ = normalise(raw, spec.format, origin=spec.source)
            if not records:
                raise ConfigError(f"data.train_sources: {spec.source}: no valid conversation")
        if spec.rows is not None and spec.rows < len(records):
            records = [records[i] for i in sorted(rng.choice(len(records), spec.rows, replace=False))]
        offered[spec.source] = offered.get(spec.source, 0) + len(records)
        rows += records
    return rows, offered


def remove_held_out_copies(rows: list[dict], held_out: list[dict]) -> tuple[list[dict], dict]:
    """Training rows equal or near-equal to a held-out conversation, removed from training (never from
    the held-out side); returns the rest and the counts."""
    held_keys = {exact_key(r["messages"]) for r in held_out}
    index = near_index(held_out)
    kept, exact, near = [], 0, 0
    for row in rows:
        if exact_key(row["messages"]) in held_keys:
            exact += 1
        elif index.query(minhash(row["messages"])):
            near += 1
        else:
            kept.append(row)
    return kept, {"exact": exact, "near": near}


def deduplicate(rows: list[dict], mode: str) -> list[dict]:
    """The first of each group of equal (exact) or near-equal (near) training rows."""
    from datasketch import MinHashLSH

    seen, kept = set(), []
    index = MinHashLSH(threshold=NEAR_THRESHOLD, num_perm=NUM_PERM) if mode == "near" else None
    for i, row in enumerate(rows):
        key = exact_key(row["messages"])
        if key in seen:
            continue
        if index is not None:
            signature = minhash(row["messages"])
            if index.query(signature):
                continue
            index.insert(str(i), signature)
        seen.add(key)
        kept.append(row)
    return kept


def apply_rules(rows: list[dict], data: DataSection) -> tuple[list[dict], dict]:
    """The `select` rules in order; returns the kept rows and how many each rule dropped."""
    select, dropped = data.select, {}

    def keep(name: str, predicate) -> None:
        nonlocal rows
        before = len(rows)
        rows = [row for row in rows if predicate(row)]
        dropped[name] = before - len(rows)

    if select.min_score is not None:
        unscored = Counter(row["origin"] for row in rows if row["score"] is None)
        if unscored:
            origin, count = unscored.most_common(1)[0]
            raise ConfigError(f"data.select.min_score: {count} training rows of {origin} carry no quality `score`; "
                              "filter such a source by another rule, or leave min_score null")
        keep("min_score", lambda row: row["score"] >= select.min_score)
    if select.sources is not None:
        keep("sources", lambda row: row["source"] in select.sources)
    if select.exclude_sources is not None:
        keep("exclude_sources", lambda row: row["source"] not in select.exclude_sources)
    if select.dedup != "none":
        before = len(rows)
        rows = deduplicate(rows, select.dedup)
        dropped[f"dedup_{select.dedup}"] = before - len(rows)
    if select.max_rows is not None and select.max_rows < len(rows):
        rng = np.random.default_rng(data.split_seed + 1)  # not the split's own draw
        before = len(rows)
        rows = [rows[i] for i in sorted(rng.choice(len(rows), select.max_rows, replace=False))]
        dropped["max_rows"] = before - len(rows)
    return rows, dropped


def training_rows(data: DataSection, pool_train: list[dict], held_out: list[dict]) -> tuple[list[dict], dict]:
    """The run's training rows and the record of how they were chosen (metrics.json `data.selection`)."""
    rows, offered = gather(data, pool_train)
    rows, contamination = remove_held_out_copies(rows, held_out)
    rows, dropped = apply_rules(rows, data)
    if not rows:
        raise ConfigError("data: no training rows left after the held-out split and data.select; loosen the rules")
    kept = Counter(row["origin"] for row in rows)
    return rows, {
        "offered_by_source": offered,
        "held_out_copies_removed": contamination,
        "rules": dropped,
        "kept_by_source": dict(kept),
        "kept": len(rows),
    }
