"""The on-disk record of an experiment: `OUT/<experiment>/metrics.json`.

Every write is atomic (temporary file in the same folder, then rename), so a
reader - the sweep, the report, a person - never sees half a file.
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


def read_metrics(exp_dir: str | Path) -> dict | None:
    path = Path(exp_dir) / METRICS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def is_complete(exp_dir: str | Path, config_hash: str) -> bool:
    """True when this exact config already finished here."""
    metrics = read_metrics(exp_dir)
    return bool(metrics) and metrics.get("status") == "complete" and metrics.get("config_hash") == config_hash


def val_loss(metrics: dict) -> float:
    """A run's validation loss: the evaluation stage's (whole split), else training's last periodic one."""
    return (metrics.get("eval") or {}).get("val_loss", metrics["train"]["final_eval_loss"])


def update_metrics(exp_dir: str | Path, **sections: Any) -> dict:
    """Merge top-level keys into metrics.json and write it back atomically."""
    metrics = read_metrics(exp_dir) or {}
    metrics.update(sections)
    write_json_atomic(Path(exp_dir) / METRICS_FILE, metrics)
    return metrics


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
