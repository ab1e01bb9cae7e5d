"""`make screenshot`: the first screen of a real report's OUT/index.html, for the README.

Debian's Chromium (/usr/bin/chromium), driven by playwright (installed with the test extras); a
tool must never download a browser of its own. The browser tests call the same function.

    python -m tools.screenshot --out outputs/smol --to docs/img/landing.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# No background networking: this machine's closed network refuses Chromium's own connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def landing_page_png(output_root: str | Path, png: str | Path, width: int = 1100, height: int = 1100) -> Path:
    """Open OUT/index.html from disk and save its first `height` pixels as a PNG."""
    from playwright.sync_api import sync_playwright

    index = Path(output_root).resolve() / "index.html"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no report page; run `make sweep && make report` first")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(index.as_uri())
        page.wait_for_load_state()
        page.screenshot(path=str(png))
        browser.close()
    return png


def png_size(png: str | Path) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    header = Path(png).read_bytes()[:24]
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/smol", help="the report's OUT (default outputs/smol)")
    parser.add_argument("--to", default="docs/img/landing.png")
    args = parser.parse_args(argv)
    try:
        png = landing_page_png(args.out, args.to)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {png} ({'x'.join(map(str, png_size(png)))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
