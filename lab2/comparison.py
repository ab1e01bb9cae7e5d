"""OUT/*/metrics.json -> a table of configurations ranked on validation loss, with seed noise.

The statistics behind the report and behind "the best experiment" that `make export` and
`make app` take. Runs are compared on held-out validation loss (never on training loss of runs of
different lengths). Seed repeats of one configuration form a group (mean +- std); the pooled seed
std is the noise, and a difference under twice the noise is "within noise". Runs whose evaluation
split differs from the baseline's (split fingerprint) are never ranked with it. Reads results only.
"""

from __future__ import annotations

import math
from pathlib import Path

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
}
IGNORED_KEYS = {"experiment", "group", "seeds", "train.seed"}  # identity, not configuration
NOISE_MULTIPLE = 2.0  # |difference| under 2 sigma of seed noise is "within noise"


# --------------------------------------------------------------------------- loading


def load_runs(output_root: str | Path) -> tuple[list[dict], list[dict]]:
    """(complete runs, other runs) from OUT/*/metrics.json."""
    complete, others = [], []
    for path in sorted(Path(output_root).glob(f"*/{runs.METRICS_FILE}")):
        metrics = runs.read_metrics(path.parent)
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
        "train_loss": train["final_loss"],
        "val_loss": runs.val_loss(metrics),
        "test_loss": evaluation.get("test_loss"),
        "perplexity": evaluation.get("perplexity"),
        "bleu": evaluation.get("bleu"),
        "rouge_l": evaluation.get("rouge_l"),
        "exact_match": evaluation.get("exact_match"),
        "exact_match_items": evaluation.get("exact_match_items"),
        "time_s": train["training_time_seconds"],
        "tokens_per_s": train["tokens_per_second"],
        "peak_mem_mb": train["peak_memory_mb"],
        "fingerprint": evaluation.get("split_fingerprint") or metrics.get("data", {}).get("fingerprint"),
    }


METRICS = ["train_loss", "val_loss", "test_loss", "perplexity", "bleu", "rouge_l", "exact_match", "time_s", "tokens_per_s", "peak_mem_mb"]
BASE_METRICS = ("val_loss", "test_loss", "perplexity", "bleu", "rouge_l", "exact_match")


def runs_table(complete: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame([run_row(m) for m in complete])
    table[METRICS] = table[METRICS].astype(float)  # a metric no run has (None) becomes NaN, not an object column
    return table


def group_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: means, and the seed std of the validation loss."""
    settings = table.groupby("group")[["steps", "lr", "r", "alpha", "batch", "fingerprint", "exact_match_items"]].first()
    means = table.groupby("group")[METRICS].mean()
    spread = table.groupby("group")["val_loss"].agg(seeds="count", val_loss_std="std")
    return settings.join(means).join(spread).reset_index()


def seed_noise(groups: pd.DataFrame) -> float | None:
    """Pooled seed std of the validation loss over every repeated configuration."""
    repeated = groups[groups["seeds"] >= 2]
    if repeated.empty:
        return None
    pooled_var = ((repeated["seeds"] - 1) * repeated["val_loss_std"] ** 2).sum() / (repeated["seeds"] - 1).sum()
    return math.sqrt(pooled_var)


def pick_baseline(groups: pd.DataFrame, baseline: str | None) -> str:
    if baseline and baseline in set(groups["group"]):
        return baseline
    if "baseline" in set(groups["group"]):
        return "baseline"
    return groups.sort_values("seeds", ascending=False)["group"].iloc[0]  # the repeated one, else the first


def compare(groups: pd.DataFrame, baseline: str, noise: float | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(comparable groups with change vs baseline and verdict, groups on another split)."""
    base = groups.set_index("group").loc[baseline]
    same_split = groups["fingerprint"] == base["fingerprint"]
    ranked = groups[same_split].copy()
    for metric in ("val_loss", "test_loss", "perplexity", "time_s"):
        ranked[f"{metric}_vs_base_pct"] = 100 * (ranked[metric] - base[metric]) / base[metric]
    delta = ranked["val_loss"] - base["val_loss"]

    def verdict(row_delta: float, name: str) -> str:
        if name == baseline:
            return "baseline"
        if noise is None:
            return "better" if row_delta < 0 else "worse"  # no repeats: noise unknown
        if abs(row_delta) < NOISE_MULTIPLE * noise:
            return "within noise"
        return "better" if row_delta < 0 else "worse"

    ranked["verdict"] = [verdict(d, g) for d, g in zip(delta, ranked["group"])]
    return ranked.sort_values("val_loss").reset_index(drop=True), groups[~same_split].reset_index(drop=True)


def base_model_row(complete: list[dict], fingerprint: str) -> dict | None:
    """The base model's evaluation (adapter off), from any run on the same split."""
    for metrics in complete:
        evaluation = metrics.get("eval") or {}
        if evaluation.get("base") and evaluation.get("split_fingerprint") == fingerprint:
            base = evaluation["base"]
            return {k: base.get(k) for k in BASE_METRICS}
    return None


# --------------------------------------------------------------------------- factors


def factor_of(config: dict, baseline_config: dict) -> tuple[str | None, set]:
    """Which single factor this configuration varies against the baseline (None: baseline or a mix)."""
    a, b = flatten(config), flatten(baseline_config)
    changed = {k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in IGNORED_KEYS and not k.startswith("eval.")}
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
    groups = group_table(runs_table(complete))
    noise = seed_noise(groups)
    ranked, _ = compare(groups, pick_baseline(groups, baseline), noise)
    return complete, ranked


def best_experiment(output_root: str | Path, baseline: str | None = None) -> str:
    """The report's best configuration (lowest mean validation loss on the baseline's split) and,
    among its seed repeats, the run with the lowest validation loss."""
    complete, ranked = ranking(output_root, baseline)
    return best_run(complete, ranked)["experiment"]


def best_run(complete: list[dict], ranked: pd.DataFrame) -> dict:
    """The metrics of the best-ranked configuration's lowest-loss seed."""
    group = ranked.iloc[0]["group"]
    return min((m for m in complete if group_of(m) == group), key=runs.val_loss)
