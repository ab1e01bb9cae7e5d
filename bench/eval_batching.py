"""Evaluation cost: batched loss and generation against one-by-one, side by side.

Same model, same data, same machine, one run; writes bench/results/eval_batching.json.
Generation is forced to the same number of new tokens in both modes so the work is equal,
and the greedy texts must be identical.

    .venv/bin/python bench/eval_batching.py [--model models/tiny-random-llama] [--n 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import os
import time
from pathlib import Path

import torch

from lab2 import config, data, evaluate, generation, modeling


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/tiny_random/baseline.yaml")
    parser.add_argument("--n", type=int, default=16, help="test conversations to generate for")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="bench/results/eval_batching.json")
    args = parser.parse_args()

    cfg = config.load_config(args.params)
    tokenizer = modeling.load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = data.build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    torch.manual_seed(0)
    model = modeling.load_trainable_model(cfg)
    prompts = [evaluate.prompt_and_reference(c)[0] for c in splits.conversations["test"][: args.n]]
    generation.generate_replies(model, tokenizer, prompts[:2], 2, 2)  # warm-up

    pad = tokenizer.pad_token_id
    batched_loss, t_loss_batched = timed(lambda: evaluate.response_loss(model, splits.validation, pad, args.batch_size))
    single_loss, t_loss_single = timed(lambda: evaluate.response_loss(model, splits.validation, pad, 1))
    generate = lambda bs: generation.generate_replies(model, tokenizer, prompts, args.new_tokens, bs, min_new_tokens=args.new_tokens)  # noqa: E731
    batched_text, t_gen_batched = timed(lambda: generate(args.batch_size))
    single_text, t_gen_single = timed(lambda: generate(1))

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": cfg.model.name,
        "loss": {
            "examples": len(splits.validation), "batched_seconds": t_loss_batched, "single_seconds": t_loss_single,
            "speedup": t_loss_single / t_loss_batched,
            "abs_difference": abs(batched_loss["loss"] - single_loss["loss"]),
        },
        "generation": {
            "prompts": len(prompts), "new_tokens": args.new_tokens, "batch_size": args.batch_size,
            "batched_seconds": t_gen_batched, "single_seconds": t_gen_single,
            "speedup": t_gen_single / t_gen_batched, "identical_text": batched_text == single_text,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
