"""`make bench-gpu`: refuses on CPU in one line; its measuring code runs here on the tiny model."""

import importlib.util
import json
import os
import subprocess
import sys

from tests.conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_backends", REPO / "bench" / "gpu_backends.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_cleanly_without_a_gpu(tmp_path):
    # CUDA_VISIBLE_DEVICES="": a machine without a GPU, also where the suite runs on one.
    done = subprocess.run([sys.executable, "bench/gpu_backends.py", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "needs a CUDA GPU" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was run or written


def test_measuring_code_path_on_the_tiny_model(tiny_model_dir, tmp_path):
    bench = load_bench()
    data = bench.finetome_like_conversations(tmp_path / "conversations.jsonl", n=40)
    lengths = [len(json.loads(line)["conversations"][1]["value"].split()) for line in data.read_text().splitlines()]
    assert max(lengths) > 3 * sorted(lengths)[len(lengths) // 2]  # a long tail, as in FineTome
    result = bench.measure_backend("hf", tiny_model_dir, data, tmp_path / "out", steps=2, batch_size=2,
                                   gradient_accumulation_steps=2, max_seq_length=512, load_in_4bit=False)
    assert result["steps"] == 2 and result["seconds_per_step"] > 0 and result["useful_tokens_per_second"] > 0
    assert 0 < result["padding_fraction"] < 1  # the reference recipe pads
    assert result["peak_memory_mb"] > 0 and result["mfu"] is None  # no GPU peak to divide by on CPU
    assert bench.matmul_parameters(tiny_model_dir) > 0 and bench.peak_flops("Tesla T4") == 65e12


def test_matmul_parameters_of_the_1b_architecture(tmp_path):
    from lab2.modeling import LLAMA_32_1B

    bench = load_bench()
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_32_1B, "vocab_size": 128256}))
    # Llama-3.2-1B has 1.236 B parameters; the embedding lookup is not a matmul, the tied LM head is.
    assert abs(bench.matmul_parameters(tmp_path) - 1.236e9) / 1.236e9 < 0.01
