"""An HTML page per executed notebook under OUT/html/, with an index (nbconvert)."""

from __future__ import annotations

from pathlib import Path


def notebooks_to_html(output_root: str | Path) -> Path:
    """An HTML page per executed notebook under OUT/html/, and an index linking them all."""
    from nbconvert import HTMLExporter

    root = Path(output_root)
    exporter = HTMLExporter()
    pages = []
    for notebook in sorted(root.glob("*/*.ipynb")) + sorted(root.glob("report.ipynb")):
        target = root / "html" / notebook.relative_to(root).with_suffix(".html")
        target.parent.mkdir(parents=True, exist_ok=True)
        body, _ = exporter.from_filename(str(notebook))
        target.write_text(body)
        pages.append(target.relative_to(root / "html"))
    items = "\n".join(f'<li><a href="{p}">{p.with_suffix("")}</a></li>' for p in pages)
    index = root / "html" / "index.html"
    index.write_text(f"<!doctype html><meta charset='utf-8'><title>lab2 outputs</title><h1>Executed notebooks</h1><ul>\n{items}\n</ul>\n")
    return index


def _link(root: Path, page: Path, label: str) -> str | None:
    """A link to `page` (relative to OUT), if it exists."""
    return f'<a href="{page.as_posix()}">{label}</a>' if (root / page).is_file() else None


def _failed_page(root: Path, name: str) -> str:
    pages = (_link(root, Path("html") / name / f"{stage}.failed.html", f"{stage}.failed") for stage in ("train", "evaluate"))
    return next((p for p in pages if p), "")


def _notebook_error(notebook: Path) -> str:
    """The one-line error papermill recorded in a failed notebook."""
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output['ename']}: {output['evalue']}".splitlines()[0]
    return "no error recorded"


def landing_page(output_root: str | Path, report) -> Path:
    """OUT/index.html, the page to open first: findings, the ranked table with links to every run's
    executed pages, the figures, and what failed. Built from `lab2.report.Report`, the same data as
    EXPERIMENT_REPORT.md, and rendered by nbconvert like the notebook pages; every link is relative."""
    import nbformat
    from nbconvert import HTMLExporter

    from lab2.comparison import MEASURES, group_of
    from lab2.report import base_model_line, format_number

    root = Path(output_root)
    runs_of: dict[str, list[str]] = {}
    for metrics in report.complete:
        runs_of.setdefault(group_of(metrics), []).append(metrics["experiment"])
    rows = []
    for _, row in report.ranked.iterrows():
        links = []
        for name in sorted(runs_of.get(row["group"], [])):
            pages = [_link(root, Path("html") / name / f"{stage}.html", stage) for stage in ("train", "evaluate", "export")]
            links.append(f"{name}: " + " · ".join(p for p in pages if p))
        std = "" if row["val_loss_std"] != row["val_loss_std"] else f" ± {row['val_loss_std']:.4f}"
        rows.append(f"<tr><td>{row['group']}</td><td>{row['data']}</td><td>{int(row['seeds'])}</td><td>{row['val_loss']:.4f}{std}</td>"
                    f"<td>{format_number(row['val_bpb'])}</td>"
                    f"<td>{row['verdict']} ({row[f'{report.measure}_vs_base_pct']:+.2f} %)</td><td>{row['paired']} {row['paired_verdict']}</td>"
                    f"<td>{format_number(row['test_loss'])}</td>"
                    f"<td>{format_number(row['bleu'], '.2f')}</td><td>{format_number(row['rouge_l'], '.3f')}</td>"
                    f"<td>{format_number(row['exact_match'], '.1%')}</td><td>{row['weights']}</td>"
                    f"<td>{format_number(row['s_per_step'], '.2f')}</td><td>{format_number(row['peak_mem_mb'], '.0f')}</td>"
                    f"<td>{'<br>'.join(links)}</td></tr>")
    table = ("<table><thead><tr><th>group</th><th>training data</th><th>seeds</th><th>val loss ± std</th><th>val bits/byte</th>"
             "<th>vs baseline (seed noise)</th><th>paired vs baseline [95 %]</th><th>test loss</th>"
             "<th>BLEU</th><th>ROUGE-L</th><th>exact match</th><th>weights</th><th>s/step</th><th>peak MB</th>"
             "<th>runs: executed pages</th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    cells = [
        f"# lab2 experiments\n\nRanked on held-out {MEASURES[report.measure]} (mean over seeds where repeated), the same "
        "conversations for every run; training loss is never compared. Full report: "
        "[EXPERIMENT_REPORT.md](EXPERIMENT_REPORT.md) · [report.html](report.html).",
        "## Findings\n\n" + "\n".join(f"- {line}" for line in report.findings),
        "## Experiments, best first\n\n" + table,
    ]
    if report.base_model:
        cells.append(base_model_line(report.base_model))
    if not report.sample_answers.empty:
        cells.append(f"## Sample answers: {report.best_run['experiment']} against the base model\n\n"
                     + report.sample_answers.to_html(index=False, escape=True))
    figures = sorted((root / "report_figures").glob("*.png"))
    if figures:
        cells.append("## Figures\n\n" + "\n\n".join(f"![{p.stem.replace('_', ' ')}]({p.relative_to(root).as_posix()})" for p in figures))
    lines = []
    recorded = {m.get("experiment") for m in report.unfinished}
    for metrics in report.unfinished:  # a metrics.json that says failed or running
        name = metrics.get("experiment", "?")
        lines.append(f"- **{name}**: {metrics.get('status')}: {metrics.get('error', 'no error recorded')} {_failed_page(root, name)}".rstrip())
    for failed in sorted(root.glob("*/*.failed.ipynb")):  # failed before writing any metrics.json
        name = failed.parent.name
        if name not in recorded and not (failed.parent / "metrics.json").is_file():
            recorded.add(name)
            lines.append(f"- **{name}**: failed: {_notebook_error(failed)} {_failed_page(root, name)}".rstrip())
    if lines:
        cells.append("## Failed or unfinished\n\n" + "\n".join(lines))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(c) for c in cells])
    body, _ = HTMLExporter(exclude_input=True).from_notebook_node(notebook, resources={"metadata": {"name": "lab2 experiments"}})
    index = root / "index.html"
    index.write_text(body)
    return index
