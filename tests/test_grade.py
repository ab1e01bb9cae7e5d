"""`lab2 grade`: a small class of tiny-model submissions, checked, scored on the course's held-out split and
ranked; the good ones scored as the sweep's own evaluation scored them, each bad one refused in one line,
nothing scored twice."""

import csv
import json
import pickle
import shutil
from pathlib import Path

import pytest

from lab2 import cli, grade, runs

COURSE = "params/tiny_random/baseline.yaml"  # the swept checkout's params: what the students were given


class WritesWhenUnpickled:
    """A 'weights' file that creates `marker` if anything unpickles it: the proof that nothing did."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def copy_submission(source: Path, to: Path) -> Path:
    """A lab2 experiment folder as a student hands it in: adapter and records (not checkpoints or notebooks)."""
    shutil.copytree(source / "adapter", to / "adapter")
    shutil.copytree(source / "records", to / "records")
    return to


@pytest.fixture
def a_class(swept, tmp_path, tiny_model_dir, monkeypatch):
    """Three good submissions (the swept sweep's two runs, and one more run trained here on the course) and
    five bad ones; returns (the class folder, the marker a pickle would write)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lab2 import train
    from lab2.config import load_config

    monkeypatch.chdir(swept)  # the course's relative paths (model, data) resolve as they do for the students
    room = tmp_path / "class"
    for name in ("baseline", "lr_high"):
        copy_submission(swept / "outputs" / name, room / name)
    train.run(load_config(COURSE, {"experiment": "seed7", "train": {"seed": 7}}), tmp_path / "more")
    copy_submission(tmp_path / "more" / "seed7", room / "seed7")

    # records edited to claim another split (another split seed, and that split's fingerprint)
    edited = copy_submission(swept / "outputs" / "baseline", room / "claims_other_split")
    record = json.loads((edited / "records" / "train.json").read_text())
    record["config"]["data"]["split_seed"] += 1
    record["data"]["fingerprint"] = "0123456789abcdef"
    (edited / "records" / "train.json").write_text(json.dumps(record))
    # pickle weights beside the safetensors
    marker = tmp_path / "unpickled"
    pickled = copy_submission(swept / "outputs" / "lr_high", room / "pickled")
    (pickled / "adapter" / "adapter_model.bin").write_bytes(pickle.dumps(WritesWhenUnpickled(marker)))
    # an adapter of another base model (the 64-wide tiny Llama, not the course's 256-wide one)
    other = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    other.save_pretrained(room / "other_base")
    # not an adapter at all
    (room / "notes").mkdir()
    (room / "notes" / "README.md").write_text("my adapter is on my laptop\n")
    # weights that are a link to a file outside the submission
    linked = copy_submission(swept / "outputs" / "baseline", room / "linked")
    (linked / "adapter" / "adapter_model.safetensors").unlink()
    (linked / "adapter" / "adapter_model.safetensors").symlink_to(swept / "outputs" / "lr_high" / "adapter" / "adapter_model.safetensors")
    return room, marker


REFUSED = {
    "claims_other_split": "records: trained on another split than the course's",
    "pickled": "adapter_model.bin: pickle files are refused",
    "other_base": "(an adapter for another base model)",
    "notes": "not an adapter",
    "linked": "is a link",
}


def test_grade_scores_the_good_refuses_the_bad_and_never_scores_twice(a_class, swept, tmp_path, capsys):
    room, marker = a_class
    out = tmp_path / "graded"
    calls = []

    def counted(to_score):
        calls.append(sorted(to_score))
        return grade.score_locally(to_score)

    report = grade.grade(room, COURSE, out, execute=counted)
    assert calls == [sorted(["base model", "baseline", "lr_high", "seed7"])]
    assert not marker.exists(), "the pickle was unpickled"

    # the good ones, scored on the course's measure (the clean yardstick: the swept params set clean_min_score)
    assert report.measure == "val_loss_clean"
    scored = report.scored().set_index("name")
    assert set(scored.index) == {"baseline", "lr_high", "seed7"}
    assert list(scored["rank"]) == [1.0, 2.0, 3.0] and scored["measure_value"].is_monotonic_increasing
    for name in ("baseline", "lr_high"):  # what the sweep's own evaluate.ipynb measured, on the same split
        own = runs.read_metrics(swept / "outputs" / name)["eval"]
        for key in ("val_loss", "val_loss_clean", "test_loss"):
            assert scored.loc[name, key] == pytest.approx(own[key], rel=1e-6), (name, key)
        assert scored.loc[name, "claimed_val_loss"] == pytest.approx(own["val_loss"], rel=1e-12)
    for name, row in scored.iterrows():  # each against the base model on the same conversations
        assert row["paired_low"] <= row["paired_delta"] <= row["paired_high"], name
        assert row["verdict"] in {"better", "worse", "unclear", "within noise", "noise unknown"}
    base = report.frame.set_index("name").loc["base model"]
    assert base["val_loss"] != scored.loc["baseline", "val_loss"]

    # the bad ones: refused, each in one line that says why
    refused = report.refused()
    assert set(refused) == set(REFUSED)
    for name, phrase in REFUSED.items():
        assert phrase in refused[name] and "\n" not in refused[name], (name, refused[name])
    assert "held-out conversations were in its training pool" in refused["claims_other_split"]
    printed = capsys.readouterr().out
    assert all(f"refused {name}: " in printed for name in REFUSED)

    # the class table, in markdown and HTML, its figure and the gradebook's CSV
    with open(out / "grades.csv") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(REFUSED) | {"baseline", "lr_high", "seed7", "base model"}
    assert float(rows["baseline"]["val_loss"]) == pytest.approx(scored.loc["baseline", "val_loss"])
    assert rows["pickled"]["status"] == "refused" and rows["pickled"]["reason"] == refused["pickled"]
    markdown = (out / "CLASS_REPORT.md").read_text()
    assert "| rank | submission |" in markdown and "vs base model [95 %]" in markdown and "claimed val loss" in markdown
    assert "pickle files are refused" in (out / "index.html").read_text()
    assert (out / "class_differences.png").stat().st_size > 10_000

    # a second run scores nothing again; a changed submission is scored afresh, alone
    grade.grade(room, COURSE, out, execute=counted)
    assert calls[-1] == []
    shutil.rmtree(room / "notes")
    copy_submission(swept / "outputs" / "lr_high", room / "notes")
    again = grade.grade(room, COURSE, out, execute=counted)
    assert calls[-1] == ["notes"]
    assert again.scored().set_index("name").loc["notes", "val_loss"] == pytest.approx(scored.loc["lr_high", "val_loss"], rel=1e-6)


def test_the_command_line_names_a_bad_course_in_one_line(tmp_path, capsys):
    (tmp_path / "class").mkdir()
    assert cli.main(["grade", str(tmp_path / "class"), "--params", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["grade", str(tmp_path / "nowhere"), "--params", str(tmp_path / "missing.yaml")]) == 2
