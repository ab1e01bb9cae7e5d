"""`make sweep`: papermill runs notebooks/train.ipynb once per params file.

Each experiment lands in `OUT/<experiment>/` (executed notebook + metrics.json).
An experiment already complete with the same config hash is skipped; a failed or
interrupted one is run again, its old notebook kept as `train.failed.ipynb`. One
failure never stops the others; the exit status says whether any failed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab2 import runs
from lab2.config import ConfigError, experiment_files, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_NOTEBOOK = REPO_ROOT / "notebooks" / "train.ipynb"


@dataclass
class Outcome:
    name: str
    status: str  # complete | skipped | failed
    wall_seconds: float = 0.0
    train_seconds: float | None = None
    final_eval_loss: float | None = None
    error: str | None = None

    @property
    def outside_training_seconds(self) -> float | None:
        if self.train_seconds is None or not self.wall_seconds:
            return None
        return self.wall_seconds - self.train_seconds


def _one_line_error(exc: BaseException) -> str:
    # papermill's error carries the notebook's exception name and message.
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _kernel_environment() -> None:
    # The kernel must be this interpreter (the venv), whatever `python` is on PATH.
    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def run_notebook(notebook: Path, output: Path, parameters: dict, show_cells: bool) -> None:
    import papermill

    _kernel_environment()
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        cwd=str(REPO_ROOT),
        kernel_name="python3",
        progress_bar=show_cells,
        log_output=False,
        request_save_on_cell_execute=True,
    )


def run_experiment(params_file: Path, out_root: Path, overrides: dict | None = None, show_cells: bool = False) -> Outcome:
    name = params_file.stem
    start = time.perf_counter()
    try:
        cfg = load_config(params_file, overrides)
        name = cfg.experiment
        exp_dir = out_root / name
        if runs.is_complete(exp_dir, cfg.config_hash):
            return _outcome_from_metrics(name, "skipped", runs.read_metrics(exp_dir))
        notebook_out = exp_dir / "train.ipynb"
        if notebook_out.exists():  # from a failed or interrupted run: keep it for the post-mortem
            notebook_out.replace(exp_dir / "train.failed.ipynb")
        exp_dir.mkdir(parents=True, exist_ok=True)
        run_notebook(
            TRAIN_NOTEBOOK,
            notebook_out,
            {"params_path": str(params_file.resolve()), "output_root": str(out_root.resolve()), "overrides": overrides or {}},
            show_cells,
        )
    except (ConfigError, Exception) as exc:  # noqa: BLE001 - one experiment must not sink the sweep
        return Outcome(name, "failed", time.perf_counter() - start, error=_one_line_error(exc))
    wall = time.perf_counter() - start
    metrics = runs.read_metrics(exp_dir) or {}
    if not runs.is_complete(exp_dir, cfg.config_hash):  # an older run's file must not pass for this one
        return Outcome(name, "failed", wall, error=metrics.get("error", "the notebook ended without a complete metrics.json"))
    train_seconds = metrics["train"]["training_time_seconds"]
    metrics = runs.update_metrics(exp_dir, timing={"wall_seconds": wall, "outside_training_seconds": wall - train_seconds})
    return _outcome_from_metrics(name, "complete", metrics)


def _outcome_from_metrics(name: str, status: str, metrics: dict) -> Outcome:
    train, timing = metrics["train"], metrics.get("timing", {})
    return Outcome(name, status, timing.get("wall_seconds", 0.0), train["training_time_seconds"], train["final_eval_loss"])


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(outcomes: list[Outcome]) -> str:
    header = f"{'experiment':<28} {'status':<9} {'wall s':>8} {'train s':>8} {'other s':>8} {'val loss':>9}"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        lines.append(
            f"{o.name:<28} {o.status:<9} {_fmt(o.wall_seconds):>8} {_fmt(o.train_seconds):>8} "
            f"{_fmt(o.outside_training_seconds):>8} {_fmt(o.final_eval_loss, '.4f'):>9}"
        )
        if o.error:
            lines.append(f"    {o.error}")
    return "\n".join(lines)


def run_sweep(sweep: str | Path, out_root: str | Path = "outputs", overrides: dict | None = None) -> list[Outcome]:
    files = experiment_files([sweep])
    if not files:
        raise ConfigError(f"{sweep}: no experiment params files (*.yaml other than base.yaml)")
    out_root = Path(out_root)
    show_cells = sys.stderr.isatty()
    outcomes: list[Outcome] = []
    sweep_start = time.perf_counter()
    print(f"sweep {sweep}: {len(files)} experiments -> {out_root}/", flush=True)
    for i, params_file in enumerate(files, 1):
        elapsed = time.perf_counter() - sweep_start
        print(f"[{i}/{len(files)}] {params_file.stem} ... (sweep elapsed {elapsed:.0f} s)", flush=True)
        outcome = run_experiment(params_file, out_root, overrides, show_cells)
        outcomes.append(outcome)
        detail = "already complete with these params" if outcome.status == "skipped" else f"{outcome.wall_seconds:.1f} s"
        print(f"[{i}/{len(files)}] {outcome.name}: {outcome.status} ({detail})" + (f": {outcome.error}" if outcome.error else ""), flush=True)
    total = time.perf_counter() - sweep_start
    failed = sum(o.status == "failed" for o in outcomes)
    print("\n" + summary_table(outcomes))
    print(f"\n{len(outcomes)} experiments: {sum(o.status == 'complete' for o in outcomes)} run, "
          f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {failed} failed; total {total:.1f} s")
    return outcomes
