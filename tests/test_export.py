"""GGUF export of the tiny model end to end (`make export` in the swept checkout), fidelity included, and refusals."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab2 import runs
from lab2.config import ConfigError
from lab2.export import choose_experiment
from tests.conftest import REPO


@pytest.fixture
def exported(swept) -> Path:
    """The experiment `make export` exported in the swept checkout (read only)."""
    out = swept / "outputs"
    return out / choose_experiment(out)


def test_make_export_runs_the_notebook_and_writes_three_faithful_formats(exported):
    """`make export`: export.ipynb executed for the report's best experiment (the `swept` fixture ran it)."""
    import nbformat

    name = exported.name
    export = runs.read_metrics(exported)["export"]
    formats = export["formats"]
    printed = "".join(o.get("text", "") for c in nbformat.read(exported / "export.ipynb", as_version=4).cells
                      for o in c.get("outputs", []))
    assert f"exporting {name}" in printed and "--- q4_k_m" in printed
    sizes = {fmt: formats[fmt]["size_bytes"] for fmt in formats}
    assert set(sizes) == {"f16", "q8_0", "q4_k_m"}
    for fmt in sizes:
        assert (exported / "gguf" / f"{name}.{fmt}.gguf").stat().st_size == sizes[fmt]
        assert formats[fmt]["chat_template_matches_hf"] is True and formats[fmt]["serves_embedded_template"] is True
        assert formats[fmt]["samples"] and formats[fmt]["generation_tokens_per_second"] > 0
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]
    assert formats["q4_k_m"]["reduction_vs_f16_pct"] > 50
    # Fidelity: perplexity of each GGUF against the merged HF model on the same test tokens.
    assert abs(formats["f16"]["perplexity_vs_hf_pct"]) < 1.0 and formats["f16"]["fidelity_ok"]
    assert abs(formats["q8_0"]["perplexity_vs_hf_pct"]) < 2.0 and formats["q8_0"]["fidelity_ok"]
    assert export["perplexity_samples"] == 8 and export["failed_formats"] == []
    modelfile = (exported / "gguf" / "Modelfile").read_text()
    assert f"FROM ./{name}.q4_k_m.gguf" in modelfile and 'PARAMETER stop "<|eot_id|>"' in modelfile
    generation = (exported / "merged" / "generation_config.json").read_text()
    assert '"eos_token_id": 128009' in generation
    # IFEval of the file students upload (Q4_K_M, through llama.cpp), on the prompts the run was evaluated on.
    evaluated = runs.read_metrics(exported)["eval"]["ifeval"]
    shipped = formats["q4_k_m"]["ifeval"]
    assert "ifeval" not in formats["f16"] and "ifeval" not in formats["q8_0"]
    assert shipped["prompts_fingerprint"] == evaluated["prompts_fingerprint"] and shipped["prompts"] == evaluated["prompts"] == 3
    assert [p["key"] for p in shipped["per_prompt"]] == [p["key"] for p in evaluated["per_prompt"]]
    assert all(isinstance(p["reply"], str) for p in shipped["per_prompt"])
    vs = formats["q4_k_m"]["ifeval_vs_evaluated"]
    assert vs["delta"] == pytest.approx(shipped["prompt_strict"] - evaluated["prompt_strict"]) and vs["low"] <= vs["delta"] <= vs["high"]
    assert export["merge"]["evaluated_ifeval"]["prompt_strict"] == evaluated["prompt_strict"]
    assert "IFEval vs evaluated [95 %]" in printed


def test_the_shipped_files_ifeval_is_paired_with_the_evaluated_models_on_the_same_prompts():
    """Two records of the same four prompts: the GGUF passes two the evaluated model did not, fails one it
    passed. The chain shows both shares and the paired difference (+25 pt) with an interval around it."""
    from lab2.export import export_chain, ifeval_against_evaluated
    from lab2.report import chain_frame

    def record(passed):
        return {"prompts": len(passed), "prompt_strict": sum(passed) / len(passed),
                "per_prompt": [{"key": key, "strict": ok} for key, ok in zip((1, 2, 3, 4), passed)]}

    evaluated, gguf = record([True, False, False, False]), record([False, True, True, False])
    vs = ifeval_against_evaluated(gguf, evaluated)
    assert vs["delta"] == pytest.approx(0.25) and vs["low"] < 0.25 < vs["high"]
    unpaired = ifeval_against_evaluated(record([True, True, False, False]), record([True, True, False]))  # other prompts
    assert set(unpaired) == {"delta", "low", "high"} and all(math.isnan(v) for v in unpaired.values())
    check = {"file": "m.q4_k_m.gguf", "perplexity": 2.0, "perplexity_vs_hf_pct": 1.0, "ifeval": gguf, "ifeval_vs_evaluated": vs}
    export = {"merge": {"evaluated_model": "base in bf16 + adapter", "evaluated_perplexity": 1.9, "evaluated_ifeval": evaluated,
                        "route": "as trained", "perplexity_vs_evaluated_pct": 0.1, "limit_pct": 1.0, "ok": True, "identical_answers": 1.0},
              "hf_perplexity": 1.9, "formats": {"f16": {"file": "m.f16.gguf", "perplexity": 1.9, "perplexity_vs_hf_pct": 0.0},
                                                "q4_k_m": check}}
    frame = chain_frame(export_chain(export)).set_index("step")
    assert frame.loc["evaluated", "IFEval (prompt, strict)"] == "25.0 % of 4"
    assert frame.loc["q4_k_m", "IFEval (prompt, strict)"] == "50.0 % of 4"
    assert frame.loc["q4_k_m", "IFEval vs evaluated [95 %]"].startswith("+25.0 pt [")
    assert frame.loc["f16", "IFEval (prompt, strict)"] == frame.loc["merged", "IFEval vs evaluated [95 %]"] == ""
    del export["formats"]["q4_k_m"], export["merge"]["evaluated_ifeval"]
    assert "IFEval (prompt, strict)" not in chain_frame(export_chain(export)).columns  # no IFEval scored: the table as it was


def test_a_format_outside_its_band_fails_make_export_in_one_line(exported, tmp_path):
    """Planted: q8_0's recorded perplexity 5 % *below* the HF model's (a drop is as suspect as a rise)."""
    from lab2.export import fidelity_failures

    name, out = exported.name, tmp_path / "outputs"
    copy = out / name
    shutil.copytree(exported, copy, ignore=shutil.ignore_patterns("merged", "checkpoints", "adapter"))
    metrics = runs.read_metrics(copy)
    metrics["export"]["formats"]["q8_0"]["perplexity_vs_hf_pct"] = -5.0
    runs.write_record(copy, "export", {**metrics["export"], "config_hash": metrics["config_hash"]})
    assert fidelity_failures({"formats": {"f16": {"perplexity_vs_hf_pct": 1.5}}}) == [
        "f16 perplexity +1.50 % vs the merged HF model, outside ±1 %"]
    result = subprocess.run([sys.executable, "-m", "lab2", "export", "--exp", name, "--out", str(out),
                             "--formats", "f16", "q8_0", "q4_k_m"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: export failed its fidelity check: q8_0 perplexity -5.00 % vs the merged HF model, outside ±2 % "
        "(files kept, marked failed in metrics.json)")
    table = result.stdout.splitlines()
    assert any(line.startswith("q8_0") and "FAILED" in line for line in table)
    assert any(line.startswith("f16") and " ok " in line for line in table)
    assert (copy / "gguf" / f"{name}.q8_0.gguf").is_file()  # the files stay
    assert runs.read_metrics(copy)["export"]["formats"]["q8_0"]["fidelity_ok"] is False
    assert runs.read_metrics(exported)["export"]["formats"]["q8_0"]["fidelity_ok"] is True  # the original untouched


def test_export_follows_todays_params_and_redoes_only_what_changed(swept, tmp_path, monkeypatch, capsys):
    """Export, change eval.prompts in the params, export again: the new prompts are recorded and checked;
    a third export with nothing changed does no work. A changed training section is refused in one line."""
    import yaml

    from lab2.config import load_config
    from lab2.export import export_experiment, export_settings, served_gguf
    from tests.conftest import copy_of_swept

    checkout = copy_of_swept(swept, tmp_path / "checkout")
    monkeypatch.chdir(checkout)
    out, sweep = Path("outputs"), "params/tiny_random"
    name = choose_experiment(out)
    with pytest.raises(ConfigError, match="not exported yet; `make export` writes its GGUF files"):
        served_gguf(out)
    app = subprocess.run([sys.executable, str(REPO / "app.py"), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert app.returncode == 1 and app.stderr.strip() == f"error: outputs/{name}: not exported yet; `make export` writes its GGUF files"
    first = export_experiment(out / name, ["f16", "q4_k_m"], 4, sweep)
    assert first["settings"]["prompts"] == ["What is 2 plus 2?"] and first["merge"]["evaluated_source"] == "the recorded evaluation"
    assert served_gguf(out) == out / name / "gguf" / f"{name}.q4_k_m.gguf"

    params = Path("params/base.yaml")
    base = yaml.safe_load(params.read_text())
    base["eval"]["prompts"], base["eval"]["ifeval_prompts"] = ["Name a colour."], 2
    params.write_text(yaml.safe_dump(base))
    before = (out / name / "gguf" / f"{name}.q4_k_m.gguf").stat().st_mtime_ns
    second = export_experiment(out / name, ["f16", "q4_k_m"], 4, sweep)
    assert "exporting again: prompts, ifeval_prompts changed" in capsys.readouterr().out
    recorded = runs.read_metrics(out / name)["export"]
    assert recorded["settings"]["prompts"] == second["settings"]["prompts"] == ["Name a colour."]
    assert [s["prompt"] for s in recorded["hf_samples"]] == ["Name a colour."]
    assert [s["prompt"] for s in recorded["formats"]["q4_k_m"]["samples"]] == ["Name a colour."]
    # The evaluation answered the old prompts, so the model as evaluated was measured again on the new ones.
    assert recorded["merge"]["evaluated_source"].startswith("measured at export") and recorded["merge"]["ok"]
    # Its evaluation scored 3 IFEval prompts: the model as evaluated and the Q4_K_M file are scored on today's 2.
    assert recorded["merge"]["evaluated_ifeval"]["prompts"] == recorded["formats"]["q4_k_m"]["ifeval"]["prompts"] == 2
    assert recorded["merge"]["evaluated_ifeval"]["source"] == "measured at export"
    assert (out / name / "gguf" / f"{name}.q4_k_m.gguf").stat().st_mtime_ns > before
    assert recorded["export_key"] != first["export_key"]

    files = {p: p.stat().st_mtime_ns for p in (out / name / "gguf").iterdir()}
    third = export_experiment(out / name, ["f16", "q4_k_m"], 4, sweep)
    assert "already exported (f16, q4_k_m) with these settings" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / name / "gguf").iterdir()} == files and third["export_key"] == second["export_key"]

    # export.merge_base is part of what an export depends on; a training setting is not the export's to change.
    cfg = load_config(Path(sweep) / f"{name}.yaml")
    other = cfg.model_copy(update={"export": cfg.export.model_copy(update={"merge_base": "original"})})
    assert export_settings(other, ["f16"], 4) != export_settings(cfg, ["f16"], 4)
    base["train"]["max_steps"] = 3
    params.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match=f"{name}: its params changed since it trained .*; `make sweep` retrains it, then export"):
        export_experiment(out / name, ["f16", "q4_k_m"], 4, sweep)


def fake_run(root, experiment, val_loss, group=None, seed=3407, fingerprint="same", status="complete"):
    from lab2.config import ExperimentConfig

    config = ExperimentConfig(experiment=experiment, group=group, train={"seed": seed}).to_dict()
    runs.write_json_atomic(root / experiment / "metrics.json", {
        "experiment": experiment, "status": status, "config": config,
        "train": {"total_steps": 60, "final_loss": 1.0, "final_eval_loss": 9.0, "training_time_seconds": 1.0,
                  "tokens_per_second": 1.0, "peak_memory_mb": 1.0},
        "eval": {"val_loss": val_loss, "split_fingerprint": fingerprint}})


def test_choose_experiment_takes_the_reports_best(tmp_path):
    """The report ranks configurations by mean over seeds on the baseline's split; export and app take
    its best, not the single luckiest run, nor a run measured on other data."""
    for seed, loss in [(1, 0.90), (2, 1.30), (3, 1.30)]:  # mean 1.17: one lucky seed
        fake_run(tmp_path, f"baseline-seed{seed}", loss, group="baseline", seed=seed)
    fake_run(tmp_path, "rank_32", 1.00)
    fake_run(tmp_path, "rank_32-seed7", 0.99, group="rank_32b", seed=7)
    fake_run(tmp_path, "other_data", 0.50, fingerprint="different")  # another split: never ranked
    fake_run(tmp_path, "broken", 0.10, status="failed")
    assert choose_experiment(tmp_path) == "rank_32-seed7"
    shutil.rmtree(tmp_path / "rank_32-seed7")
    assert choose_experiment(tmp_path) == "rank_32"
    assert choose_experiment(tmp_path, "baseline-seed2") == "baseline-seed2"
    with pytest.raises(ConfigError, match=r"EXP=nope: no complete experiment of that name .*\(complete: baseline-seed1, "):
        choose_experiment(tmp_path, "nope")
    with pytest.raises(ConfigError, match="no complete experiment to export"):
        choose_experiment(tmp_path / "empty")


def test_make_export_with_an_unknown_experiment_fails_in_one_line_and_touches_nothing(tmp_path):
    runs.write_json_atomic(tmp_path / "a" / "metrics.json", {"status": "complete", "train": {"final_eval_loss": 1.0}})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "lab2", "export", "--exp", "nope", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: EXP=nope: no complete experiment of that name in {tmp_path}/ (complete: a)"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
