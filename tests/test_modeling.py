import json

import torch

from lab2.config import ExperimentConfig
from lab2.modeling import load_trainable_model, trainable_parameters


def test_tiny_model_is_an_ordinary_hf_folder(tiny_model_dir, tokenizer):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == len(tokenizer) == 128257
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") == tokenizer.eos_token_id == 128009
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_end_of_turn_and_pad_come_from_the_tokenizer_not_a_hard_coded_family(tokenizer):
    from lab2.modeling import end_of_turn_token, pad_token_for

    assert end_of_turn_token(tokenizer) == "<|eot_id|>"
    assert pad_token_for(tokenizer) == "<|finetune_right_pad_id|>" != tokenizer.eos_token


def test_lora_trains_adapters_only(tiny_model_dir):
    cfg = ExperimentConfig(experiment="m", model={"name": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False}, lora={"r": 4, "alpha": 8})
    model = load_trainable_model(cfg)
    trainable, total = trainable_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    # 2 layers x 7 modules, each A (r x in) + B (out x r)
    assert 0 < trainable < total / 100
    assert next(model.parameters()).dtype == torch.float32


def test_lora_init_is_seeded_by_train_seed(tiny_model_dir):
    def lora_weights(seed):
        cfg = ExperimentConfig(
            experiment="m", model={"name": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False}, lora={"r": 4, "alpha": 8}, train={"seed": seed}
        )
        torch.manual_seed(seed + 1000)  # whatever the global RNG held before must not matter
        model = load_trainable_model(cfg)
        return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_A" in n])

    assert torch.equal(lora_weights(1), lora_weights(1))
    assert not torch.equal(lora_weights(1), lora_weights(2))
