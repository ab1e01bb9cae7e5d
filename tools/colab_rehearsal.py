"""`make colab-rehearsal`: lab2's Colab path, rehearsed on a CPU against Colab's own package list.

Three checks, each of which fails if the install or the notebook would break Colab:

1. resolution (Python 3.13, seconds to minutes): a venv whose site-packages holds a metadata-only
   `*.dist-info` for every package of Colab's image (tools/colab_packages.json: name, version,
   requirements). Each stage the notebook installs on Colab (training, unsloth, export) is resolved
   with `pip install --dry-run --report` in keep-installed mode, and applied to that metadata in turn.
   It must change no Colab package outside install.CONTROLLED, leave `pip check` with no broken
   requirement that Colab does not already have, and install only wheels that fit Python 3.13 (or
   the named source builds).
2. kernel: a venv seeded with Colab's versions of the kernel stack, numpy, pandas, pillow,
   matplotlib, pyarrow, protobuf, torchao, gradio and the HF stack, and a kernel that imports numpy
   and PIL before anything else, as Colab's does. notebooks/lab2.ipynb runs top to bottom in it,
   through its own install cell, to a complete, evaluated, exported run, on the T4 recipe's 4-bit path
   (nf4 weights through the bitsandbytes that install cell brings, 8-bit AdamW); then a restarted kernel
   must still start with Colab's ipykernel and IPython, and every package lab2 does not control
   must still be at Colab's version. What differs from Colab: Python 3.11 and the CPU torch 2.13.0
   (Colab's 3.13 + CUDA build cannot be installed here), no GPU (no Unsloth stage), no Drive.
3. run twice: the same notebook again on the same output folder must leave metrics.json as it was.
4. setup (seconds): `make setup`'s plan on a GPU-looking machine (an `nvidia-smi` on PATH) keeps the
   machine's torch and installs the Unsloth stage; on Colab it uses Colab's Python with the
   notebook's keep-installed install.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab2 import install, runs
from tools import colab_runtime
from lab2.install import REPO_ROOT, normalize

KERNEL = "lab2-colab-rehearsal"
# The notebook's T4 recipe in miniature: 4-bit (nf4) weights through the bitsandbytes its own install cell
# installs, 8-bit AdamW and gradient checkpointing, on the tiny model.
SHORT_RUN = {
    "model": {"load_in_4bit": True},
    "train": {"max_steps": 6, "eval_steps": 3, "save_steps": 3, "warmup_steps": 0, "optimizer": "adamw_8bit",
              "gradient_checkpointing": True},
    "eval": {"num_reference_samples": 4, "max_new_tokens": 16, "ifeval_prompts": 3, "ifeval_max_new_tokens": 8, "knowledge_questions": 4},
}
COLAB_STAGES = ("training", "unsloth", "export")  # what lab2.ipynb installs on a Colab GPU
# Installed from a source archive, not a wheel, and why that is fine on Colab.
SOURCE_BUILDS = {
    "llama-cpp-python": "PyPI has no binary wheel: the export stage compiles llama.cpp, with its output shown",
    "rouge-score": "a pure-Python sdist that builds in seconds",
    # lm-eval's own `ifeval` extra (lab2.ifeval's scorer detects a reply's language with it)
    "langdetect": "a pure-Python sdist (1.0.9 has no wheel on PyPI) that builds in about 2 s",
}
# Seeded at Colab's versions in the rehearsal kernel: what a Colab kernel runs, and what lab2 uses of it
# (with every other package of lab2's pin set that Colab has, see `seeded_packages`).
COLAB_SEED = (
    "ipykernel", "ipython", "jupyter-client", "jupyter-core", "tornado", "pyzmq", "traitlets", "numpy", "pandas",
    "pillow", "matplotlib", "pyarrow", "protobuf", "torchao", "transformers", "tokenizers", "huggingface-hub",
    "safetensors", "accelerate", "peft", "datasets", "fsspec", "gradio", "gradio-client", "sentencepiece",
    "pydantic", "jinja2", "pyyaml", "requests", "tqdm", "psutil", "packaging",
)
# Colab's builds of these cannot be installed here (CUDA wheels, or Colab's own archives).
NOT_INSTALLABLE_HERE = ("torch", "torchvision", "torchaudio", "torchcodec", "triton", "pip", "setuptools", "wheel")
START_LIKE_COLAB = "import numpy, PIL.Image  # google.colab imports both when a Colab kernel starts\n"


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], check=True, **kwargs)


def python313() -> str:
    """A Python 3.13 (Colab's), from pyenv's folders or PATH; pyenv's shim may not run it, so each is tried."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13"))) + [shutil.which("python3.13") or ""]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 13)"], capture_output=True).returncode == 0:
            return candidate
    raise SystemExit("colab rehearsal: no Python 3.13 here (Colab's); install one (pyenv install 3.13) and run again")


def site_packages(python: str | Path) -> Path:
    return Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    capture_output=True, text=True).stdout.strip())


def pip_check(python: str | Path) -> set[str]:
    out = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip() and "No broken requirements" not in line}


def documented_unmet(line: str) -> bool:
    """A `pip check` line about a package lab2 installs --no-deps, for a requirement lab2 leaves unmet
    on purpose, with its reason (install.NO_DEPS_UNMET, install.UNSLOTH_RANGE_EXCEPTIONS)."""
    found = re.match(r"(\S+) \S+ (?:has requirement ([A-Za-z0-9._-]+)|requires ([A-Za-z0-9._-]+),)", line)
    if not found:
        return False
    owner, required = normalize(found.group(1)), normalize(found.group(2) or found.group(3))
    reasons = install.NO_DEPS_UNMET.get(owner)
    if reasons == "see UNSLOTH_RANGE_EXCEPTIONS":
        reasons = install.UNSLOTH_RANGE_EXCEPTIONS
    return isinstance(reasons, dict) and required in {normalize(name) for name in reasons}


# --------------------------------------------------------------------------- 1. resolution


def check_resolution(workdir: Path, keep_installed: bool = True, repo: Path = REPO_ROOT) -> dict:
    """Each Colab stage resolved against Colab's package list; returns what changed and what broke."""
    colab = colab_runtime.load()["packages"]
    venv = workdir / "colab-metadata"
    run([python313(), "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = site_packages(python)
    for name, meta in colab.items():
        if name not in ("pip",):  # the venv's own pip resolves; Colab's pip version changes nothing here
            colab_runtime.write_metadata_only(site, name, meta["version"], meta["requires_dist"])
    broken_before = pip_check(python)
    controlled = {normalize(n) for n in [*install.CONTROLLED, *install.UNSLOTH_STAGE]}
    changed, not_allowed, not_wheels, failed, installed_by = {}, [], [], [], {}
    for stage in COLAB_STAGES:
        constraints = install.constraints_for_this_machine(repo, str(python), keep_installed, folder=workdir)
        for i, args in enumerate(install.stage_pip_args(stage, repo, str(python), constraints)):
            report = workdir / f"resolve-{stage}-{i}.json"
            result = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "-q", "--report", str(report), *args],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                failed.append(f"{stage}: {(result.stderr.strip().splitlines() or ['pip failed'])[-1]}")
                continue
            for item in json.loads(report.read_text())["install"]:
                meta = item["metadata"]
                name, version = normalize(meta["name"]), meta["version"]
                if name == "lab2":
                    continue
                installed_by.setdefault(stage, []).append(name)
                url = (item.get("download_info") or {}).get("url", "")
                if not url.endswith(".whl") and name not in SOURCE_BUILDS:
                    not_wheels.append(f"{name} {version}")
                was = colab.get(name, {}).get("version")
                if was is not None and was != version:
                    changed[name] = f"{was} -> {version}"
                    if name not in controlled:
                        not_allowed.append(f"{name} {was} -> {version} ({stage} stage)")
                colab_runtime.remove_metadata(site, name)
                colab_runtime.write_metadata_only(site, meta["name"], version, meta.get("requires_dist"))
    new = pip_check(python) - broken_before
    return {"changed": changed, "not_allowed": not_allowed, "new_broken": sorted(l for l in new if not documented_unmet(l)),
            "documented_unmet": sorted(filter(documented_unmet, new)), "not_wheels": not_wheels,
            "failed": failed, "broken_before": sorted(broken_before), "installed_by_stage": installed_by}


def fits_colab(wheel: str) -> bool:
    """A wheel file name that pip installs on Colab: CPython 3.13 (or pure / stable-ABI), Linux x86_64."""
    python_tag, abi_tag, platform_tag = wheel[:-4].split("-")[-3:]
    python_ok = any(t in ("py3", "py313", "cp313") or (t.startswith("cp3") and abi_tag == "abi3" and int(t[3:]) <= 13)
                    or t == "py2.py3" for t in python_tag.split("."))
    platform_ok = platform_tag == "any" or any("x86_64" in t and ("manylinux" in t or t.startswith("linux"))
                                                for t in platform_tag.split("."))
    return python_ok and platform_ok


def pins_without_a_colab_wheel(repo: Path = REPO_ROOT) -> list[str]:
    """Every pin of constraints.txt with no wheel for Colab's Python 3.13 on PyPI, except SOURCE_BUILDS."""
    from concurrent.futures import ThreadPoolExecutor

    pins = install.pinned_versions(repo / install.CONSTRAINTS)

    def missing(item):
        name, version = item
        listing = json.loads(colab_runtime._get(f"{colab_runtime.SIMPLE_INDEX}/{name}/", "application/vnd.pypi.simple.v1+json"))
        prefix = re.compile(rf"^{re.sub(r'[-_.]+', '[-_.]+', name)}-{re.escape(version)}-", re.I)
        wheels = [f["filename"] for f in listing.get("files", []) if prefix.match(f["filename"]) and f["filename"].endswith(".whl")]
        return None if any(map(fits_colab, wheels)) or name in SOURCE_BUILDS else f"{name}=={version}"

    with ThreadPoolExecutor(16) as pool:
        return sorted(filter(None, pool.map(missing, pins.items())))


# --------------------------------------------------------------------------- 4. setup


def setup_plans(workdir: Path) -> dict[str, str]:
    """`python -m lab2.install setup --dry-run` as a GPU machine and as Colab would run it (a stand-in
    nvidia-smi on PATH; Colab's COLAB_RELEASE_TAG): the plans it prints."""
    fake = workdir / "gpu-looking-bin"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Tesla T4 (stand-in)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    path = f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"
    plans = {}
    for kind, extra in (("gpu", {}), ("colab", {"COLAB_RELEASE_TAG": "rehearsal"})):
        plans[kind] = run([sys.executable, "-m", "lab2.install", "setup", "--dry-run", "--venv", workdir / "setup-venv"],
                          capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "PATH": path, **extra}).stdout
    return plans


# --------------------------------------------------------------------------- 2. kernel


def seeded_packages() -> list[str]:
    """COLAB_SEED and every package of lab2's pin set that Colab has: lab2's whole dependency tree meets
    Colab's versions there, as on Colab."""
    colab = colab_runtime.load()["packages"]
    pins = install.pinned_versions(REPO_ROOT / install.CONSTRAINTS)
    return sorted(n for n in {*COLAB_SEED, *(set(pins) & set(colab))} if n not in NOT_INSTALLABLE_HERE)


def colab_like_kernel(workdir: Path) -> Path:
    """A venv at Colab's versions of `seeded_packages`, registered as a kernel that starts as Colab's does."""
    colab = colab_runtime.load()["packages"]
    venv = workdir / "kernel-venv"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv])
    python = venv / "bin" / "python"
    pins = install.pinned_versions(REPO_ROOT / install.CONSTRAINTS)
    constraints = workdir / "colab-versions.txt"
    constraints.write_text("".join(f"{name}=={meta['version']}\n" for name, meta in colab.items()
                                   if name not in NOT_INSTALLABLE_HERE and not name.startswith("nvidia-") and meta["version"] != "0"))
    run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([python, "-m", "pip", "install", "-q", f"torch=={pins['torch']}"])  # the CPU stand-in for Colab's CUDA build
    run([python, "-m", "pip", "install", "-q", "-c", constraints, *(f"{n}=={colab[n]['version']}" for n in seeded_packages())])
    kernel_dir = workdir / "jupyter" / "share" / "jupyter" / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    ipython_dir = workdir / "ipython"
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-like-colab.py").write_text(START_LIKE_COLAB)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lab2 Colab rehearsal", "language": "python",
        "env": {"IPYTHONDIR": str(ipython_dir)},
    }))
    os.environ["JUPYTER_PATH"] = str(workdir / "jupyter" / "share" / "jupyter")
    return python


def versions_in(python: Path, names) -> dict[str, str | None]:
    installed = install.installed_versions(str(python))
    return {name: installed.get(normalize(name)) for name in names}


def restarted_kernel_versions(workdir: Path) -> dict:
    """A new kernel of the rehearsal's kind (a session restart): what it runs, from inside it."""
    import nbformat
    import papermill

    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import json, sys, IPython, ipykernel, numpy, PIL\n"
        "print(json.dumps({'ipykernel': ipykernel.__version__, 'ipython': IPython.__version__, "
        "'numpy': numpy.__version__, 'pillow': PIL.__version__, 'imported_at_start': 'numpy' in sys.modules}))")])
    probe.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    probe.metadata["language_info"] = {"name": "python"}
    nbformat.write(probe, workdir / "restart-probe.ipynb")
    papermill.execute_notebook(str(workdir / "restart-probe.ipynb"), str(workdir / "restart-probe.out.ipynb"),
                               kernel_name=KERNEL, progress_bar=False)
    cell = nbformat.read(workdir / "restart-probe.out.ipynb", as_version=4).cells[0]
    return json.loads(cell.outputs[0]["text"])


def run_lab2_notebook(workdir: Path, out: Path, executed: Path, params_path: str, repo: Path) -> float:
    import papermill

    start = time.perf_counter()
    papermill.execute_notebook(
        str(repo / "notebooks" / "lab2.ipynb"), str(executed),
        parameters={
            "params_path": params_path, "output_root": str(out), "overrides": SHORT_RUN,
            "export_formats": ["f16", "q8_0", "q4_k_m"], "launch_chat": False, "use_drive": False,
            "install_packages": True, "lab2_dir": str(repo),
        },
        kernel_name=KERNEL, cwd=str(repo), progress_bar=False, log_output=True,
    )
    return time.perf_counter() - start


def comparable(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in ("status", "config_hash", "train", "eval", "export")}


def rehearse(workdir: str | Path, params_path: str = "params/tiny_random/steps_15.yaml", keep_installed: bool = True,
             repo: Path = REPO_ROOT, only: tuple[str, ...] = ("resolution", "setup", "kernel", "run_twice")) -> dict:
    """Run the checks; returns {timings, checks: {name: bool}, details}."""
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)  # a rehearsal always starts bare
    workdir.mkdir(parents=True)
    timings, checks, details = {}, {}, {}

    if "resolution" in only:
        start = time.perf_counter()
        resolution = check_resolution(workdir, keep_installed, repo)
        timings["resolution_seconds"] = time.perf_counter() - start
        details["resolution"] = resolution
        checks["resolution: only lab2's named packages change"] = not resolution["not_allowed"] and not resolution["failed"]
        checks["resolution: no new broken requirement (pip check)"] = not resolution["new_broken"] and not resolution["failed"]
        resolution["pins_without_a_colab_wheel"] = pins_without_a_colab_wheel(repo)
        checks["resolution: the training stage brings bitsandbytes (4-bit weights, 8-bit AdamW)"] = (
            "bitsandbytes" in resolution["installed_by_stage"].get("training", []))
        checks["resolution: Python 3.13 wheels or named source builds"] = (
            not resolution["not_wheels"] and not resolution["pins_without_a_colab_wheel"])

    if "setup" in only:
        plans = setup_plans(workdir)
        details["setup"] = plans
        checks["setup: a GPU machine keeps its torch and gets the training (bitsandbytes) and Unsloth stages"] = (
            "a gpu machine" in plans["gpu"] and "install stage training" in plans["gpu"] and "install stage unsloth" in plans["gpu"]
            and "torch==" not in plans["gpu"] and install.stage_brings("training", "bitsandbytes"))
        checks["setup: Colab uses its own Python with the notebook's keep-installed install"] = (
            "ln -s" in plans["colab"] and "install stage training (keep-installed)" in plans["colab"] and "torch==" not in plans["colab"])

    if {"kernel", "run_twice"} & set(only):
        start = time.perf_counter()
        python = colab_like_kernel(workdir)
        timings["colab_like_venv_seconds"] = time.perf_counter() - start
        seed = seeded_packages()
        seeded = versions_in(python, seed)
        out = workdir / "outputs"
        experiment = out / Path(params_path).stem
        try:
            timings["notebook_seconds"] = run_lab2_notebook(workdir, out, workdir / "lab2.ipynb", params_path, repo)
            first_error = None
        except Exception as exc:  # noqa: BLE001 - the check reports it
            first_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        first = runs.read_metrics(experiment) or {}
        controlled = {normalize(n) for n in [*install.CONTROLLED, *install.UNSLOTH_STAGE]}
        after = versions_in(python, seed)
        moved = {n: f"{seeded[n]} -> {after[n]}" for n in seed if after[n] != seeded[n] and normalize(n) not in controlled}
        restarted = restarted_kernel_versions(workdir)
        details["kernel"] = {"notebook_error": first_error, "moved_outside_controlled": moved, "restarted_kernel": restarted,
                             "controlled_now": {n: f"{seeded[n]} -> {after[n]}" for n in seed if normalize(n) in controlled}}
        checks["kernel: lab2.ipynb runs to a complete, evaluated, exported run"] = (
            first_error is None and first.get("status") == "complete" and {"val_loss", "test_loss", "base"} <= set(first.get("eval") or {})
            and set((first.get("export") or {}).get("formats", {})) == {"f16", "q8_0", "q4_k_m"})
        details["kernel"]["precision"] = first.get("precision")
        checks["kernel: the notebook's 4-bit path trained nf4 weights, and its export passed the chain check"] = (
            (first.get("precision") or {}).get("weights") == "nf4" and ((first.get("export") or {}).get("merge") or {}).get("ok") is True)
        tuned_and_base = [first.get("eval") or {}, (first.get("eval") or {}).get("base") or {}]
        scored = [evaluation.get("ifeval") or {} for evaluation in tuned_and_base]
        details["kernel"]["ifeval"] = [{k: v for k, v in found.items() if k != "per_prompt"} for found in scored]
        checks["kernel: IFEval scored offline by lm-eval's checkers, fine-tuned and base on the same prompts"] = (
            all(found.get("prompts") == SHORT_RUN["eval"]["ifeval_prompts"] and len(found.get("per_prompt", [])) == found.get("prompts")
                for found in scored) and scored[0].get("prompts_fingerprint") == scored[1].get("prompts_fingerprint"))
        known = [evaluation.get("knowledge") or {} for evaluation in tuned_and_base]
        details["kernel"]["knowledge"] = [{k: v for k, v in found.items() if k != "per_question"} for found in known]
        checks["kernel: ARC scored offline through lm-eval's harness, fine-tuned and base on the same questions"] = (
            all(found.get("questions") == SHORT_RUN["eval"]["knowledge_questions"] and len(found.get("per_question", [])) == found.get("questions")
                for found in known) and known[0].get("questions_fingerprint") == known[1].get("questions_fingerprint"))
        checks["kernel: Colab's packages outside lab2's list untouched"] = not moved
        checks["kernel: a restarted kernel starts with Colab's ipykernel and IPython"] = (
            restarted["ipykernel"] == seeded["ipykernel"] and restarted["ipython"] == seeded["ipython"] and restarted["imported_at_start"])

        if "run_twice" in only:
            try:
                timings["second_run_seconds"] = run_lab2_notebook(workdir, out, workdir / "lab2-again.ipynb", params_path, repo)
                second_error = None
            except Exception as exc:  # noqa: BLE001
                second_error = f"{type(exc).__name__}"
            second = runs.read_metrics(experiment) or {}
            details["run_twice"] = {"error": second_error,
                                    "val_loss": [(first.get("eval") or {}).get("val_loss"), (second.get("eval") or {}).get("val_loss")]}
            checks["run twice: the second run keeps the first run's results"] = (
                second_error is None and bool(first) and comparable(second) == comparable(first))
    return {"timings": timings, "checks": checks, "details": details}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.colab_rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/lab2-colab-rehearsal")
    checks = ["resolution", "setup", "kernel", "run_twice"]
    parser.add_argument("--only", nargs="+", choices=checks, default=checks)
    parser.add_argument("--pinned", action="store_true",
                        help="resolve in pinned mode (every package at constraints.txt, torch held): lab2's install before keep-installed")
    parser.add_argument("--repo", default=str(REPO_ROOT), help="the lab2 checkout whose notebook and pins are rehearsed")
    args = parser.parse_args(argv)
    result = rehearse(args.workdir, keep_installed=not args.pinned, repo=Path(args.repo).resolve(), only=tuple(args.only))
    print(json.dumps(result["details"], indent=1))
    for name, seconds in result["timings"].items():
        print(f"{name}: {seconds:.0f} s")
    for name, ok in result["checks"].items():
        print(f"{'ok    ' if ok else 'FAILED'} {name}")
    failed = [name for name, ok in result["checks"].items() if not ok]
    print("colab rehearsal: " + ("ok" if not failed else f"{len(failed)} of {len(result['checks'])} checks FAILED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
