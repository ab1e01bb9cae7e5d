"""End to end: params files -> papermill-executed train.ipynb -> OUT/<exp>/metrics.json."""

import json
import time

import nbformat

from lab2 import cli, runs


def test_sweep_runs_each_experiment_through_papermill_and_skips_on_rerun(params_tree, tmp_path, capsys):
    params_tree("sweep/baseline.yaml", {})
    changed = params_tree("sweep/lr_high.yaml", {"train": {"learning_rate": 5e-3}})
    params_tree("sweep/typo.yaml", {"train": {"max_step": 3}})
    out = tmp_path / "outputs"
    sweep = str(changed.parent)

    assert cli.main(["sweep", sweep, "--out", str(out)]) == 1  # typo.yaml failed, the others ran
    printed = capsys.readouterr().out
    assert "[1/3] baseline" in printed and "[3/3] typo: failed" in printed
    assert "unknown key 'train.max_step' (did you mean 'train.max_steps'?)" in printed
    assert "2 run, 0 skipped, 1 failed; total" in printed
    assert sorted(p.name for p in out.iterdir()) == ["baseline", "lr_high"]  # nothing written for the bad file

    for name in ("baseline", "lr_high"):
        metrics = runs.read_metrics(out / name)
        assert metrics["status"] == "complete" and metrics["experiment"] == name
        assert metrics["train"]["history"] and metrics["train"]["eval_history"]
        timing = metrics["timing"]
        assert timing["train_notebook_seconds"] > metrics["train"]["training_time_seconds"] > 0
        assert timing["outside_training_seconds"] > 0 and timing["evaluate_notebook_seconds"] > 0
        evaluation = metrics["eval"]
        for section in (evaluation, evaluation["base"]):
            assert {"val_loss", "test_loss", "perplexity", "bleu", "rouge_l", "samples"} <= set(section)
        assert evaluation["split_fingerprint"] == metrics["data"]["fingerprint"]
        assert evaluation["test_loss"] < evaluation["base"]["test_loss"]  # training helped on held-out data
        assert (out / name / "evaluate.ipynb").is_file()
        notebook = nbformat.read(out / name / "train.ipynb", as_version=4)
        injected = next(c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"{name}.yaml" in injected.source
        images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) == 1  # the loss-curve plot rendered inline
    first = runs.read_metrics(out / "lr_high")
    assert first["config"]["train"]["learning_rate"] == 5e-3
    assert runs.read_metrics(out / "baseline")["config_hash"] != first["config_hash"]

    start = time.perf_counter()
    cli.main(["sweep", sweep, "--out", str(out)])
    assert time.perf_counter() - start < 10
    assert "0 run, 2 skipped, 1 failed" in capsys.readouterr().out

    # A changed params file is run again; the other stays skipped.
    params_tree("sweep/lr_high.yaml", {"train": {"learning_rate": 4e-3}})
    params_tree("sweep/typo.yaml", {"train": {"max_steps": 2, "eval_steps": 2, "save_steps": 2}})
    assert cli.main(["sweep", sweep, "--out", str(out)]) == 0
    assert "2 run, 1 skipped, 0 failed" in capsys.readouterr().out
    rerun = runs.read_metrics(out / "lr_high")
    assert rerun["config"]["train"]["learning_rate"] == 4e-3 and rerun["config_hash"] != first["config_hash"]
    assert json.loads((out / "typo" / "metrics.json").read_text())["train"]["total_steps"] == 2

    # Changing only the eval section re-evaluates without retraining.
    trained_at = runs.read_metrics(out / "baseline")["finished_at"]
    params_tree("sweep/baseline.yaml", {"eval": {"prompts": ["Name a colour."]}})
    assert cli.main(["sweep", sweep, "--out", str(out)]) == 0
    assert "1 run, 2 skipped" in capsys.readouterr().out
    again = runs.read_metrics(out / "baseline")
    assert again["finished_at"] == trained_at and again["eval"]["samples"][0]["prompt"] == "Name a colour."
