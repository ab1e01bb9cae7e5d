"""The Colab entry notebook, the reports' grid, and the backend choice."""

import subprocess
import sys

import nbformat
import pytest
import torch

from lab2 import backend, install, modeling, runs
from lab2.config import ExperimentConfig, experiment_files, load_config
from tests.conftest import REPO


def test_lab2_notebook_runs_top_to_bottom_on_cpu(params_tree, tmp_path):
    from lab2.notebook_runner import run_notebook

    params = params_tree("colab/tiny.yaml", {"seeds": [1, 2]})  # seeds are ignored: one run here
    out = tmp_path / "outputs"
    executed = tmp_path / "lab2.ipynb"
    parameters = {
        "params_path": str(params), "output_root": str(out), "use_drive": False,
        "export_formats": ["f16", "q8_0"], "launch_chat": False, "install_packages": False,
    }
    run_notebook(REPO / "notebooks" / "lab2.ipynb", executed, parameters, show_cells=False)
    nbformat.validate(nbformat.read(REPO / "notebooks" / "lab2.ipynb", as_version=4))
    metrics = runs.read_metrics(out / "tiny")
    assert metrics["status"] == "complete" and metrics["config"]["seeds"] is None
    assert {"val_loss", "test_loss", "perplexity", "base"} <= set(metrics["eval"])
    assert set(metrics["export"]["formats"]) == {"f16", "q8_0"}
    outputs = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", []))
    assert "backend hf" in outputs and "merged HF model perplexity" in outputs

    # Run again on the same folder, as a student does after a disconnect: the first run's results stay.
    again = tmp_path / "lab2-again.ipynb"
    run_notebook(REPO / "notebooks" / "lab2.ipynb", again, parameters, show_cells=False)
    assert runs.read_metrics(out / "tiny") == metrics  # losses, scores, samples and export checks alike
    outputs = "".join(o.get("text", "") for c in nbformat.read(again, as_version=4).cells for o in c.get("outputs", []))
    assert "loading its saved adapter" in outputs and "keeping that evaluation" in outputs and "already exported" in outputs


def test_grid_holds_the_reports_values():
    grid = {p.stem: load_config(p) for p in experiment_files([REPO / "params" / "lab2"])}
    steps = {c.train.max_steps for c in grid.values() if c.train.learning_rate == 2e-4 and c.lora.r == 16
             and c.model.name.endswith("1B-Instruct") and c.data.source == "mlabonne/FineTome-100k"}
    assert steps == {60, 300, 500, 1000}
    at_500 = [c for c in grid.values() if c.train.max_steps == 500]
    assert {c.train.learning_rate for c in at_500 if c.lora.r == 16} >= {1e-4, 2e-4, 5e-4}
    assert {c.lora.r for c in at_500 if c.train.learning_rate == 2e-4} >= {8, 16, 32}
    for cfg in grid.values():  # the split of shared/seeds/003: first 15k rows -> 12k / 1.5k / 1.5k
        assert (cfg.data.subset, cfg.data.val_size, cfg.data.test_size) == (15000, 1500, 1500)
        assert cfg.train.eval_steps == min(250, cfg.train.eval_steps) and cfg.train.eval_steps <= cfg.train.max_steps
    assert grid["steps_1000"].train.eval_steps == 250 and grid["baseline"].seeds == [3407, 1, 2]
    assert grid["model_3b"].model.name == "unsloth/Llama-3.2-3B-Instruct"
    ultrachat = grid["data_ultrachat"].data
    assert ultrachat.source == "mlabonne/FineTome-100k"  # measured on the same held-out conversations
    assert [s.source for s in ultrachat.train_sources] == ["HuggingFaceH4/ultrachat_200k"]  # trained on another source


def test_backend_choice(monkeypatch):
    section = ExperimentConfig(experiment="b").model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend.resolve_backend(section) == "hf"  # a CPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend.importlib.util, "find_spec", lambda name: object() if name == "unsloth" else None)
    assert backend.resolve_backend(section) == "unsloth"
    assert backend.resolve_backend(ExperimentConfig(experiment="b", model={"backend": "hf"}).model) == "hf"
    monkeypatch.setattr(backend.importlib.util, "find_spec", lambda name: None)
    assert backend.resolve_backend(section) == "hf"  # CUDA without unsloth installed


def test_unsloth_without_a_gpu_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also where the suite runs on a GPU
    cfg = ExperimentConfig(experiment="u", model={"backend": "unsloth"})
    with pytest.raises(ValueError, match="unsloth needs an NVIDIA GPU"):
        modeling.load_trainable_model(cfg)
    assert "unsloth" not in sys.modules  # the CPU path never imports it


def test_placeholder_repo_url_stops_in_one_clear_line(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(str(REPO / "notebooks" / "lab2.ipynb"), str(tmp_path / "lab2.ipynb"), parameters={
            "install_packages": True, "lab2_dir": str(tmp_path / "not-cloned-yet"),
        }, kernel_name="python3", progress_bar=False)
    assert "lab2_repo_url still says OWNER: set it to your copy of lab2" in str(failed.value)
    assert not (tmp_path / "not-cloned-yet").exists()  # nothing was cloned or installed


def test_install_holds_the_installed_torch(tmp_path):
    constraints = install.constraints_for_this_machine(REPO, sys.executable, folder=tmp_path)
    pins = install.pinned_versions(constraints)
    assert pins["torch"] == torch.__version__.split("+")[0] or pins["torch"] == torch.__version__
    assert sum(install.requirement_name(line) == "torch" for line in constraints.read_text().splitlines()) == 1
    assert pins["transformers"] == install.pinned_versions(REPO / "constraints.txt")["transformers"]


def test_a_failed_stage_says_what_to_do_and_keeps_results(monkeypatch, tmp_path, capsys):
    results = tmp_path / "outputs" / "exp" / "metrics.json"
    results.parent.mkdir(parents=True)
    results.write_text('{"status": "complete"}')
    venv = tmp_path / "env"  # never the test venv itself: it has this stage's stamp
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)

    def failing_pip(python, args, quiet):
        raise install.StageFailed(" ".join(args))

    monkeypatch.setattr(install, "pip", failing_pip)
    assert install.install_stage("export", REPO, str(venv / "bin" / "python")) is False
    out = capsys.readouterr().out
    assert "llama-cpp-python compiles from source" in out and "the export stage failed" in out and "intact" in out
    assert results.read_text() == '{"status": "complete"}'
    assert not install.stamp_path("export", str(venv / "bin" / "python")).exists()  # a failed stage runs again


def test_stages_split_training_from_the_compile():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "llama-cpp-python" not in core and "llama-cpp-python" in extras["export"]
    assert install.STAGES["training"]["extras"] == [] and "export" in install.STAGES["export"]["extras"]


def test_spaces_requirements_follow_the_pin_set():
    pins = install.pinned_versions(REPO / "constraints.txt")
    spaces = install.pinned_versions(REPO / "spaces" / "requirements.txt")
    assert spaces and {name: pins.get(name) for name in spaces} == spaces
