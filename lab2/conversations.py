"""Raw rows -> conversations: where training and held-out rows come from, in one form.

1. `load_rows`: the hub (FineTome-100k by default) or a local jsonl/json/parquet file.
2. `to_messages`: ShareGPT, OpenAI and Alpaca rows become one `[{role, content}]` form; malformed
   rows are dropped and counted by reason. A row's `answer` (its last reply's one right answer) rides
   on that reply as `answer`, for exact-match scoring.

lab2.data (splitting, tokenising) and lab2.data_selection (the data-centric rules) both read rows
through here, so neither imports the other for them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lab2.config import LOCAL_DATA_SUFFIXES, ConfigError, looks_like_local_path

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
