"""The T4 recipe's QLoRA on this CPU: nf4 weights through bitsandbytes' CPU library, trained, reloaded,
evaluated (the base with the adapter off) and exported with the chain check (evaluated -> merged -> GGUF)."""

import shutil
import subprocess
import sys

import pytest
import torch

from lab2 import cli, export, modeling, runs
from lab2.config import ExperimentConfig, load_config
from tests.conftest import tiny_base

QLORA = {"model": {"load_in_4bit": True}, "train": {"optimizer": "adamw_8bit", "gradient_checkpointing": True}}


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, tiny_model_dir):
    """A 4-bit tiny-model sweep of one run (train.ipynb, evaluate.ipynb), then `make export`'s f16 and q8_0."""
    import yaml

    root = tmp_path_factory.mktemp("qlora")
    base = tiny_base(tiny_model_dir, max_steps=6, eval_steps=3, save_steps=3)
    base["model"].update(QLORA["model"])
    base["train"].update(QLORA["train"], optimizer="paged_adamw_8bit")  # the kill -9 test runs adamw_8bit
    (root / "params" / "q").mkdir(parents=True)
    (root / "params" / "base.yaml").write_text(yaml.safe_dump(base))
    (root / "params" / "q" / "qlora.yaml").write_text("experiment: qlora\n")
    out = root / "outputs"
    assert cli.main(["sweep", str(root / "params" / "q"), "--out", str(out)]) == 0
    assert cli.main(["export", "--out", str(out), "--exp", "qlora", "--formats", "f16", "q8_0"]) == 0
    return out / "qlora"


def test_load_in_4bit_gives_linear4bit_layers_on_cpu_without_a_warning(tiny_model_dir, recwarn):
    cfg = ExperimentConfig(experiment="q", model={"name": str(tiny_model_dir), "dtype": "float32", **QLORA["model"]},
                           lora={"r": 4, "alpha": 8}, train=QLORA["train"])
    model = modeling.load_trainable_model(cfg)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds and not any("4bit" in str(w.message) for w in recwarn)
    assert modeling.precision_of(model) == {"weights": "nf4", "compute_dtype": "float32", "quantized_linear_layers": 14,
                                            "double_quant": True}  # 2 layers x 7 projections; the LM head stays
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_where_4bit_cannot_load_it_says_so_in_one_line_and_records_fp32(tiny_model_dir, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    modeling._say_once.cache_clear()
    section = ExperimentConfig(experiment="q", model={"name": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": True}).model
    model = modeling.load_base_model(section)
    printed = [line for line in capsys.readouterr().out.splitlines() if "load_in_4bit" in line]
    assert printed == [f"model.load_in_4bit: bitsandbytes is not installed (the training stage installs it: `python -m lab2.install "
                       f"training`); loading {tiny_model_dir} unquantised in torch.float32 (metrics.json records the precision used)"]
    assert modeling.precision_of(model)["weights"] == "float32" and modeling.precision_of(model)["quantized_linear_layers"] == 0


def test_a_4bit_run_trains_reloads_and_evaluates_the_base_with_the_adapter_off(qlora_run):
    metrics = runs.read_metrics(qlora_run)
    assert metrics["status"] == "complete" and metrics["precision"]["weights"] == "nf4"
    assert metrics["eval"]["precision"] == metrics["precision"]  # the evaluation describes the model trained
    history = [h["loss"] for h in metrics["train"]["history"]]
    evals = [e["eval_loss"] for e in metrics["train"]["eval_history"]]
    assert len(history) == 6 and all(map(torch.isfinite, torch.tensor(history)))
    assert evals[-1] < metrics["eval"]["base"]["val_loss"]  # training moved it, on 4-bit weights
    # The adapter trained in fp32 (TRL 1.15 would have cast it to bf16 for a quantised model; train.keep_adapter_in_fp32).
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(qlora_run / "adapter" / "adapter_model.safetensors").values()} == {torch.float32}
    assert metrics["eval"]["val_loss"] != metrics["eval"]["base"]["val_loss"]

    # Reloading the finished run (what evaluate.ipynb does): the saved adapter on a 4-bit base.
    from lab2 import data, train

    cfg = ExperimentConfig.model_validate(metrics["config"])
    tokenizer = modeling.load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = data.build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    model, _ = train.trained_model(cfg, tokenizer, splits, qlora_run, train_if_needed=False)
    assert modeling.precision_of(model)["weights"] == "nf4"
    from lab2.evaluate import response_loss

    assert response_loss(model, splits.validation, tokenizer.pad_token_id)["loss"] == pytest.approx(metrics["eval"]["val_loss"], rel=1e-5)


def test_the_export_chain_checks_the_merge_against_the_model_that_was_evaluated(qlora_run):
    recorded = runs.read_metrics(qlora_run)
    e = recorded["export"]
    assert e["merge"]["route"] == "dequantized" and e["merge"]["evaluated_source"] == "the recorded evaluation"
    assert e["merge"]["evaluated_precision"]["weights"] == "nf4"
    assert abs(e["merge"]["perplexity_vs_evaluated_pct"]) < 1.0 and e["merge"]["ok"] is True
    assert [row["step"] for row in e["chain"]] == ["evaluated", "merged", "f16", "q8_0"]
    assert e["chain"][1]["against"] == "evaluated" and e["chain"][2]["against"] == "merged"
    assert e["merge"]["identical_answers"] == 1.0  # the same model, so the same greedy answers
    # The merged model is plain fp16: nothing in it asks a reader for 4-bit weights.
    assert "quantization_config" not in (qlora_run / "merged" / "config.json").read_text()
    table = export.chain_table(e).splitlines()
    assert table[1].startswith("evaluated") and "base in nf4 + adapter" in table[1]
    assert table[2].startswith("merged") and " ok " in table[2]


def test_a_bad_merge_fails_make_export_in_one_line(qlora_run, tmp_path):
    """Planted: the adapter on disk scaled by 3 after its evaluation (the merge no longer gives the model evaluated)."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "outputs" / "qlora"
    shutil.copytree(qlora_run, copy, ignore=shutil.ignore_patterns("merged", "gguf", "checkpoints"))
    runs.record_path(copy, "export").unlink()  # not exported yet
    assert "export" not in runs.read_metrics(copy)
    weights = load_file(copy / "adapter" / "adapter_model.safetensors")
    save_file({k: v * 3 if "lora_B" in k else v for k, v in weights.items()}, copy / "adapter" / "adapter_model.safetensors")
    result = subprocess.run([sys.executable, "-m", "lab2", "export", "--exp", "qlora", "--out", str(copy.parent), "--formats", "f16"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: export failed its fidelity check: merged model perplexity ") and "vs the model as evaluated, outside ±1 %" in last
    after = runs.read_metrics(copy)["export"]
    assert after["merge"]["ok"] is False and after["chain"][1]["ok"] is False
    assert (copy / "gguf" / "qlora.f16.gguf").is_file()  # the files stay
    assert any(line.startswith("merged") and "FAILED" in line for line in result.stdout.splitlines())


def test_a_4bit_params_file_validates_and_merge_base_is_not_part_of_the_config_hash(params_tree):
    params = params_tree("q/q.yaml", {"experiment": "q", **QLORA, "export": {"merge_base": "original"}})
    other = params_tree("q/r.yaml", {"experiment": "q", **QLORA})
    assert load_config(params).config_hash == load_config(other).config_hash  # another merge re-exports, never retrains
    assert load_config(params).export.merge_base == "original"


def test_the_report_shows_the_weights_and_the_export_chain(qlora_run):
    out = qlora_run.parent
    assert cli.main(["report", "--out", str(out), "--sweep", str(out.parent / "params" / "q")]) == 0
    text = (out / "EXPERIMENT_REPORT.md").read_text()
    full = text.split("## Experiments (best first), every column", 1)[1].splitlines()  # the table of every registry column
    header = next(line for line in full if line.startswith("| group |"))
    row = next(line for line in full if line.startswith("| qlora |"))
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))
    assert cells["weights"] == "nf4" and float(cells["s/step"]) > 0 and float(cells["weights MB"]) > 0
    chain = text.split("## Export: from the model evaluated to each GGUF", 1)[1]
    assert "| evaluated | base in nf4 + adapter |" in chain and "| merged | merged (dequantized), saved in fp16 |" in chain
    assert "| f16 | qlora.f16.gguf |" in chain and "| q8_0 | qlora.q8_0.gguf |" in chain
    executed = (out / "report.ipynb").read_text()
    assert "base in nf4 + adapter" in executed  # the notebook's own table of the chain


def test_the_merge_route_follows_the_precision_the_run_recorded():
    qlora = ExperimentConfig(experiment="q", model=QLORA["model"])
    lora = ExperimentConfig(experiment="l", model={"load_in_4bit": False})
    original = ExperimentConfig(experiment="q", model=QLORA["model"], export={"merge_base": "original"})
    assert export.merge_route(qlora, {"precision": {"weights": "nf4"}}) == "dequantized"
    assert export.merge_route(original, {"precision": {"weights": "nf4"}}) == "original"
    assert export.merge_route(qlora, {"precision": {"weights": "float32"}}) == "as trained"  # asked for 4-bit, could not
    assert export.merge_route(lora, {"precision": {"weights": "float16"}}) == "as trained"
    # Runs from before `precision` was recorded: a CPU loaded load_in_4bit unquantised, a GPU in nf4.
    assert export.merge_route(qlora, {"env": {"device": "cpu (2 cores)"}}) == "as trained"
    assert export.merge_route(qlora, {"env": {"device": "Tesla T4"}}) == "dequantized"
