"""OUT/*/metrics.json -> a table of configurations ranked on validation loss, with seed noise.

The statistics behind the report and behind "the best experiment" that `make export` and
`make app` take. Runs are compared on held-out validation loss (never on training loss of runs of
different lengths). Seed repeats of one configuration form a group (mean +- std); the pooled seed
std is the noise. Each run is also compared with the baseline on the same conversations: the
difference of the aggregate loss with a bootstrap 95 % interval over conversations
(`paired_comparison`). The two make one verdict per row, by the rule in `VERDICT_RULE` (`verdict`).
Exact match, IFEval and the knowledge benchmark (`SHARES`) get the same paired interval over their scored
items, against the baseline and against the base model, under the same rule with their own seed noise
(`share_comparison`). Runs whose evaluation split differs from the baseline's (split fingerprint) are
never ranked with it. Where the runs' tokenizers differ, a nat per token means different things, so
they are ranked on bits per byte of reply text instead. Reads results only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lab2 import runs
from lab2.config import ConfigError, deep_merge

BEST_COMBINATION_NAME = "exp_best_combination"
# A factor is the key it varies, plus keys allowed to move with it (alpha scales with r;
# eval/save/warmup steps follow the length of a run).
FACTORS = {
    "steps": ("train.max_steps", {"train.eval_steps", "train.save_steps", "train.warmup_steps"}),
    "lr": ("train.learning_rate", set()),
    "rank": ("lora.r", {"lora.alpha"}),
    "4-bit": ("model.load_in_4bit", set()),  # LoRA against QLoRA
}
IGNORED_KEYS = {"experiment", "group", "seeds", "train.seed"}  # identity, not configuration
NOISE_MULTIPLE = 2.0  # |difference| under 2 sigma of seed noise is "within noise"
# The one rule behind every row's verdict, stated once on every page that shows verdicts.
VERDICT_RULE = (
    "One verdict per row against the baseline: better or worse only where the paired 95 % interval on the same held-out "
    f"conversations excludes zero and the difference also clears {NOISE_MULTIPLE:g} sigma of seed noise; within noise where the "
    "interval excludes zero but the difference is under that band; noise unknown where the interval excludes zero but no "
    "configuration was repeated over seeds, so the seed alone may have made the difference; unclear where the interval "
    "includes zero (or no per-conversation losses were recorded)."
)
BOOTSTRAP_SAMPLES = 2000
MEASURES = {"val_loss": "validation loss per token (nats)", "val_bpb": "validation bits per byte of reply text",
            # the clean yardstick (eval.clean_min_score): the validation conversations whose references are known correct
            "val_loss_clean": "clean validation loss per token (nats)",
            "val_bpb_clean": "clean validation bits per byte of reply text"}
CLEAN = "_clean"


def unit_of(measure: str) -> str:
    return "nats per token" if measure.startswith("val_loss") else "bits per byte"


# --------------------------------------------------------------------------- loading


def load_runs(output_root: str | Path) -> tuple[list[dict], list[dict]]:
    """(complete runs, other runs) of OUT, each as `runs.read_metrics` joins its records."""
    complete, others = [], []
    for exp_dir in runs.experiment_dirs(output_root):
        metrics = runs.read_metrics(exp_dir)
        (complete if metrics.get("status") == "complete" else others).append(metrics)
    return complete, others


def flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def group_of(metrics: dict) -> str:
    """Seed repeats share a group; any other run is its own."""
    return metrics["config"].get("group") or metrics["experiment"]


def configs_by_group(complete: list[dict]) -> dict[str, dict]:
    return {group_of(m): m["config"] for m in complete}


def run_row(metrics: dict) -> dict:
    cfg, train = metrics["config"], metrics["train"]
    evaluation = metrics.get("eval") or {}
    return {
        "experiment": metrics["experiment"],
        "group": group_of(metrics),
        "seed": cfg["train"]["seed"],
        "steps": train["total_steps"],
        "lr": cfg["train"]["learning_rate"],
        "r": cfg["lora"]["r"],
        "alpha": cfg["lora"]["alpha"],
        "batch": f"{cfg['train']['batch_size']}x{cfg['train']['gradient_accumulation_steps']}",
        # What the weights were, as loaded (nf4 or a dtype), never what was asked for; "?" in runs from before it was recorded.
        "weights": (metrics.get("precision") or {}).get("weights", "?"),
        "train_loss": train["final_loss"],
        "val_loss": runs.val_loss(metrics),
        "test_loss": evaluation.get("test_loss"),
        "perplexity": evaluation.get("perplexity"),
        "bleu": evaluation.get("bleu"),
        "rouge_l": evaluation.get("rouge_l"),
        "exact_match": evaluation.get("exact_match"),
        "exact_match_items": evaluation.get("exact_match_items"),
        **benchmark_figures(evaluation),
        "time_s": train["training_time_seconds"],
        "s_per_step": (train["training_time_seconds"] - train.get("periodic_eval_seconds", 0.0)) / max(train["total_steps"], 1),
        "tokens_per_s": train["tokens_per_second"],
        "peak_mem_mb": train["peak_memory_mb"],
        "weights_mb": train.get("weights_memory_mb"),
        "fingerprint": evaluation.get("split_fingerprint") or metrics.get("data", {}).get("fingerprint"),
        "tokenizer": evaluation.get("tokenizer_fingerprint") or metrics.get("data", {}).get("tokenizer_fingerprint"),
        "val_bpb": evaluation.get("val_bits_per_byte"),
        "val_loss_clean": evaluation.get("val_loss_clean"),
        "val_bpb_clean": evaluation.get("val_bits_per_byte_clean"),
        "clean_conversations": evaluation.get("val_clean_conversations"),
        "train_rows": (metrics.get("data", {}).get("train") or {}).get("examples"),
        "epochs": metrics.get("data", {}).get("epochs"),
    }


# The benchmarks' figures by the table's column names: IFEval's four accuracies and its prompt count
# (lab2.ifeval), the knowledge benchmark's two accuracies and its question count (lab2.knowledge; acc_norm
# is the one compared).
BENCHMARK_FIGURES = {
    "ifeval": {"ifeval": "prompt_strict", "ifeval_loose": "prompt_loose", "ifeval_inst": "instruction_strict",
               "ifeval_inst_loose": "instruction_loose", "ifeval_prompts": "prompts"},
    "knowledge": {"knowledge": "acc_norm", "knowledge_acc": "acc", "knowledge_questions": "questions"},
}


def benchmark_figures(evaluation: dict) -> dict:
    """Each benchmark record's figures in an evaluation (a run's or the base model's), None where not scored."""
    return {column: (evaluation.get(record) or {}).get(key) for record, columns in BENCHMARK_FIGURES.items()
            for column, key in columns.items()}


METRICS = ["train_loss", "val_loss", "val_bpb", "val_loss_clean", "val_bpb_clean", "clean_conversations", "test_loss", "perplexity", "bleu", "rouge_l", "exact_match",
           *(column for columns in BENCHMARK_FIGURES.values() for column in columns), "time_s", "s_per_step", "tokens_per_s", "peak_mem_mb", "weights_mb", "train_rows", "epochs"]
BASE_METRICS = ("val_loss", "val_loss_clean", "test_loss", "perplexity", "bleu", "rouge_l", "exact_match", "exact_match_items")


def runs_table(complete: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame([run_row(m) for m in complete])
    table[METRICS] = table[METRICS].astype(float)  # a metric no run has (None) becomes NaN, not an object column
    return table


def group_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: means, and the seed std of the validation loss."""
    settings = table.groupby("group", dropna=False)[["steps", "lr", "r", "alpha", "batch", "weights", "fingerprint", "tokenizer", "exact_match_items"]].first()
    means = table.groupby("group")[METRICS].mean()
    spread = table.groupby("group")["val_loss"].agg(seeds="count", val_loss_std="std")
    own_noise = ["val_bpb", "val_loss_clean", "val_bpb_clean", *(share.column for share in SHARES.values())]
    other_spread = table.groupby("group")[own_noise].std().add_suffix("_std")  # each measure's own seed noise
    return settings.join(means).join(spread).join(other_spread).reset_index()


def seed_noise(groups: pd.DataFrame, measure: str = "val_loss") -> float | None:
    """Pooled seed std of the ranking measure over every repeated configuration."""
    repeated = groups[(groups["seeds"] >= 2) & groups[f"{measure}_std"].notna()]
    if repeated.empty:
        return None
    pooled_var = ((repeated["seeds"] - 1) * repeated[f"{measure}_std"] ** 2).sum() / (repeated["seeds"] - 1).sum()
    return math.sqrt(pooled_var)


def choose_measure(groups: pd.DataFrame, baseline: str) -> str:
    """val_loss when every run on the baseline's split shares its tokenizer (and template); bits per
    byte when they differ, since a nat per token of one vocabulary is not one of another. On the clean
    yardstick (`_clean`) where every such run scored it on as many conversations: a loss on wrong
    references rewards learning the noise, which is what a data-centric change sets out to remove."""
    base = groups.set_index("group").loc[baseline]
    same_split = groups[groups["fingerprint"] == base["fingerprint"]]
    tokenizers = set(same_split["tokenizer"].dropna())
    measure = "val_bpb" if len(tokenizers) > 1 and same_split["val_bpb"].notna().all() else "val_loss"
    clean = same_split[measure + CLEAN]
    return measure + CLEAN if clean.notna().all() and same_split["clean_conversations"].nunique() == 1 else measure


def pick_baseline(groups: pd.DataFrame, baseline: str | None) -> str:
    if baseline and baseline in set(groups["group"]):
        return baseline
    if "baseline" in set(groups["group"]):
        return "baseline"
    return groups.sort_values("seeds", ascending=False)["group"].iloc[0]  # the repeated one, else the first


def compare(groups: pd.DataFrame, baseline: str, measure: str = "val_loss") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(comparable groups with their change vs baseline, best first on `measure`; groups on another split)."""
    base = groups.set_index("group").loc[baseline]
    same_split = groups["fingerprint"] == base["fingerprint"]
    ranked = groups[same_split].copy()
    for metric in ("val_loss", "val_bpb", "val_loss_clean", "val_bpb_clean", "test_loss", "perplexity", "time_s"):
        ranked[f"{metric}_vs_base_pct"] = 100 * (ranked[metric] - base[metric]) / base[metric]
    ranked["delta"] = ranked[measure] - base[measure]
    return ranked.sort_values(measure).reset_index(drop=True), groups[~same_split].reset_index(drop=True)


# --------------------------------------------------------------------------- paired, on the same conversations


def conversation_rows(evaluation: dict | None, measure: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(summed NLL, units) per validation conversation of one evaluation record; units are tokens for
    val_loss, bytes x ln 2 for bits per byte; only the clean yardstick's conversations for a `_clean`
    measure. None where it did not record them."""
    rows = (((evaluation or {}).get("per_conversation") or {}).get("validation"))
    per_token = measure.startswith("val_loss")
    if not rows or (not per_token and not rows.get("bytes")) or (measure.endswith(CLEAN) and not rows.get("clean")):
        return None
    units = np.asarray(rows["tokens"] if per_token else rows["bytes"], dtype=float) * (1 if per_token else math.log(2))
    clean = np.asarray(rows["clean"], dtype=bool) if measure.endswith(CLEAN) else np.ones(len(units), dtype=bool)
    return np.asarray(rows["nll"], dtype=float)[clean], units[clean]


def per_conversation(complete: list[dict], group: str, measure: str) -> tuple[np.ndarray, np.ndarray] | None:
    """`conversation_rows` of a group, its NLL averaged over its seeds. None when a run did not record them."""
    found = [conversation_rows(metrics.get("eval"), measure) for metrics in complete if group_of(metrics) == group]
    if not found or any(f is None for f in found) or len({len(nll) for nll, _ in found}) != 1:
        return None
    return np.mean([nll for nll, _ in found], axis=0), found[-1][1]


def paired_difference(run: tuple, base: tuple, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, lower_is_better: bool = True) -> dict:
    """The aggregate measure of `run` minus `base` over the same items (conversations, scored answers), and
    a bootstrap 95 % interval: items resampled with replacement, both aggregates recomputed on each sample.
    Its verdict is "unclear" whenever the interval includes zero."""
    (nll_r, units_r), (nll_b, units_b) = run, base
    delta = nll_r.sum() / units_r.sum() - nll_b.sum() / units_b.sum()
    idx = np.random.default_rng(seed).integers(0, len(nll_r), size=(samples, len(nll_r)))
    boot = nll_r[idx].sum(1) / units_r[idx].sum(1) - nll_b[idx].sum(1) / units_b[idx].sum(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    below, above = high < 0, low > 0
    verdict = ("better" if below == lower_is_better else "worse") if below or above else "unclear"
    return {"paired_delta": float(delta), "paired_low": float(low), "paired_high": float(high), "paired_verdict": verdict}


def paired_comparison(complete: list[dict], ranked: pd.DataFrame, baseline: str, measure: str) -> pd.DataFrame:
    """`ranked` with each group's paired difference from the baseline on the same validation conversations."""
    out = ranked.copy()
    base = per_conversation(complete, baseline, measure)
    results = []
    for group in out["group"]:
        run = per_conversation(complete, group, measure)
        if group == baseline or base is None or run is None or len(run[0]) != len(base[0]):
            results.append({"paired_delta": math.nan, "paired_low": math.nan, "paired_high": math.nan,
                            "paired_verdict": "baseline" if group == baseline else "not recorded"})
        else:
            results.append(paired_difference(run, base))
    return pd.concat([out.reset_index(drop=True), pd.DataFrame(results)], axis=1)


# A two-sided 95 % interval, and the power a design is judged by: a true difference of (1.96 + 0.84) standard
# errors gives an interval that excludes zero 4 times in 5.
Z_95, Z_POWER_80 = 1.96, 0.84


def detectable_difference(standard_error: float, noise: float | None) -> dict:
    """The smallest difference from the baseline that a design would call better or worse about 4 times in
    5: the larger of the seed band (`NOISE_MULTIPLE` sigma, which the verdict requires) and 2.8 standard
    errors of a paired difference. From a sweep's own figures (`minimum_detectable_difference`) or from
    those its params declare before any run (config.DesignSection)."""
    interval_band = (Z_95 + Z_POWER_80) * standard_error
    seed_band = None if noise is None else NOISE_MULTIPLE * noise
    return {"mdd": max(interval_band, seed_band or 0.0), "paired_standard_error": standard_error,
            "interval_band": interval_band, "seed_band": seed_band}


def minimum_detectable_difference(ranked: pd.DataFrame, noise: float | None) -> dict | None:
    """`detectable_difference` with this sweep's measured figures: the seed noise, and the standard error
    from the median width of its paired intervals (each 2 x 1.96 of them). None where no paired interval
    was measured."""
    widths = (ranked["paired_high"] - ranked["paired_low"]).dropna()
    if widths.empty:
        return None
    return detectable_difference(float(widths.median()) / (2 * Z_95), noise)


def held_out_measures(config: dict) -> str:
    """What a sweep measures on held-out items, in words, from a run's resolved config: declared before any
    run (`lab2 sweep` prints it) and in the report's first lines."""
    data, ev = config["data"], config["eval"]
    loss = f"validation loss per token on all {data['val_size']} validation conversations"
    if ev.get("clean_min_score") is not None:
        measures = [f"clean validation loss per token, which ranks: the validation conversations whose quality score is at least "
                    f"{ev['clean_min_score']:g} (references known correct)", loss]
    else:
        measures = [loss + ", which ranks"]
    measures.append(f"exact match on those of the first {ev['num_reference_samples']} test conversations with one right answer")
    if ev.get("ifeval_prompts") != 0:
        measures.append(f"IFEval (prompt-level strict) on {ev.get('ifeval_prompts') or 'all 541'} prompts, replies of up to "
                        f"{ev['ifeval_max_new_tokens']} tokens")
    if ev.get("knowledge_questions") != 0:
        measures.append(f"knowledge kept or lost: {ev.get('knowledge_questions') or 'all'} {ev['knowledge_task']} questions by "
                        "log-likelihood (acc_norm)")
    return ("Held-out measures: " + "; ".join(measures) + ". Every run against the baseline on the same items with a paired 95 % interval, the "
            "shares against the base model too (bits per byte in place of the per-token losses where the runs' tokenizers differ).")


def declared_detectable(config: dict) -> str:
    """The minimum detectable difference that a sweep's params declare (`design:`), before any run."""
    design = config.get("design")
    if not design:
        return ("Minimum detectable difference: none declared (a `design:` section in the params states the seed noise and the "
                "paired standard error expected); this sweep measures its own and the report shows it.")
    found = detectable_difference(design["paired_standard_error"], design["seed_sigma"])
    return (f"Minimum detectable difference, declared before any run: {found['mdd']:.4f} {unit_of(design['measure'])} "
            f"({MEASURES[design['measure']].split(' per ')[0]}), the larger of {NOISE_MULTIPLE:g} sigma of seed noise "
            f"({found['seed_band']:.4f}) and 2.8 paired standard errors ({found['interval_band']:.4f}); measured: {design['measured']}.")


def declaration(config: dict) -> list[str]:
    """What a sweep declares before any run, from a run's resolved config: its held-out measures and the
    minimum detectable difference of its design. `lab2 sweep` prints it first; the report opens with it."""
    return [held_out_measures(config), declared_detectable(config)]


def verdict(delta: float, paired_low: float, paired_high: float, noise: float | None) -> tuple[str, str]:
    """(the row's one verdict, why), by `VERDICT_RULE`; lower is better."""
    if math.isnan(paired_low):
        return "unclear", "no per-conversation losses recorded, so no paired interval"
    if paired_low <= 0 <= paired_high:
        return "unclear", "the paired interval includes zero"
    if noise is None:
        return "noise unknown", "the paired interval excludes zero, but no configuration was repeated over seeds"
    if abs(delta) < NOISE_MULTIPLE * noise:
        return "within noise", f"the paired interval excludes zero, but the difference is under {NOISE_MULTIPLE:g} sigma of seed noise ({NOISE_MULTIPLE * noise:.4f})"
    return ("better" if delta < 0 else "worse"), f"the paired interval excludes zero and the difference clears {NOISE_MULTIPLE:g} sigma of seed noise"


def with_verdicts(ranked: pd.DataFrame, baseline: str, noise: float | None) -> pd.DataFrame:
    """`ranked` (with its paired comparison) and each row's one verdict and the reason for it."""
    out = ranked.copy()
    found = [("baseline", "") if row["group"] == baseline else verdict(row["delta"], row["paired_low"], row["paired_high"], noise)
             for _, row in out.iterrows()]
    out["verdict"], out["verdict_why"] = [v for v, _ in found], [w for _, w in found]
    return out


# --------------------------------------------------------------------------- shares, paired on the same items


# Measures that are a share of items passed, each item scored for every run and the base model: exact
# match (the test conversations with one right answer), IFEval (its prompts, strict, prompt level) and the
# knowledge benchmark (its questions, acc_norm). Each gets the paired interval and the one verdict, against
# the baseline and against the base model.
@dataclass(frozen=True)
class Share:
    """A measure that is a share of items passed (right answers, IFEval prompts, benchmark questions): where
    the table holds it, what one item is, and each item's result in an evaluation record."""
    column: str  # the share in the runs' table
    items_column: str  # how many items it was scored on
    name: str  # in words, for findings and lines
    unit: str  # what an item is
    per_item: Callable[[dict], list[tuple]]  # an evaluation -> [(item key, 0.0 or 1.0)]


SHARES = {
    "em": Share("exact_match", "exact_match_items", "exact match", "items",
                lambda ev: [(r["prompt"], float(r["correct"])) for r in ev.get("references") or [] if "correct" in r]),
    "ifeval": Share("ifeval", "ifeval_prompts", "IFEval", "prompts",
                    lambda ev: [(p["key"], float(p["strict"])) for p in (ev.get("ifeval") or {}).get("per_prompt") or []]),
    "knowledge": Share("knowledge", "knowledge_questions", "knowledge (ARC, acc_norm)", "questions",
                       lambda ev: [(q["id"], float(q["acc_norm"])) for q in (ev.get("knowledge") or {}).get("per_question") or []]),
}


def share_items(evaluations: list[dict | None], prefix: str) -> tuple[tuple, np.ndarray] | None:
    """(the scored items' keys, each item's share passed over the evaluations given: a group's seeds);
    None where one has no per-item record or they scored different items."""
    rows = []
    for evaluation in evaluations:
        scored = SHARES[prefix].per_item(evaluation or {})
        if not scored:
            return None
        rows.append(scored)
    if not rows or len({tuple(k for k, _ in r) for r in rows}) != 1:
        return None
    return tuple(k for k, _ in rows[0]), np.mean([[v for _, v in r] for r in rows], axis=0)


NO_INTERVAL = {"delta": math.nan, "low": math.nan, "high": math.nan, "verdict": "not recorded", "why": ""}


def share_pair(run, other, noise: float | None) -> dict:
    """The paired difference of two shares over the same items, and its verdict by `VERDICT_RULE` (higher
    is better: the rule is applied to the difference's negative)."""
    if run is None or other is None or run[0] != other[0]:
        return NO_INTERVAL
    ones = np.ones(len(run[1]))
    paired = paired_difference((run[1], ones), (other[1], ones), lower_is_better=False)
    delta, low, high = paired["paired_delta"], paired["paired_low"], paired["paired_high"]
    word, why = verdict(-delta, -high, -low, noise)
    return {"delta": delta, "low": low, "high": high, "verdict": word, "why": why}


def base_model_evaluation(complete: list[dict], fingerprint: str) -> dict | None:
    """The base model's evaluation (adapter off), from any run on the same split."""
    for metrics in complete:
        evaluation = metrics.get("eval") or {}
        if evaluation.get("base") and evaluation.get("split_fingerprint") == fingerprint:
            return evaluation["base"]
    return None


def share_comparison(complete: list[dict], ranked: pd.DataFrame, baseline: str, groups: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """`ranked` with each group's share (exact match, IFEval, knowledge) against the baseline (`<prefix>_paired_*`)
    and against the base model (`<prefix>_vs_base_*`) on the same items: the difference with its bootstrap
    95 % interval over items, and the one verdict, with that share's own seed noise."""
    def items(group: str):
        return share_items([m.get("eval") for m in complete if group_of(m) == group], prefix)

    noise = seed_noise(groups, SHARES[prefix].column)
    fingerprint = ranked.set_index("group").loc[baseline, "fingerprint"]
    base_model = share_items([base_model_evaluation(complete, fingerprint)], prefix)
    baseline_items = items(baseline)
    results = []
    for group in ranked["group"]:
        run = items(group)
        vs_baseline = share_pair(run, baseline_items, noise) if group != baseline else {**NO_INTERVAL, "verdict": "baseline"}
        vs_base = share_pair(run, base_model, noise)
        results.append({**{f"{prefix}_paired_{k}": v for k, v in vs_baseline.items()},
                        **{f"{prefix}_vs_base_{k}": v for k, v in vs_base.items()}})
    return pd.concat([ranked.reset_index(drop=True), pd.DataFrame(results)], axis=1)


def base_model_row(complete: list[dict], fingerprint: str) -> dict | None:
    """The base model's figures (adapter off), from any run on the same split."""
    base = base_model_evaluation(complete, fingerprint)
    return None if base is None else {**{k: base.get(k) for k in BASE_METRICS}, **benchmark_figures(base)}


# --------------------------------------------------------------------------- factors


def factor_of(config: dict, baseline_config: dict) -> tuple[str | None, set]:
    """Which single factor this configuration varies against the baseline (None: baseline or a mix)."""
    a, b = flatten(config), flatten(baseline_config)
    changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in IGNORED_KEYS and not k.startswith(("eval.", "design."))}
    for name, (key, companions) in FACTORS.items():
        if key in changed and changed <= {key} | companions:
            return name, changed
    return None, changed


def factor_effects(complete: list[dict], ranked: pd.DataFrame, baseline: str) -> dict[str, pd.DataFrame]:
    """Per factor: its values (baseline included) with mean validation loss, sorted by value."""
    configs = configs_by_group(complete)
    effects: dict[str, list] = {name: [] for name in FACTORS}
    for group in ranked["group"]:
        factor, _ = factor_of(configs[group], configs[baseline])
        if factor is not None or group == baseline:
            for name in ([factor] if factor else FACTORS):
                effects[name].append(group)
    out = {}
    for name, groups in effects.items():
        if len(groups) < 2:  # the baseline alone: this factor was not swept
            continue
        key = FACTORS[name][0]
        rows = ranked[ranked["group"].isin(groups)].copy()
        rows["value"] = [flatten(configs[g])[key] for g in rows["group"]]
        out[name] = rows.sort_values("value").reset_index(drop=True)
    return out


def best_combination(complete: list[dict], effects: dict[str, pd.DataFrame], baseline: str) -> dict:
    """Overrides on the baseline that take each factor's best value (alpha moves with r)."""
    configs = configs_by_group(complete)
    overrides: dict = {"experiment": BEST_COMBINATION_NAME}
    for rows in effects.values():
        best_group = rows.loc[rows["val_loss"].idxmin(), "group"]
        if best_group == baseline:
            continue
        _, changed = factor_of(configs[best_group], configs[baseline])
        flat = flatten(configs[best_group])
        for key in changed:
            section, name = key.split(".", 1)
            overrides = deep_merge(overrides, {section: {name: flat[key]}})
    return overrides


# --------------------------------------------------------------------------- the best experiment


def ranking(output_root: str | Path, baseline: str | None = None) -> tuple[list[dict], pd.DataFrame]:
    """(complete runs, groups ranked best first on the baseline's split): what the report ranks."""
    complete, _ = load_runs(output_root)
    if not complete:
        raise ConfigError(f"{output_root}/: no complete experiment; run `make sweep` first")
    return complete, rank_groups(complete, baseline)["ranked"]


def rank_groups(complete: list[dict], baseline: str | None = None) -> dict:
    """Every ranking decision in one place: groups, baseline, measure, seed noise, the ranked groups
    with their paired comparison, and the groups on another split."""
    groups = group_table(runs_table(complete))
    baseline = pick_baseline(groups, baseline)
    measure = choose_measure(groups, baseline)
    noise = seed_noise(groups, measure)
    ranked, others = compare(groups, baseline, measure)
    ranked = with_verdicts(paired_comparison(complete, ranked, baseline, measure), baseline, noise)
    for prefix in SHARES:
        ranked = share_comparison(complete, ranked, baseline, groups, prefix)
    return {"groups": groups, "baseline": baseline, "measure": measure, "noise": noise, "ranked": ranked, "others": others}


def best_experiment(output_root: str | Path, baseline: str | None = None) -> str:
    """The report's best configuration (lowest mean validation loss on the baseline's split) and,
    among its seed repeats, the run with the lowest validation loss."""
    complete, ranked = ranking(output_root, baseline)
    return best_run(complete, ranked)["experiment"]


def best_run(complete: list[dict], ranked: pd.DataFrame) -> dict:
    """The metrics of the best-ranked configuration's lowest-loss seed."""
    group = ranked.iloc[0]["group"]
    return min((m for m in complete if group_of(m) == group), key=runs.val_loss)
