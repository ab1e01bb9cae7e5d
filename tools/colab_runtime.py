"""Colab's runtime as data: every package of Colab's GPU image, its version and declared requirements.

Google publishes the image's `pip freeze` (googlecolab/backend-info, pip-freeze.gpu.txt). A freeze
has names and versions only; what each package requires comes from PyPI's own metadata for that
release (PEP 658 `.metadata` files), read once by `refresh`. The result, `colab_packages.json`
beside this module, is what `make colab-rehearsal` checks lab2's install against, with no network
and no `../shared`. Stdlib only: it runs before anything is installed.

    python -m tools.colab_runtime refresh path/to/pip-freeze.gpu.txt --source "backend-info@<commit> (<date>)"
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from email.parser import HeaderParser
from pathlib import Path

PACKAGES_FILE = Path(__file__).with_name("colab_packages.json")
SIMPLE_INDEX = "https://pypi.org/simple"

# Installed on Colab from its own sources (not PyPI), so PyPI cannot say what they require. Read from
# googlecolab/colabtools setup.py (install_requires) as checked on 2026-12-03; the kernel pins are the
# ones that matter: with another IPython, `import google.colab` fails and no kernel starts.
UNPUBLISHED_REQUIREMENTS = {
    "google-colab": ["ipykernel==6.17.1", "ipython==7.34.0", "pandas==2.2.2", "requests==2.32.4",
                     "tornado==6.5.1", "jupyter-server==2.14.0"],
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_freeze(text: str) -> dict[str, str]:
    """`pip freeze` lines -> {normalized name: version}. `name @ url` lines take the version from the
    wheel or sdist file name, or "0" when the URL names none (a git commit)."""
    packages = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
        elif " @ " in line:
            name, url = (part.strip() for part in line.split(" @ ", 1))
            filename = url.rsplit("/", 1)[-1].split("#", 1)[0]
            found = re.match(rf"{re.sub(r'[-_.]+', '[-_.]+', name)}-([0-9][^-]*?)(?:-|\.tar\.gz$|\.zip$)", filename, re.I)
            version = found.group(1) if found else "0"
        else:
            continue
        packages[normalize(name)] = version
    return packages


def _get(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


class _RemoteFile(io.IOBase):
    """A file on PyPI read by HTTP range requests: enough for zipfile to read one member of a wheel
    (its METADATA) without downloading the rest. For wheels uploaded before PyPI served PEP 658 files."""

    def __init__(self, url: str):
        self.url, self.position = url, 0
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=60) as response:
            self.size = int(response.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = {0: 0, 1: self.position, 2: self.size}[whence] + offset
        return self.position

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.position + n)
        if end <= self.position:
            return b""
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.position}-{end - 1}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
        self.position += len(data)
        return data


def _wheel_metadata(url: str) -> str:
    try:
        return _get(url + ".metadata").decode("utf-8", "replace")
    except OSError:
        with zipfile.ZipFile(_RemoteFile(url)) as wheel:
            member = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            return wheel.read(member).decode("utf-8", "replace")


def pypi_metadata(name: str, version: str) -> dict:
    """{requires_dist, requires_python} of one release, from PyPI's PEP 658 metadata; None values when
    PyPI has no such release or no metadata file for it."""
    public = version.split("+", 1)[0]
    try:
        listing = json.loads(_get(f"{SIMPLE_INDEX}/{normalize(name)}/", "application/vnd.pypi.simple.v1+json"))
    except OSError:
        return {"requires_dist": None, "requires_python": None}
    pattern = re.compile(rf"^{re.sub(r'[-_.]+', '[-_.]+', name)}-{re.escape(public)}(-|\.tar\.gz$|\.zip$)", re.I)
    # PyPI serves `<wheel>.metadata` (PEP 658) for wheels, whether or not the index listing says so.
    files = [f for f in listing.get("files", []) if pattern.match(f["filename"]) and f["filename"].endswith(".whl")]
    # Prefer a wheel for Colab's platform (its metadata is what pip would read there).
    files.sort(key=lambda f: ("cp313" not in f["filename"] and "py3-none" not in f["filename"], "x86_64" not in f["filename"]))
    for candidate in files[:3]:
        try:
            headers = HeaderParser().parsestr(_wheel_metadata(candidate["url"]))
        except (OSError, StopIteration, zipfile.BadZipFile):
            continue
        return {"requires_dist": headers.get_all("Requires-Dist") or [], "requires_python": headers.get("Requires-Python")}
    return {"requires_dist": None, "requires_python": None}


def refresh(freeze: Path, source: str, out: Path = PACKAGES_FILE) -> dict:
    """Rebuild colab_packages.json from a newer copy of Colab's pip freeze (needs PyPI, about a minute)."""
    versions = parse_freeze(freeze.read_text())

    def describe(item):
        name, version = item
        if name in UNPUBLISHED_REQUIREMENTS:
            meta = {"requires_dist": UNPUBLISHED_REQUIREMENTS[name], "requires_python": None}
        elif "+" in version:
            # A local build (torch 2.11.0+cu128, from PyTorch's own index): PyPI's release of the same
            # number is another build with other requirements (other CUDA packages), so none are recorded.
            meta = {"requires_dist": None, "requires_python": None}
        else:
            meta = pypi_metadata(name, version)
        return name, {"version": version, **meta}

    with ThreadPoolExecutor(16) as pool:
        packages = dict(sorted(pool.map(describe, versions.items())))
    data = {
        "source": source,
        "refreshed": date.today().isoformat(),
        "note": "versions from Colab's pip freeze; requires_dist from PyPI's metadata of each release "
                "(null: not on PyPI); see tools/colab_runtime.py",
        "packages": packages,
    }
    out.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return data


def load(path: Path = PACKAGES_FILE) -> dict:
    return json.loads(path.read_text())


def write_metadata_only(site_packages: Path, name: str, version: str, requires_dist: list[str] | None) -> None:
    """A `*.dist-info` folder that pip takes for an installed package: no code, only its metadata."""
    folder = site_packages / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires_dist or []]
    (folder / "METADATA").write_text("\n".join(lines) + "\n")
    (folder / "INSTALLER").write_text("colab-runtime-metadata\n")
    (folder / "RECORD").write_text("")


def remove_metadata(site_packages: Path, name: str) -> None:
    import shutil

    for folder in site_packages.glob("*.dist-info"):
        if normalize(folder.name.removesuffix(".dist-info").rsplit("-", 1)[0]) == normalize(name):
            shutil.rmtree(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.colab_runtime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("refresh", help="rebuild tools/colab_packages.json from Colab's pip-freeze.gpu.txt")
    p.add_argument("freeze", type=Path)
    p.add_argument("--source", required=True, help="where the freeze came from: repository, commit and date")
    args = parser.parse_args(argv)
    data = refresh(args.freeze, args.source)
    unknown = sorted(name for name, meta in data["packages"].items() if meta["requires_dist"] is None)
    print(f"{PACKAGES_FILE}: {len(data['packages'])} packages; no PyPI metadata for {len(unknown)}: {', '.join(unknown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
