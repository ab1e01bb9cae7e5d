"""Serving: llama-cpp-python's prompt and generation tokens/s, against what the chat app serves.

The GGUF that counts is the 1B architecture's Q4_K_M (bench/export_1b.py --keep builds it),
on 2 threads. Three figures, each raw vs app on the same prompt, interleaved in one run:
- the engine's own speeds (llama.cpp's perf counters): prompt tokens/s and generation tokens/s;
- time to first token (prompt processing as a visitor waits for it);
- generation tokens/s as streamed: reply tokens after the first, over the time after it.
The app is reached as a visitor reaches it, through Gradio's client over loopback, streaming.
The context is reset before every run, so neither side reuses the last run's prompt cache.
Writes bench/results/app_throughput.json.

    .venv/bin/python bench/export_1b.py --keep && .venv/bin/python bench/app_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

from lab2.app import ChatModel, build_app, load_llm

SYSTEM = "You are a helpful assistant."
# About 300 prompt tokens, so that prompt processing is long enough to time.
PROMPT = "Summarise these lab notes in three sentences. " + " ".join(
    f"Run {i}: rank {8 * (1 + i % 4)}, learning rate {i % 3 + 1}e-4, validation loss {2.1 - i / 100:.2f} after {60 * (1 + i % 2)} steps."
    for i in range(12)
)


def count_tokens(llm, text: str) -> int:
    return len(llm.tokenize(text.encode(), add_bos=False, special=False))


def engine_speeds(llm) -> dict:
    """llama.cpp's own counters for the last run: prompt and generation tokens/s."""
    import llama_cpp

    perf = llama_cpp.llama_perf_context(llm.ctx)
    return {"prompt_tokens": perf.n_p_eval, "prompt_tokens_per_second": 1e3 * perf.n_p_eval / perf.t_p_eval_ms,
            "generated_tokens": perf.n_eval, "generation_tokens_per_second": 1e3 * perf.n_eval / perf.t_eval_ms}


def timed_stream(pieces, llm, cumulative: bool) -> dict:
    """Time to first piece, then generation tokens/s over the rest of the reply.

    `cumulative`: each piece is the reply so far (Gradio), not the next bit of it (llama.cpp)."""
    start, first, text = time.perf_counter(), None, ""
    for piece in pieces:
        if piece and first is None:
            first = time.perf_counter()
        text = piece if cumulative else text + piece
    end = time.perf_counter()
    tokens = count_tokens(llm, text)
    return {"first_token_seconds": first - start, "reply_tokens": tokens,
            "streamed_tokens_per_second": (tokens - 1) / (end - first)}


def raw_run(llm, max_tokens: int) -> dict:
    import llama_cpp

    from lab2 import gguf_chat

    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    chunks = llm.create_chat_completion(
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        stream=True, temperature=0.0, max_tokens=max_tokens, min_p=0.05, stop=[gguf_chat.end_of_turn(llm)],
    )
    result = timed_stream((c["choices"][0]["delta"].get("content") or "" for c in chunks), llm, cumulative=False)
    return result | engine_speeds(llm)


def app_run(url: str, llm, max_tokens: int) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False)
    llm.reset()
    job = client.submit(PROMPT, SYSTEM, 0.0, max_tokens, 0.05, api_name="/chat")
    return timed_stream((str(partial) for partial in job), llm, cumulative=True)


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default="/tmp/lab2-bench-1b/model.q4_k_m.gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/app_throughput.json")
    args = parser.parse_args()

    llm = load_llm(args.gguf, n_ctx=2048, n_threads=args.threads)
    raw_run(llm, 8)  # warm-up
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(ChatModel(llm, Path(args.gguf).name))
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}"
    raw, served = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        raw.append(raw_run(llm, args.max_tokens))
        served.append(app_run(url, llm, args.max_tokens))
    app.close()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "gguf": args.gguf, "threads": args.threads, "max_tokens": args.max_tokens,
        "prompt_tokens": raw[0]["prompt_tokens"],
        "engine_prompt_tokens_per_second": median(raw, "prompt_tokens_per_second"),
        "engine_generation_tokens_per_second": median(raw, "generation_tokens_per_second"),
        "raw_first_token_seconds": median(raw, "first_token_seconds"),
        "app_first_token_seconds": median(served, "first_token_seconds"),
        "raw_tokens_per_second": median(raw, "streamed_tokens_per_second"),
        "app_tokens_per_second": median(served, "streamed_tokens_per_second"),
        "raw_runs": raw, "app_runs": served,
    }
    result["app_vs_raw"] = result["app_tokens_per_second"] / result["raw_tokens_per_second"]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_runs")}, indent=2))


if __name__ == "__main__":
    main()
