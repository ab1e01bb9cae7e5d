"""IFEval generation, route against route, side by side in one run: HF `generate` in float32 at several batch
sizes and in bfloat16, and llama.cpp (the f16 and Q4_K_M GGUFs of the same model, one prompt at a time).

Every route answers the same IFEval prompts, greedy, up to the same number of new tokens (the default
sweep's: 24 prompts, 128 tokens), and is scored by lab2.ifeval (lm-eval's checkers). Each route's time,
its generated tokens per second, its IFEval, and the share of replies identical to the evaluation's own
route (HF, the precision the model was evaluated in, `--batch-size` as params/smol sets it). Only a route
whose replies are the evaluation's can replace it: any other scores a different model.
Writes bench/results/ifeval_generation.json.

    .venv/bin/python bench/ifeval_generation.py [--model models/smollm2-135m-instruct] [--prompts 24] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lab2 import export, gguf_chat, ifeval, modeling
from lab2.generation import generate_replies


def timed(name: str, generate, *args) -> tuple[list[str], float]:
    start = time.perf_counter()
    replies = generate(*args)
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds:.1f} s", flush=True)
    return replies, seconds


def hf_route(model, tokenizer, prompts, new_tokens: int, batch_size: int) -> list[str]:
    return generate_replies(model, tokenizer, ifeval.as_conversations(prompts), new_tokens, batch_size)


def gguf_route(llm, prompts, new_tokens: int) -> list[str]:
    return [a["output"] for a in export.greedy_answers(llm, [p["prompt"] for p in prompts], new_tokens)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="the evaluation's own (params/smol eval.batch_size)")
    parser.add_argument("--batch-sizes", default="1,8,16,24")
    parser.add_argument("--out", default="bench/results/ifeval_generation.json")
    args = parser.parse_args()

    prompts = ifeval.chosen_prompts(args.prompts)
    tokenizer = modeling.load_tokenizer(args.model, "model")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    generate_replies(model, tokenizer, ifeval.as_conversations(prompts[:2]), 2, 2)  # warm-up

    runs: dict[str, tuple[list[str], float]] = {}
    for batch_size in sorted({args.batch_size, *map(int, args.batch_sizes.split(","))}):
        name = f"HF float32, batch {batch_size}"
        runs[name] = timed(name, hf_route, model, tokenizer, prompts, args.new_tokens, batch_size)
    name = f"HF bfloat16, batch {args.batch_size}"
    runs[name] = timed(name, hf_route, model.to(torch.bfloat16), tokenizer, prompts, args.new_tokens, args.batch_size)
    del model
    with tempfile.TemporaryDirectory(prefix="lab2-bench-ifeval-") as tmp:
        files = {"f16": Path(tmp) / "model.f16.gguf", "Q4_K_M": Path(tmp) / "model.q4_k_m.gguf"}
        export.convert_to_gguf(Path(args.model), files["f16"])
        export.quantize(files["f16"], files["Q4_K_M"], "q4_k_m")
        for label, path in files.items():
            llm = gguf_chat.load(path, ifeval.context_length(tokenizer, prompts, args.new_tokens))  # loading is not timed
            name = f"llama.cpp {label} GGUF, one at a time"
            runs[name] = timed(name, gguf_route, llm, prompts, args.new_tokens)
            del llm

    reference_name = f"HF float32, batch {args.batch_size}"
    reference = runs[reference_name][0]
    routes = {}
    for name, (replies, seconds) in runs.items():
        tokens = sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
        scored = ifeval.score(prompts, replies)
        routes[name] = {
            "seconds": seconds, "generated_tokens": tokens, "tokens_per_second": tokens / seconds,
            "speedup_vs_evaluation": runs[reference_name][1] / seconds,
            "identical_replies_vs_evaluation": sum(a == b for a, b in zip(replies, reference)) / len(reference),
            "prompt_strict": scored["prompt_strict"], "instruction_strict": scored["instruction_strict"],
        }
    keeps = [n for n, r in routes.items() if r["identical_replies_vs_evaluation"] == 1.0]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": args.model, "prompts": len(prompts), "max_new_tokens": args.new_tokens,
        "evaluation_route": reference_name, "routes": routes,
        "fastest_route_keeping_the_replies": min(keeps, key=lambda n: routes[n]["seconds"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
