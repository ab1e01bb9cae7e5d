"""Shared fixtures: the offline tiny Llama, its tokenizer, and params trees in tmp."""

from __future__ import annotations

import os
from pathlib import Path

# One compute thread per process (torch, and the kernels, converters and servers the tests start, which
# inherit it). `make test` runs two workers on two cores: with each process taking every core, OpenMP's
# spinning threads fight over them and the suite runs much slower than one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "data" / "sample_conversations.jsonl"

# The files that take minutes, longest first (measured on 2 cores). `make test` hands whole files to two
# xdist workers in collection order; starting these first keeps the longest from starting last.
SLOW_FILES = ["test_sweep.py", "test_real_model.py", "test_reliability.py", "test_colab.py", "test_ray.py",
              "test_notebook_pages.py", "test_export.py", "test_app.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: order within a file kept


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lab2.modeling import build_tiny_llama

    # Narrower than the demo model (64 vs 256) to keep the suite fast; same tokenizer and code path.
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", hidden_size=64)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """models/tiny-llama, which params/demo names: `make setup` builds it; built here if missing."""
    from lab2.modeling import build_tiny_llama

    path = REPO / "models" / "tiny-llama"
    if not (path / "config.json").is_file():
        build_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from lab2.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir), "llama-3.1")


def tiny_base(model_dir: Path, **train) -> dict:
    """A params base for fast CPU runs on the tiny model and the shipped sample data."""
    return {
        "model": {"name": str(model_dir), "max_seq_length": 256, "load_in_4bit": False, "dtype": "float32"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"source": str(SAMPLE_DATA), "subset": 120, "val_size": 8, "test_size": 8},
        "train": {
            "max_steps": 4, "learning_rate": 2e-3, "warmup_steps": 0, "batch_size": 2,
            "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
            "eval_steps": 2, "save_steps": 2, **train,
        },
        "eval": {"prompts": ["What is 2 plus 2?"], "num_reference_samples": 4, "max_new_tokens": 8},
    }


@pytest.fixture
def params_tree(tmp_path, tiny_model_dir):
    """Returns write(relative_path, mapping) -> Path, with params/base.yaml set for the tiny model."""
    root = tmp_path / "params"

    def write(relative: str, data: dict | str) -> Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    write("base.yaml", tiny_base(tiny_model_dir))
    return write


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model as an f16 GGUF, through llama.cpp's converter."""
    from lab2.export import convert_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "tiny.f16.gguf"
    convert_to_gguf(tiny_model_dir, out)
    return out
