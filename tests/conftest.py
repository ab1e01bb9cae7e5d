"""Shared fixtures: the offline tiny Llama, its tokenizer, and params trees in tmp."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# One compute thread per process (torch, and the kernels, converters and servers the tests start, which
# inherit it). `make test` runs two workers on two cores: with each process taking every core, OpenMP's
# spinning threads fight over them and the suite runs much slower than one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "data" / "sample_conversations.jsonl"
FAKE_TOKEN = "hf_" + "FakeTokenForTheSecretsTest0123456789abcdef"  # built here so no token-shaped string is tracked

# The files whose tests read the `swept` fixture: `make test` hands them to one xdist worker as one unit
# (pytest_xdist_make_scheduler below), so that the fixture is built once.
SWEPT_FILES = ["test_sweep.py", "test_notebook_pages.py", "test_report.py", "test_export.py", "test_app.py", "test_ray.py", "test_grade.py"]
# Run in the same unit, to even out the two workers. Measured 2026-12-04: the swept files about 280 s, the rest
# about 410 s, so the kill -9 tests (about 85 s) moved over. Measured again 2026-12-07 with grading in the swept
# unit: 421 s against 330 s, so they are back among the others (none here now).
WITH_SWEPT: list[str] = []
# Then the files that take a minute or more, longest first (measured on 2 cores): in this order
# (--no-loadscope-reorder: xdist would otherwise start the files with the most tests first), the
# longest do not start last.
SLOW_FILES = ["test_qlora.py", "test_colab.py", "test_reliability.py", "test_real_model.py", "test_unsloth.py"]


def work_unit(test_file: str) -> str:
    """What `make test` hands a worker whole: a test file, or all of SWEPT_FILES and WITH_SWEPT."""
    return "swept" if test_file in SWEPT_FILES + WITH_SWEPT else test_file


@pytest.hookimpl(tryfirst=True)  # before any fixture is set up
def pytest_runtest_setup(item):
    if "swept" in item.fixturenames and item.path.name not in SWEPT_FILES:
        pytest.fail(f"{item.path.name} reads `swept` but is not in SWEPT_FILES (on another worker it would be built again)", pytrace=False)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(["swept"] + SLOW_FILES)}
    items.sort(key=lambda item: rank.get(work_unit(item.path.name), len(rank)))  # stable: the order within a file is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with SWEPT_FILES as one unit of work."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SweptFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(Path(super()._split_scope(nodeid)).name)

    return SweptFilesTogether(config, log)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lab2.modeling import build_tiny_llama

    # Narrower than the demo model (64 vs 256) to keep the suite fast; same tokenizer and code path.
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-random-llama", hidden_size=64)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """models/tiny-random-llama, which params/tiny_random names: `make setup` builds it; built here if missing."""
    from lab2.modeling import build_tiny_llama

    path = REPO / "models" / "tiny-random-llama"
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
        "eval": {"prompts": ["What is 2 plus 2?"], "num_reference_samples": 4, "max_new_tokens": 8,
                 "ifeval_prompts": 3, "ifeval_max_new_tokens": 8,  # a few IFEval prompts and ARC questions: the plumbing,
                 "knowledge_questions": 4},                          # not a score
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
def swept(tmp_path_factory) -> Path:
    """A folder shaped like the repository after `make sweep && make report && make export`: a two-run
    demo sweep (baseline, lr_high) of the tiny model, which the sweep builds itself as on a first run
    (256 wide: K-quants need multiples of 256). Built once per session with an HF token in the
    environment, then only read; a test that changes it works on `copy_of_swept`. Relative paths, as a user
    has them: nothing in OUT may name this machine."""
    from lab2 import cli

    checkout = tmp_path_factory.mktemp("swept") / "checkout"
    (checkout / "data").mkdir(parents=True)
    shutil.copy(SAMPLE_DATA, checkout / "data" / SAMPLE_DATA.name)
    base = tiny_base(Path("models/tiny-random-llama"), max_steps=2, eval_steps=2, save_steps=2)
    base["data"]["source"] = f"data/{SAMPLE_DATA.name}"
    base["eval"]["clean_min_score"] = 3.0  # the clean yardstick, end to end: recorded by evaluation, ranked on by the report
    (checkout / "params" / "tiny_random").mkdir(parents=True)
    (checkout / "params" / "base.yaml").write_text(yaml.safe_dump(base))
    (checkout / "params" / "tiny_random" / "baseline.yaml").write_text("experiment: baseline\n")
    (checkout / "params" / "tiny_random" / "lr_high.yaml").write_text("train:\n  learning_rate: 5.0e-3\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(checkout)
        patch.setenv("HF_TOKEN", FAKE_TOKEN)  # in every kernel's environment; must reach no file in OUT
        assert cli.main(["sweep", "params/tiny_random", "--out", "outputs"]) == 0
        assert cli.main(["report", "--out", "outputs", "--sweep", "params/tiny_random"]) == 0
        assert cli.main(["export", "--out", "outputs", "--sweep", "params/tiny_random"]) == 0  # as `make export`: the report's best, in f16, q8_0 and q4_k_m
    return checkout


EXPORT_FILES = {"export.ipynb", "gguf", "merged", "export.json"}  # what `make export` adds to an experiment's folder (export.json: its record)


def copy_of_swept(swept: Path, to: Path) -> Path:
    """A copy of the swept checkout to change: its sweep the two runs again (without the report's
    exp_best_combination.yaml), its outputs without the export's files; the model folder is linked, as
    runs only read it."""
    skip = {"models", "exp_best_combination.yaml"} | EXPORT_FILES
    shutil.copytree(swept, to, symlinks=True, ignore=lambda folder, names: [n for n in names if n in skip])
    (to / "models").symlink_to(swept / "models", target_is_directory=True)
    return to
