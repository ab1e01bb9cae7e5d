"""Tokens/s the chat app serves against raw llama-cpp-python, same GGUF, same 2 threads, one run.

The GGUF that counts is the 1B architecture's Q4_K_M (bench/export_1b.py --keep builds it).
Both sides answer the same prompt greedily with the same settings; tokens are counted the
same way (llama.cpp's tokenizer over the reply). The app is reached as a visitor reaches it:
through Gradio's client over loopback, streaming. Writes bench/results/app_throughput.json.

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

PROMPT = "Write a short story about a lighthouse keeper."


def count_tokens(llm, text: str) -> int:
    return len(llm.tokenize(text.encode(), add_bos=False, special=False))


def raw_run(llm, max_tokens: int) -> tuple[float, int]:
    start, text = time.perf_counter(), ""
    for chunk in llm.create_chat_completion(
        messages=[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": PROMPT}],
        stream=True, temperature=0.0, max_tokens=max_tokens, min_p=0.05, stop=["<|eot_id|>"],
    ):
        text += chunk["choices"][0]["delta"].get("content") or ""
    return time.perf_counter() - start, count_tokens(llm, text)


def app_run(url: str, llm, max_tokens: int) -> tuple[float, int]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    start = time.perf_counter()
    reply = client.predict(PROMPT, "You are a helpful assistant.", 0.0, max_tokens, 0.05, api_name="/chat")
    return time.perf_counter() - start, count_tokens(llm, reply)


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
        seconds, tokens = raw_run(llm, args.max_tokens)
        raw.append(tokens / seconds)
        seconds, tokens = app_run(url, llm, args.max_tokens)
        served.append(tokens / seconds)
    app.close()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "gguf": args.gguf, "threads": args.threads, "max_tokens": args.max_tokens,
        "raw_tokens_per_second": statistics.median(raw), "app_tokens_per_second": statistics.median(served),
        "raw_runs": raw, "app_runs": served,
        "app_vs_raw": statistics.median(served) / statistics.median(raw),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
