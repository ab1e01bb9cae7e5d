import math

import pytest
import torch

from lab2.config import EvalSection, ExperimentConfig
from lab2.data import tokenize_conversation
from lab2.evaluate import (
    evaluate_experiment,
    generate_replies,
    prompt_and_reference,
    reference_scores,
    response_loss,
)
from lab2.modeling import attach_lora, load_base_model

TWO_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 plus 2 is 4."}],
    [
        {"role": "system", "content": "Be formal."},
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "Certainly. The capital of Peru is Lima."},
        {"role": "user", "content": "And of Chile?"},
        {"role": "assistant", "content": "The capital of Chile is Santiago."},
    ],
]


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    cfg = ExperimentConfig(experiment="e", model={"name": str(tiny_model_dir), "dtype": "float32"}, lora={"r": 4, "alpha": 8})
    torch.manual_seed(0)
    model = attach_lora(load_base_model(cfg.model), cfg)
    with torch.no_grad():  # non-zero adapters, so that switching them off changes the model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def test_response_loss_matches_the_models_own_loss_on_two_sequences(lora_model, tokenizer):
    from datasets import Dataset

    examples = [tokenize_conversation(c, tokenizer, 512) for c in TWO_CONVERSATIONS]
    dataset = Dataset.from_list([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    # Independent: HF's loss per sequence (mean over its label tokens), weighted by token count.
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            total += lora_model(input_ids=ids, labels=labels).loss.item() * n
            count += n
    result = response_loss(lora_model, dataset, tokenizer.pad_token_id, batch_size=2)  # padded batch of two
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert math.exp(result["loss"]) == pytest.approx(math.exp(total / count), rel=1e-5)


def test_bleu_and_rouge_against_known_values():
    same = reference_scores(["the cat sat on the mat", "a b c d e"], ["the cat sat on the mat", "a b c d e"])
    assert same["bleu"] == pytest.approx(100.0) and same["rouge_l"] == pytest.approx(1.0)
    disjoint = reference_scores(["alpha beta gamma delta"], ["one two three four"])
    assert disjoint["bleu"] == pytest.approx(0.0) and disjoint["rouge_l"] == 0.0
    # ROUGE-L F1 of a known pair: LCS "the cat" = 2 tokens, P = 2/3, R = 2/4 -> F1 = 4/7
    assert reference_scores(["the cat ran"], ["the big cat sat"])["rouge_l"] == pytest.approx(4 / 7)


def test_batched_generation_equals_one_by_one(lora_model, tokenizer):
    prompts = [prompt_and_reference(c)[0] for c in TWO_CONVERSATIONS] + [[{"role": "user", "content": "Hi"}]]
    batched = generate_replies(lora_model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    single = [generate_replies(lora_model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert any(batched)  # something was generated
    assert tokenizer.padding_side == "right"  # restored after generation


def test_evaluate_experiment_measures_base_with_the_same_keys(lora_model, tokenizer):
    from datasets import Dataset

    from lab2.data import Splits

    examples = [tokenize_conversation(c, tokenizer, 512) for c in TWO_CONVERSATIONS]
    dataset = Dataset.from_list([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    splits = Splits(dataset, dataset, dataset, {"test": TWO_CONVERSATIONS}, {"fingerprint": "f"})
    cfg = ExperimentConfig(experiment="e", eval=EvalSection(prompts=["Hi"], num_reference_samples=2, max_new_tokens=4))
    results = evaluate_experiment(lora_model, tokenizer, splits, cfg)
    keys = {"val_loss", "test_loss", "perplexity", "bleu", "rouge_l", "samples"}
    assert keys <= set(results) and keys <= set(results["base"])
    assert results["perplexity"] == pytest.approx(math.exp(results["test_loss"]))
    assert results["base"]["test_loss"] != pytest.approx(results["test_loss"])  # the adapter was really off
    assert results["samples"][0]["prompt"] == "Hi" and results["num_reference_samples"] == 2
    assert results["eval_hash"] == cfg.eval_hash and results["split_fingerprint"] == "f"


def test_sample_answers_pair_fine_tuned_and_base():
    from lab2.evaluate import sample_answers

    results = {"samples": [{"prompt": "Hi", "output": "Hello!"}, {"prompt": "2+2?", "output": "4"}],
               "base": {"samples": [{"prompt": "Hi", "output": "hi hi"}, {"prompt": "2+2?", "output": "five"}]}}
    assert sample_answers(results) == (
        "Q: Hi\nA (fine-tuned): Hello!\nA (base):       hi hi\n\nQ: 2+2?\nA (fine-tuned): 4\nA (base):       five"
    )
    assert sample_answers({"samples": [{"prompt": "Hi", "output": "Hello!"}]}) == "Q: Hi\nA (fine-tuned): Hello!"


def test_peak_memory_restarts_after_a_reset():
    """A stage sharing its kernel with training reports its own peak, not training's."""
    from lab2 import runs

    big = bytearray(400 * 2**20)
    big[:: 4096] = b"x" * len(big[:: 4096])  # touch every page so it is resident
    before = runs.peak_memory_mb()
    del big
    runs.reset_peak_memory()
    after = runs.peak_memory_mb()
    assert before - after > 300, (before, after)
