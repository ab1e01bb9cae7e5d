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
from tests.conftest import EXPORT_FILES

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
    # the sweep's own folder as a class, as `make grade` takes it: its runs, and its report's pages (not submissions)
    room = tmp_path / "class"
    shutil.copytree(swept / "outputs", room, symlinks=True, ignore=lambda folder, names: [n for n in names if n in EXPORT_FILES])
    assert {"html", "report_figures", "baseline", "lr_high"} <= {p.name for p in room.iterdir()}
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


def test_grade_on_ray_scores_as_the_local_executor(swept, tmp_path, monkeypatch):
    """EXECUTOR=ray: one submission per Ray task (here a local instance); the same scores as the sweep's own
    evaluation of the same adapters."""
    import functools

    import ray

    from lab2.ray_executor import map_on_ray

    monkeypatch.chdir(swept)  # Ray's workers start where the driver stands: the course's relative paths resolve
    room = tmp_path / "class"
    for name in ("baseline", "lr_high"):
        copy_submission(swept / "outputs" / name, room / name)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = grade.grade(room, COURSE, tmp_path / "graded", reference=room / "baseline",
                             execute=functools.partial(map_on_ray, grade.score, poll_seconds=1.0))
    finally:
        ray.shutdown()
    scored = report.scored().set_index("name")
    assert set(scored.index) == {"baseline", "lr_high"}
    for name in ("baseline", "lr_high"):
        own = runs.read_metrics(swept / "outputs" / name)["eval"]
        assert scored.loc[name, "val_loss_clean"] == pytest.approx(own["val_loss_clean"], rel=1e-6)
        assert scored.loc[name, "test_loss"] == pytest.approx(own["test_loss"], rel=1e-6)
    assert report.base is not None and report.base["status"] == "scored"
    # against the reference adapter (the baseline's own): itself exactly, the other run by their paired difference
    assert (scored.loc["baseline", "reference_delta"], scored.loc["baseline", "reference_high"]) == (0.0, 0.0)
    own = {name: runs.read_metrics(swept / "outputs" / name)["eval"]["val_loss_clean"] for name in ("baseline", "lr_high")}
    assert scored.loc["lr_high", "reference_delta"] == pytest.approx(own["lr_high"] - own["baseline"], rel=1e-6)
    assert "vs reference [95 %]" in (tmp_path / "graded" / "CLASS_REPORT.md").read_text()


LAYERS = {"model.layers.0.self_attn.q_proj": (16, 8)}  # (out, in) features of a base model's one linear layer
KEY = "base_model.model.model.layers.0.self_attn.q_proj"


def hand_in(folder: Path, tensors: dict | None = None, config: dict | None = None) -> Path:
    """A submission of a LoRA adapter with these tensors (default: rank 2 on LAYERS' q_proj)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    tensors = tensors if tensors is not None else {f"{KEY}.lora_A.weight": torch.zeros(2, 8), f"{KEY}.lora_B.weight": torch.zeros(16, 2)}
    save_file(tensors, str(folder / grade.ADAPTER_WEIGHTS))
    (folder / grade.ADAPTER_CONFIG).write_text(json.dumps(config or {"peft_type": "LORA", "r": 2}))
    return folder


@pytest.mark.parametrize("change, reason", [
    (None, None),
    ("size", "over the limit of 0 MB (--max-adapter-mb)"),
    ("name", "name 'my adapter': letters, digits"),
    ("no weights", "no adapter_model.safetensors beside adapter_config.json"),
    ("ia3", "peft_type 'IA3': a LoRA adapter is expected"),
    ("not json", "adapter_config.json: not valid JSON"),
    ("not safetensors", "adapter_model.safetensors: not a safetensors file"),
    ("dora", "lora_magnitude_vector: not a LoRA matrix of a linear layer"),
    ("other layer", "the course's base model has no linear layer model.layers.0.mlp.up_proj"),
    ("unpaired", "lora_A and lora_B do not pair"),
    ("pickle only", "adapter_model.pt: pickle files are refused"),
])
def test_each_check_refuses_in_one_line(tmp_path, change, reason):
    import torch

    name = "my adapter" if change == "name" else "student"
    tensors = {"dora": {f"{KEY}.lora_A.weight": torch.zeros(2, 8), f"{KEY}.lora_magnitude_vector": torch.zeros(16)},
               "other layer": {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(2, 8)},
               "unpaired": {f"{KEY}.lora_A.weight": torch.zeros(2, 8), f"{KEY}.lora_B.weight": torch.zeros(16, 3)}}.get(change)
    folder = hand_in(tmp_path / name, tensors, {"peft_type": "IA3"} if change == "ia3" else None)
    if change == "no weights":
        (folder / grade.ADAPTER_WEIGHTS).unlink()
    if change == "not json":
        (folder / grade.ADAPTER_CONFIG).write_text("{peft_type: LORA")
    if change == "not safetensors":
        (folder / grade.ADAPTER_WEIGHTS).write_bytes(b"\x00" * 64)
    if change == "pickle only":
        (folder / grade.ADAPTER_WEIGHTS).rename(folder / "adapter_model.pt")
    found = grade.file_problem(folder, 0 if change == "size" else 2**20) or grade.adapter_problem(folder, LAYERS)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found and "\n" not in found, found
