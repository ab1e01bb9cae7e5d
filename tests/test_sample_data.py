import json

from tools import sample_data
from tests.conftest import SAMPLE_DATA


def test_shipped_samples_match_their_generator(tmp_path):
    sample_data.write(tmp_path / "s.jsonl")
    assert (tmp_path / "s.jsonl").read_text() == SAMPLE_DATA.read_text()
    assert (tmp_path / "sample_alpaca.jsonl").read_text() == (SAMPLE_DATA.parent / "sample_alpaca.jsonl").read_text()


def test_sample_has_varied_shapes():
    rows = sample_data.generate()
    turns = [len(r["conversations"]) for r in rows]
    with_system = sum(r["conversations"][0]["from"] == "system" for r in rows)
    lengths = [sum(len(t["value"]) for t in r["conversations"]) for r in rows]
    assert max(turns) >= 6 and min(turns) == 2  # multi-turn and single-turn
    assert 40 <= with_system <= 120  # about a fifth have a system prompt
    assert min(lengths) < 80 and max(lengths) > 2000  # one line up to long reports


def test_no_row_twice_and_a_scored_share_of_noise():
    rows = sample_data.generate()
    assert len({json.dumps(r["conversations"]) for r in rows}) == len(rows) == 400
    noisy = [r for r in rows if r["score"] < 3]
    assert 60 <= len(noisy) <= 110 and all(3.5 <= r["score"] <= 5.0 for r in rows if r["score"] >= 3)
    wrong = [r for r in noisy if r.get("answer") and r["answer"] not in r["conversations"][-1]["value"]]
    assert len(wrong) > 20  # wrong answers; the key stays the right one
    clean_keyed = [r for r in rows if r["score"] >= 3 and r.get("answer")]
    assert all(r["answer"] in r["conversations"][-1]["value"] for r in clean_keyed)
    alpaca = sample_data.generate_alpaca(avoid=rows)
    assert len(alpaca) == 200 and all(set(r) >= {"instruction", "output", "answer"} for r in alpaca)
