"""LoRA against QLoRA on the 1B architecture: peak memory and s/step, side by side in one run.

The same lab2 run twice, each in a child process of its own (`python -m lab2 train`, so each peak is its
own): Llama-3.2-1B's published shapes with random weights (the memory and speed of the real model do not
depend on the values), the shipped conversations, batch 1, gradient checkpointing on as on a T4. One has
fp32 weights, the other nf4 weights through bitsandbytes with fp32 compute (`model.load_in_4bit`, the T4
recipe's precision; a T4 computes in fp16). Writes bench/results/qlora_memory.json.

    .venv/bin/python bench/qlora_memory.py [--steps 3] [--workdir /tmp/lab2-bench-1b]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from lab2 import runs
from lab2.modeling import LLAMA_32_1B, build_random_llama

SEEDS_ANCHOR = {"qlora_gb": 4.2, "lora_gb": 12.5, "where": "a T4, from the hand-written reports (shared/seeds)"}


def run_once(model_dir: Path, load_in_4bit: bool, steps: int, work: Path) -> dict:
    name = "qlora" if load_in_4bit else "lora"
    params = work / "params" / f"{name}.yaml"
    params.parent.mkdir(parents=True, exist_ok=True)
    params.write_text(yaml.safe_dump({
        "experiment": name,
        "model": {"name": str(model_dir), "max_seq_length": 256, "load_in_4bit": load_in_4bit, "dtype": "float32"},
        "lora": {"r": 16, "alpha": 16},
        "data": {"source": str(Path("data/sample_conversations.jsonl").resolve()), "subset": 200, "val_size": 4, "test_size": 4},
        "train": {"max_steps": steps, "batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0, "eval_steps": steps,
                  "save_steps": steps, "gradient_checkpointing": True, "learning_rate": 2e-4},
        "eval": {"compare_base": False},
    }))
    subprocess.run([sys.executable, "-m", "lab2", "train", str(params), "--out", str(work / "out")], check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    metrics = runs.read_metrics(work / "out" / name)
    t = metrics["train"]
    return {
        "precision": metrics["precision"],
        "peak_memory_mb": t["peak_memory_mb"],
        "steps": t["total_steps"],
        "seconds_per_step": (t["training_time_seconds"] - t["periodic_eval_seconds"]) / t["total_steps"],
        "trained_tokens_per_second": t["trained_tokens_per_second"],
        "final_loss": t["final_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/lab2-bench-1b")
    parser.add_argument("--out", default="bench/results/qlora_memory.json")
    args = parser.parse_args()
    model_dir = Path(args.workdir) / "llama-3.2-1b-random"
    if not (model_dir / "config.json").exists():  # bench/export_1b.py builds the same folder
        build_random_llama(model_dir, dtype=torch.bfloat16, **LLAMA_32_1B)
    with tempfile.TemporaryDirectory(prefix="lab2-qlora-") as tmp:
        lora = run_once(model_dir, False, args.steps, Path(tmp))
        qlora = run_once(model_dir, True, args.steps, Path(tmp))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "architecture": "Llama-3.2-1B (published config, random weights), LoRA r=16 on all 7 projections, batch 1, "
                        "at most 256 tokens, gradient checkpointing",
        "lora": lora,
        "qlora": qlora,
        "peak_memory_ratio_lora_over_qlora": lora["peak_memory_mb"] / qlora["peak_memory_mb"],
        "seconds_per_step_ratio_qlora_over_lora": qlora["seconds_per_step"] / lora["seconds_per_step"],
        "seeds_anchor": SEEDS_ANCHOR,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
