"""The on-disk records of an experiment, and the one reader every tool uses.

Each stage writes its own record, whole and atomically, into `OUT/<experiment>/records/`:
`train.json` (the run: config, config_hash, status, data, env, precision, train), `eval.json`,
`export.json` and `timing.json` (the sweep's notebook times). Every record carries the config hash
it belongs to, and no stage reads, changes or rewrites another's. `read_metrics` joins them into
the names tools read (docs/outputs.md): the train record's top level, with `eval`, `export` and `timing`
only from records of the same config hash, so a retrained run never shows an older run's
evaluation. After each write the joined view is also written to `OUT/<experiment>/metrics.json`,
for people and outside tools; lab2 reads it only in an experiment folder from before records
(metrics.json alone), which the first stage that writes there splits into records.

Every write is atomic (temporary file in the same folder, then rename), so a reader - the sweep,
the report, a person - never sees half a file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "papermill")


class RunFailed(RuntimeError):
    """A run that started and could not finish; its metrics.json says status failed."""


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


RECORDS = "records"
STAGE_RECORDS = ("train", "eval", "export", "timing")  # train's is the run itself: the others join it by config hash


def record_path(exp_dir: str | Path, stage: str) -> Path:
    if stage not in STAGE_RECORDS:
        raise ValueError(f"stage {stage!r}: expected one of {', '.join(STAGE_RECORDS)}")
    return Path(exp_dir) / RECORDS / f"{stage}.json"


def read_record(exp_dir: str | Path, stage: str) -> dict | None:
    path = record_path(exp_dir, stage)
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(exp_dir: str | Path, stage: str, record: dict) -> None:
    """One stage's own record, whole; then metrics.json, the joined view, refreshed from all records."""
    if "config_hash" not in record:
        raise ValueError(f"the {stage} record names no config_hash: it could not be matched to its run")
    if is_legacy(exp_dir):
        split_legacy_metrics(Path(exp_dir))  # its other sections keep their place beside the new record
    write_json_atomic(record_path(exp_dir, stage), record)
    write_json_atomic(Path(exp_dir) / METRICS_FILE, read_metrics(exp_dir))


def is_legacy(exp_dir: str | Path) -> bool:
    """An experiment folder from before per-stage records: a metrics.json and no records/."""
    return (Path(exp_dir) / METRICS_FILE).is_file() and not (Path(exp_dir) / RECORDS).is_dir()


def split_legacy_metrics(exp_dir: Path) -> None:
    """An experiment folder from before per-stage records (metrics.json alone), split into records (eval,
    export and timing keyed by the run's config hash) when a stage first writes to it; it reads the same."""
    metrics = json.loads((exp_dir / METRICS_FILE).read_text())
    config_hash = metrics.get("config_hash")
    for stage in ("eval", "export", "timing"):
        if metrics.get(stage) is not None:
            write_json_atomic(record_path(exp_dir, stage), {**metrics.pop(stage), "config_hash": config_hash})
    write_json_atomic(record_path(exp_dir, "train"), metrics)
    print(f"{exp_dir}: metrics.json from before per-stage records, split into {exp_dir / RECORDS}/ (same content)")


def read_metrics(exp_dir: str | Path) -> dict | None:
    """The experiment as tools read it: the train record's top level, with the `eval`, `export` and
    `timing` records of the same config hash. None where nothing has been recorded. A folder from before
    records reads as its metrics.json says; reading never writes."""
    exp_dir = Path(exp_dir)
    if is_legacy(exp_dir):
        return json.loads((exp_dir / METRICS_FILE).read_text())
    run = read_record(exp_dir, "train")
    if run is None:
        return None
    for stage in ("eval", "export", "timing"):
        record = read_record(exp_dir, stage)
        if record is not None and record["config_hash"] == run.get("config_hash"):
            run[stage] = {key: value for key, value in record.items() if key != "config_hash"}
    return run


def has_run(exp_dir: str | Path) -> bool:
    """Whether this folder holds an experiment (in records, or a metrics.json from before them)."""
    exp_dir = Path(exp_dir)
    return record_path(exp_dir, "train").is_file() or (exp_dir / METRICS_FILE).is_file()


def experiment_dirs(output_root: str | Path) -> list[Path]:
    """Every experiment folder of OUT, by name."""
    return sorted(p for p in Path(output_root).glob("*/") if p.is_dir() and has_run(p))


def is_complete(exp_dir: str | Path, config_hash: str) -> bool:
    """True when this exact config already finished here."""
    metrics = read_metrics(exp_dir)
    return bool(metrics) and metrics.get("status") == "complete" and metrics.get("config_hash") == config_hash


def val_loss(metrics: dict) -> float:
    """A run's validation loss: the evaluation stage's (whole split), else training's last periodic one."""
    return (metrics.get("eval") or {}).get("val_loss", metrics["train"]["final_eval_loss"])


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def reset_peak_memory() -> None:
    """Start measuring a new peak: CUDA's counters on a GPU, else this process's VmHWM (Linux resets
    it when "5" is written to /proc/self/clear_refs). Without it, a stage that shares its kernel with
    training would report training's peak as its own."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak stays the process's since start


def peak_memory_mb() -> float:
    """CUDA peak allocation on a GPU, else this process's peak resident set size since the last reset."""
    import resource
    import sys

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:", 1)[1].split()[0]) / 1024  # kB
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def environment_info() -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {
        "python": platform.python_version(),
        "packages": versions,
        "device": device,
        "git_commit": git_commit(),
    }
