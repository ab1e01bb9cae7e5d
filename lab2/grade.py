"""`lab2 grade`: the instructor's side. A class's submitted LoRA adapters, each checked, then scored on the
course's own held-out split by the evaluation every run gets (lab2.evaluate), against the base model (and a
reference adapter, where the instructor names one) on the same items, and ranked in one class table.

The course is a lab2 params file, the one the students were given: its model, its data (source, split seed,
sizes: the held-out split) and its eval section are what every submission is scored by; its `design:`
section, where it declares one for the measure that ranks, gives the seed noise of the verdicts. A
submission is a folder holding a LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`; at its
top or in `adapter/`, where lab2 saves it) and, when the student used lab2, the run's records (`records/` or
`metrics.json`): a lab2 experiment folder is a submission as it is.

1. Every submission is checked (`check_submission`): its files first, so nothing is loaded from a folder
   that fails them (a link, a pickle, a size over the limit); then the adapter's tensors against the base
   model's linear layers, from the safetensors header alone; then its records against the course (base
   model, tokenizer, split). The first failed check refuses it, in one line; nothing else stops.
2. The base model and each submission that passed are scored, one task each (here one after another, or
   on Ray), and each score is written as it is made to DIR/scores/<name>.json under a key: the hash of the
   bytes lab2 read from the submission and of the course's evaluation. A re-run skips every key already
   there, so a class can be graded in pieces and nothing is scored twice.
3. The class table (`class_table`), its figure and a CSV for the gradebook, from the scores there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from pathlib import Path

import pandas as pd

from lab2 import comparison, runs
from lab2.config import ConfigError, ExperimentConfig, load_config, stable_hash
from lab2.report import Column, formatted, html_table, markdown_table, paired_cell, points_cell, share_cell

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# What torch.load, pickle or joblib would read: running such a file can run any code, so lab2 never opens one.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}
REPORT_FOLDERS = {"html", "report_figures"}  # what `lab2 report` writes beside a sweep's experiments: not submissions
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@-]*$")  # a submission's name names its score file
# peft's key for a LoRA matrix of a linear layer: base_model.model.<the layer's name in the base model>.lora_A.weight
LORA_KEY = re.compile(r"^base_model\.model\.(?P<layer>.+)\.lora_(?P<part>[AB])\.weight$")
DEFAULT_MAX_ADAPTER_MB = 512  # a rank-64 adapter on every linear layer of Llama-3.2-1B is about 180 MB in fp32
BASE, REFERENCE = "base model", "reference adapter"  # names no submission can have (SAFE_NAME)


# --------------------------------------------------------------------------- the course


def course_key(cfg: ExperimentConfig, split_fingerprint: str) -> str:
    """What a score depends on besides the adapter: the base model, the held-out split and the eval settings."""
    return stable_hash({"base_eval_hash": cfg.base_eval_hash, "split_fingerprint": split_fingerprint})


def ranking_measure(cfg: ExperimentConfig) -> str:
    """The class ranks on the clean yardstick where the course has one, else on all validation conversations
    (one base model and tokenizer for every submission, so per-token losses compare)."""
    return "val_loss_clean" if cfg.eval.clean_min_score is not None else "val_loss"


def seed_noise(cfg: ExperimentConfig, measure: str) -> float | None:
    """The seed sigma the course's design declares for the ranking measure; None (noise unknown) otherwise."""
    return cfg.design.seed_sigma if cfg.design is not None and cfg.design.measure == measure else None


def base_linear_shapes(model_name: str) -> dict[str, tuple[int, int]]:
    """(out, in) features of every linear layer of the base model, by name, from its config alone (no weights)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_name))
    return {name: (m.out_features, m.in_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@functools.cache
def course_data(params: str) -> tuple[ExperimentConfig, object, object]:
    """(config, tokenizer, held-out split) of the course, once per process: the driver's checks and every
    submission scored in that process share them (a Ray worker loads its own once)."""
    from lab2 import data, modeling

    cfg = load_config(params)
    tokenizer = modeling.load_tokenizer(cfg.model.name, cfg.data.chat_template)
    return cfg, tokenizer, data.build_held_out(cfg.data, tokenizer, cfg.model.max_seq_length)


class Course:
    """The course's params, its held-out split and what checks read from its base model, loaded once."""

    def __init__(self, params: str | Path):
        self.params = Path(params)
        self.cfg, self.tokenizer, self.splits = course_data(str(params))
        self.fingerprint = self.splits.stats["fingerprint"]
        self.tokenizer_fingerprint = self.splits.stats["tokenizer_fingerprint"]
        self.key = course_key(self.cfg, self.fingerprint)
        self.layers = base_linear_shapes(self.cfg.model.name)
        self.measure = ranking_measure(self.cfg)
        self.noise = seed_noise(self.cfg, self.measure)

    def held_out_in(self, pool_train: list[dict]) -> int:
        """How many of the course's held-out conversations are among these training rows."""
        from lab2.data_selection import exact_key

        held_out = {exact_key(m) for m in self.splits.conversations["validation"] + self.splits.conversations["test"]}
        return sum(exact_key(row["messages"]) in held_out for row in pool_train)


# --------------------------------------------------------------------------- checks, before anything is loaded


def adapter_folder(submission: Path) -> Path:
    """Where a submission's adapter is: `adapter/` (a lab2 experiment folder) when it holds one, else its top."""
    return submission / "adapter" if (submission / "adapter" / ADAPTER_CONFIG).is_file() else submission


def record_files(submission: Path) -> list[Path]:
    """The run's records lab2 reads, where they came with the submission."""
    found = sorted((submission / runs.RECORDS).glob("*.json"))
    return found or [p for p in [submission / runs.METRICS_FILE] if p.is_file()]


def files_read(submission: Path) -> list[Path]:
    """Every file lab2 reads from a submission: what its key hashes, and all that must stay inside it."""
    adapter = adapter_folder(submission)
    return [p for p in (adapter / ADAPTER_CONFIG, adapter / ADAPTER_WEIGHTS) if p.exists() or p.is_symlink()] + record_files(submission)


def submission_key(submission: Path, key_of_course: str) -> str:
    """The hash of every byte lab2 reads from the submission, with the course's key."""
    digest = hashlib.sha256(key_of_course.encode())
    for path in files_read(submission):
        digest.update(path.relative_to(submission).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def file_problem(submission: Path, max_bytes: int) -> str | None:
    """The first problem with a submission's files, in one line; None when it may be opened."""
    if not SAFE_NAME.match(submission.name):
        return f"name {submission.name!r}: letters, digits and . _ + @ - only (it names the submission's score file)"
    adapter = adapter_folder(submission)
    for path in [adapter, *files_read(submission)]:
        if path.is_symlink() or submission.resolve() not in [path.resolve(), *path.resolve().parents]:
            return f"{path.relative_to(submission.parent)} is a link: a submission's files must be its own, inside its folder"
    if not (adapter / ADAPTER_CONFIG).is_file():
        return f"not an adapter: no {ADAPTER_CONFIG} in it or in adapter/"
    pickles = sorted(p.name for p in adapter.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        return (f"{', '.join(pickles)}: pickle files are refused (loading one can run any code); save the adapter as "
                f"safetensors (peft's save_pretrained does by default)")
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        return f"no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}"
    size = sum(p.stat().st_size for p in files_read(submission))
    if size > max_bytes:
        return f"{size / 2**20:.0f} MB of adapter and records, over the limit of {max_bytes / 2**20:.0f} MB (--max-adapter-mb)"
    return None


def adapter_problem(adapter: Path, layers: dict[str, tuple[int, int]]) -> str | None:
    """The first way the adapter does not fit the course's base model: not LoRA, a tensor for a layer the base
    model does not have, or of another shape (an adapter of another model). From the safetensors header only."""
    from safetensors import SafetensorError, safe_open

    try:
        config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{ADAPTER_CONFIG}: not valid JSON ({exc})"
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        return f"{ADAPTER_CONFIG}: peft_type {config.get('peft_type') if isinstance(config, dict) else None!r}: a LoRA adapter is expected"
    try:
        with safe_open(adapter / ADAPTER_WEIGHTS, framework="pt") as weights:
            shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}
    except (SafetensorError, OSError) as exc:
        return f"{ADAPTER_WEIGHTS}: not a safetensors file ({exc})"
    if not shapes:
        return f"{ADAPTER_WEIGHTS}: no tensors"
    ranks: dict[str, dict[str, int]] = {}
    for key, shape in sorted(shapes.items()):
        found = LORA_KEY.match(key)
        if not found:
            return f"{key}: not a LoRA matrix of a linear layer (only lora_A and lora_B weights are graded)"
        layer, part = found["layer"], found["part"]
        if layer not in layers:
            return f"{key}: the course's base model has no linear layer {layer} (an adapter for another architecture)"
        out_features, in_features = layers[layer]
        fits = len(shape) == 2 and (shape[1] == in_features if part == "A" else shape[0] == out_features)
        if not fits:
            return (f"{key} is {' x '.join(map(str, shape))}; the course's {layer} takes {in_features} and gives {out_features} "
                    "features (an adapter for another base model)")
        ranks.setdefault(layer, {})[part] = shape[0] if part == "A" else shape[1]
    for layer, parts in ranks.items():
        if len(set(parts.values())) != 1 or len(parts) != 2:
            return f"{layer}: lora_A and lora_B do not pair ({parts})"
    return None


def read_records(submission: Path) -> dict | None:
    """The run's records joined as lab2 reads them (lab2.runs), or None where none came with it."""
    return runs.read_metrics(submission) if record_files(submission) else None


def records_problem(record: dict, course: Course) -> str | None:
    """Where the run's own records name another base model, tokenizer or split than the course's. A run on
    another split of the course's data may have trained on the course's held-out conversations: how many of
    them its training pool held is counted from its recorded data settings (the data source must be the course's)."""
    from lab2 import data

    config, stats = record.get("config") or {}, record.get("data") or {}
    model = (config.get("model") or {}).get("name")
    if model != course.cfg.model.name:
        return f"records: trained on base model {model!r}, the course's is {course.cfg.model.name!r}"
    if stats.get("tokenizer_fingerprint") not in (None, course.tokenizer_fingerprint):
        return f"records: tokenizer {stats['tokenizer_fingerprint']}, the course's is {course.tokenizer_fingerprint}"
    if stats.get("fingerprint") == course.fingerprint:
        return None
    line = f"records: trained on another split than the course's (fingerprint {stats.get('fingerprint')}, the course's {course.fingerprint})"
    theirs = config.get("data") or {}
    if theirs.get("source") != course.cfg.data.source:
        return line + f", of another data source ({theirs.get('source')!r})"
    try:
        parts, _ = data.held_out_split(ExperimentConfig(**config).data)
    except Exception:  # noqa: BLE001 - records that do not validate: the split line says enough
        return line
    seen = course.held_out_in(parts["train"])
    held_out = len(course.splits.conversations["validation"]) + len(course.splits.conversations["test"])
    return line + f": {seen} of the course's {held_out} held-out conversations were in its training pool"


def check_submission(submission: Path, course: Course, max_bytes: int) -> str | None:
    """The first failed check of a submission, in one line; None when it may be scored."""
    problem = file_problem(submission, max_bytes) or adapter_problem(adapter_folder(submission), course.layers)
    if problem:
        return problem
    try:
        record = read_records(submission)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"records: not readable as lab2's ({type(exc).__name__}: {exc})"
    return records_problem(record, course) if record else None


# --------------------------------------------------------------------------- scoring, one task each


def score_path(out: Path, name: str) -> Path:
    return out / "scores" / f"{name}.json"


def read_score(out: Path, name: str) -> dict | None:
    path = score_path(out, name)
    return json.loads(path.read_text()) if path.is_file() else None


def claimed_figures(record: dict | None) -> dict:
    """The run's own evaluation, as its records state it: shown beside lab2's."""
    evaluation = (record or {}).get("eval") or {}
    return {k: evaluation.get(k) for k in ("val_loss", "val_loss_clean", "test_loss") if evaluation.get(k) is not None}


def score(params: str, out: str, name: str, key: str, adapter: str | None, claimed: dict) -> dict:
    """One task: the course's evaluation (lab2.evaluate.evaluate_model, as the sweep's evaluate.ipynb runs it)
    of the base model with this adapter (None: the base model alone), written to DIR/scores/<name>.json.
    The model is loaded as the sweep's evaluation loads a finished run (lab2.modeling.load_trained_model)."""
    from lab2 import backend, evaluate, modeling

    cfg, tokenizer, splits = course_data(params)
    backend.import_backend(cfg.model)
    start = time.perf_counter()
    model = modeling.load_base_model(cfg.model) if adapter is None else modeling.load_trained_model(cfg, adapter)
    evaluation = evaluate.evaluate_model(model, tokenizer, splits, cfg.eval)
    size = (Path(adapter) / ADAPTER_WEIGHTS).stat().st_size if adapter else None
    scored = {"name": name, "key": key, "status": "scored", "adapter": adapter, "adapter_bytes": size, "claimed": claimed, "eval": evaluation,
              "split_fingerprint": splits.stats["fingerprint"], "seconds": time.perf_counter() - start}
    runs.write_json_atomic(score_path(Path(out), name), scored)
    return scored


def score_locally(calls: dict[str, tuple]) -> dict[str, object]:
    """The default executor: one task after another in this process; a failed one's exception as its result."""
    results = {}
    for i, (label, args) in enumerate(calls.items(), 1):
        print(f"[{i}/{len(calls)}] scoring {label} ...", flush=True)
        try:
            results[label] = score(*args)
        except Exception as exc:  # noqa: BLE001 - one submission must not sink the class
            results[label] = exc
    return results


def submissions_in(folder: Path, out: Path) -> list[Path]:
    """Every subfolder is a submission, but hidden ones, the report pages of a sweep's folder and DIR itself."""
    if not folder.is_dir():
        raise ConfigError(f"SUBMISSIONS={folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in REPORT_FOLDERS
                  and p.resolve() != out.resolve())


def grade(submissions: str | Path, params: str | Path, out: str | Path, reference: str | Path | None = None,
          max_adapter_mb: float = DEFAULT_MAX_ADAPTER_MB, execute=score_locally) -> "ClassReport":
    """Check every submission, score what passed and is not scored yet, write the class report; returns it."""
    submissions, out = Path(submissions), Path(out)
    folders = submissions_in(submissions, out)
    course = Course(params)
    max_bytes = int(max_adapter_mb * 2**20)
    print(f"grading {len(folders)} submissions in {submissions}/ on {course.params} (split {course.fingerprint}, "
          f"{len(course.splits.validation)} validation and {len(course.splits.test)} test conversations) -> {out}/", flush=True)
    entries = [(REFERENCE, Path(reference))] if reference else []
    entries += [(folder.name, folder) for folder in folders]
    calls, refused, kept = {}, {}, 0
    base = read_score(out, BASE)
    if not base or base.get("key") != course.key:
        calls[BASE] = (str(params), str(out.resolve()), BASE, course.key, None, {})
    for name, folder in entries:
        problem = file_problem(folder, max_bytes)
        key = None if problem else submission_key(folder, course.key)
        recorded = read_score(out, name) if key else None
        if recorded and recorded.get("key") == key and recorded["status"] != "failed":  # a failure is tried again
            kept += 1
            continue
        problem = problem or check_submission(folder, course, max_bytes)
        if problem and name == REFERENCE:
            raise ConfigError(f"--reference {reference}: {problem}")
        if problem:
            refused[name] = problem
            runs.write_json_atomic(score_path(out, name), {"name": name, "key": key, "status": "refused", "reason": problem})
            continue
        calls[name] = (str(params), str(out.resolve()), name, key, str(adapter_folder(folder).resolve()),
                       claimed_figures(read_records(folder)))
    for name, line in refused.items():
        print(f"refused {name}: {line}", flush=True)
    print(f"{len(calls)} to score, {kept} already scored or refused with these files and this course, {len(refused)} refused now", flush=True)
    start = time.perf_counter()
    for name, result in execute(calls).items():
        if isinstance(result, BaseException):
            line = f"{type(result).__name__}: {result}".splitlines()[0]
            runs.write_json_atomic(score_path(out, name), {"name": name, "key": calls[name][3], "status": "failed", "reason": line})
            print(f"failed {name}: {line}", flush=True)
        else:
            print(f"scored {name}: {course.measure} {result['eval'].get(course.measure):.4f} ({result['seconds']:.1f} s)", flush=True)
    print(f"scoring took {time.perf_counter() - start:.1f} s", flush=True)
    report = ClassReport(out, [name for name, _ in entries], course)
    report.write()
    return report


# --------------------------------------------------------------------------- the class report


GRADE_COLUMNS = (
    Column("rank", "rank", ".0f"), Column("name", "submission"), Column("status", "status"),
    Column("paired", "vs base model [95 %]"), Column("verdict", "verdict vs base"),
    Column("reference_paired", "vs reference [95 %]"), Column("reference_verdict", "verdict vs reference"),
    Column("val_loss", "val loss", ".4f"), Column("val_loss_clean", "clean val loss", ".4f"), Column("test_loss", "test loss", ".4f"),
    Column("val_bpb", "val bits/byte", ".4f"),
    Column("claimed_val_loss", "claimed val loss", ".4f"), Column("claimed_test_loss", "claimed test loss", ".4f"),
    Column("exact_match_cell", "exact match"), Column("em_cell", "exact match vs base [95 %]"),
    Column("ifeval_cell", "IFEval (prompt, strict)"), Column("ifeval_vs_base", "IFEval vs base [95 %]"),
    Column("knowledge_cell", "knowledge (ARC, acc_norm)"), Column("knowledge_vs_base", "knowledge vs base [95 %]"),
    Column("adapter_mb", "adapter MB", ".1f"), Column("seconds", "scoring s", ".1f"), Column("reason", "check"),
)
# The gradebook's CSV: numbers as numbers, each interval as its two ends.
CSV_COLUMNS = ["rank", "name", "status", "reason", "measure", "measure_value", "paired_delta", "paired_low", "paired_high", "verdict",
               "reference_delta", "reference_low", "reference_high", "reference_verdict", "val_loss", "val_loss_clean", "test_loss",
               "val_bpb", "test_bpb", "claimed_val_loss", "claimed_test_loss",
               *(column for share in comparison.SHARES.values() for column in (share.column, share.items_column)),
               *(f"{prefix}_vs_base_{k}" for prefix in comparison.SHARES for k in ("delta", "low", "high", "verdict")),
               "adapter_mb", "seconds", "key"]


def paired_against(evaluation: dict, other: dict | None, measure: str, noise: float | None) -> dict:
    """The evaluation's ranking measure minus `other`'s on the same validation conversations, its bootstrap
    95 % interval and the one verdict (lab2.comparison.VERDICT_RULE)."""
    run, against = comparison.conversation_rows(evaluation, measure), comparison.conversation_rows(other, measure)
    if run is None or against is None or len(run[0]) != len(against[0]):
        return {"delta": math.nan, "low": math.nan, "high": math.nan, "verdict": "not recorded"}
    found = comparison.paired_difference(run, against)
    word, _ = comparison.verdict(found["paired_delta"], found["paired_low"], found["paired_high"], noise)
    return {"delta": found["paired_delta"], "low": found["paired_low"], "high": found["paired_high"], "verdict": word}


def submission_row(scored: dict, base: dict | None, reference: dict | None, measure: str, noise: float | None) -> dict:
    """One row of the class table, from a score file (and the base model's and reference's evaluations)."""
    row = {"name": scored["name"], "status": scored["status"], "reason": scored.get("reason", ""), "key": scored.get("key"),
           "measure": measure}
    if scored["status"] != "scored":
        return row
    ev = scored["eval"]
    row.update({k: ev.get(k) for k in ("val_loss", "val_loss_clean", "test_loss")}, val_bpb=ev.get("val_bits_per_byte"),
               test_bpb=ev.get("test_bits_per_byte"), measure_value=ev.get(measure), seconds=scored["seconds"],
               claimed_val_loss=scored["claimed"].get("val_loss"), claimed_test_loss=scored["claimed"].get("test_loss"))
    if scored.get("adapter_bytes"):
        row["adapter_mb"] = scored["adapter_bytes"] / 2**20
    if base:
        found = paired_against(ev, base["eval"], measure, noise)
        row.update(paired_delta=found["delta"], paired_low=found["low"], paired_high=found["high"], verdict=found["verdict"])
    if reference and scored["name"] != REFERENCE:
        found = paired_against(ev, reference["eval"], measure, noise)
        row.update({f"reference_{k}": v for k, v in found.items()})
    for prefix, share in comparison.SHARES.items():
        items = comparison.share_items([ev], prefix)
        row[share.column], row[share.items_column] = (None, None) if items is None else (float(items[1].mean()), len(items[0]))
        if base:
            found = comparison.share_pair(items, comparison.share_items([base["eval"]], prefix), None)
            row.update({f"{prefix}_vs_base_{k}": v for k, v in found.items() if k != "why"})
    return row


def interval_cell(row, prefix: str) -> str:
    """'-0.1234 [-0.2000, -0.0500]' from a row's `<prefix>_delta/_low/_high`."""
    return paired_cell({"paired_delta": row.get(f"{prefix}_delta"), "paired_low": row.get(f"{prefix}_low"),
                        "paired_high": row.get(f"{prefix}_high")})


class ClassReport:
    """The class table from DIR/scores/: the submissions named, ranked on the course's measure (the scored
    first, best first; then the failed and the refused, each with its one line)."""

    def __init__(self, out: Path, names: list[str], course: Course):
        self.out, self.course, self.measure, self.noise = Path(out), course, course.measure, course.noise
        self.base = read_score(self.out, BASE)
        reference = read_score(self.out, REFERENCE) if REFERENCE in names else None
        self.reference = reference if reference and reference.get("status") == "scored" else None
        rows = [submission_row(scored, self.base, self.reference, self.measure, self.noise)
                for scored in (read_score(self.out, name) for name in names) if scored]
        if self.base and self.base.get("status") == "scored":
            rows.append({**submission_row(self.base, None, self.reference, self.measure, self.noise), "name": BASE})
        frame = pd.DataFrame(rows).reindex(columns=list(dict.fromkeys([*CSV_COLUMNS, *(c for r in rows for c in r)])))
        frame["order"] = frame["status"].map({"scored": 0, "failed": 1, "refused": 2})
        frame = frame.sort_values(["order", "measure_value", "name"]).reset_index(drop=True)
        ranked = (frame["status"] == "scored") & ~frame["name"].isin([BASE, REFERENCE])
        frame.loc[ranked, "rank"] = range(1, int(ranked.sum()) + 1)
        cells = {"paired": lambda r: interval_cell(r, "paired"), "reference_paired": lambda r: interval_cell(r, "reference"),
                 "exact_match_cell": lambda r: share_cell(r["exact_match"], r["exact_match_items"]),
                 "em_cell": lambda r: points_cell(r, "em_vs_base"),
                 "ifeval_cell": lambda r: share_cell(r["ifeval"], r["ifeval_prompts"]),
                 "ifeval_vs_base": lambda r: points_cell(r, "ifeval_vs_base"),
                 "knowledge_cell": lambda r: share_cell(r["knowledge"], r["knowledge_questions"]),
                 "knowledge_vs_base": lambda r: points_cell(r, "knowledge_vs_base")}
        for column, cell in cells.items():
            frame[column] = [cell(row) for _, row in frame.iterrows()]
        self.frame = frame

    def columns(self) -> list[Column]:
        """The registry's columns this class has data for: no reference column without a reference, and so on."""
        def has(column: Column) -> bool:
            values = self.frame.get(column.key)
            return values is not None and any(v not in (None, "", "-") and not (isinstance(v, float) and math.isnan(v)) for v in values)
        return [c for c in GRADE_COLUMNS if has(c)]

    def lines(self) -> list[str]:
        cfg, course = self.course.cfg, self.course
        counts = self.frame["status"].value_counts()
        scored = int(counts.get("scored", 0)) - (self.base is not None) - (self.reference is not None)
        noise = (f"Seed noise: the sigma the course's design declares, {self.noise:.4f} ({cfg.design.measured})." if self.noise else
                 "No seed noise is declared (a `design:` section for this measure in the course's params gives it): where an interval "
                 "excludes zero, the verdict reads 'noise unknown'.")
        return [
            f"Course: {course.params} (base model {cfg.model.name}; held-out split {course.fingerprint} of {cfg.data.source}, "
            f"split seed {cfg.data.split_seed}, {len(course.splits.validation)} validation and {len(course.splits.test)} test conversations).",
            f"{scored} submissions scored, {int(counts.get('refused', 0))} refused by a check, {int(counts.get('failed', 0))} failed while scoring.",
            f"Ranked on {comparison.MEASURES[self.measure]}, lower is better; each against the base model (adapter off) on the same "
            f"conversations, with the paired 95 % interval. {noise}",
            comparison.VERDICT_RULE.replace("against the baseline", "against the base model"),
            "Claimed figures are the run's own records; lab2's are measured here. Every share (exact match, IFEval, knowledge) "
            "is paired with the base model's on the same items.",
        ]

    def write(self) -> dict[str, Path]:
        """DIR/CLASS_REPORT.md, DIR/index.html, DIR/grades.csv and the figure DIR/class_differences.png."""
        import matplotlib

        matplotlib.use("Agg")  # a command, never a window
        import matplotlib.pyplot as plt

        from lab2.plots import plot_paired_differences

        figure = self.out / "class_differences.png"
        figure.unlink(missing_ok=True)  # never an older class's
        drawn = self.frame[self.frame["paired_delta"].notna()].rename(columns={"name": "group"})
        if not drawn.empty:
            fig = plot_paired_differences(drawn, self.noise, comparison.unit_of(self.measure), against="the base model")
            fig.savefig(figure, dpi=110)
            plt.close(fig)
        table = formatted(self.frame, self.columns())
        markdown = self.out / "CLASS_REPORT.md"
        markdown.write_text("# Class report\n\n" + "\n\n".join(self.lines()) + "\n\n" + markdown_table(table) + "\n"
                            + (f"\n![paired differences]({figure.name})\n" if figure.is_file() else ""))
        csv = self.out / "grades.csv"
        counts = {"rank": "Int64", **{share.items_column: "Int64" for share in comparison.SHARES.values()}}
        self.frame.reindex(columns=CSV_COLUMNS).astype(counts).to_csv(csv, index=False)
        page = self.out / "index.html"
        figure_html = f'<img src="{figure.name}" alt="paired differences" style="max-width: 640px">' if figure.is_file() else ""
        from html import escape

        page.write_text("<!doctype html><meta charset='utf-8'><title>lab2 class report</title>"
                        "<style>body { font-family: sans-serif; margin: 24px; } table { border-collapse: collapse; font-size: 0.85em; }"
                        " td, th { border: 1px solid #ccc; padding: 3px 6px; }</style><h1>Class report</h1>"
                        # what and how many first, then the table; how to read it under the table, beside the figure
                        + "".join(f"<p>{escape(line)}</p>" for line in self.lines()[:2]) + html_table(table)
                        + "".join(f"<p>{escape(line)}</p>" for line in self.lines()[2:]) + figure_html)
        print(f"wrote {page} (open this first), {markdown}, {csv}" + (f" and {figure}" if figure.is_file() else ""), flush=True)
        return {"html": page, "markdown": markdown, "csv": csv, "figure": figure}

    def scored(self) -> pd.DataFrame:
        """The scored submissions' rows (not the base model or reference)."""
        return self.frame[self.frame["rank"].notna()]

    def refused(self) -> dict[str, str]:
        return dict(zip(self.frame.loc[self.frame["status"] == "refused", "name"], self.frame.loc[self.frame["status"] == "refused", "reason"]))

