"""Each stage writes its own record; one reader joins them by config hash (lab2/runs.py)."""

import json

import pytest

from lab2 import runs


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_records_join_by_config_hash_and_metrics_json_is_their_view(tmp_path):
    exp = tmp_path / "rank_32"
    runs.write_record(exp, "train", {"experiment": "rank_32", "status": "complete", "config_hash": "A", "train": {"final_loss": 1.0}})
    runs.write_record(exp, "eval", {"val_loss": 2.0, "eval_hash": "e1", "config_hash": "A"})
    runs.write_record(exp, "timing", {"train_notebook_seconds": 3.0, "config_hash": "A"})
    view = runs.read_metrics(exp)
    assert view == {"experiment": "rank_32", "status": "complete", "config_hash": "A", "train": {"final_loss": 1.0},
                    "eval": {"val_loss": 2.0, "eval_hash": "e1"}, "timing": {"train_notebook_seconds": 3.0}}
    assert json.loads((exp / "metrics.json").read_text()) == view
    assert _files(exp) == ["metrics.json", "records/eval.json", "records/timing.json", "records/train.json"]
    # Retrained with another config: the older evaluation and timing stay on disk but never join this run.
    runs.write_record(exp, "train", {"experiment": "rank_32", "status": "running", "config_hash": "B"})
    assert runs.read_metrics(exp) == {"experiment": "rank_32", "status": "running", "config_hash": "B"}
    assert json.loads((exp / "metrics.json").read_text()) == runs.read_metrics(exp)
    assert runs.read_record(exp, "eval")["config_hash"] == "A"
    assert not runs.is_complete(exp, "A") and not runs.is_complete(exp, "B")


def test_a_record_without_its_config_hash_or_of_an_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="the eval record names no config_hash"):
        runs.write_record(tmp_path / "x", "eval", {"val_loss": 1.0})
    with pytest.raises(ValueError, match="stage 'evaluate': expected one of train, eval, export, timing"):
        runs.write_record(tmp_path / "x", "evaluate", {"config_hash": "A"})
    assert not (tmp_path / "x").exists() or _files(tmp_path / "x") == []


def test_a_folder_from_before_records_reads_as_it_did_and_is_split_when_a_stage_writes(tmp_path, capsys):
    exp = tmp_path / "old"
    legacy = {"experiment": "old", "status": "complete", "config_hash": "A", "train": {"final_loss": 1.0},
              "eval": {"val_loss": 2.0, "eval_hash": "e1"}, "export": {"formats": {"f16": {"file": "old.f16.gguf"}}}}
    runs.write_json_atomic(exp / "metrics.json", legacy)
    assert runs.read_metrics(exp) == legacy and runs.experiment_dirs(tmp_path) == [exp]
    assert _files(exp) == ["metrics.json"]  # reading never writes
    runs.write_record(exp, "eval", {"val_loss": 1.5, "eval_hash": "e2", "config_hash": "A"})  # re-evaluated
    assert "metrics.json from before per-stage records, split into" in capsys.readouterr().out
    assert runs.read_metrics(exp) == {**legacy, "eval": {"val_loss": 1.5, "eval_hash": "e2"}}  # its export kept, its eval new
    assert _files(exp) == ["metrics.json", "records/eval.json", "records/export.json", "records/train.json"]
