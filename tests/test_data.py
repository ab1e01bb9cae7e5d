import json

import pytest

from lab2.config import ConfigError, DataSection
from lab2.conversations import load_rows, normalise, to_messages
from lab2.data import IGNORE_INDEX, build_held_out, build_splits, fingerprint, split_conversations, tokenize_conversation
from tests.conftest import SAMPLE_DATA

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "2 plus 2 is 4."},
    {"role": "user", "content": "And doubled?"},
    {"role": "assistant", "content": "4 doubled is 8."},
]


def test_three_formats_normalise_to_the_same_messages():
    sharegpt = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    openai = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    alpaca = {"instruction": "Hi", "input": "", "output": "Hello"}
    expected = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    for row, fmt in [(sharegpt, "sharegpt"), (openai, "openai"), (alpaca, "alpaca")]:
        assert to_messages(row, fmt) == (expected, None)
        assert to_messages(row, "auto") == (expected, None)
    with_input = to_messages({"instruction": "Translate", "input": "hej", "output": "hi"}, "alpaca")[0]
    assert with_input[0]["content"] == "Translate\n\nhej"


def test_malformed_rows_are_dropped_and_counted():
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    rows = [
        good,
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  "}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Beep"}]},
        {"conversations": [{"from": "human", "value": "Hi"}]},
        {"conversations": []},
        {"text": "no conversation at all"},
    ]
    conversations, dropped = normalise(rows)
    assert len(conversations) == 1
    assert dropped == {
        "empty content": 1, "unknown role": 1, "no assistant reply": 1, "no turns": 1,
        "no 'conversations', 'messages' or 'instruction'/'output' column": 1,
    }


def test_split_is_deterministic_disjoint_and_sized():
    items = [[{"role": "user", "content": str(i)}] for i in range(100)]
    a = split_conversations(items, val_size=10, test_size=15, seed=7)
    b = split_conversations(items, val_size=10, test_size=15, seed=7)
    c = split_conversations(items, val_size=10, test_size=15, seed=8)
    assert a == b and a != c
    assert [len(a[k]) for k in ("train", "validation", "test")] == [75, 10, 15]
    ids = [json.dumps(x) for part in a.values() for x in part]
    assert len(set(ids)) == 100
    assert fingerprint(a["test"]) == fingerprint(b["test"]) != fingerprint(c["test"])


def test_labels_cover_the_assistant_replies_and_nothing_else(tokenizer):
    example = tokenize_conversation(CONVERSATION, tokenizer, max_length=1024)
    ids, labels = example["input_ids"], example["labels"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    trained = tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert trained == "2 plus 2 is 4.<|eot_id|>4 doubled is 8.<|eot_id|>"
    masked = tokenizer.decode([t for t, l in zip(ids, labels) if l == IGNORE_INDEX])
    for text in ("Be brief.", "What is 2 plus 2?", "And doubled?", "<|start_header_id|>assistant<|end_header_id|>"):
        assert text in masked
    # labels equal the inputs where they train (the model shifts them itself)
    assert all(l in (IGNORE_INDEX, t) for t, l in zip(ids, labels))


def test_truncation_is_applied_and_reported(tokenizer):
    example = tokenize_conversation(CONVERSATION, tokenizer, max_length=40)
    assert example["truncated"] and len(example["input_ids"]) == len(example["labels"]) == 40


def test_local_dataset_folder_goes_through_the_hub_loader(tmp_path):
    # A folder laid out like a hub dataset repo is read by the same load_dataset(source, split=...) call.
    import pandas as pd

    rows = [json.loads(line) for line in SAMPLE_DATA.read_text().splitlines()[:30]]
    (tmp_path / "FineTome-mini" / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "FineTome-mini" / "data" / "train-00000-of-00001.parquet")
    loaded = load_rows(str(tmp_path / "FineTome-mini"), hub_split="train", subset=20)
    assert len(loaded) == 20
    assert loaded[0]["conversations"] == rows[0]["conversations"]


def test_build_splits_on_sample_data(tokenizer):
    section = DataSection(source=str(SAMPLE_DATA), subset=None, val_size=20, test_size=20)
    splits = build_splits(section, tokenizer, max_seq_length=256)
    stats = splits.stats
    assert stats["rows"] == 400 and stats["dropped_total"] == 0
    assert stats["validation"]["examples"] == 20 and stats["test"]["examples"] == 20
    removed = stats["selection"]["held_out_copies_removed"]
    assert removed["exact"] == 0 and stats["train"]["conversations"] == 360 - removed["near"]  # no row twice in the file
    assert stats["train"]["truncated"] >= 1  # the long reports pass 256 tokens
    assert all(len(ids) <= 256 for ids in splits.train["input_ids"])
    again = build_splits(section, tokenizer, max_seq_length=256)
    assert again.stats["fingerprint"] == stats["fingerprint"]
    # Each held-out example carries its row's quality score, in the dataset's order: the clean yardstick's choice.
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text().splitlines()]
    for name in ("validation", "test"):
        scores = {json.dumps(normalise([r])[0][0]["messages"]): r["score"] for r in rows}
        assert splits.scores[name] == [scores[json.dumps(c)] for c in splits.conversations[name]]
    assert any(s < 3 for s in splits.scores["validation"] + splits.scores["test"])  # the noisy rows are there to tell apart


def test_held_out_build_gives_training_the_same_conversations_without_building_training_rows(tokenizer, monkeypatch):
    """Evaluation and export build validation and test only: the same token ids and fingerprint as
    training's build, and no training row gathered, filtered (MinHash) or tokenised."""
    from lab2 import data_selection

    section = DataSection(source=str(SAMPLE_DATA), subset=None, val_size=20, test_size=20)
    full = build_splits(section, tokenizer, max_seq_length=256)

    def refuse(*args, **kwargs):
        raise AssertionError("the held-out build chose training rows")

    monkeypatch.setattr(data_selection, "training_rows", refuse)
    held_out = build_held_out(section, tokenizer, max_seq_length=256)
    assert held_out.train is None and "train" not in held_out.conversations and "train" not in held_out.stats
    assert held_out.stats["fingerprint"] == full.stats["fingerprint"]
    assert held_out.stats["tokenizer_fingerprint"] == full.stats["tokenizer_fingerprint"]
    assert held_out.scores == full.scores
    for name in ("validation", "test"):
        assert held_out.conversations[name] == full.conversations[name]
        assert getattr(held_out, name)["input_ids"] == getattr(full, name)["input_ids"]
        assert getattr(held_out, name)["labels"] == getattr(full, name)["labels"]
    with pytest.raises(AssertionError, match="chose training rows"):  # the guard itself bites
        build_splits(section, tokenizer, max_seq_length=256)


def test_missing_file_and_empty_data_fail_clearly(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="data.source: .*nope.jsonl: no such file"):
        build_splits(DataSection(source=str(tmp_path / "nope.jsonl"), subset=None), tokenizer, 256)
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"conversations": [{"from": "alien", "value": "x"}]}\n')
    with pytest.raises(ConfigError, match="no valid conversation .*unknown role: 1"):
        build_splits(DataSection(source=str(junk), subset=None, val_size=1, test_size=1), tokenizer, 256)


def test_split_larger_than_the_data_is_refused(tokenizer):
    section = DataSection(source=str(SAMPLE_DATA), subset=None, val_size=300, test_size=100)
    with pytest.raises(ConfigError, match="data.val_size \\+ data.test_size = 400 leaves no training rows"):
        build_splits(section, tokenizer, 256)
