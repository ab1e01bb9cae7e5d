"""Executed notebooks read as reports: no red (stderr) box for known, harmless output, and nothing in
OUT names the machine that ran it (no checkout path, no home folder)."""

import os
import re
from pathlib import Path

import nbformat

from lab2.export import choose_experiment
from tests.conftest import FAKE_TOKEN, REPO

# What may still reach stderr in a healthy run: warnings a reader should see.
ALLOWED_STDERR = [r"resuming from", r"truncat", r"non-finite"]


def stderr_texts(notebook: Path) -> list[str]:
    cells = nbformat.read(notebook, as_version=4).cells
    return [o["text"] for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr"]


def test_executed_notebooks_have_no_red_box_but_allowed_warnings(swept):
    out = swept / "outputs"
    exported = choose_experiment(out)
    pages = sorted(out.glob("*/*.ipynb")) + [out / "report.ipynb"]
    assert [p.relative_to(out).as_posix() for p in pages] == sorted(
        [f"{exp}/{page}.ipynb" for exp in ("baseline", "lr_high") for page in ("evaluate", "train")]
        + [f"{exported}/export.ipynb"]) + ["report.ipynb"]
    unexpected = [(page.name, text[:100]) for page in pages for text in stderr_texts(page)
                  if text.strip() and not any(re.search(p, text) for p in ALLOWED_STDERR)]
    assert unexpected == []
    html = "".join(str(o.get("data", {}).get("text/html", "")) for c in nbformat.read(out / "lr_high" / "train.ipynb", as_version=4).cells
                   for o in c.get("outputs", []))
    assert "<progress" in html and "Validation Loss" in html  # the Trainer's step table stays


def test_outputs_name_no_machine_path_nor_the_token(swept):
    out = swept / "outputs"
    injected = next(c for c in nbformat.read(out / "baseline" / "train.ipynb", as_version=4).cells
                    if "injected-parameters" in c.metadata.get("tags", []))
    assert 'params_path = "params/tiny_random/baseline.yaml"' in injected.source and 'output_root = "outputs"' in injected.source
    assert 'resolved = {"experiment": "baseline"' in injected.source  # the config, validated once, passed whole
    # The HF token was in every kernel's environment (the sweep's, the report's and the export's).
    needles = [str(swept), str(Path.home()).rstrip(os.sep) + os.sep, str(REPO), FAKE_TOKEN]
    offenders = [f"{path.relative_to(out)} names {needle}" for path in out.rglob("*") if path.is_file()
                 for needle in needles if needle.encode() in path.read_bytes()]
    assert offenders == []


def test_landing_page_in_a_real_browser(swept, tmp_path):
    """OUT/index.html opened from disk: every group ranked, a run's link leads to its train page with
    the step table and the loss plot."""
    from playwright.sync_api import sync_playwright

    from lab2.report import Report
    from tools.screenshot import CHROMIUM, CHROMIUM_ARGS, landing_page_png, png_size

    out = swept / "outputs"
    report = Report(out)
    groups = list(report.ranked["group"])
    assert sorted(groups) == ["baseline", "lr_high"] and report.base_model
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})  # a laptop's screen
        page.goto((out / "index.html").as_uri())
        table = page.locator("table").first  # the experiments, ranked, the base model last; the sample answers follow
        rows = table.locator("tbody tr")
        assert [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())] == [*groups, "base model (no adapter)"]
        # paired differences, loss curves, by factor, cost against benefit, IFEval and knowledge against the base model
        assert page.locator("img[src^='report_figures/']").count() == 6
        # At a glance, without scrolling: the ranked table, the paired-difference figure, then at most five findings.
        figure = page.locator("img[src='report_figures/paired_differences.png']")
        glance = page.locator("ul").first.locator("li")
        for element in (table, figure):  # whole, in the first screen
            box = element.bounding_box()
            assert box is not None and box["y"] + box["height"] <= 800, box
        assert glance.first.bounding_box()["y"] + glance.first.bounding_box()["height"] <= 800  # the first finding too
        assert table.bounding_box()["y"] + table.bounding_box()["height"] <= figure.bounding_box()["y"]  # the figure below it
        assert [glance.nth(i).inner_text() for i in range(glance.count())] == report.glance and 3 <= glance.count() <= 5
        page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
        page.locator("a", has_text="train").first.click()
        page.wait_for_load_state()
        assert page.url.endswith("/html/baseline/train.html") or page.url.endswith("/html/lr_high/train.html")
        assert page.locator("progress").count() >= 1 and page.get_by_text("Validation Loss").count() >= 1  # the step table
        assert page.locator("img[src^='data:image/png']").count() >= 1  # the loss plot, embedded
        page.screenshot(path=str(tmp_path / "train.png"), full_page=True)
        browser.close()
    # What `make screenshot` writes for the README, from this real report.
    shot = landing_page_png(out, tmp_path / "landing.png")
    assert png_size(shot) == (1100, 1100) and shot.stat().st_size > 20_000
    print(f"screenshots: {tmp_path / 'index.png'} {tmp_path / 'train.png'} {shot}")
