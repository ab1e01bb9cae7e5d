"""Fixed cost per experiment: wall time minus training minus evaluation, through the real sweep.

Runs one short demo experiment (train.ipynb then evaluate.ipynb, through papermill) into a
temporary folder and splits its wall time. What remains is kernel starts, imports, data and
model loading and saving. Writes bench/results/fixed_cost.json.

    .venv/bin/python bench/fixed_cost.py [--params params/demo/steps_15.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from lab2 import runs
from lab2.sweep import run_experiment

REPORTS_ANCHOR = {"wall_seconds": 462.4, "training_seconds": 156, "outside_seconds": 306}  # a 60-step run in shared/seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/demo/steps_15.yaml")
    parser.add_argument("--out", default="bench/results/fixed_cost.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_experiment(Path(args.params), Path(tmp))
        if outcome.status != "complete":
            raise SystemExit(f"the experiment did not complete: {outcome.error}")
        m = runs.read_metrics(Path(tmp) / outcome.name)
    timing, train, evaluation = m["timing"], m["train"], m["eval"]
    wall = timing["train_notebook_seconds"] + timing["evaluate_notebook_seconds"]
    eval_compute = evaluation["eval_seconds"] + evaluation.get("base", {}).get("eval_seconds", 0.0)
    fixed = wall - train["training_time_seconds"] - eval_compute
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "experiment": outcome.name,
        "wall_seconds": wall,
        "training_seconds": train["training_time_seconds"],
        "evaluation_seconds": eval_compute,
        "fixed_seconds": fixed,
        "fixed_seconds_train_notebook": timing["outside_training_seconds"],
        "target_seconds": 10,
        "reports_anchor": REPORTS_ANCHOR,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
