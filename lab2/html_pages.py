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
    """OUT/index.html, the page to open first. Its first screen answers at a glance: the ranked short
    table (with links to every run's executed pages), each run's paired difference from the baseline
    against the seed-noise band, and at most five findings; everything else follows below. Built from
    `lab2.report.Report` and its column registry, the same data as EXPERIMENT_REPORT.md, and rendered
    by nbconvert like the notebook pages; every link is relative."""
    from html import escape

    import nbformat
    from nbconvert import HTMLExporter

    from lab2.comparison import MEASURES, VERDICT_RULE, group_of
    from lab2.report import base_model_line, chain_frame, columns_for, formatted, glance_table, html_table

    root = Path(output_root)
    runs_of: dict[str, list[str]] = {}
    for metrics in report.complete:
        runs_of.setdefault(group_of(metrics), []).append(metrics["experiment"])
    links = []
    for group in report.table()["group"]:
        lines = []
        for name in sorted(runs_of.get(group, [])):
            pages = [_link(root, Path("html") / name / f"{stage}.html", stage) for stage in ("train", "evaluate", "export")]
            run = name.removeprefix(f"{group}-")  # a seed repeat by its seed; a single run needs no name
            lines.append(("" if name == group else f"{escape(run)}: ") + " · ".join(p for p in pages if p))
        links.append("<br>".join(lines))
    paired = Path("report_figures") / "paired_differences.png"
    figure = f'<img src="{paired.as_posix()}" alt="paired differences" style="max-width: 560px; width: 48%">' if (root / paired).is_file() else ""
    glance = "".join(f"<li>{escape(line)}</li>" for line in report.glance)
    cells = [
        f"# lab2 experiments\n\nRanked on held-out {MEASURES[report.measure]}, the same conversations for every run (mean "
        "over seeds where repeated); training loss is never compared. Full report: "
        "[EXPERIMENT_REPORT.md](EXPERIMENT_REPORT.md) · [report.html](report.html).",
        "<style>.glance { font-size: 0.9em; } .glance td { white-space: nowrap; } .glance td:first-child, .glance td:last-child { white-space: normal; }"
        " .rule { font-size: 0.8em; margin-top: 4px; }</style>"
        + html_table(glance_table(report), {"executed pages": links}).replace("<table>", '<table class="glance">', 1)
        + f'<p class="rule">{escape(VERDICT_RULE)}</p>',  # the verdict column's rule, right under it
        f'<div style="display: flex; gap: 24px; align-items: flex-start">{figure}<ul style="flex: 1">{glance}</ul></div>',
        "## Design, declared before the runs\n\n" + report.declared,
        "## All findings\n\n" + "\n".join(f"- {line}" for line in report.findings),
        "## Experiments, every column\n\n" + html_table(formatted(report.table(), columns_for(report.measure))),
    ]
    if report.base_model:
        cells.append(base_model_line(report.base_model))
    if not report.sample_answers.empty:
        cells.append(f"## Sample answers: {report.best_run['experiment']} against the base model\n\n"
                     + report.sample_answers.to_html(index=False, escape=True))
    figures = [p for p in sorted((root / "report_figures").glob("*.png")) if p.name != paired.name]
    if figures:
        cells.append("## More figures\n\n" + "\n\n".join(f"![{p.stem.replace('_', ' ')}]({p.relative_to(root).as_posix()})" for p in figures))
    for experiment, chain in report.export_chains().items():
        cells.append(f"## Export of {experiment}: from the model evaluated to each GGUF\n\n" + chain_frame(chain).to_html(index=False))
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
        cells.insert(3, "## Failed or unfinished\n\n" + "\n".join(lines))  # right below the first screen: never missed
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(c) for c in cells])
    body, _ = HTMLExporter(exclude_input=True).from_notebook_node(notebook, resources={"metadata": {"name": "lab2 experiments"}})
    index = root / "index.html"
    index.write_text(body)
    return index
