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
