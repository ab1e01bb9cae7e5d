from lab2 import sample_data
from tests.conftest import SAMPLE_DATA


def test_shipped_sample_matches_its_generator(tmp_path):
    assert sample_data.write(tmp_path / "s.jsonl").read_text() == SAMPLE_DATA.read_text()


def test_sample_has_varied_shapes():
    rows = sample_data.generate()
    turns = [len(r["conversations"]) for r in rows]
    with_system = sum(r["conversations"][0]["from"] == "system" for r in rows)
    lengths = [sum(len(t["value"]) for t in r["conversations"]) for r in rows]
    assert max(turns) >= 6 and min(turns) == 2  # multi-turn and single-turn
    assert 40 <= with_system <= 120  # about a fifth have a system prompt
    assert min(lengths) < 80 and max(lengths) > 2000  # one line up to long reports
