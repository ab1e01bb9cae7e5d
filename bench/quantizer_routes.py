"""Is a prebuilt llama.cpp a fit for lab2's quantizer? PyPI `llama-cpp-py-sync` (a 5.5 MB wheel with a
prebuilt CPU libllama.so, no compile) against llama-cpp-python (compiled from source), side by side.

For one trained demo experiment: merge, convert to f16 GGUF, then quantize to q8_0 and q4_k_m with
each library's `llama_model_quantize`, and run lab2's own fidelity checks (llama-cpp-python runtime)
on every file. py-sync is installed into a temporary --target folder, never into the venv.
Writes bench/results/quantizer_routes.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYSYNC = "llama-cpp-py-sync==0.11739"
PYSYNC_QUANTIZE = """
import sys
from llama_cpp_py_sync import _cffi_bindings as b
ffi, lib = b.ffi, b.get_lib()
p = ffi.new("llama_model_quantize_params *", lib.llama_model_quantize_default_params())
p.ftype = {"q8_0": 7, "q4_k_m": 15}[sys.argv[3]]  # LLAMA_FTYPE_MOSTLY_Q8_0, _Q4_K_M (llama.h)
p.nthread = 2
sys.exit(lib.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def main() -> int:
    from lab2 import data, export, modeling, runs
    from lab2.config import ExperimentConfig

    exp_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/tiny_random/steps_15")
    metrics = runs.read_metrics(exp_dir)
    if not metrics or metrics.get("status") != "complete":
        print(f"quantizer_routes: {exp_dir} is not a complete experiment (run `make sweep` first)", file=sys.stderr)
        return 2
    cfg = ExperimentConfig(**metrics["config"])
    work = Path(tempfile.mkdtemp(prefix="lab2-quant-"))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(work / "pysync"),
                    PYSYNC, "cffi", "pycparser"], check=True)
    install_seconds = time.perf_counter() - start
    merged = work / "merged"
    export.merge_adapter(cfg, exp_dir / "adapter", merged, export.merge_route(cfg, metrics))
    f16 = work / "model.f16.gguf"
    export.convert_to_gguf(merged, f16)

    tokenizer = modeling.load_tokenizer(str(merged), "model")
    splits = data.build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    test = splits.test.select(range(min(16, len(splits.test))))
    import torch
    from transformers import AutoModelForCausalLM

    from lab2 import evaluate

    reference = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    hf_loss = evaluate.response_loss(reference, test, tokenizer.pad_token_id)["loss"]  # as export_experiment does
    del reference
    results = {"pysync_install_seconds": install_seconds, "experiment": str(exp_dir), "formats": {}}
    for fmt in ("q8_0", "q4_k_m"):
        row = {}
        for route in ("llama-cpp-python", "llama-cpp-py-sync"):
            out = work / f"model.{fmt}.{route}.gguf"
            t0 = time.perf_counter()
            if route == "llama-cpp-python":
                export.quantize(f16, out, fmt, threads=2)
            else:
                env = {**os.environ, "PYTHONPATH": str(work / "pysync")}
                done = subprocess.run([sys.executable, "-c", PYSYNC_QUANTIZE, str(f16), str(out), fmt], env=env,
                                      capture_output=True, text=True)
                if done.returncode != 0:  # e.g. a library built against a newer glibc than this machine's
                    last = [line for line in done.stderr.splitlines() if "Error" in line][-1:]
                    row[route] = {"error": last[0] if last else f"exit {done.returncode}"}
                    continue
            seconds = time.perf_counter() - t0
            llm = export.load_gguf(out, n_ctx=cfg.model.max_seq_length)
            loss = export.gguf_response_loss(llm, test)
            del llm
            row[route] = {"seconds": seconds, "size_bytes": out.stat().st_size, "test_loss": loss,
                          "perplexity_vs_hf_pct": 100 * (pow(2.718281828459045, loss - hf_loss) - 1)}
        a, b = row["llama-cpp-python"], row["llama-cpp-py-sync"]
        if "error" not in b:
            row["same_bytes"] = (work / f"model.{fmt}.llama-cpp-python.gguf").read_bytes() == (work / f"model.{fmt}.llama-cpp-py-sync.gguf").read_bytes()
            row["loss_difference"] = b["test_loss"] - a["test_loss"]
        results["formats"][fmt] = row
        print(fmt, json.dumps(row), flush=True)
    results["hf_loss"] = hf_loss
    results["glibc"] = os.confstr("CS_GNU_LIBC_VERSION")
    results["llama_cpp_commit_pysync"] = json.loads(next((work / "pysync").glob("llama_cpp_py_sync/native_manifest.json")).read_text())["llama_cpp_commit"]
    out = REPO / "bench" / "results" / "quantizer_routes.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
