"""`make colab-rehearsal`: the Colab entry notebook, rehearsed on a CPU from a bare environment.

A fresh venv gets only what a Colab VM already has (torch, a Jupyter kernel). Then papermill runs
notebooks/lab2.ipynb top to bottom in that venv's kernel with `install_packages=True`, so the
notebook's own install cell installs lab2's stages (lab2/install.py) into it, as on Colab. Skipped,
because they need Colab itself: CUDA torch (the CPU wheel stands in), the Unsloth stage (no GPU),
Drive and the public `share=True` link. The run uses the offline tiny model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab2 import runs
from lab2.install import CONSTRAINTS, REPO_ROOT, pinned_versions

KERNEL = "lab2-colab-rehearsal"
# What a Colab VM has before the notebook's first cell: torch (CUDA there) and a Jupyter kernel.
PREINSTALLED = ("torch", "ipykernel")
SHORT_RUN = {
    "train": {"max_steps": 6, "eval_steps": 3, "save_steps": 3, "warmup_steps": 0},
    "eval": {"num_reference_samples": 4, "max_new_tokens": 16},
}


def run(command: list, **kwargs) -> None:
    subprocess.run([str(c) for c in command], check=True, **kwargs)


def bare_colab_like_venv(workdir: Path) -> Path:
    """A new venv with only Colab's preinstalled torch and kernel; returns its python."""
    venv = workdir / "venv"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv])
    python = venv / "bin" / "python"
    pins = pinned_versions(REPO_ROOT / CONSTRAINTS)
    run([python, "-m", "pip", "install", "-q", *(f"{name}=={pins[name]}" for name in PREINSTALLED)])
    run([python, "-m", "ipykernel", "install", "--prefix", workdir / "jupyter", "--name", KERNEL],
        stdout=subprocess.DEVNULL)
    return python


def rehearse(workdir: str | Path, params_path: str = "params/demo/steps_15.yaml") -> dict:
    """Build the bare venv, execute lab2.ipynb in it, check what it left; returns timings and checks."""
    import papermill

    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)  # a rehearsal always starts bare
    workdir.mkdir(parents=True)
    timings = {}
    start = time.perf_counter()
    python = bare_colab_like_venv(workdir)
    timings["bare_venv_seconds"] = time.perf_counter() - start

    out = workdir / "outputs"
    os.environ["JUPYTER_PATH"] = str(workdir / "jupyter" / "share" / "jupyter")  # finds the rehearsal kernel
    start = time.perf_counter()
    papermill.execute_notebook(
        str(REPO_ROOT / "notebooks" / "lab2.ipynb"), str(workdir / "lab2.ipynb"),
        parameters={
            "params_path": params_path, "output_root": str(out), "overrides": SHORT_RUN,
            "export_formats": ["f16", "q8_0", "q4_k_m"], "launch_chat": False, "use_drive": False,
            "install_packages": True, "lab2_dir": str(REPO_ROOT),
        },
        kernel_name=KERNEL, cwd=str(REPO_ROOT), progress_bar=False, log_output=True,
    )
    timings["notebook_seconds"] = time.perf_counter() - start

    experiment = Path(params_path).stem
    metrics = runs.read_metrics(out / experiment) or {}
    pins = pinned_versions(REPO_ROOT / CONSTRAINTS)
    # The notebook's own install cell put lab2's pins into the bare venv, compiled llama.cpp included.
    installed = {name: subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                                      capture_output=True, text=True).stdout.strip()
                 for name in ("transformers", "trl", "datasets", "llama-cpp-python")}
    checks = {
        "status_complete": metrics.get("status") == "complete",
        "evaluated": {"val_loss", "test_loss", "base"} <= set(metrics.get("eval") or {}),
        "exported": set((metrics.get("export") or {}).get("formats", {})) == {"f16", "q8_0", "q4_k_m"},
        "notebook_installed_the_pins": all(installed[name] == pins[name] for name in installed),
    }
    return {"timings": timings, "checks": checks, "experiment_dir": str(out / experiment)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab2.colab_rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/lab2-colab-rehearsal")
    args = parser.parse_args(argv)
    result = rehearse(args.workdir)
    for name, seconds in result["timings"].items():
        print(f"{name}: {seconds:.0f} s")
    failed = [name for name, ok in result["checks"].items() if not ok]
    print("colab rehearsal: " + ("ok" if not failed else f"FAILED checks: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
