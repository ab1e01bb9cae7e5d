"""The Colab entry notebook, the reports' grid, and the backend choice."""

import sys
import types

import nbformat
import pytest
import torch

from lab2 import modeling, runs
from lab2.config import ExperimentConfig, experiment_files, load_config
from tests.conftest import REPO


def test_lab2_notebook_runs_top_to_bottom_on_cpu(params_tree, tmp_path):
    from lab2.sweep import run_notebook

    params = params_tree("colab/tiny.yaml", {"seeds": [1, 2]})  # seeds are ignored: one run here
    out = tmp_path / "outputs"
    executed = tmp_path / "lab2.ipynb"
    run_notebook(REPO / "notebooks" / "lab2.ipynb", executed, {
        "params_path": str(params), "output_root": str(out), "use_drive": False,
        "export_formats": ["f16", "q8_0"], "launch_chat": False,
    }, show_cells=False)
    nbformat.validate(nbformat.read(REPO / "notebooks" / "lab2.ipynb", as_version=4))
    metrics = runs.read_metrics(out / "tiny")
    assert metrics["status"] == "complete" and metrics["config"]["seeds"] is None
    assert {"val_loss", "test_loss", "perplexity", "base"} <= set(metrics["eval"])
    assert set(metrics["export"]["formats"]) == {"f16", "q8_0"}
    outputs = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", []))
    assert "backend hf" in outputs and "merged HF model perplexity" in outputs


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
    assert grid["data_ultrachat"].data.source != "mlabonne/FineTome-100k"


def test_backend_choice(monkeypatch):
    section = ExperimentConfig(experiment="b").model
    assert modeling.resolve_backend(section) == "hf"  # this CPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name: object() if name == "unsloth" else None)
    assert modeling.resolve_backend(section) == "unsloth"
    assert modeling.resolve_backend(ExperimentConfig(experiment="b", model={"backend": "hf"}).model) == "hf"
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name: None)
    assert modeling.resolve_backend(section) == "hf"  # CUDA without unsloth installed


def test_unsloth_backend_calls(monkeypatch):
    calls = {}

    class FastLanguageModel:  # stands in for unsloth's, recording how lab2 calls it
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            return "model", "tokenizer"

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = (model, kwargs)
            return "peft-model"

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = ExperimentConfig(experiment="u", model={"backend": "unsloth", "load_in_4bit": True, "max_seq_length": 2048},
                           lora={"r": 32, "alpha": 32}, train={"seed": 7})
    assert modeling.load_trainable_model(cfg) == "peft-model"
    assert calls["from_pretrained"]["load_in_4bit"] is True and calls["from_pretrained"]["max_seq_length"] == 2048
    model, kwargs = calls["get_peft_model"]
    assert model == "model" and kwargs["use_gradient_checkpointing"] == "unsloth"
    assert (kwargs["r"], kwargs["lora_alpha"], kwargs["random_state"]) == (32, 32, 7)


def test_unsloth_without_a_gpu_is_refused_clearly():
    cfg = ExperimentConfig(experiment="u", model={"backend": "unsloth"})
    with pytest.raises(ValueError, match="unsloth needs an NVIDIA GPU"):
        modeling.load_trainable_model(cfg)
    assert "unsloth" not in sys.modules  # the CPU path never imports it
