"""Export cost of the real 1B architecture: HF -> GGUF f16 -> Q4_K_M, wall time and peak RSS.

Random weights built from Llama-3.2-1B's published config have the size and speed of the
real model (nothing here depends on the values). Writes bench/results/export_1b.json.
The conversion and the quantization run as child processes through the same lab2.export
functions `make export` uses; each one's peak RSS is its own (os.wait4).

    .venv/bin/python bench/export_1b.py [--workdir /tmp/lab2-bench-1b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from lab2 import export
from lab2.modeling import LLAMA_32_1B, build_random_llama

ANCHORS = {  # figures this lab is measured against (see the issue and shared/seeds)
    "colab_quantization_only_seconds": 143,
    "design_f16_conversion_seconds": 11,
    "design_q4_k_m_seconds": 28,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/lab2-bench-1b")
    parser.add_argument("--keep", action="store_true", help="keep the 1B files afterwards")
    parser.add_argument("--out", default="bench/results/export_1b.json")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    hf_dir = work / "llama-3.2-1b-random"
    start = time.perf_counter()
    if not (hf_dir / "config.json").exists():
        build_random_llama(hf_dir, dtype=torch.bfloat16, **LLAMA_32_1B)
    build_seconds = time.perf_counter() - start

    f16, q4 = work / "model.f16.gguf", work / "model.q4_k_m.gguf"
    convert = export.convert_to_gguf(hf_dir, f16)
    quant = export.quantize(f16, q4, "q4_k_m")
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "architecture": "Llama-3.2-1B (published config, random bf16 weights)",
        "build_random_model_seconds": build_seconds,
        "convert_f16": {**convert, "size_bytes": f16.stat().st_size},
        "quantize_q4_k_m": {**quant, "size_bytes": q4.stat().st_size},
        "convert_plus_q4_k_m_seconds": convert["seconds"] + quant["seconds"],
        "peak_rss_mb": max(convert["peak_rss_mb"], quant["peak_rss_mb"]),
        "q4_k_m_reduction_vs_f16_pct": 100 * (1 - q4.stat().st_size / f16.stat().st_size),
        "anchors": ANCHORS,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
