"""Figures shared by the notebooks and the report (matplotlib; returned, not shown)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt  # no backend forced: inline in a kernel, Agg when headless

if TYPE_CHECKING:
    import pandas as pd


def plot_loss_curves(runs: dict[str, dict], title: str = "Loss"):
    """Train (thin) and validation (thick, dots) loss against step, one colour per experiment.

    `runs` maps a label to a metrics.json `train` section (or anything with `history`
    and `eval_history`).
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (label, train) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        history, evals = train.get("history", []), train.get("eval_history", [])
        if history:  # named in the legend only where the run has no validation curve to name it
            ax.plot([h["step"] for h in history], [h["loss"] for h in history], color=colour, alpha=0.35, lw=1,
                    label=None if evals else f"{label} (train)")
        if evals:
            ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", color=colour, lw=2, label=f"{label} (val)")
    ax.set(xlabel="step", ylabel="loss (assistant tokens)", title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_val_loss_by_factor(effects: dict[str, pd.DataFrame], noise: float | None):
    fig, axes = plt.subplots(1, max(len(effects), 1), figsize=(4.2 * max(len(effects), 1), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], effects.items()):
        errors = rows["val_loss_std"].fillna(noise or 0.0)
        switch = all(isinstance(v, bool) for v in rows["value"])  # a setting on or off (4-bit): two labelled points
        x = list(range(len(rows))) if switch else rows["value"]
        ax.errorbar(x, rows["val_loss"], yerr=errors, fmt="o-", capsize=4)
        if switch:
            ax.set_xticks(x, ["on" if v else "off" for v in rows["value"]])
            ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set(xlabel=name, ylabel="validation loss", title=f"validation loss vs {name}\n(bars: seed std; single runs: pooled noise)")
        if name == "lr":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_cost_vs_benefit(ranked: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ranked["time_s"], ranked["val_loss"], yerr=ranked["val_loss_std"].fillna(0), fmt="o", capsize=4)
    for _, row in ranked.iterrows():
        ax.annotate(row["group"], (row["time_s"], row["val_loss"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set(xlabel="training time (s)", ylabel="validation loss", title="cost against benefit")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_paired_differences(ranked: pd.DataFrame, noise: float | None, unit: str = "nats per token", against: str = "the baseline"):
    """Each run's difference from `against` (the baseline; the base model for `lab2 grade`) on the same
    conversations, with its bootstrap 95 % interval, and the band of twice the seed noise around zero: left of
    zero is better."""
    rows = ranked[ranked["paired_delta"].notna()].sort_values("paired_delta")
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(rows), 1) + 1.6))
    y = list(range(len(rows)))
    ax.errorbar(rows["paired_delta"], y, xerr=[rows["paired_delta"] - rows["paired_low"], rows["paired_high"] - rows["paired_delta"]],
                fmt="o", capsize=4)
    if noise:
        ax.axvspan(-2 * noise, 2 * noise, color="grey", alpha=0.15, label="within 2 sigma of seed noise")
        ax.legend(fontsize=8, loc="best")
    ax.axvline(0, color="black", lw=1)
    # each row's one verdict beside its name, so the picture never says more than the table
    ax.set_yticks(y, [f"{g} ({v})" if "verdict" in rows else g for g, v in zip(rows["group"], rows.get("verdict", rows["group"]))])
    ax.set(xlabel=f"difference from {against} ({unit}; left is better)", title="paired on the same conversations (95 % intervals)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def plot_against_base(ranked: pd.DataFrame, base_model: dict | None, prefix: str, column: str, name: str, measure: str, unit: str,
                      color: str = "C2"):
    """Each run's share (IFEval prompts passed, knowledge questions right) minus the base model's on the same
    items, with its bootstrap 95 % interval: right of zero, the run does better than the base model."""
    rows = ranked[ranked[f"{prefix}_vs_base_delta"].notna()].sort_values(f"{prefix}_vs_base_delta")
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(rows), 1) + 1.6))
    y = list(range(len(rows)))
    points = 100 * rows[f"{prefix}_vs_base_delta"]
    ax.errorbar(points, y, xerr=[points - 100 * rows[f"{prefix}_vs_base_low"], 100 * rows[f"{prefix}_vs_base_high"] - points],
                fmt="o", capsize=4, color=color)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, [f"{g} ({v})" for g, v in zip(rows["group"], rows[f"{prefix}_vs_base_verdict"])])  # the table's verdict
    base = (base_model or {}).get(column)
    ax.set(xlabel=f"{measure}: run minus base model (points; right is better)",
           title=f"{name} against the base model, same {unit}\n95 % intervals"
           + ("" if base is None or math.isnan(base) else f"; the base model: {100 * base:.1f} %"))
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
