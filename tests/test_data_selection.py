"""Held-out first: the same held-out set for every run, nothing of it in training, and the
data-centric rules acting on training rows only."""

import json

import pytest

from lab2 import data_selection
from lab2.config import ConfigError, DataSection, experiment_files, load_config
from lab2.conversations import normalise
from lab2.data import split_conversations
from tests.conftest import REPO, SAMPLE_DATA

def long_reply(i: int) -> str:
    """A 100-word reply of its own: rows with different i share no word 5-gram."""
    return " ".join(f"w{i}x{j}" for j in range(100))


def _row(question, reply, score=4.0, source="s/a"):
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": reply}], "score": score, "source": source}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _held_out(section: DataSection):
    pool, _ = normalise([json.loads(line) for line in open(section.source)])
    parts = split_conversations(pool, section.val_size, section.test_size, section.split_seed)
    return parts, parts["validation"] + parts["test"]


def test_planted_copies_of_held_out_rows_never_reach_training(tmp_path):
    pool = _write(tmp_path / "pool.jsonl", [_row(f"Question {i}?", f"Answer {i}. {long_reply(i)}") for i in range(60)])
    section = DataSection(source=str(pool), subset=None, val_size=6, test_size=6)
    parts, held_out = _held_out(section)
    # Another source with planted copies: 3 exact ones (case and spacing changed: still the same text),
    # 2 near ones (the last word of a 100-word reply changed), and 10 unrelated rows.
    planted = []
    for record in held_out[:3]:
        question, reply = record["messages"][0]["content"], record["messages"][1]["content"]
        planted.append(_row(question.upper(), "  " + reply.replace(" ", "   ")))
    for record in held_out[3:5]:
        question, reply = record["messages"][0]["content"], record["messages"][1]["content"]
        planted.append(_row(question, reply.rsplit(" ", 1)[0] + " changed"))
    planted += [_row(f"Other {i}?", f"Other answer {i}.") for i in range(10)]
    extra = _write(tmp_path / "extra.jsonl", planted)
    mixed = DataSection(source=str(pool), subset=None, val_size=6, test_size=6,
                        train_sources=[{"source": "pool"}, {"source": str(extra)}])

    rows, record = data_selection.training_rows(mixed, parts["train"], held_out)
    assert record["held_out_copies_removed"] == {"exact": 3, "near": 2}
    assert record["offered_by_source"] == {"pool": 48, str(extra): 15}
    assert record["kept"] == len(rows) == 48 + 10 and record["kept_by_source"] == {"pool": 48, str(extra): 10}
    held_keys = {data_selection.exact_key(r["messages"]) for r in held_out}
    assert not any(data_selection.exact_key(r["messages"]) in held_keys for r in rows)
    assert not any(data_selection.near_index(held_out).query(data_selection.minhash(r["messages"])) for r in rows)


def test_duplicates_inside_the_pool_leave_training_not_the_held_out_set(tmp_path):
    unique = [_row(f"Question {i}?", f"Answer {i}. {long_reply(i)}") for i in range(40)]
    pool = _write(tmp_path / "pool.jsonl", unique + unique)  # every row twice
    section = DataSection(source=str(pool), subset=None, val_size=5, test_size=5)
    parts, held_out = _held_out(section)
    held_keys = {data_selection.exact_key(r["messages"]) for r in held_out}
    twins_in_training = sum(data_selection.exact_key(r["messages"]) in held_keys for r in parts["train"])
    rows, record = data_selection.training_rows(section, parts["train"], held_out)
    assert twins_in_training > 0 and record["held_out_copies_removed"]["exact"] == twins_in_training
    assert len(held_out) == 10  # the held-out side keeps every row
    assert not any(data_selection.exact_key(r["messages"]) in held_keys for r in rows)


def test_select_rules_act_on_training_rows_and_keep_the_held_out_set(tmp_path):
    rows = [_row(f"Q{i}?", f"A{i} " * (i % 7 + 1), score=1.5 if i % 4 == 0 else 4.5, source=f"s/{'a' if i % 3 else 'b'}")
            for i in range(80)]
    rows += [_row("Q1?", "A1 ", score=4.5, source="s/a")] * 3  # repeats of a training row
    pool = _write(tmp_path / "pool.jsonl", rows)

    def run(**select):
        section = DataSection(source=str(pool), subset=None, val_size=5, test_size=5, select=select)
        parts, held_out = _held_out(section)
        kept, record = data_selection.training_rows(section, parts["train"], held_out)
        return kept, record, [r["messages"] for r in held_out]

    everything, _, held = run()
    filtered, record, held_filtered = run(min_score=3.0)
    assert held_filtered == held  # the held-out conversations do not depend on the rules
    assert all(r["score"] >= 3.0 for r in filtered) and record["rules"]["min_score"] == sum(r["score"] < 3 for r in everything)
    only_b, record, _ = run(sources=["s/b"])
    assert {r["source"] for r in only_b} == {"s/b"} and record["rules"]["sources"] > 0
    not_b, _, _ = run(exclude_sources=["s/b"])
    assert "s/b" not in {r["source"] for r in not_b}
    deduped, record, _ = run(dedup="exact")
    assert record["rules"]["dedup_exact"] >= 2 and len({data_selection.exact_key(r["messages"]) for r in deduped}) == len(deduped)
    capped, record, _ = run(max_rows=len(filtered))  # the size-matched random control of the filter
    assert len(capped) == len(filtered) and record["rules"]["max_rows"] == len(everything) - len(filtered)
    assert capped == run(max_rows=len(filtered))[0]  # seeded
    assert sum(r["score"] < 3 for r in capped) > 0  # random, not a quality filter


def test_a_score_filter_on_a_source_without_scores_is_refused(tmp_path):
    pool = _write(tmp_path / "pool.jsonl", [_row(f"Q{i}?", f"A{i}") for i in range(30)])
    alpaca = _write(tmp_path / "alpaca.jsonl", [{"instruction": f"I{i}", "output": f"O{i}"} for i in range(5)])
    section = DataSection(source=str(pool), subset=None, val_size=3, test_size=3, select={"min_score": 3.0},
                          train_sources=[{"source": "pool"}, {"source": str(alpaca), "format": "alpaca"}])
    parts, held_out = _held_out(section)
    with pytest.raises(ConfigError, match=rf"data.select.min_score: 5 training rows of {alpaca} carry no quality `score`"):
        data_selection.training_rows(section, parts["train"], held_out)


@pytest.mark.parametrize("sweep", ["tiny_random", "smol", "smol_data"])
def test_no_sweep_of_the_repository_trains_on_a_held_out_row(sweep):
    """Every params file of the local-data sweeps (params/lab2 reads the hub: the same code, not here)."""
    for path in experiment_files([REPO / "params" / sweep]):
        cfg = load_config(path)
        parts, held_out = _held_out(cfg.data.model_copy(update={"source": str(REPO / cfg.data.source)}))
        rows, record = data_selection.training_rows(cfg.data, parts["train"], held_out)
        held_keys = {data_selection.exact_key(r["messages"]) for r in held_out}
        index = data_selection.near_index(held_out)
        assert not any(data_selection.exact_key(r["messages"]) in held_keys for r in rows), path
        assert not any(index.query(data_selection.minhash(r["messages"])) for r in rows), path
        assert SAMPLE_DATA.name in cfg.data.source


def test_the_data_centric_sweeps_random_control_draws_as_many_rows_as_its_filter_keeps():
    """params/smol_data's quality_control is `quality`'s size-matched control only while max_rows equals what the
    filter keeps of this split: a change of the held-out sizes or the data must change both."""
    kept = {}
    for name in ("quality", "quality_control"):
        cfg = load_config(REPO / "params" / "smol_data" / f"{name}.yaml")
        data = cfg.data.model_copy(update={"source": str(REPO / cfg.data.source)})
        parts, held_out = _held_out(data)
        kept[name] = len(data_selection.training_rows(data, parts["train"], held_out)[0])
    assert kept["quality_control"] == kept["quality"] == load_config(REPO / "params/smol_data/quality_control.yaml").data.select.max_rows
