"""The Unsloth path, proven on CPU: pins inside Unsloth's declared ranges, Unsloth imported before
transformers/trl/peft wherever it is the backend, lab2's trainer over Unsloth's SFTTrainer, lab2's
keywords bound against Unsloth's real signatures, and fp16 where bf16 is only emulated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch
import yaml
from packaging.requirements import Requirement

from lab2 import backend, install, modeling
from lab2.config import ExperimentConfig
from tests.conftest import REPO
from tests.unsloth_standin import PATCHED, real_signatures, write_standin_package

UNSLOTH_DISTS = ("unsloth", "unsloth_zoo")


def unsloth_requirements() -> list[tuple[str, Requirement]]:
    """Every Requires-Dist of unsloth and unsloth_zoo that applies on this platform (extras left out)."""
    found = []
    for dist in UNSLOTH_DISTS:
        for line in metadata.requires(dist) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                found.append((dist, req))
    return found


GPU_STAGE = {install.normalize(name) for name in install.UNSLOTH_STAGE}


def requirement_problems(requirements, installed_version, exceptions: dict[str, str]) -> list[str]:
    """Each requirement must hold for the version installed here or, for the GPU stage that Colab alone
    installs, for its pin in constraints.txt; else it must be one of the named exceptions."""
    pins = install.pinned_versions(REPO / "constraints.txt")
    problems = []
    for dist, req in requirements:
        name = install.normalize(req.name)
        version = installed_version(name) or (pins.get(name) if name in GPU_STAGE else None)
        if name in exceptions:
            continue
        if version is None:
            problems.append(f"{dist} needs {req}, which is neither installed, pinned for the GPU stage, "
                            "nor in install.UNSLOTH_RANGE_EXCEPTIONS")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{dist} needs {req}; lab2 has {name}=={version}")
    return problems


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_every_pin_is_inside_unsloths_declared_ranges():
    requirements = unsloth_requirements()
    assert {install.normalize(r.name) for _, r in requirements} >= {"transformers", "trl", "datasets", "peft"}
    assert requirement_problems(requirements, installed, install.UNSLOTH_RANGE_EXCEPTIONS) == []
    pins = install.pinned_versions(REPO / "constraints.txt")
    for name in ("unsloth", "unsloth-zoo", "transformers", "trl", "datasets"):  # the pin set is what is installed
        assert installed(name) == pins[name], name


def test_a_pin_past_unsloths_range_is_caught():
    requirements = unsloth_requirements()
    bumped = lambda name: "5.18.0" if name == "transformers" else installed(name)  # noqa: E731
    problems = requirement_problems(requirements, bumped, install.UNSLOTH_RANGE_EXCEPTIONS)
    assert problems and all("transformers" in p for p in problems)


def test_the_named_exceptions_are_real_requirements_and_the_gpu_stage_is_pinned():
    names = {install.normalize(r.name) for _, r in unsloth_requirements()}
    assert set(install.UNSLOTH_RANGE_EXCEPTIONS) <= names  # no stale excuses
    assert all(reason.strip() for reason in install.UNSLOTH_RANGE_EXCEPTIONS.values())
    pins = install.pinned_versions(REPO / "constraints.txt")
    assert {install.normalize(n) for n in install.UNSLOTH_STAGE} <= set(pins)


# --------------------------------------------------------------------------- import order


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """PYTHONPATH with the stand-in unsloth first; returns the file its import writes."""
    record = tmp_path / "unsloth_import.json"
    folder = write_standin_package(tmp_path / "standin", record)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return record


def unsloth_params(params_tree):
    return params_tree("gpu/exp_unsloth.yaml", {"model": {"backend": "unsloth"}})


def assert_unsloth_came_first(record):
    assert record.is_file(), "unsloth was never imported"
    assert json.loads(record.read_text()) == {name: False for name in PATCHED}


@pytest.mark.parametrize("notebook", ["train.ipynb", "evaluate.ipynb", "lab2.ipynb"])
def test_notebooks_import_unsloth_before_transformers_trl_peft(notebook, standin, params_tree, tmp_path, monkeypatch):
    import papermill

    params = unsloth_params(params_tree)
    extra = {"use_drive": False, "install_packages": False, "launch_chat": False} if notebook == "lab2.ipynb" else {}
    monkeypatch.setenv("LAB2_STANDIN_STOP", "1")  # the notebook stops at the import, once the order is recorded
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the kernel sees no GPU, also where the suite runs on one
    with pytest.raises(papermill.PapermillExecutionError, match="stand-in unsloth: import order recorded"):
        papermill.execute_notebook(str(REPO / "notebooks" / notebook), str(tmp_path / notebook),
                                   parameters={"params_path": str(params), "output_root": str(tmp_path / "out"), **extra},
                                   kernel_name="python3", progress_bar=False, cwd=str(REPO))
    assert_unsloth_came_first(standin)


def test_cli_train_imports_unsloth_first(standin, params_tree, tmp_path):
    done = subprocess.run([sys.executable, "-m", "lab2", "train", str(unsloth_params(params_tree)), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # no GPU, even on one
    # Without a GPU the run stops when the (stand-in) model is loaded, after the import was recorded.
    assert done.returncode == 2 and "unsloth needs an NVIDIA GPU" in done.stderr
    assert_unsloth_came_first(standin)


def test_trainer_subclasses_unsloths_sft_trainer(standin):
    code = ("import unsloth, trl; from lab2 import train; cls = train.measured_trainer_class(); "
            "print(trl.SFTTrainer.__name__, issubclass(cls, trl.SFTTrainer), cls.__mro__[1].__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["UnslothSFTTrainer", "True", "UnslothSFTTrainer"]


def test_unsloth_after_trl_is_refused_in_one_line(monkeypatch):
    import trl  # noqa: F401  (already imported in this test process)

    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    with pytest.raises(backend.ImportOrderError, match="unsloth must be imported before transformers, trl"):
        backend.import_backend(ExperimentConfig(experiment="u", model={"backend": "unsloth"}).model)


# --------------------------------------------------------------------------- real signatures


def lab2_unsloth_calls(monkeypatch, capability=(7, 5), **cfg) -> dict:
    """The keywords lab2 passes to FastLanguageModel, captured by a recording stand-in."""
    import types

    calls = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = ((), kwargs)
            return "model", "tokenizer"

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = ((model,), kwargs)
            return "peft-model"

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert modeling.load_trainable_model(ExperimentConfig(experiment="u", **cfg)) == "peft-model"
    return calls


def test_lab2_keywords_bind_to_unsloths_real_signatures(monkeypatch):
    calls = lab2_unsloth_calls(monkeypatch, model={"backend": "unsloth", "load_in_4bit": True},
                               lora={"r": 32, "alpha": 32}, train={"seed": 7})
    signatures = real_signatures()
    assert {"model_name", "max_seq_length", "load_in_4bit", "dtype"} <= set(signatures["from_pretrained"].parameters)
    for name, (args, kwargs) in calls.items():
        signatures[name].bind(*args, **kwargs)  # raises TypeError on any keyword Unsloth does not name
    args, kwargs = calls["get_peft_model"]
    assert (kwargs["r"], kwargs["lora_alpha"], kwargs["random_state"], kwargs["use_gradient_checkpointing"]) == (32, 32, 7, "unsloth")
    assert calls["from_pretrained"][1]["dtype"] == torch.float16  # the T4 case


@pytest.mark.parametrize("typo", ["lora_alhpa", "target_module", "use_gradient_checkpoint"])
def test_a_misspelt_keyword_fails_the_binding(monkeypatch, typo):
    args, kwargs = lab2_unsloth_calls(monkeypatch, model={"backend": "unsloth"})["get_peft_model"]
    with pytest.raises(TypeError):
        real_signatures()["get_peft_model"].bind(*args, **{**kwargs, typo: 1})


# --------------------------------------------------------------------------- fp16 vs bf16


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_uses_bf16_only_where_it_is_native(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers (emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert backend.resolve_dtype("auto") is expected
    assert backend.resolve_dtype("float32") is torch.float32  # an explicit choice is kept


def test_cpu_dtype_is_float32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also where the suite runs on a GPU
    assert backend.resolve_dtype("auto") is torch.float32


def test_hf_backend_and_evaluation_load_in_the_resolved_dtype(monkeypatch, tiny_model_dir):
    """load_base_model (used by the hf backend, evaluation and the base-model comparison) asks for fp16 on a T4."""
    asked = {}
    import transformers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, name, **kwargs: asked.update(kwargs) or torch.nn.Module()))
    monkeypatch.setattr(modeling, "four_bit_problem", lambda: None)  # a T4's bitsandbytes loads its CUDA library
    modeling.load_base_model(ExperimentConfig(experiment="d", model={"name": str(tiny_model_dir)}).model)
    # The default is 4-bit: nf4 weights computing in fp16, placed on the GPU.
    assert asked["dtype"] is torch.float16 and asked["quantization_config"].bnb_4bit_compute_dtype is torch.float16
    assert asked["quantization_config"].bnb_4bit_quant_type == "nf4" and asked["device_map"] == {"": "cuda"}


def test_grid_params_resolve_for_a_t4(monkeypatch):
    """The reports' grid, on a T4: Unsloth when installed, fp16 everywhere."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    base = yaml.safe_load((REPO / "params" / "base.yaml").read_text())
    assert base["model"]["dtype"] == "auto" and backend.resolve_dtype(base["model"]["dtype"]) is torch.float16
