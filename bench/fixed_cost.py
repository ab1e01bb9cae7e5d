"""Fixed cost per experiment: wall time minus training minus evaluation, through the real sweep.

Runs one short demo experiment (train.ipynb then evaluate.ipynb, through papermill) into a
temporary folder and splits its wall time; what remains is kernel starts, imports, data and
model loading and saving. Side by side, interleaved: lab2's sweep (both stages in one kernel)
against the usual papermill recipe (a fresh kernel per notebook). The budget is 10 s; the
hand-written reports spent about 306 s outside training on a 60-step run. Writes
bench/results/fixed_cost.json.

    .venv/bin/python bench/fixed_cost.py [--params params/tiny_random/steps_15.yaml] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from lab2 import runs
from lab2.sweep import eval_compute_seconds, run_experiment

REPORTS_ANCHOR = {"wall_seconds": 462.4, "training_seconds": 156, "outside_seconds": 306}  # a 60-step run in shared/seeds


def measure(params: Path, shared_kernel: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()  # the whole experiment as the sweep sees it, kernel shutdowns included
        outcome = run_experiment(params, Path(tmp), shared_kernel=shared_kernel)
        wall = time.perf_counter() - start
        if outcome.status != "complete":
            raise SystemExit(f"the experiment did not complete: {outcome.error}")
        m = runs.read_metrics(Path(tmp) / outcome.name)
    timing, train, evaluation = m["timing"], m["train"], m["eval"]
    eval_compute = eval_compute_seconds(m)
    return {
        "experiment": outcome.name,
        "wall_seconds": wall,
        "training_seconds": train["training_time_seconds"],
        "evaluation_seconds": eval_compute,
        "fixed_seconds": wall - train["training_time_seconds"] - eval_compute,
        "train_notebook_seconds": timing["train_notebook_seconds"],
        "evaluate_notebook_seconds": timing["evaluate_notebook_seconds"],
        "val_loss": evaluation["val_loss"],
        "test_loss": evaluation["test_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/tiny_random/steps_15.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/fixed_cost.json")
    args = parser.parse_args()
    shared, fresh = [], []
    for i in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        shared.append(measure(Path(args.params), shared_kernel=True))
        fresh.append(measure(Path(args.params), shared_kernel=False))
        print(f"repeat {i + 1}/{args.repeats}: fixed {shared[-1]['fixed_seconds']:.1f} s with one kernel, "
              f"{fresh[-1]['fixed_seconds']:.1f} s with a kernel per notebook", flush=True)
    lab2_fixed = statistics.median(r["fixed_seconds"] for r in shared)
    fresh_fixed = statistics.median(r["fixed_seconds"] for r in fresh)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "experiment": shared[0]["experiment"],
        "fixed_seconds": lab2_fixed,
        "fixed_seconds_kernel_per_notebook": fresh_fixed,
        "kernel_per_notebook_vs_lab2": fresh_fixed / lab2_fixed,
        # Sharing the kernel must not change a result: the same losses either way.
        "same_losses": all(s["val_loss"] == f["val_loss"] and s["test_loss"] == f["test_loss"] for s, f in zip(shared, fresh)),
        "target_seconds": 10,
        "lab2_runs": shared,
        "kernel_per_notebook_runs": fresh,
        "reports_anchor": REPORTS_ANCHOR,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_runs")}, indent=2))


if __name__ == "__main__":
    main()
