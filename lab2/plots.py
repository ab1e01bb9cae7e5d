"""Figures shared by the notebooks and the report (matplotlib; returned, not shown)."""

from __future__ import annotations

import matplotlib.pyplot as plt  # no backend forced: inline in a kernel, Agg when headless


def plot_loss_curves(runs: dict[str, dict], title: str = "Loss"):
    """Train (thin) and validation (thick, dots) loss against step, one colour per experiment.

    `runs` maps a label to a metrics.json `train` section (or anything with `history`
    and `eval_history`).
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (label, train) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        history, evals = train.get("history", []), train.get("eval_history", [])
        if history:
            ax.plot([h["step"] for h in history], [h["loss"] for h in history], color=colour, alpha=0.35, lw=1)
        if evals:
            ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", color=colour, lw=2, label=f"{label} (val)")
    ax.set(xlabel="step", ylabel="loss (assistant tokens)", title=title)
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
