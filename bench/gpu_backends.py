"""`make bench-gpu`: the Unsloth backend against transformers + peft, on one CUDA GPU.

The reference recipe of Unsloth's Colab notebook, run once per backend through lab2's own training
code (`lab2.train.run`): the Llama-3.2-1B architecture (its published config, random weights, so no
hub is needed), 4-bit base, LoRA r=16 on all projections, batch 2 x gradient accumulation 4,
max_seq_length 2048, lr 2e-4, adamw_8bit, gradient checkpointing, padding on, 30 steps.
The data are synthetic conversations whose lengths follow a lognormal (median 420 tokens, long tail
past 2048) standing in for FineTome-100k, which is not reachable offline.

Each backend runs in a process of its own (Unsloth patches transformers at import) and records
seconds per step, useful (non-padding) tokens/s, peak GPU memory and MFU, into
bench/results/gpu.json; bench/summarize.py puts them in docs/benchmarks.md.
MFU = 4 x N x tokens/s / peak dense 16-bit FLOP/s: forward 2N and the backward's input gradients 2N
per token, N = parameters in matmuls (the adapters' own gradients are negligible; recomputation by
gradient checkpointing is not counted, as MFU counts the model's FLOPs only).
On a machine without CUDA it refuses in one line and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu.json"
BACKENDS = ("unsloth", "hf")
RECIPE = {"steps": 30, "batch_size": 2, "gradient_accumulation_steps": 4, "max_seq_length": 2048}
# Dense fp16/bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
PEAK_FLOPS = {"T4": 65e12, "L4": 121e12, "A10G": 125e12, "A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12}
WORDS = ("the model learns to answer questions about data training loss gradient rank adapter token "
         "sequence batch memory student course lab result value example step rate").split()


def finetome_like_conversations(path: Path, n: int = 400, seed: int = 0) -> Path:
    """ShareGPT rows whose reply lengths are lognormal in words (median ~420 tokens, tail past 2048)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            words = max(8, int(rng.lognormvariate(5.6, 0.8)))  # exp(5.6) ~ 270 words ~ 420 tokens
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            answer = " ".join(rng.choice(WORDS) for _ in range(words))
            f.write(json.dumps({"conversations": [{"from": "human", "value": f"{i}: {question}?"},
                                                  {"from": "gpt", "value": answer + "."}]}) + "\n")
    return path


def matmul_parameters(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    h, inter, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    attn = h * head_dim * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])
    return layers * (attn + 3 * h * inter) + vocab * h  # + the LM head (tied or not, it is one matmul)


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name), None)


def measure_backend(backend: str, model_dir: Path, data_path: Path, out_dir: Path, steps: int, batch_size: int,
                    gradient_accumulation_steps: int, max_seq_length: int, load_in_4bit: bool = True) -> dict:
    """One backend, one run of the recipe through lab2.train.run; returns its figures."""
    from lab2 import backend as engine
    from lab2.config import ExperimentConfig

    cfg = ExperimentConfig(
        experiment=f"gpu-{backend}",
        model={"name": str(model_dir), "max_seq_length": max_seq_length, "load_in_4bit": load_in_4bit,
               "dtype": "auto", "backend": backend},
        data={"source": str(data_path), "subset": None, "val_size": 8, "test_size": 8, "chat_template": "llama-3.1"},
        train={"max_steps": steps, "warmup_steps": min(5, steps), "batch_size": batch_size,
               "gradient_accumulation_steps": gradient_accumulation_steps, "eval_steps": steps, "save_steps": steps,
               "optimizer": "adamw_8bit" if torch.cuda.is_available() else "adamw_torch",
               "gradient_checkpointing": True, "padding_free": False, "logging_steps": 1},
    )
    engine.import_backend(cfg.model)  # a fresh process: Unsloth first when it is the backend
    from lab2 import train

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    metrics = train.run(cfg, out_dir)
    t = metrics["train"]
    step_seconds = (t["training_time_seconds"] - t["periodic_eval_seconds"]) / t["total_steps"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_flops(device)
    flops_per_token = 4 * matmul_parameters(model_dir)
    return {
        "backend": backend, "device": device, "steps": t["total_steps"], "seconds_per_step": step_seconds,
        "useful_tokens_per_second": t["tokens_per_second"], "padding_fraction": t["padding_fraction"],
        "peak_memory_mb": t["peak_memory_mb"], "final_eval_loss": t["final_eval_loss"],
        "mfu": flops_per_token * t["tokens_per_second"] / peak if peak else None,
        "dtype": str(engine.resolve_dtype("auto")), "load_in_4bit": load_in_4bit,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=BACKENDS, help="(internal) run one backend in this process")
    parser.add_argument("--workdir", default="/tmp/lab2-bench-gpu")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per backend")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench-gpu: needs a CUDA GPU and there is none here (torch.cuda.is_available() is False); nothing was run",
              file=sys.stderr)
        return 2
    work = Path(args.workdir)
    model_dir, data_path = work / "llama-3.2-1b-random", work / "finetome_like.jsonl"
    if args.one:
        result = measure_backend(args.one, model_dir, data_path, work / "outputs", **RECIPE)
        (work / f"{args.one}.json").write_text(json.dumps(result, indent=2))
        return 0

    from lab2.modeling import LLAMA_32_1B, build_random_llama

    work.mkdir(parents=True, exist_ok=True)
    if not (model_dir / "config.json").is_file():
        build_random_llama(model_dir, dtype=torch.bfloat16, **LLAMA_32_1B)
    finetome_like_conversations(data_path)
    results = {}
    for backend in BACKENDS:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--one", backend, "--workdir", str(work)], timeout=args.timeout)
        results[backend] = (json.loads((work / f"{backend}.json").read_text()) if done.returncode == 0
                            else {"backend": backend, "error": f"exit {done.returncode}"})
        results[backend]["wall_seconds"] = time.perf_counter() - start
        print(f"{backend}: {json.dumps(results[backend])}", flush=True)
    ok = all("error" not in r for r in results.values())
    summary = {"recipe": RECIPE, "backends": results, "machine": f"{platform.machine()}, {results['hf'].get('device')}",
               "unsloth_vs_hf_tokens_per_second": (results["unsloth"]["useful_tokens_per_second"]
                                                   / results["hf"]["useful_tokens_per_second"]) if ok else None}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
