"""End to end: params files -> papermill-executed notebooks -> OUT/<exp>/metrics.json.

One sweep history, on a copy of the `swept` checkout to keep the suite fast: changed, killed midway,
resumed, skipped, fixed, re-evaluated.
"""

import os
import signal
import subprocess
import sys
import time

from pathlib import Path

import nbformat
import psutil
import pytest

from lab2 import cli, runs
from lab2.config import load_config
from tests.conftest import FAKE_TOKEN, copy_of_swept

def _kill_sweep_after_a_stage(sweep: str, out, params: str, stage: str) -> dict:
    """Starts the sweep and kill -9s it and its kernel, as a power cut would, the moment it records that
    the run of `params` (as they are now: its config hash) ended `stage`; returns its metrics as they were then."""
    cfg = load_config(params)
    proc = subprocess.Popen([sys.executable, "-m", "lab2", "sweep", sweep, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, metrics = time.time() + 300, {}
    while time.time() < deadline and proc.poll() is None:
        metrics = runs.read_metrics(out / cfg.experiment) or {}
        if metrics.get("config_hash") == cfg.config_hash and f"{stage}_notebook_seconds" in metrics.get("timing", {}):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    psutil.wait_procs([p for p in map(_process, family) if p], timeout=30)
    return metrics


def _process(pid):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_sweep_end_to_end(swept, tmp_path, capsys, monkeypatch):
    """A copy of the swept checkout (baseline and lr_high complete), then a sweep history: changed, killed,
    resumed, skipped, fixed, re-evaluated."""
    checkout = copy_of_swept(swept, tmp_path / "checkout")
    monkeypatch.chdir(checkout)  # a user's relative paths: params/tiny_random, outputs/
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # must never reach outputs/
    swept_lr_high = runs.read_metrics(swept / "outputs" / "lr_high")
    (checkout / "junk.jsonl").write_text('{"conversations": [{"from": "alien", "value": "x"}]}\n')
    write = lambda name, text: (checkout / "params" / "tiny_random" / name).write_text(text)  # noqa: E731
    write("lr_high.yaml", "train:\n  learning_rate: 4.0e-3\n")  # changed: lr_high runs again
    write("typo.yaml", "train:\n  max_step: 3\n")
    write("z_junk.yaml", "data:\n  source: junk.jsonl\n  subset: null\n  val_size: 1\n  test_size: 1\n")
    sweep, out = "params/tiny_random", Path("outputs")

    # 1. Killed (-9) once lr_high's training is recorded: a re-run skips baseline, and for lr_high runs
    # only the stage that is missing (evaluation), keeping its training.
    at_kill = _kill_sweep_after_a_stage(sweep, out, "params/tiny_random/lr_high.yaml", "train")
    assert at_kill["status"] == "complete" and "eval" not in at_kill
    assert cli.main(["sweep", sweep, "--out", str(out)]) == 1  # typo and z_junk fail, the others complete
    printed = capsys.readouterr().out
    # What the sweep measures and can see, said before the first run: the clean yardstick ranks; no design declared.
    declared = printed.split("[1/4]")[0]
    assert "Held-out measures: clean validation loss per token, which ranks" in declared
    assert "Minimum detectable difference: none declared" in declared
    assert "[1/4] baseline: skipped" in printed and "[2/4] lr_high: complete" in printed
    assert "[3/4] typo: failed" in printed and "unknown key 'train.max_step' (did you mean 'train.max_steps'?)" in printed
    assert "[4/4] z_junk: failed" in printed and "no valid conversation (unknown role: 1)" in printed
    assert "1 run, 1 skipped, 2 failed; total" in printed
    assert "Traceback" not in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["baseline", "html", "lr_high", "report_figures", "z_junk"]
    assert sorted(p.name for p in (out / "z_junk").iterdir()) == ["train.failed.ipynb"]  # no half metrics.json
    resumed = runs.read_metrics(out / "lr_high")
    assert resumed["finished_at"] == at_kill["finished_at"] and resumed["train"] == at_kill["train"]  # not retrained
    assert resumed["timing"]["train_notebook_seconds"] == at_kill["timing"]["train_notebook_seconds"]
    assert resumed["config"]["train"]["learning_rate"] == 4e-3
    assert len({resumed["config_hash"], swept_lr_high["config_hash"], runs.read_metrics(out / "baseline")["config_hash"]}) == 3

    for name in ("baseline", "lr_high"):
        metrics = runs.read_metrics(out / name)
        assert metrics["status"] == "complete" and metrics["experiment"] == name
        assert metrics["train"]["history"] and metrics["train"]["eval_history"]
        timing = metrics["timing"]
        assert timing["train_notebook_seconds"] > metrics["train"]["training_time_seconds"] > 0
        assert timing["outside_training_seconds"] > 0 and timing["evaluate_notebook_seconds"] > 0
        eval_compute = metrics["eval"]["eval_seconds"] + metrics["eval"]["base"]["eval_seconds"]
        assert timing["fixed_seconds"] == pytest.approx(
            timing["train_notebook_seconds"] + timing["evaluate_notebook_seconds"]
            - metrics["train"]["training_time_seconds"] - eval_compute)
        assert 0 < timing["fixed_seconds"] < timing["outside_training_seconds"] + timing["evaluate_notebook_seconds"]
        evaluation = metrics["eval"]
        for section in (evaluation, evaluation["base"]):
            assert {"val_loss", "test_loss", "perplexity", "bleu", "rouge_l", "samples"} <= set(section)
        assert evaluation["split_fingerprint"] == metrics["data"]["fingerprint"]
        clean = evaluation["per_conversation"]["validation"]["clean"]  # the clean yardstick, chosen by quality score
        assert evaluation["val_clean_conversations"] == sum(clean) > 0 and len(clean) == metrics["data"]["validation"]["examples"]
        assert all(c == (s >= 3.0) for c, s in zip(clean, evaluation["per_conversation"]["validation"]["score"]))
        assert evaluation["test_loss"] < evaluation["base"]["test_loss"]  # training helped on held-out data
        notebook = nbformat.read(out / name / "train.ipynb", as_version=4)
        injected = next(c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"{name}.yaml" in injected.source
        images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(images) == 1  # the loss-curve plot rendered inline
        assert (out / name / "evaluate.ipynb").is_file()

    # 2. Nothing changed: everything complete is skipped without starting a notebook (so no kernel);
    # only the failed z_junk is tried again. (Timings belong in make bench, not in a test.)
    from lab2 import sweep as sweep_module

    executed = []
    real_run_notebook = sweep_module.run_notebook
    monkeypatch.setattr(sweep_module, "run_notebook",
                        lambda notebook, output, *a, **k: executed.append(output.parent.name) or real_run_notebook(notebook, output, *a, **k))
    cli.main(["sweep", sweep, "--out", str(out)])
    assert executed == ["z_junk"]
    assert "0 run, 2 skipped, 2 failed" in capsys.readouterr().out
    monkeypatch.setattr(sweep_module, "run_notebook", real_run_notebook)

    # 3. A failed experiment, fixed, is retried and its failed notebook kept.
    write("z_junk.yaml", "experiment: z_junk\n")
    assert cli.main(["sweep", sweep, "--out", str(out)]) == 1  # typo still fails
    assert "1 run, 2 skipped, 1 failed" in capsys.readouterr().out
    assert runs.read_metrics(out / "z_junk")["status"] == "complete"
    assert (out / "z_junk" / "train.failed.ipynb").is_file()

    # 4. Changing only the eval section re-evaluates without retraining.
    shared_kernel_eval = runs.read_metrics(out / "baseline")["eval"]  # evaluated in the kernel that trained
    trained_at = runs.read_metrics(out / "baseline")["finished_at"]
    write("baseline.yaml", "experiment: baseline\neval:\n  prompts: [Name a colour.]\n")
    cli.main(["sweep", sweep, "--out", str(out)])
    assert "1 run, 2 skipped, 1 failed" in capsys.readouterr().out
    again = runs.read_metrics(out / "baseline")
    assert again["finished_at"] == trained_at and again["eval"]["samples"][0]["prompt"] == "Name a colour."
    timing = again["timing"]  # the training's time from its own sweep, the new evaluation's from this one
    assert timing["train_notebook_seconds"] == runs.read_metrics(swept / "outputs" / "baseline")["timing"]["train_notebook_seconds"]
    assert timing["fixed_seconds"] == pytest.approx(timing["train_notebook_seconds"] + timing["evaluate_notebook_seconds"]
                                                    - again["train"]["training_time_seconds"] - again["eval"]["eval_seconds"]
                                                    - again["eval"]["base"]["eval_seconds"])
    # Evaluated alone in a fresh kernel, the losses equal those from the kernel shared with training.
    for key in ("val_loss", "test_loss"):
        assert again["eval"][key] == shared_kernel_eval[key]
        assert again["eval"]["base"][key] == shared_kernel_eval["base"][key]

    # The token was in every kernel's environment, and is nowhere in the outputs.
    for path in out.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
