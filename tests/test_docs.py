"""The pages say what the code does: every `make` target, `python -m lab2` verb, `params/...` path and
`outputs/...` path that README.md and docs/*.md name exists (outputs/ as a sweep would write it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What `make sweep` and `make report` write at the top of a sweep's folder (docs/outputs.md).
SWEEP_FILES = {"index.html", "EXPERIMENT_REPORT.md", "report.ipynb", "report.html", "html", "report_figures", "sweep_plan.json"}
GRADED, GRADE_FILES = "-grade", {"index.html", "CLASS_REPORT.md", "grades.csv", "class_differences.png", "scores"}  # `make grade`
GENERATED_PARAMS = {"exp_best_combination.yaml"}  # written by `make report` into the sweep's params folder
PATH = re.compile(r"\b(params|outputs)/[A-Za-z0-9_.*/-]*")  # stops at a placeholder such as <sweep>


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return {m for line in makefile.splitlines() for m in re.findall(r"^([a-z][a-z0-9-]*)\s*:(?!=)", line)}


def lab2_verbs() -> set[str]:
    from lab2.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


def sweeps() -> dict[str, Path]:
    """outputs/<name> for every params folder (the Makefile's OUT is the folder's own name)."""
    return {d.name: d for d in (ROOT / "params").rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}


def experiments(sweep: Path) -> set[str]:
    return {p.stem for p in sweep.glob("*.yaml") if p.stem != "base"} | {p.stem for p in sweep.glob("*.yml")}


def mentions(pattern: re.Pattern) -> list[tuple[str, int, str]]:
    return [(page.relative_to(ROOT).as_posix(), number, match)
            for page in PAGES for number, line in enumerate(page.read_text().splitlines(), 1)
            for match in pattern.findall(line)]


def wrong_path(path: str) -> str | None:
    """Why `path` (params/... or outputs/...) names nothing lab2 has or writes; None when it does."""
    path = path.rstrip("./")
    parts = path.split("/")
    if parts[0] == "params":
        if "*" in path or (ROOT / path).exists() or parts[-1] in GENERATED_PARAMS and (ROOT / path).parent.is_dir():
            return None
        return "no such params file or folder"
    if len(parts) == 1:
        return None
    known = sweeps()
    if parts[1].removesuffix(GRADED) in known and parts[1].endswith(GRADED):  # `make grade`'s folder beside the sweep's
        return None if len(parts) == 2 or parts[2] in GRADE_FILES else f"`make grade` writes no {parts[2]!r}"
    if parts[1] not in known:
        return f"no params folder is named {parts[1]!r}, so no sweep writes outputs/{parts[1]}"
    if len(parts) > 2 and "*" not in parts[2] and parts[2] not in SWEEP_FILES:
        run = re.sub(r"-seed\d+$", "", parts[2])
        if run not in experiments(known[parts[1]]):
            return f"no run {parts[2]!r} in params/{known[parts[1]].relative_to(ROOT / 'params').as_posix()}"
    return None


def test_every_make_target_the_pages_name_exists():
    targets = make_targets()
    assert {"sweep", "test", "report", "export", "app"} <= targets  # the reader itself works
    wrong = [(page, n, t) for page, n, t in mentions(re.compile(r"\bmake ([a-z][a-z0-9-]*)")) if t not in targets]
    assert not wrong, f"`make` targets the Makefile does not have: {wrong}"


def test_every_python_m_lab2_verb_the_pages_name_exists():
    verbs = lab2_verbs()
    assert {"sweep", "validate", "report", "export"} <= verbs
    wrong = [(page, n, v) for page, n, v in mentions(re.compile(r"python -m lab2 ([a-z][a-z-]*)")) if v not in verbs]
    assert not wrong, f"`python -m lab2` verbs the CLI does not have: {wrong}"


def test_every_params_and_outputs_path_the_pages_name_exists():
    found = [(page.relative_to(ROOT).as_posix(), n, m.group(0)) for page in PAGES for n, line in enumerate(page.read_text().splitlines(), 1)
             for m in PATH.finditer(line)]
    assert len(found) > 20  # the pages do name paths: the pattern finds them
    wrong = [(page, n, path, why) for page, n, path in found if (why := wrong_path(path))]
    assert not wrong, "paths that name nothing:\n" + "\n".join(f"{p}:{n}: {path}: {why}" for p, n, path, why in wrong)


@pytest.mark.parametrize("path, problem", [
    ("params/smol/baseline.yaml", None), ("params/smol/nope.yaml", "no such params file or folder"),
    ("params/smol/exp_best_combination.yaml", None), ("outputs/smol/rank_32/metrics.json", None),
    ("outputs/smol/baseline-seed1/", None), ("outputs/smol/index.html", None), ("outputs/qlora/", None),
    ("outputs/smol/lr_5e-3/metrics.json", "no run 'lr_5e-3' in params/smol"),
    ("outputs/tiny/", "no params folder is named 'tiny', so no sweep writes outputs/tiny"),
    ("outputs/smol-grade/grades.csv", None), ("outputs/smol-grade/x.csv", "`make grade` writes no 'x.csv'"),
])
def test_the_path_check_tells_a_real_path_from_a_stale_one(path, problem):
    assert wrong_path(path) == problem
