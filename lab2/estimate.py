"""How long a sweep will take, from what this machine has measured, said before the first run and after each.

A run's time is its training steps times the seconds per step that earlier complete runs of the same model and
batch shape measured here, plus what a run costs besides training (kernel, loading, evaluation, saving), from
earlier runs with the same model, held-out split and eval settings; plus, once per sweep, the base model's
evaluation where no run in OUT has made it yet. The earlier runs are every complete run in OUT and in the
folders beside it (outputs/*): a first `make sweep` on a fresh clone has none, says so, and estimates the rest
after its first run. Nothing here runs anything: it reads records (lab2.runs).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from lab2 import runs
from lab2.config import ExperimentConfig, stable_hash


def shape_key(config: dict) -> str:
    """What sets the seconds per step: the model as loaded and the shape of a step's batch."""
    model, train = config["model"], config["train"]
    return stable_hash({"model": {k: model.get(k) for k in ("name", "max_seq_length", "load_in_4bit", "dtype", "backend")},
                        "train": {k: train.get(k) for k in ("batch_size", "gradient_accumulation_steps", "padding_free",
                                                             "gradient_checkpointing")}})


def steps_key(config: dict) -> str:
    """What sets the steps of a run that trains by epochs: its data and its batch."""
    train = config["train"]
    return stable_hash({"data": config["data"], "train": {k: train.get(k) for k in ("epochs", "batch_size", "gradient_accumulation_steps")}})


@dataclass
class Measured:
    """What earlier complete runs measured here, by what it depends on."""
    seconds_per_step: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # by shape_key
    besides_training: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # by base key
    base_evaluation: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # by base key
    steps: dict[str, int] = field(default_factory=dict)  # by steps_key
    bases_in_out: set[str] = field(default_factory=set)  # base keys some run in OUT evaluated (the others reuse it)
    runs: int = 0


def base_key(config: dict) -> str | None:
    """The base model's evaluation key of a recorded config (None for one an older lab2 wrote, which no longer validates)."""
    try:
        return ExperimentConfig(**config).base_eval_hash
    except ValueError:
        return None


def measured_here(out_root: Path) -> Measured:
    """The figures of every complete run in OUT and beside it."""
    found = Measured()
    roots = [out_root, *sorted(p for p in out_root.parent.glob("*/") if p.is_dir() and p.resolve() != out_root.resolve())]
    for root in roots:
        for exp_dir in runs.experiment_dirs(root):
            metrics = runs.read_metrics(exp_dir) or {}
            train, timing, evaluation = metrics.get("train") or {}, metrics.get("timing") or {}, metrics.get("eval") or {}
            if metrics.get("status") != "complete" or not train.get("total_steps"):
                continue
            key = base_key(metrics["config"])
            if key is None:
                continue
            found.runs += 1
            found.seconds_per_step[shape_key(metrics["config"])].append(train["training_time_seconds"] / train["total_steps"])
            found.steps[steps_key(metrics["config"])] = train["total_steps"]
            base = evaluation.get("base") or {}
            if base and root == out_root:
                found.bases_in_out.add(key)
            base_seconds = 0.0 if base.get("reused_from") else base.get("eval_seconds", 0.0)
            if base_seconds:
                found.base_evaluation[key].append(base_seconds)
            notebooks = [timing.get(f"{stage}_notebook_seconds") for stage in ("train", "evaluate")]
            if all(notebooks):
                found.besides_training[key].append(sum(notebooks) - train["training_time_seconds"] - base_seconds)
    return found


def run_parts(config: dict, measured: Measured) -> tuple[int, float, float] | None:
    """(steps, seconds per step, seconds besides training) of one run, from the medians measured; None where this
    machine has no figure for it."""
    steps = config["train"]["max_steps"] or measured.steps.get(steps_key(config))
    per_step = measured.seconds_per_step.get(shape_key(config))
    besides = measured.besides_training.get(base_key(config))
    if not steps or not per_step or not besides:
        return None
    return steps, statistics.median(per_step), statistics.median(besides)


def remaining(configs: list[dict], out_root: Path) -> tuple[float | None, str]:
    """(seconds, in words) for these runs still to do, from what is measured now; None where any has no figure."""
    measured = measured_here(out_root)
    total, bases = 0.0, set()
    for config in configs:
        parts = run_parts(config, measured)
        if parts is None:
            return None, (f"no estimate yet: no complete run of {config['model']['name']} at batch {config['train']['batch_size']} "
                          "with these eval settings has been measured on this machine; the sweep estimates the rest after its first run")
        key = base_key(config)
        if key not in bases and key not in measured.bases_in_out:
            bases.add(key)
            total += statistics.median(measured.base_evaluation.get(key) or [0.0])
        steps, per_step, besides = parts
        total += steps * per_step + besides
    return total, f"about {minutes(total)} for {count(len(configs), 'run')} (from {count(measured.runs, 'run')} measured on this machine)"


def run_line(cfg: ExperimentConfig, out_root: str | Path) -> str:
    """A run's estimated time in one line, before it trains (train.ipynb's and lab2.ipynb's first word on time)."""
    config, out_root = cfg.to_dict(), Path(out_root)
    if runs.is_complete(out_root / cfg.experiment, cfg.config_hash):
        return "Estimated time: none needed, this run is already complete with these params (its adapter is loaded)"
    measured = measured_here(out_root)
    parts = run_parts(config, measured)
    if parts is None:
        return (f"Estimated time: none yet, no complete run of {cfg.model.name} at batch {cfg.train.batch_size} with these eval "
                "settings has been measured on this machine (this one will be)")
    steps, per_step, besides = parts
    return (f"Estimated time: about {minutes(steps * per_step + besides)} on this machine, {steps} steps at {per_step:.2f} s a step "
            f"and {minutes(besides)} for loading and evaluation (medians of {count(measured.runs, 'run')} measured here)")


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 1200 else f"{seconds / 60:.0f} min"


# --------------------------------------------------------------------------- the sweep's own record: estimate against measured

PLAN_FILE = "sweep_plan.json"  # OUT/sweep_plan.json: each estimate the sweep made, and what its runs took


def record_estimate(out_root: Path, before_run: int, runs_total: int, configs: list[dict]) -> str:
    """Estimate the runs still to do, add it to OUT/sweep_plan.json (a new sweep starts it afresh), return it in words."""
    seconds, words = remaining(configs, out_root)
    path = Path(out_root) / PLAN_FILE
    plan = json.loads(path.read_text()) if before_run > 1 and path.is_file() else {"runs": runs_total, "estimates": [], "run_seconds": []}
    plan["estimates"].append({"before_run": before_run, "runs_left": len(configs), "seconds": seconds, "words": words,
                              "runs_measured_before": len(plan["run_seconds"])})
    runs.write_json_atomic(path, plan)
    return words


def record_run_seconds(out_root: Path, seconds: float) -> None:
    """A finished run's wall time, in the order the runs ran."""
    path = Path(out_root) / PLAN_FILE
    if path.is_file():
        plan = json.loads(path.read_text())
        plan["run_seconds"].append(seconds)
        runs.write_json_atomic(path, plan)


def estimate_against_measured(out_root: Path) -> str | None:
    """The report's line: the sweep's first estimate (before its first run where it had one, else after the first
    runs measured it) against what the runs it covered took; None without a record."""
    path = Path(out_root) / PLAN_FILE
    if not path.is_file():
        return None
    plan = json.loads(path.read_text())
    made = [e for e in plan["estimates"] if e["seconds"] is not None]
    if not made:
        return "Time: this sweep had no estimate (no run of this model and batch shape measured on this machine before it ended)."
    first = made[0]
    took = plan["run_seconds"][first["runs_measured_before"]:]
    if len(took) < first["runs_left"] or not first["runs_left"]:
        return None  # the runs it covered have not all finished here (a shard, an interrupted sweep)
    when = "before its first run" if first["before_run"] == 1 else f"after run {first['before_run'] - 1} (nothing measured before it)"
    return (f"Time: estimated {minutes(first['seconds'])} for {count(first['runs_left'], 'run')} {when}; they took {minutes(sum(took))} "
            f"({100 * (sum(took) - first['seconds']) / first['seconds']:+.1f} %).")
