"""The report's arithmetic on runs whose answers are known by hand."""

import math

import pytest

from lab2 import runs
from lab2.config import ExperimentConfig
from lab2.html_pages import notebooks_to_html
from lab2.report import GENERATED_MARK, Report, write_best_combination, write_report


CONVERSATIONS, ITEMS = 16, 20
PATTERN = [0.3 * math.sin(i) for i in range(CONVERSATIONS)]  # conversations differ; a run shifts them all


def _validation(val_loss: float, wobble: float = 0.0) -> dict:
    """16 validation conversations of 10 reply tokens, whose aggregate loss is exactly `val_loss`; `wobble`
    moves them up and down in turn, by run, so a paired interval can straddle zero."""
    centre = sum(PATTERN) / CONVERSATIONS
    per_token = [val_loss + x - centre + (wobble if i % 2 else -wobble) for i, x in enumerate(PATTERN)]
    return {"nll": [10 * x for x in per_token], "tokens": [10] * CONVERSATIONS}


def _references(right: int, output: str, base: bool = False) -> list[dict]:
    """20 one-answer test items: the first `right` answered right (the base model's: the last ones)."""
    rows = []
    for i in range(ITEMS):
        correct = (i >= ITEMS - right) if base else (i < right)
        prompt, reference = ("What is 2 plus 3?", "2 plus 3 is 5.") if i == 0 else (f"Question {i}?", f"Answer {i}.")
        rows.append({"prompt": prompt, "reference": reference, "output": output if i == 0 else ("right" if correct else "wrong"),
                     "answer": "5" if i == 0 else str(i), "correct": correct})
    return rows


PROMPTS = 24


def _ifeval(passed: int, base: bool = False) -> dict:
    """IFEval on 24 prompts (keys 1000..1023): the first `passed` followed strictly (the base model's: the last ones)."""
    strict = [(i >= PROMPTS - passed) if base else (i < passed) for i in range(PROMPTS)]
    return {"prompts": PROMPTS, "prompt_strict": passed / PROMPTS, "prompt_loose": passed / PROMPTS, "instruction_strict": passed / PROMPTS,
            "instruction_loose": passed / PROMPTS, "per_prompt": [{"key": 1000 + i, "strict": s, "loose": s} for i, s in enumerate(strict)]}


QUESTIONS = 40


def _knowledge(right: int) -> dict:
    """The knowledge benchmark on 40 questions: the first `right` answered right (acc_norm)."""
    return {"task": "arc_easy", "questions": QUESTIONS, "acc": right / QUESTIONS, "acc_norm": right / QUESTIONS,
            "per_question": [{"id": f"q{i}", "acc": float(i < right), "acc_norm": float(i < right)} for i in range(QUESTIONS)]}


def _run(out, name, val_loss, group=None, seed=3407, fingerprint="split-A", wobble=0.0, ifeval=6, knowledge=None, **config):
    cfg = ExperimentConfig(experiment=name, group=group, **{"train": {"seed": seed}, **config}).to_dict()
    right = round(ITEMS * (1.0 - val_loss / 4))  # exact match follows the loss, in whole answers
    # also vary the inputs that should never be compared directly (train loss)
    metrics = {
        "experiment": name, "status": "complete", "config": cfg, "config_hash": "h",
        "data": {"fingerprint": fingerprint},
        "train": {"final_loss": val_loss - 0.5, "final_eval_loss": val_loss, "total_steps": cfg["train"]["max_steps"],
                  "training_time_seconds": cfg["train"]["max_steps"] * 1.0, "tokens_per_second": 100.0, "peak_memory_mb": 1000.0,
                  "history": [{"step": 1, "loss": 2.0}], "eval_history": [{"step": 1, "eval_loss": val_loss}]},
        "eval": {"val_loss": val_loss, "test_loss": val_loss + 0.01, "perplexity": math.exp(val_loss + 0.01), "bleu": 1.0,
                 "rouge_l": 0.1, "exact_match": right / ITEMS, "exact_match_items": ITEMS, "split_fingerprint": fingerprint,
                 "per_conversation": {"validation": _validation(val_loss, wobble)},
                 "samples": [{"prompt": "What is the capital of France?", "output": f"Paris ({name})"}],
                 "references": _references(right, "2 plus 3 is 5."), "ifeval": _ifeval(ifeval),
                 "base": {"val_loss": 3.0, "test_loss": 3.1, "perplexity": math.exp(3.1), "bleu": 0.0, "rouge_l": 0.0, "exact_match": 0.1,
                          "exact_match_items": ITEMS, "samples": [{"prompt": "What is the capital of France?", "output": "It is Paris."}],
                          "references": _references(2, "2 + 3 = 6", base=True), "ifeval": _ifeval(2, base=True)}},
    }
    if knowledge is not None:  # the base model knows 28 of the 40
        metrics["eval"]["knowledge"], metrics["eval"]["base"]["knowledge"] = _knowledge(knowledge), _knowledge(28)
    runs.write_json_atomic(out / name / "metrics.json", metrics)


@pytest.fixture
def outputs(tmp_path):
    out = tmp_path / "outputs"
    for seed, loss in [(1, 2.00), (2, 2.02), (3, 1.98)]:  # baseline: mean 2.00, std 0.02
        _run(out, f"baseline-seed{seed}", loss, group="baseline", seed=seed)
    _run(out, "lr_high", 1.99, train={"learning_rate": 5e-4})  # -0.5 %: inside 2 sigma = 0.04
    _run(out, "rank_32", 1.90, lora={"r": 32, "alpha": 32})  # -5 %: a real gain
    _run(out, "steps_30", 2.40, train={"max_steps": 30, "eval_steps": 10, "save_steps": 10})
    _run(out, "steps_120", 1.80, train={"max_steps": 120})
    _run(out, "steps_240", 1.75, train={"max_steps": 240})
    _run(out, "other_data", 1.50, fingerprint="split-B")  # looks best, but on other data
    runs.write_json_atomic(out / "broken" / "metrics.json", {"experiment": "broken", "status": "failed", "error": "NaN"})
    return out


def test_groups_noise_and_verdicts(outputs):
    rep = Report(outputs)
    assert rep.baseline == "baseline"
    base = rep.groups.set_index("group").loc["baseline"]
    assert base["seeds"] == 3 and base["val_loss"] == pytest.approx(2.0) and base["val_loss_std"] == pytest.approx(0.02)
    assert rep.noise == pytest.approx(0.02)  # pooled over the only repeated group
    verdicts = dict(zip(rep.ranked["group"], rep.ranked["verdict"]))
    assert verdicts == {"baseline": "baseline", "lr_high": "within noise", "rank_32": "better",
                        "steps_30": "worse", "steps_120": "better", "steps_240": "better"}
    change = dict(zip(rep.ranked["group"], rep.ranked["val_loss_vs_base_pct"]))
    assert change["rank_32"] == pytest.approx(-5.0)
    assert list(rep.ranked["group"])[0] == "steps_240"  # ranked by validation loss, best first


def test_other_split_is_refused_and_failures_listed(outputs):
    rep = Report(outputs)
    assert "other_data" not in set(rep.ranked["group"])
    assert list(rep.other_split["group"]) == ["other_data"]
    assert [m["experiment"] for m in rep.unfinished] == ["broken"]
    assert rep.base_model["test_loss"] == 3.1
    assert rep.table()["group"].iloc[-1] == "base model (no adapter)"


def test_findings_are_computed_from_the_data(outputs):
    text = "\n".join(Report(outputs).findings)
    assert "sigma = 0.0200 (1.00 % of the baseline's)" in text
    assert "The factor that moved validation loss most is steps" in text  # 2.40 -> 1.75 spans 0.65
    assert "Then: rank (0.1000), lr (0.0100)" in text
    assert "Returns diminish for steps" in text  # 30->60 gained 0.4/30 steps, 120->240 only 0.05/120
    assert ("lr_high: validation loss per token -0.50 % vs baseline; on the same conversations -0.0100 [-0.0100, -0.0100] "
            "(95 % bootstrap interval): within noise (the paired interval excludes zero, but the difference is under 2 sigma of "
            "seed noise (0.0400))." in text)
    assert "Best configuration: steps_240" in text


def test_at_a_glance_five_findings_in_the_order_a_student_needs_them(outputs):
    """What helped beyond the noise and by how much, what hurt, the best configuration, fine-tuned against
    base, what is not settled: worked out by hand from the fixture (baseline 2.00, sigma 0.02)."""
    assert Report(outputs).glance == [
        "Helped beyond the noise (2 sigma of seed noise, 0.0400, and the paired interval): steps_240 -12.5 %, paired -0.2500 "
        "[-0.2500, -0.2500]; steps_120 -10.0 %, paired -0.2000 [-0.2000, -0.2000]; rank_32 -5.0 %, paired -0.1000 [-0.1000, -0.1000].",
        "Hurt beyond the noise: steps_30 +20.0 %, paired +0.4000 [+0.4000, +0.4000].",
        "Best configuration: steps_240, validation loss per token 1.7500 against the baseline's 2.0000.",
        "Fine-tuned against the base model (adapter off): validation loss per token 3.0000 -> 2.0000 for the baseline (-33.3 %); "
        "exact match 10% -> 50% of 20 items (+40.0 pt [+10.0, +70.0]: higher); IFEval 8% -> 25% of 24 prompts "
        "(+16.7 pt [-4.2, +37.5]: no difference shown, the interval includes zero).",
        "Not settled: lr_high (-0.5 %, within the noise).",
    ]


def test_without_repeats_the_glance_says_noise_unknown_and_claims_nothing(tmp_path):
    out = tmp_path / "outputs"
    _run(out, "baseline", 2.00)
    _run(out, "rank_32", 1.90, lora={"r": 32, "alpha": 32})
    glance = Report(out).glance
    assert glance[0].startswith("Noise unknown: no configuration was repeated over seeds")
    assert not any(line.startswith(("Helped", "Hurt")) for line in glance)
    assert glance[-1] == "Not settled: rank_32 (-5.0 %, noise unknown)."


def test_one_verdict_per_row_by_one_rule(outputs, tmp_path):
    """The verdict's cases, by hand. Nothing repeated: "noise unknown" where the paired interval excludes zero,
    "unclear" where it includes it, never better or worse. With seed noise (sigma 0.02): an interval that
    excludes zero but a difference under 2 sigma is "within noise"; both agreeing is better or worse; beyond
    the seed noise but with an interval that includes zero is "unclear"."""
    single = tmp_path / "single"
    _run(single, "baseline", 2.00)
    _run(single, "rank_32", 1.90, lora={"r": 32, "alpha": 32})  # -0.1 on every conversation
    _run(single, "lr_high", 1.99, wobble=0.5, train={"learning_rate": 5e-4})  # -0.01 overall, +-0.5 by conversation
    rep = Report(single)
    rows = rep.ranked.set_index("group")
    assert rep.noise is None
    assert rows.loc["rank_32", "paired_high"] < 0 and rows.loc["rank_32", "verdict"] == "noise unknown"
    assert rows.loc["lr_high", "paired_low"] < 0 < rows.loc["lr_high", "paired_high"] and rows.loc["lr_high", "verdict"] == "unclear"
    assert rows.loc["lr_high", "verdict_why"] == "the paired interval includes zero"
    md = write_report(rep, single, None).read_text()
    assert "noise unknown" in md and not {"better", "worse"} & set(rep.ranked["verdict"])
    short_rows = [line for line in md.split("## All findings")[0].splitlines() if line.startswith("| rank_32 |") or line.startswith("| lr_high |")]
    assert len(short_rows) == 2 and not any("| better |" in line or "| worse |" in line for line in short_rows)

    rows = Report(outputs).ranked.set_index("group")
    lr_high = rows.loc["lr_high"]  # -0.01 on every conversation: the interval excludes zero, 0.01 < 2 sigma = 0.04
    assert lr_high["paired_high"] < 0 and lr_high["verdict"] == "within noise"
    assert lr_high["verdict_why"].startswith("the paired interval excludes zero, but the difference is under 2 sigma of seed noise (0.0400)")
    assert rows.loc["rank_32", "paired_high"] < 0 and rows.loc["rank_32", "verdict"] == "better"  # both agree
    assert rows.loc["steps_30", "paired_low"] > 0 and rows.loc["steps_30", "verdict"] == "worse"

    _run(outputs, "wobbly", 1.90, wobble=0.8, train={"learning_rate": 3e-4})  # -0.1 (5 sigma), but +-0.8 by conversation
    rows = Report(outputs).ranked.set_index("group")
    assert rows.loc["wobbly", "paired_low"] < 0 < rows.loc["wobbly", "paired_high"] and rows.loc["wobbly", "verdict"] == "unclear"


def test_exact_match_carries_its_items_and_paired_intervals(outputs):
    """steps_240 answers 11 of 20 against the baseline's 10 and the base model's 2: +5 points on one answer
    is no difference shown; +45 points against the base model is."""
    rep = Report(outputs)
    rows = rep.ranked.set_index("group")
    best = rows.loc["steps_240"]
    assert best["exact_match_cell"] == "55.0 % of 20"
    assert best["em_paired_delta"] == pytest.approx(0.05) and best["em_paired_low"] <= 0 <= best["em_paired_high"]
    assert best["em_paired_verdict"] == "unclear"
    assert best["em_vs_base_delta"] == pytest.approx(0.45) and best["em_vs_base_low"] > 0 and best["em_vs_base_verdict"] == "better"
    assert rows.loc["baseline", "em_paired_verdict"] == "baseline"
    table = report_formatted(rep)
    assert table.loc["steps_240", "exact match"] == "55.0 % of 20" and table.loc["base model (no adapter)", "exact match"] == "10.0 % of 20"
    assert table.loc["steps_240", "exact match vs baseline [95 %]"].startswith("+5.0 pt [")


def test_ifeval_beside_the_loss_with_paired_intervals_and_the_one_verdict(outputs):
    """Every run passes 6 of 24 prompts (the baseline's three seeds alike: seed noise 0), rank_32 10, the base
    model 2 others. rank_32 against the baseline: +4 prompts, each up by one: better. The baseline against
    the base model: 6 up and 2 down, +16.7 points with an interval that includes zero: unclear."""
    _run(outputs, "rank_32", 1.90, ifeval=10, lora={"r": 32, "alpha": 32})
    rep = Report(outputs)
    rows = rep.ranked.set_index("group")
    assert rows.loc["rank_32", "ifeval"] == pytest.approx(10 / 24) and rows.loc["rank_32", "ifeval_cell"] == "41.7 % of 24"
    assert rows.loc["rank_32", "ifeval_paired_delta"] == pytest.approx(4 / 24) and rows.loc["rank_32", "ifeval_paired_low"] > 0
    assert rows.loc["rank_32", "ifeval_paired_verdict"] == "better"
    base = rows.loc["baseline"]
    assert base["ifeval_vs_base_delta"] == pytest.approx(4 / 24) and base["ifeval_vs_base_low"] < 0 < base["ifeval_vs_base_high"]
    assert base["ifeval_vs_base_verdict"] == "unclear" and base["ifeval_paired_verdict"] == "baseline"
    assert rep.base_model["ifeval"] == pytest.approx(2 / 24)
    table = report_formatted(rep)
    assert table.loc["base model (no adapter)", "IFEval (prompt, strict)"] == "8.3 % of 24"
    assert table.loc["rank_32", "IFEval vs baseline [95 %]"].startswith("+16.7 pt [+")
    text = "\n".join(rep.findings)
    assert "on the same 24 prompts for every run and the base model: one prompt is 4.2 points" in text
    assert "rank_32: IFEval (prompt level, strict) base model 8.3% -> 41.7% (against the base model +33.3 pt [" in text
    assert "against the baseline +16.7 pt [" in text and "]: higher)." in text
    fine_tuned = next(line for line in rep.glance if line.startswith("Fine-tuned against the base model"))
    assert fine_tuned.endswith("; IFEval 8% -> 25% of 24 prompts (+16.7 pt [" + fine_tuned.split("(+16.7 pt [")[1])
    assert "no difference shown, the interval includes zero)." in fine_tuned
    md = write_report(rep, outputs, None).read_text()
    assert "IFEval vs base [95 %]" in md.split("## All findings")[0]  # in the short table, beside the loss
    assert (outputs / "report_figures" / "IFEval_against_the_base_model.png").stat().st_size > 1000


def test_knowledge_kept_or_lost_against_the_base_model_on_the_same_questions(tmp_path):
    """The base model knows 28 of 40 questions. The baseline's three seeds know the first 20 alike (seed noise
    0): 8 questions lost, every one the same way, so the interval excludes zero: worse, knowledge lost.
    rank_32 knows the same 28 as the base model: no difference."""
    out = tmp_path / "outputs"
    for seed, loss in [(1, 2.00), (2, 2.02), (3, 1.98)]:
        _run(out, f"baseline-seed{seed}", loss, group="baseline", seed=seed, knowledge=20)
    _run(out, "rank_32", 1.90, knowledge=28, lora={"r": 32, "alpha": 32})
    rep = Report(out)
    rows = rep.ranked.set_index("group")
    assert rows.loc["baseline", "knowledge_vs_base_delta"] == pytest.approx(-8 / 40) and rows.loc["baseline", "knowledge_vs_base_high"] < 0
    assert rows.loc["baseline", "knowledge_vs_base_verdict"] == "worse" and rows.loc["rank_32", "knowledge_vs_base_verdict"] == "unclear"
    assert rows.loc["rank_32", "knowledge_paired_delta"] == pytest.approx(8 / 40) and rows.loc["rank_32", "knowledge_paired_verdict"] == "better"
    assert rep.base_model["knowledge"] == pytest.approx(0.7) and rep.base_model["knowledge_questions"] == 40
    table = report_formatted(rep)
    assert table.loc["baseline", "knowledge (ARC, acc_norm)"] == "50.0 % of 40"
    assert table.loc["base model (no adapter)", "knowledge (ARC, acc_norm)"] == "70.0 % of 40"
    assert table.loc["baseline", "knowledge vs base [95 %]"].startswith("-20.0 pt [-")
    text = "\n".join(rep.findings)
    assert "the same 40 for every run and the base model; one question is 2.5 points" in text
    assert "Fine-tuning cost knowledge beyond the noise: baseline." in text
    assert "baseline: knowledge (ARC, acc_norm) base model 70.0% -> 50.0% (against the base model -20.0 pt [" in text and "]: lower)" in text
    fine_tuned = next(line for line in rep.glance if line.startswith("Fine-tuned against the base model"))
    assert "; knowledge 70% -> 50% of 40 questions (-20.0 pt [" in fine_tuned
    md = write_report(rep, out, None).read_text()
    assert "knowledge 70% -> 50% of 40 questions" in md.split("## All findings")[0]  # at a glance, in the line on the base model
    assert "knowledge vs base [95 %]" in md.split("## Experiments (best first), every column")[1].split("## Figures")[0]
    assert (out / "report_figures" / "knowledge_against_the_base_model.png").stat().st_size > 1000


def test_the_minimum_detectable_difference_is_the_larger_of_the_seed_band_and_the_paired_intervals():
    """Paired intervals 0.2, 0.4 and 0.6 wide: a standard error of 0.4 / 3.92 from the median, 2.8 of them 0.2857.
    With a seed sigma of 0.2 the verdict's band (0.4) is larger and decides; with no repeats the intervals alone."""
    import pandas as pd

    from lab2.comparison import minimum_detectable_difference

    ranked = pd.DataFrame({"group": ["baseline", "a", "b", "c"], "paired_low": [math.nan, -0.5, -0.1, 0.0],
                           "paired_high": [math.nan, -0.3, 0.3, 0.6]})
    found = minimum_detectable_difference(ranked, 0.2)
    assert found["paired_standard_error"] == pytest.approx(0.4 / 3.92) and found["interval_band"] == pytest.approx(2.8 * 0.4 / 3.92)
    assert found["seed_band"] == pytest.approx(0.4) and found["mdd"] == pytest.approx(0.4)
    assert minimum_detectable_difference(ranked, None)["mdd"] == pytest.approx(0.2857, abs=1e-4)
    assert minimum_detectable_difference(ranked.iloc[:1], 0.2) is None  # nothing compared


def test_the_report_states_what_its_design_can_detect(outputs):
    rep = Report(outputs)
    from lab2.comparison import minimum_detectable_difference

    found = minimum_detectable_difference(rep.ranked, rep.noise)
    assert found["seed_band"] == pytest.approx(2 * 0.02) and found["mdd"] == max(found["seed_band"], found["interval_band"])
    assert rep.detectable.startswith(f"Minimum detectable difference, measured by this sweep: about {found['mdd']:.4f} nats per token")
    assert rep.findings[2] == rep.detectable  # right after the seed noise it is built from
    md = write_report(rep, outputs, None).read_text()
    assert rep.detectable in md.split("| group |")[0]  # the report's first lines, above the table


def test_a_declared_design_gives_its_minimum_detectable_difference_before_any_run():
    """Declared: seed sigma 0.05 and paired standard error 0.03; 2.8 x 0.03 = 0.084 is under the seed band 0.1,
    which decides. Without a design, the line says none was declared."""
    from lab2.comparison import declared_detectable, held_out_measures

    config = ExperimentConfig(experiment="x", design={"measure": "val_loss_clean", "seed_sigma": 0.05, "paired_standard_error": 0.03,
                                                      "measured": "three seeds of a pilot"}, eval={"clean_min_score": 3.0}).to_dict()
    line = declared_detectable(config)
    assert line.startswith("Minimum detectable difference, declared before any run: 0.1000 nats per token (clean validation loss), the larger")
    assert "(0.1000) and 2.8 paired standard errors (0.0840); measured: three seeds of a pilot." in line
    assert declared_detectable({**config, "design": None}).startswith("Minimum detectable difference: none declared")
    measures = held_out_measures(config)
    assert "the validation conversations whose quality score is at least 3 (references known correct); validation loss" in measures
    assert "knowledge" not in measures  # not asked for (the default, 0 questions): not declared


def report_formatted(rep):
    from lab2.report import columns_for, formatted

    return formatted(rep.table(), columns_for(rep.measure)).set_index("group")


def test_a_metric_added_to_the_column_registry_reaches_every_rendering(outputs, monkeypatch):
    """One line in report.COLUMNS: the markdown report (short and full tables) and the landing page show it."""
    from lab2 import report
    from lab2.html_pages import landing_page

    monkeypatch.setattr(report, "COLUMNS", (*report.COLUMNS, report.Column("test_loss_vs_base_pct", "test vs baseline %", "+.2f", glance=True)))
    rep = Report(outputs)
    md = write_report(rep, outputs, None).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| group |"))
    assert header.endswith("| test vs baseline % |") and md.count("| test vs baseline % |") == 2  # the short table and the full one
    rank_32 = next(line for line in md.splitlines() if line.startswith("| rank_32 |"))
    assert rank_32.endswith("| -4.98 |")  # (1.91 - 2.01) / 2.01
    html = landing_page(outputs, rep).read_text()
    assert html.count("<th>test vs baseline %</th>") == 2 and "<td>-4.98</td>" in html


def test_best_combination_and_never_over_a_hand_written_file(outputs, tmp_path):
    rep = Report(outputs)
    assert rep.best_combination == {
        "experiment": "exp_best_combination", "train": {"max_steps": 240, "learning_rate": 5e-4}, "lora": {"r": 32, "alpha": 32}
    }
    sweep = tmp_path / "params"
    sweep.mkdir()
    path, written = write_best_combination(sweep, rep.best_combination)
    assert written and path.read_text().startswith(GENERATED_MARK)
    assert write_best_combination(sweep, rep.best_combination)[1]  # its own file: refreshed
    path.write_text("experiment: mine\n")  # hand-written now
    assert write_best_combination(sweep, rep.best_combination) == (path, False)
    assert path.read_text() == "experiment: mine\n"


def test_markdown_report_and_html_index(outputs, tmp_path):
    import nbformat

    rep = Report(outputs)
    md = write_report(rep, outputs, None).read_text()
    assert "## All findings" in md and "| steps_240 |" in md and "within noise" in md
    assert "## Not ranked: evaluated on a different split" in md and "| other_data | split-B |" in md
    assert "broken: failed NaN" in md
    for name in ("loss_curves", "validation_loss_by_factor", "cost_against_benefit"):
        assert (outputs / "report_figures" / f"{name}.png").stat().st_size > 1000
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("hello")]), outputs / "rank_32" / "train.ipynb")
    index = notebooks_to_html(outputs).read_text()
    assert 'href="rank_32/train.html"' in index and (outputs / "html" / "rank_32" / "train.html").is_file()


def test_make_report_executes_the_notebook_and_writes_html(outputs, tmp_path, capsys):
    from lab2 import cli

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    assert cli.main(["report", "--out", str(outputs), "--sweep", str(sweep)]) == 0
    for name in ("EXPERIMENT_REPORT.md", "report.ipynb", "report.html", "html/index.html", "html/report.html"):
        assert (outputs / name).is_file(), name
    assert "Best configuration: steps_240" in (outputs / "report.html").read_text()
    landing = (outputs / "index.html").read_text()
    for group in Report(outputs).ranked["group"]:
        assert f"<td>{group}</td>" in landing
    assert "Best configuration: steps_240" in landing and 'src="report_figures/loss_curves.png"' in landing
    assert "<strong>broken</strong>: failed: NaN" in landing
    assert (sweep / "exp_best_combination.yaml").read_text().startswith("# lab2: generated")


def test_fine_tuned_against_base_with_exact_match_and_sample_answers(outputs):
    rep = Report(outputs)
    against_base = [line for line in rep.findings if line.startswith("Fine-tuning against the base model")]
    # baseline 2.00 against the base's 3.00: -33.3 %, which is 50 seed sigmas (0.02)
    assert against_base == ["Fine-tuning against the base model (adapter off, same split): validation loss 3.0000 -> 2.0000 "
                            "for the baseline (-33.3 %, 50 x the seed sigma)."]
    accuracy = next(line for line in rep.findings if line.startswith("Exact-match accuracy"))
    assert accuracy == ("Exact-match accuracy on the 20 one-answer test conversations (95 % intervals over these items): base model "
                        "10%, baseline 50% (against the base model +40.0 pt [+10.0, +70.0]: higher), best configuration (steps_240) 55% "
                        "(against the base model +45.0 pt [+15.0, +75.0]: higher).")
    samples = rep.sample_answers
    assert rep.best_run["experiment"] == "steps_240"
    assert samples.iloc[0].to_dict() == {"question": "What is the capital of France?", "right answer": "",
                                         "fine-tuned": "Paris (steps_240)", "base": "It is Paris."}
    assert samples.iloc[1]["fine-tuned"] == "2 plus 3 is 5. [right]" and samples.iloc[1]["base"] == "2 + 3 = 6 [wrong]"
    md = write_report(rep, outputs, None).read_text()
    assert "## Sample answers: steps_240 against the base model" in md and "| 2 + 3 = 6 [wrong] |" in md
    assert "exact_match 10.0%" in md  # the base model's line, as a percentage


def _data_run(out, name, per_token, group=None, seed=3407, tokenizer="tok-A", train_rows=300, epochs=0.3, bytes_per_token=4.0,
              clean=None, steps=20, **config):
    """A run whose 40 validation conversations each have 10 reply tokens and their losses given by hand;
    `clean`: which of them are the clean yardstick (eval.clean_min_score), as lab2.evaluate records it."""
    cfg = ExperimentConfig(experiment=name, group=group, **{"train": {"seed": seed}, **config}).to_dict()
    nll = [10 * loss for loss in per_token]
    val_loss = sum(nll) / (10 * len(nll))
    reply_bytes = [int(10 * bytes_per_token)] * len(nll)
    validation = {"nll": nll, "tokens": [10] * len(nll), "bytes": reply_bytes}
    yardstick = {}
    if clean is not None:
        validation["clean"] = clean
        picked = [x for x, c in zip(nll, clean) if c]
        yardstick = {"val_loss_clean": sum(picked) / (10 * len(picked)), "val_clean_conversations": len(picked),
                     "val_bits_per_byte_clean": sum(picked) / math.log(2) / (len(picked) * 10 * bytes_per_token)}
    runs.write_json_atomic(out / name / "metrics.json", {
        "experiment": name, "status": "complete", "config": cfg, "config_hash": "h",
        "data": {"fingerprint": "split-A", "tokenizer_fingerprint": tokenizer, "epochs": epochs,
                 "train": {"examples": train_rows}, "validation": {"conversations": 40}, "test": {"conversations": 40},
                 "selection": {"held_out_copies_removed": {"exact": 1, "near": 2}}},
        "train": {"final_loss": 1.0, "final_eval_loss": val_loss, "total_steps": steps, "training_time_seconds": 10.0,
                  "tokens_per_second": 100.0, "peak_memory_mb": 1000.0, "history": [{"step": 1, "loss": 2.0}], "eval_history": []},
        "eval": {"val_loss": val_loss, "test_loss": val_loss, "perplexity": math.exp(val_loss), "split_fingerprint": "split-A",
                 "tokenizer_fingerprint": tokenizer, "val_bits_per_byte": sum(nll) / math.log(2) / sum(reply_bytes),
                 "per_conversation": {"validation": validation}, **yardstick},
    })


def _losses(offset, spread=0.3):
    return [1.0 + offset + spread * math.sin(i) for i in range(40)]  # conversations differ, a run shifts them all


def test_data_centric_runs_are_ranked_with_paired_intervals_and_controls(tmp_path):
    out = tmp_path / "outputs"
    for seed, shift in [(1, 0.0), (2, 0.01), (3, -0.01)]:
        _data_run(out, f"baseline-seed{seed}", _losses(shift), group="baseline", seed=seed)
    _data_run(out, "quality", _losses(-0.05), train_rows=239, data={"select": {"min_score": 3.0}})
    _data_run(out, "dedup", [x + (0.02 if i % 2 else -0.02) for i, x in enumerate(_losses(0.0))], train_rows=291,
              data={"select": {"dedup": "near"}})
    _data_run(out, "long", _losses(0.02), epochs=2.5, train={"max_steps": 200})
    rep = Report(out)
    rows = rep.ranked.set_index("group")
    assert rep.measure == "val_loss"
    assert rows.loc["quality", "paired_verdict"] == "better" and rows.loc["quality", "paired_high"] < 0
    assert rows.loc["quality", "paired_delta"] == pytest.approx(-0.05, abs=1e-9)
    assert rows.loc["dedup", "paired_verdict"] == "unclear"  # up on half, down on half: no gain
    assert rows.loc["quality", "data"] == "score >= 3" and rows.loc["baseline", "data"] == "pool"
    text = "\n".join(rep.findings)
    assert "quality filters its training rows (score >= 3, 239 rows) but no run draws as many rows at random" in text
    assert "The length of training changed with the data" not in text  # every run here trains 20 steps
    assert "dedup filters its training rows (dedup near, 291 rows)" in text
    assert "long sees its training rows 2.5 times" in text
    assert "none of the 80 held-out conversations is in any run's training rows" in text and "baseline 3" in text
    assert "quality: validation loss" in text and "(95 % bootstrap interval): better" in text
    assert "Paired intervals resample the held-out conversations, not the training seeds" in text

    _data_run(out, "quality_control", _losses(-0.05), train_rows=239, data={"select": {"max_rows": 239}})
    text = "\n".join(Report(out).findings)
    assert "quality against its size-matched random control quality_control (239 rows each)" in text
    assert "not distinguishable from dropping rows at random" in text


def test_on_a_clean_yardstick_runs_rank_on_the_conversations_whose_references_are_correct(tmp_path):
    """30 of the 40 validation conversations are clean, 10 have wrong references. The quality filter is 0.05
    nats better than its random control on the clean ones, but 0.3 worse on the wrong ones (it no longer
    learns the wrong answers): over all 40 it looks worse. Ranked on the clean yardstick, it is better, and
    the report says which measure ranks and gives both."""
    out = tmp_path / "outputs"
    clean = [i % 4 != 0 for i in range(40)]
    shifted = lambda on_clean, on_wrong: [x + (on_clean if c else on_wrong) for x, c in zip(_losses(0.0), clean)]  # noqa: E731
    for seed, shift in [(1, 0.0), (2, 0.01), (3, -0.01)]:
        _data_run(out, f"baseline-seed{seed}", shifted(shift, shift), group="baseline", seed=seed, clean=clean,
                  eval={"clean_min_score": 3.0})
    _data_run(out, "quality", shifted(-0.05, 0.3), train_rows=239, clean=clean, data={"select": {"min_score": 3.0}},
              eval={"clean_min_score": 3.0}, steps=30)
    _data_run(out, "quality_control", shifted(0.0, 0.0), train_rows=239, clean=clean, data={"select": {"max_rows": 239}},
              eval={"clean_min_score": 3.0}, steps=30)
    rep = Report(out)
    rows = rep.ranked.set_index("group")
    assert rep.measure == "val_loss_clean" and rep.ranked["group"].iloc[0] == "quality"
    assert rows.loc["quality", "paired_delta"] == pytest.approx(-0.05, abs=1e-9) and rows.loc["quality", "verdict"] == "better"
    assert rows.loc["quality", "val_loss"] > rows.loc["baseline", "val_loss"]  # over all 40, the filter looks worse
    assert rows.loc["baseline", "val_loss_clean_std"] == pytest.approx(0.01) and rep.noise == pytest.approx(0.01)
    assert rows.loc["quality", "clean_conversations"] == 30
    assert "Only on the clean yardstick: the 30 of 40 validation conversations whose quality score is at least 3.0" in rep.findings[0]
    text = "\n".join(rep.findings)
    assert ("quality against its size-matched random control quality_control (239 rows each), on the same clean conversations (30): "
            "-0.0500 nats per token") in text and "the filter beats random rows of the same number" in text
    assert "on the same conversations (40): +0.0375 nats per token" in text  # (30 x -0.05 + 10 x 0.3) / 40
    assert "Held-out measures: clean validation loss per token, which ranks" in rep.declared
    assert "The length of training changed with the data: quality 30 steps, quality_control 30 steps, against the baseline's 20." in text
    md = write_report(rep, out, None).read_text()
    assert md.split("\n")[2].startswith("Held-out measures: clean validation loss per token, which ranks")
    assert "| clean val loss ± seed std |" in md.split("## All findings")[0]  # the ranking measure in the short table


def test_with_other_tokenizers_the_clean_yardstick_is_scored_per_byte(tmp_path):
    """Another model's tokenizer and a clean yardstick: ranked on clean bits per byte. The other model is worse on
    the 10 noisy conversations (+0.5 a token) and better on the 30 clean ones, so only the clean yardstick sees it."""
    out = tmp_path / "outputs"
    clean = [i % 4 != 0 for i in range(40)]
    _data_run(out, "baseline", _losses(0.0), clean=clean, eval={"clean_min_score": 3.0})
    _data_run(out, "other_model", [x - 0.1 if c else x + 0.5 for x, c in zip(_losses(0.0), clean)], tokenizer="tok-B", clean=clean,
              eval={"clean_min_score": 3.0})
    rep = Report(out)
    assert rep.measure == "val_bpb_clean" and list(rep.ranked["group"]) == ["other_model", "baseline"]
    assert rep.ranked.set_index("group").loc["baseline", "val_bpb"] < rep.ranked.set_index("group").loc["other_model", "val_bpb"]
    assert "| clean val bits/byte |" in write_report(rep, out, None).read_text().split("## All findings")[0]


def test_runs_with_different_tokenizers_are_ranked_on_bits_per_byte(tmp_path):
    out = tmp_path / "outputs"
    _data_run(out, "baseline", _losses(0.0))  # 1.0 nats per token at 4 bytes per token
    # Another tokenizer: fewer, longer tokens. Higher loss per token, lower per byte.
    _data_run(out, "other_model", _losses(0.4), tokenizer="tok-B", bytes_per_token=8.0)
    rep = Report(out)
    assert rep.measure == "val_bpb" and list(rep.ranked["group"]) == ["other_model", "baseline"]
    assert rep.ranked.set_index("group").loc["other_model", "paired_verdict"] == "better"
    assert "Ranked on validation bits per byte of reply text: the runs use 2 different tokenizers" in rep.findings[0]
    assert "bits per byte of reply text" in write_report(rep, out, None).read_text()
    assert (out / "report_figures" / "paired_differences.png").stat().st_size > 1000


def test_make_report_on_a_real_sweep_and_make_export_takes_its_best(swept):
    """The `swept` checkout's report (`make report` after `make sweep`): its figures are the runs' own, and
    `make export` exported the run it calls best."""
    from lab2.export import choose_experiment

    out = swept / "outputs"
    rep = Report(out)
    assert sorted(rep.ranked["group"]) == ["baseline", "lr_high"] and rep.baseline == "baseline"
    assert rep.other_split.empty and rep.unfinished == []
    for group, val_loss in zip(rep.ranked["group"], rep.ranked["val_loss"]):
        assert val_loss == runs.read_metrics(out / group)["eval"]["val_loss"]
    best = rep.best_run["experiment"]
    assert best == rep.ranked["group"].iloc[0] == choose_experiment(out) and (out / best / "gguf").is_dir()
    md = (out / "EXPERIMENT_REPORT.md").read_text()
    assert f"Best configuration: {best} (validation loss" in md
    assert "none of the 16 held-out conversations is in any run's training rows" in md  # 8 validation + 8 test
    for name in ("loss_curves", "validation_loss_by_factor", "cost_against_benefit", "paired_differences"):
        assert (out / "report_figures" / f"{name}.png").stat().st_size > 1000
    assert (swept / "params" / "tiny_random" / "exp_best_combination.yaml").read_text().startswith(GENERATED_MARK)
    # A one-seed sweep: no seed noise, so no row says better or worse; its paired interval decides between
    # "noise unknown" and "unclear", and the page states the rule that says so.
    lr_high = rep.ranked.set_index("group").loc["lr_high"]
    assert rep.noise is None and lr_high["verdict"] == ("unclear" if lr_high["paired_low"] <= 0 <= lr_high["paired_high"] else "noise unknown")
    assert "noise unknown where the interval excludes zero but no configuration was repeated over seeds" in md
    assert "Noise unknown: no configuration was repeated over seeds" in md and "Helped beyond the noise" not in md
    # IFEval beside the loss, scored on the same prompts for both runs and the base model.
    assert rep.ranked["ifeval_prompts"].tolist() == [3, 3] and rep.base_model["ifeval_prompts"] == 3
    assert "IFEval (prompt, strict)" in md.split("## All findings")[0]


def test_loss_curves_name_every_run_in_the_legend():
    import warnings

    from lab2.plots import plot_loss_curves

    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no artists with labels" from an empty legend
        fig = plot_loss_curves({"a": {"history": history, "eval_history": []},
                                "b": {"history": history, "eval_history": [{"step": 2, "eval_loss": 1.7}]}})
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a (train)", "b (val)"]
        assert plot_loss_curves({}).axes[0].get_legend() is None


def test_a_switch_factor_is_plotted_as_off_and_on_not_as_numbers():
    """4-bit against not: two labelled points, not a line from 0.0 to 1.0."""
    import pandas as pd

    from lab2.plots import plot_val_loss_by_factor

    rows = pd.DataFrame({"value": [False, True], "val_loss": [1.65, 1.77], "val_loss_std": [0.14, 0.13]})
    fig = plot_val_loss_by_factor({"4-bit": rows}, 0.13)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["off", "on"] and list(ax.get_xticks()) == [0, 1]
