"""train.tracker: tensorboard writes a run's curves as it trains, into its own folder; the event files hold the
records' training and validation losses at the records' steps, a resumed run continues the same curves, and
with the tracker off nothing is written."""

import shutil

import pytest

from lab2 import runs
from lab2.config import load_config
from lab2.data import build_splits
from lab2.modeling import load_tokenizer, load_trainable_model
from lab2.train import TRACKER_DIR, train_experiment


def curves(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of a run's event files, as TensorBoard reads them (a purged stretch hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_curves_hold_the_record(found: dict, train: dict) -> None:
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in found["train/loss"]] == [(h["step"], h["loss"]) for h in train["history"]]
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in found["eval/loss"]] == [(e["step"], e["eval_loss"]) for e in train["eval_history"]]
    steps = [h["step"] for h in train["history"]]
    for tag in ("train/learning_rate", "train/grad_norm", "train/tokens_per_second"):
        assert [s for s, _ in found[tag]] == steps, tag
    assert all(v > 0 for _, v in found["train/tokens_per_second"])


def test_a_sweep_with_the_tracker_writes_the_records_curves_and_says_how_long(params_tree, tmp_path, capsys):
    import json

    from lab2.estimate import PLAN_FILE, estimate_against_measured
    from lab2.sweep import run_sweep

    params_tree("s/watched.yaml", {"train": {"tracker": "tensorboard"}})
    params_tree("s/unwatched.yaml", {"train": {"tracker": "none", "learning_rate": 1e-3}})
    out = tmp_path / "out"
    outcomes = run_sweep(tmp_path / "params" / "s", out)
    assert [o.status for o in outcomes] == ["complete", "complete"]

    # How long: nothing measured before the first run; after it, an estimate for the second from what it measured
    printed = capsys.readouterr().out
    assert "Plan: 2 runs, 2 to run, 0 already complete (skipped); no estimate yet: no complete run of" in printed
    assert "[1/2] remaining: about " in printed and "for 1 run (from 1 run measured on this machine)" in printed
    plan = json.loads((out / PLAN_FILE).read_text())
    assert [e["seconds"] is None for e in plan["estimates"]] == [True, False]
    assert plan["run_seconds"] == [o.wall_seconds for o in outcomes]
    line = estimate_against_measured(out)
    assert line.startswith("Time: estimated ") and "for 1 run after run 1 (nothing measured before it); they took" in line
    # a second sweep over the same runs: nothing to run, and an estimate from what is measured now
    run_sweep(tmp_path / "params" / "s", out)
    assert "Plan: 2 runs, 0 to run, 2 already complete (skipped); nothing to run" in capsys.readouterr().out
    watched = runs.read_metrics(out / "watched")
    assert_curves_hold_the_record(curves(out / "watched" / TRACKER_DIR), watched["train"])
    assert not list((out / "unwatched").rglob("events.out.tfevents*"))  # off: nothing written, anywhere
    # watching is not part of a run's identity: the same params without the tracker are the same run
    assert watched["config_hash"] == load_config(tmp_path / "params" / "s" / "watched.yaml", {"train": {"tracker": "none"}}).config_hash


def test_a_resumed_run_continues_its_curves(params_tree, tmp_path):
    cfg = load_config(params_tree("s/run.yaml", {"train": {"tracker": "tensorboard"}}))
    tokenizer = load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    exp_dir = tmp_path / "out" / cfg.experiment
    first = train_experiment(cfg, load_trainable_model(cfg), tokenizer, splits, exp_dir)["train"]

    # As if killed after the checkpoint at step 2 had been saved, with steps 3 and 4 already logged.
    shutil.rmtree(exp_dir / "checkpoints" / "checkpoint-4")
    record = runs.read_record(exp_dir, "train")
    record.update(status="running")
    record.pop("train")
    runs.write_record(exp_dir, "train", record)
    resumed = train_experiment(cfg, load_trainable_model(cfg), tokenizer, splits, exp_dir)
    assert resumed["resumed_from"].endswith("checkpoint-2")

    found = curves(exp_dir / TRACKER_DIR)
    assert_curves_hold_the_record(found, resumed["train"])  # steps 1-4 once each: the interrupted 3-4 hidden
    assert [v for _, v in found["train/loss"]] == pytest.approx([h["loss"] for h in first["history"]], rel=1e-6)
    assert len(list((exp_dir / TRACKER_DIR).glob("events.out.tfevents*"))) == 2  # appended, not replaced
