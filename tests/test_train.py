import json
import os
import time

from lab2 import runs
from lab2.config import load_config
from lab2.data import build_splits
from lab2.modeling import load_tokenizer, load_trainable_model
from lab2.train import ForeignCheckpointError, latest_checkpoint, run_identity, train_experiment, write_run_identity


def _checkpoint(folder, step):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    return path


def test_latest_checkpoint_is_chosen_by_step_not_file_time(tmp_path):
    newest_by_step = _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 5)  # touched last, but an earlier step
    (tmp_path / "checkpoint-30").mkdir()  # no trainer_state.json: an unfinished save
    old = time.time() - 3600
    os.utime(newest_by_step, (old, old))
    assert latest_checkpoint(tmp_path) == newest_by_step
    assert latest_checkpoint(tmp_path / "missing") is None


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    runs.write_json_atomic(tmp_path / "m.json", {"a": 1})
    runs.write_json_atomic(tmp_path / "m.json", {"a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert oct((tmp_path / "m.json").stat().st_mode & 0o777) == "0o644"


def test_train_writes_complete_metrics_and_skips_when_done(params_tree, tmp_path, capsys):
    cfg = load_config(params_tree("s/run.yaml", {}))
    tokenizer = load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    model = load_trainable_model(cfg)
    exp_dir = tmp_path / "out" / cfg.experiment

    metrics = train_experiment(cfg, model, tokenizer, splits, exp_dir)

    on_disk = runs.read_metrics(exp_dir)
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["status"] == "complete" and on_disk["config_hash"] == cfg.config_hash
    assert {"packages", "device", "git_commit", "python"} <= set(on_disk["env"])
    t = on_disk["train"]
    assert t["total_steps"] == 4
    assert [h["step"] for h in t["history"]] == [1, 2, 3, 4]
    assert [e["step"] for e in t["eval_history"]] == [2, 4]
    assert t["final_loss"] == t["history"][-1]["loss"]
    assert t["final_eval_loss"] == t["eval_history"][-1]["eval_loss"]
    assert t["eval_history"][-1]["eval_loss"] < t["eval_history"][0]["eval_loss"] < 12.5  # it learns
    assert t["training_time_seconds"] > 0 and t["tokens_per_second"] > 0 and t["peak_memory_mb"] > 100
    assert 0 < t["trained_tokens"] < t["tokens"]  # only replies carry loss
    assert t["padding_fraction"] == 0.0  # padding-free batches (train.padding_free, the default)
    assert (exp_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert latest_checkpoint(exp_dir / "checkpoints").name == "checkpoint-4"
    for checkpoint in (exp_dir / "checkpoints").glob("checkpoint-*"):  # each says which run wrote it
        assert json.loads((checkpoint / "lab2_run.json").read_text()) == run_identity(cfg, splits)

    capsys.readouterr()
    again = train_experiment(cfg, model, tokenizer, splits, exp_dir)
    assert "already complete" in capsys.readouterr().out
    assert again == on_disk


def test_resume_refuses_another_runs_checkpoint_from_a_separate_folder(params_tree, tmp_path):
    """A Drive-style checkpoint_dir outlives OUT: a changed params file must not resume its checkpoint."""
    import pytest

    shared = tmp_path / "drive" / "checkpoints"
    first = load_config(params_tree("s/run.yaml", {"train": {"checkpoint_dir": str(shared)}}))
    tokenizer = load_tokenizer(first.model.name, first.data.chat_template)
    splits = build_splits(first.data, tokenizer, first.model.max_seq_length)
    written = _checkpoint(shared / "run", 2)  # what the first run left there, on another VM
    write_run_identity(written, run_identity(first, splits))

    changed = load_config(params_tree("s/run.yaml", {"train": {"checkpoint_dir": str(shared), "learning_rate": 1e-3}}))
    new_out = tmp_path / "new-vm" / "run"
    with pytest.raises(ForeignCheckpointError) as refused:
        train_experiment(changed, None, tokenizer, splits, new_out)
    message = str(refused.value)
    assert "\n" not in message and first.config_hash in message and changed.config_hash in message
    assert str(written) in message
    assert (written / "trainer_state.json").is_file() and not new_out.exists()  # nothing deleted, nothing started

    # The same params resume from it; one without an identity record is refused too.
    from lab2.train import resume_point

    assert resume_point(first, shared / "run", False, run_identity(first, splits)) == written
    (written / "lab2_run.json").unlink()
    with pytest.raises(ForeignCheckpointError, match="records no run identity"):
        resume_point(first, shared / "run", False, run_identity(first, splits))


def test_own_checkpoints_of_changed_params_are_discarded(params_tree, tmp_path, capsys):
    from lab2.train import resume_point

    cfg = load_config(params_tree("s/run.yaml", {}))
    tokenizer = load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    own = tmp_path / "out" / "run" / "checkpoints"
    write_run_identity(_checkpoint(own, 2), {**run_identity(cfg, splits), "config_hash": "0" * 16})
    assert resume_point(cfg, own, True, run_identity(cfg, splits)) is None
    assert "params changed" in capsys.readouterr().out and not own.exists()
