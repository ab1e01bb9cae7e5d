"""`make sweep`: papermill runs each stage notebook once per params file.

Stages: notebooks/train.ipynb, then notebooks/evaluate.ipynb, each executed into
`OUT/<experiment>/<stage>.ipynb`; each writes its own record (lab2/runs.py: `records/train.json`,
`records/eval.json`), and the sweep its notebook times (`records/timing.json`). A stage is done
when its record exists for this config (training by config hash, evaluation by eval hash), and is
then skipped; a failed stage's notebook is kept as
`<stage>.failed.ipynb` and the stage runs again next time. One failure never
stops the others; the exit status says whether any failed.

The stages of one experiment share one kernel (lab2/notebook_runner.py): starting a kernel and
importing torch, transformers and peft cost about 8 s on 2 cores, paid once per experiment rather
than once per notebook. The executor that runs the plan is passed in: `run_locally` here, one run
after another, or lab2/ray_executor.py's, chosen by the command line.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab2 import estimate, runs
from lab2.config import ConfigError, deep_merge, experiment_files, load_config, merged_layers, sweep_output_folder
from lab2.notebook_runner import REPO_ROOT, experiment_kernel, portable_path, reset_kernel_namespace, run_notebook

STAGES = (("train", REPO_ROOT / "notebooks" / "train.ipynb"), ("evaluate", REPO_ROOT / "notebooks" / "evaluate.ipynb"))


@dataclass
class Outcome:
    name: str
    status: str  # complete | skipped | failed
    wall_seconds: float = 0.0  # notebooks run now (for a skipped experiment: when it ran)
    train_seconds: float | None = None
    eval_seconds: float | None = None  # evaluation compute, fine-tuned and base
    fixed_seconds: float | None = None  # wall - training - evaluation: kernel, imports, loading, saving
    val_loss: float | None = None
    test_loss: float | None = None
    error: str | None = None


def _one_line_error(exc: BaseException) -> str:
    # papermill's error carries the notebook's exception name and message.
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def stage_done(stage: str, exp_dir: Path, cfg) -> bool:
    """Training is reused by config hash; evaluation by eval hash (which includes it)."""
    if not runs.is_complete(exp_dir, cfg.config_hash):
        return False
    return stage == "train" or (runs.read_metrics(exp_dir).get("eval") or {}).get("eval_hash") == cfg.eval_hash


def stage_missing_reason(stage: str, exp_dir: Path, cfg) -> str:
    metrics = runs.read_metrics(exp_dir) or {}
    if metrics.get("error"):
        return metrics["error"]
    recorded = metrics.get("config_hash") if stage == "train" else (metrics.get("eval") or {}).get("eval_hash")
    if recorded:
        return f"{stage}.ipynb recorded another config than the sweep passed it ({recorded})"
    return f"{stage}.ipynb ended without its results"


def run_experiment(
    params_file: Path, out_root: Path, overrides: dict | None = None, show_cells: bool = False,
    shared_kernel: bool = True,
) -> Outcome:
    """Run whichever stages of one experiment are not done yet; never raises.

    `shared_kernel=False` gives each stage notebook its own kernel (slower; bench/fixed_cost.py
    compares the two)."""
    name = params_file.stem
    start = time.perf_counter()
    ran: dict[str, float] = {}
    try:
        cfg = load_config(params_file, overrides)
        name = cfg.experiment
        exp_dir = out_root / name
        # The validated config travels whole: the notebooks do not read the params file again.
        parameters = {"params_path": portable_path(params_file), "output_root": portable_path(out_root), "overrides": overrides or {},
                      "resolved": cfg.to_dict()}
        with experiment_kernel(shared_kernel) as km:
            for stage, notebook in STAGES:
                if stage_done(stage, exp_dir, cfg):
                    continue
                executed = exp_dir / f"{stage}.ipynb"
                exp_dir.mkdir(parents=True, exist_ok=True)
                stage_start = time.perf_counter()
                try:
                    reset_kernel_namespace(km)
                    run_notebook(notebook, executed, parameters, show_cells, km)
                    if not stage_done(stage, exp_dir, cfg):  # an older run's file must not pass for this one
                        raise RuntimeError(stage_missing_reason(stage, exp_dir, cfg))
                except Exception:
                    if executed.exists():  # keep the failed notebook for its post-mortem; a re-run starts afresh
                        executed.replace(exp_dir / f"{stage}.failed.ipynb")
                    raise
                ran[stage] = time.perf_counter() - stage_start
                # Recorded as each stage ends: a sweep killed in the next stage keeps this one's time.
                timing = (runs.read_metrics(exp_dir) or {}).get("timing") or {}
                runs.write_record(exp_dir, "timing", {**timing, f"{stage}_notebook_seconds": ran[stage], "config_hash": cfg.config_hash})
    except Exception as exc:  # noqa: BLE001 - one experiment must not sink the sweep
        return Outcome(name, "failed", time.perf_counter() - start, error=_one_line_error(exc))
    metrics = runs.read_metrics(exp_dir)
    timing = dict(metrics.get("timing", {}))
    if not ran:  # skipped: report the notebooks' times from when it ran
        return _outcome_from_metrics(name, "skipped", metrics, sum(timing.get(f"{stage}_notebook_seconds", 0.0) for stage, _ in STAGES))
    # Each stage's latest time, whichever sweep ran it (an eval-only change re-runs evaluation alone). A
    # stage run outside a sweep (`python -m lab2 train`) has no notebook time, and no share in fixed_seconds.
    compute = {"train": metrics["train"]["training_time_seconds"], "evaluate": eval_compute_seconds(metrics)}
    timed = [stage for stage, _ in STAGES if f"{stage}_notebook_seconds" in timing]
    if "train" in timed:
        timing["outside_training_seconds"] = timing["train_notebook_seconds"] - compute["train"]
    timing["fixed_seconds"] = sum(timing[f"{stage}_notebook_seconds"] - compute[stage] for stage in timed)
    runs.write_record(exp_dir, "timing", {**timing, "config_hash": cfg.config_hash})
    metrics = runs.read_metrics(exp_dir)
    return _outcome_from_metrics(name, "complete", metrics, sum(ran.values()))


def eval_compute_seconds(metrics: dict) -> float | None:
    """Evaluation compute of a metrics.json, fine-tuned plus base model; None before evaluation."""
    evaluation = metrics.get("eval") or {}
    if "eval_seconds" not in evaluation:
        return None
    return evaluation["eval_seconds"] + evaluation.get("base", {}).get("eval_seconds", 0.0)


def _outcome_from_metrics(name: str, status: str, metrics: dict, wall: float) -> Outcome:
    train, evaluation = metrics["train"], metrics.get("eval", {})
    return Outcome(
        name, status, wall,
        train_seconds=train["training_time_seconds"],
        eval_seconds=eval_compute_seconds(metrics),
        fixed_seconds=metrics.get("timing", {}).get("fixed_seconds"),
        val_loss=runs.val_loss(metrics),
        test_loss=evaluation.get("test_loss"),
    )


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(outcomes: list[Outcome]) -> str:
    header = (
        f"{'experiment':<28} {'status':<9} {'wall s':>8} {'train s':>8} {'eval s':>8} {'fixed s':>8} {'val loss':>9} {'test loss':>9}"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        lines.append(
            f"{o.name:<28} {o.status:<9} {_fmt(o.wall_seconds):>8} {_fmt(o.train_seconds):>8} "
            f"{_fmt(o.eval_seconds):>8} {_fmt(o.fixed_seconds):>8} {_fmt(o.val_loss, '.4f'):>9} {_fmt(o.test_loss, '.4f'):>9}"
        )
        if o.error:
            lines.append(f"    {o.error}")
    return "\n".join(lines)


def plan_runs(files: list[Path], overrides: dict | None = None) -> list[tuple[Path, dict]]:
    """(params file, overrides) per run: a file with `seeds:` becomes one run per seed.

    A file that does not validate stays one run, which then fails with its message."""
    plan = []
    for params_file in files:
        try:
            seed_runs = load_config(params_file, overrides).seed_runs()
        except ConfigError:
            seed_runs = [{}]
        plan += [(params_file, deep_merge(overrides or {}, run)) for run in seed_runs]
    return plan


def run_name(params_file: Path, run_overrides: dict) -> str:
    """A planned run's name: the seed run's experiment name, else its params file's."""
    return run_overrides.get("experiment", params_file.stem)


def shard_of(name: str, n: int) -> int:
    """The shard (1..N) a run belongs to: a function of its name alone, so adding or removing a params
    file (`make report` writes exp_best_combination.yaml) moves no other run to another session."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % n + 1


def select_shard(plan: list, shard: str | None) -> list:
    """Shard "K/N": the runs whose name hashes to K of N, so N sessions (say, Colab notebooks writing
    to one Drive folder) split a sweep between them without overlap, whatever files come and go."""
    if not shard:
        return plan
    try:
        k, n = (int(x) for x in shard.split("/"))
        assert 1 <= k <= n
    except (ValueError, AssertionError):
        raise ConfigError(f"SHARD={shard}: expected K/N with 1 <= K <= N, e.g. 2/3") from None
    return [run for run in plan if shard_of(run_name(*run), n) == k]


def build_missing_models(files: list[Path], overrides: dict | None = None) -> None:
    """The offline models the sweep names (tiny Llama, SmolLM2), built once, before any run needs them."""
    from lab2 import local_models

    names = {str((merged_layers(f, overrides)[0].get("model") or {}).get("name", "")) for f in files}
    for name in sorted(names):
        local_models.build_if_missing(name)


def run_locally(plan: list[tuple[Path, dict]], out_root: Path) -> list[Outcome]:
    """The default executor: one run after another, in this process's kernels; after each, the time the rest
    will take, from what the runs so far measured (lab2.estimate)."""
    outcomes = []
    show_cells = sys.stderr.isatty()
    start = time.perf_counter()
    for i, (params_file, run_overrides) in enumerate(plan, 1):
        label = run_name(params_file, run_overrides)
        print(f"[{i}/{len(plan)}] {label} ... (sweep elapsed {time.perf_counter() - start:.0f} s)", flush=True)
        outcome = run_experiment(params_file, out_root, run_overrides, show_cells)
        outcomes.append(outcome)
        print(f"[{i}/{len(plan)}] {describe(outcome)}", flush=True)
        if outcome.status != "skipped":
            estimate.record_run_seconds(out_root, outcome.wall_seconds)
        left = still_to_run(plan[i:], out_root)
        if left:
            print(f"[{i}/{len(plan)}] remaining: {estimate.record_estimate(out_root, i + 1, len(plan), left)}", flush=True)
    return outcomes


def still_to_run(plan: list[tuple[Path, dict]], out_root: Path) -> list[dict]:
    """The resolved configs of the planned runs that are not complete in OUT (a skipped one costs nothing)."""
    configs = []
    for params_file, run_overrides in plan:
        try:
            cfg = load_config(params_file, run_overrides)
        except ConfigError:
            continue  # it fails at once, with its own message
        if not all(stage_done(stage, out_root / cfg.experiment, cfg) for stage, _ in STAGES):
            configs.append(cfg.to_dict())
    return configs


Executor = Callable[[list[tuple[Path, dict]], Path], list[Outcome]]


def run_sweep(sweep: str | Path, out_root: str | Path | None = None, overrides: dict | None = None,
              execute: Executor = run_locally, shard: str | None = None) -> list[Outcome]:
    """Plan the runs of a params folder, hand them to `execute`, print the summary table."""
    files = experiment_files([sweep])
    if not files:
        raise ConfigError(f"{sweep}: no experiment params files (*.yaml other than base.yaml)")
    out_root = Path(out_root) if out_root is not None else sweep_output_folder(sweep)
    build_missing_models(files, overrides)
    plan = select_shard(plan_runs(files, overrides), shard)
    sweep_start = time.perf_counter()
    name = getattr(execute, "__name__", None) or getattr(getattr(execute, "func", None), "__name__", "executor")
    print(f"sweep {sweep}: {len(plan)} runs of {len(files)} params files -> {out_root}/ ({name})", flush=True)
    print(design_declaration(plan), flush=True)
    left = still_to_run(plan, out_root)
    print(f"Plan: {len(plan)} runs, {len(left)} to run, {len(plan) - len(left)} already complete (skipped); "
          + (estimate.record_estimate(out_root, 1, len(plan), left) if left else "nothing to run"), flush=True)
    outcomes = execute(plan, out_root)
    total = time.perf_counter() - sweep_start
    failed = sum(o.status == "failed" for o in outcomes)
    print("\n" + summary_table(outcomes))
    print(f"\n{len(outcomes)} experiments: {sum(o.status == 'complete' for o in outcomes)} run, "
          f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {failed} failed; total {total:.1f} s")
    return outcomes


def design_declaration(plan: list[tuple[Path, dict]]) -> str:
    """What the sweep measures and the smallest difference it can see, from its first run's params: said
    before any run, so that no result chooses them."""
    from lab2.comparison import declaration

    for params_file, run_overrides in plan:
        try:
            config = load_config(params_file, run_overrides).to_dict()
        except ConfigError:
            continue  # that run fails with its own message
        return "\n".join(declaration(config))
    return "No params file validates: nothing to declare."


def describe(outcome: Outcome) -> str:
    detail = "already complete with these params" if outcome.status == "skipped" else f"{outcome.wall_seconds:.1f} s"
    return f"{outcome.name}: {outcome.status} ({detail})" + (f": {outcome.error}" if outcome.error else "")
