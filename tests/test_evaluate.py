import json
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
from tests.conftest import SAMPLE_DATA

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
    cfg = ExperimentConfig(experiment="e", model={"name": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False}, lora={"r": 4, "alpha": 8})
    torch.manual_seed(0)
    model = attach_lora(load_base_model(cfg.model), cfg)
    with torch.no_grad():  # non-zero adapters, so that switching them off changes the model
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return model


def test_one_nll_training_loss_evaluation_and_the_gguf_check_agree_on_one_batch(lora_model, tokenizer):
    """The same batch through training's loss (reply_token_loss), HF evaluation (response_loss) and the GGUF
    check's arithmetic (summed_nll on full logits, as export.gguf_response_loss feeds it): one NLL, to 1e-5."""
    from datasets import Dataset

    from lab2.evaluate import summed_nll
    from lab2.train import reply_token_loss

    examples = [tokenize_conversation(c, tokenizer, 512) for c in TWO_CONVERSATIONS]
    dataset = Dataset.from_list([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    width = max(len(e["input_ids"]) for e in examples)
    batch = {
        "input_ids": torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (width - len(e["input_ids"])) for e in examples]),
        "labels": torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in examples]),
        "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples]),
    }
    lora_model.eval()
    with torch.no_grad():
        trained = reply_token_loss(lora_model, batch).item()
        evaluated = response_loss(lora_model, dataset, tokenizer.pad_token_id, batch_size=2)
        nll, count = 0.0, 0
        for e in examples:  # one conversation at a time, full logits: what the GGUF check computes from llama.cpp's
            logits = lora_model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits[0, :-1]
            row_nll, row_count = summed_nll(logits, torch.tensor(e["labels"][1:]))
            nll, count = nll + row_nll, count + row_count
    assert count == evaluated["tokens"] > 0
    assert trained == pytest.approx(evaluated["loss"], abs=1e-5) and nll / count == pytest.approx(evaluated["loss"], abs=1e-5)
    assert evaluated["loss"] > 1.0  # a random model's loss: the agreement is not of zeros


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


def test_bits_per_byte_against_an_independent_computation(lora_model, tokenizer):
    """Summed NLL of the reply tokens (the model's own loss x its token count) over the UTF-8 bytes of
    the replies' text, counted from the messages themselves, in bits."""
    from datasets import Dataset

    examples = [tokenize_conversation(c, tokenizer, 512) for c in TWO_CONVERSATIONS]
    dataset = Dataset.from_list([{k: e[k] for k in ("input_ids", "labels", "reply_bytes")} for e in examples])
    nll = []
    with torch.no_grad():
        for e in examples:
            ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
            nll.append(lora_model(input_ids=ids, labels=labels).loss.item() * int((labels[:, 1:] != -100).sum()))
    reply_bytes = [sum(len(m["content"].encode()) for m in c if m["role"] == "assistant") for c in TWO_CONVERSATIONS]
    assert [e["reply_bytes"] for e in examples] == reply_bytes == [14, 72]
    result = response_loss(lora_model, dataset, tokenizer.pad_token_id, batch_size=2)
    assert result["bits_per_byte"] == pytest.approx(sum(nll) / math.log(2) / sum(reply_bytes), rel=1e-5)
    assert result["per_conversation"]["nll"] == pytest.approx(nll, rel=1e-5)
    assert result["per_conversation"]["bytes"] == reply_bytes

    whole = len(examples[1]["input_ids"])
    truncated = tokenize_conversation(TWO_CONVERSATIONS[1], tokenizer, whole - 6)  # the second reply is cut off
    assert len("Certainly. The capital of Peru is Lima.") < truncated["reply_bytes"] < 72


def test_per_conversation_figures_come_back_in_the_datasets_order(lora_model, tokenizer):
    """Batches are formed by length (the long conversation first here, so the order changes); each row's
    NLL and token count are still that conversation's, alone, in the dataset's order."""
    from datasets import Dataset

    examples = [tokenize_conversation(c, tokenizer, 512) for c in (TWO_CONVERSATIONS[1], TWO_CONVERSATIONS[0], TWO_CONVERSATIONS[1][:3])]
    assert len(examples[0]["input_ids"]) > len(examples[1]["input_ids"])  # not already sorted
    dataset = Dataset.from_list([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    alone = [response_loss(lora_model, dataset.select([i]), tokenizer.pad_token_id, batch_size=1)["per_conversation"] for i in range(3)]
    result = response_loss(lora_model, dataset, tokenizer.pad_token_id, batch_size=2)["per_conversation"]
    assert result["nll"] == pytest.approx([a["nll"][0] for a in alone], rel=1e-5)
    assert result["tokens"] == [a["tokens"][0] for a in alone] == [sum(t != -100 for t in e["labels"][1:]) for e in examples]


def test_the_clean_yardstick_is_the_loss_on_the_conversations_scored_high_enough():
    """Four validation conversations, scores 4.5, 1.2, None, 3.0: at min_score 3.0 the first and the last are
    the yardstick, and its loss is their summed NLL over their tokens, in nats and per byte."""
    from lab2.evaluate import clean_yardstick

    val = {"per_conversation": {"nll": [10.0, 50.0, 7.0, 20.0], "tokens": [10, 10, 5, 20], "bytes": [40, 40, 20, 80]}}
    found = clean_yardstick(val, [4.5, 1.2, None, 3.0], 3.0)
    assert found["val_loss_clean"] == pytest.approx(30 / 30) and found["val_clean_conversations"] == 2
    assert found["val_bits_per_byte_clean"] == pytest.approx(30 / math.log(2) / 120)
    assert val["per_conversation"]["clean"] == [True, False, False, True]  # paired by membership, run against run
    assert clean_yardstick(val, [4.5, 1.2, None, 3.0], None) == {}  # not asked for: nothing recorded
    with pytest.raises(ValueError, match="no validation conversation has a quality score that high"):
        clean_yardstick(val, [1.0, 1.2, None, 2.0], 3.0)
    with pytest.raises(ValueError, match="carry no quality scores"):
        clean_yardstick(val, None, 3.0)


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
    cfg = ExperimentConfig(experiment="e", eval=EvalSection(prompts=["Hi"], num_reference_samples=2, max_new_tokens=4,
                                                            ifeval_prompts=3, ifeval_max_new_tokens=4, knowledge_questions=3))
    results = evaluate_experiment(lora_model, tokenizer, splits, cfg)
    keys = {"val_loss", "test_loss", "perplexity", "bleu", "rouge_l", "samples", "ifeval", "knowledge"}
    assert keys <= set(results) and keys <= set(results["base"])
    # IFEval of the fine-tuned and the base model by the same code, on the same prompts, each one recorded.
    tuned, base = results["ifeval"], results["base"]["ifeval"]
    assert tuned["prompts"] == base["prompts"] == 3 and len(tuned["per_prompt"]) == 3
    assert [p["key"] for p in tuned["per_prompt"]] == [p["key"] for p in base["per_prompt"]]
    assert tuned["max_new_tokens"] == 4 and tuned["subset_seed"] == 0
    assert tuned["prompt_strict"] == sum(p["strict"] for p in tuned["per_prompt"]) / 3
    assert tuned["prompts_fingerprint"] == base["prompts_fingerprint"] and all(isinstance(p["reply"], str) for p in tuned["per_prompt"])
    from lab2.evaluate import comparison_table

    table = comparison_table(results)
    assert "ifeval_prompt_strict" in table and "IFEval fine-tuned minus base on the same 3 prompts:" in table
    # The knowledge benchmark likewise: the same questions, the base model's own log-likelihoods (adapter off).
    tuned, base = results["knowledge"], results["base"]["knowledge"]
    assert [q["id"] for q in tuned["per_question"]] == [q["id"] for q in base["per_question"]] and tuned["questions"] == 3
    assert [q["loglikelihoods"] for q in tuned["per_question"]] != [q["loglikelihoods"] for q in base["per_question"]]
    assert "knowledge_acc_norm" in table and "knowledge (ARC, acc_norm) fine-tuned minus base on the same 3 questions:" in table
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


def test_exact_match_needs_the_whole_answer_in_order():
    from lab2.evaluate import exact_match, states_answer

    assert states_answer("12 plus 30 is 42.", "42")
    assert not states_answer("12 + 30 = 420.", "42") and not states_answer("It is 4.2", "42")  # no partial numbers
    assert states_answer("The capital is new delhi!", "New Delhi")
    assert states_answer("From smallest to largest: 3, 29, 35.", "3, 29, 35")
    assert not states_answer("From smallest to largest: 29, 3, 35.", "3, 29, 35")  # the same numbers, wrong order
    assert states_answer("12 minus 27 is -15.", "-15") and not states_answer("12 minus 27 is 15.", "-15")
    assert not states_answer("The answer is 42.5", "42") and not states_answer("1.5", "1")  # a decimal is not its integer part
    assert states_answer("That is 1,000 metres.", "1000") and states_answer("That is 1000 metres.", "1,000")
    assert not states_answer("1,000", "1") and not states_answer("1,000", "000")
    assert states_answer("Sum: 2,500,000.", "2500000") and states_answer("It is 42.", "42")
    assert exact_match(["42", "no", "x"], ["42", "7", None]) == {"exact_match": 0.5, "exact_match_items": 2, "correct": [True, False, None]}
    assert exact_match(["42"], [None]) == {"exact_match": None, "exact_match_items": 0, "correct": [None]}  # no key: no score


def test_answer_keys_ride_from_the_data_to_exact_match():
    """The shipped rows' `answer` reaches evaluation; rows without one are not scored."""
    from lab2 import conversations

    rows = [json.loads(line) for line in SAMPLE_DATA.read_text().splitlines()]
    records, _ = conversations.normalise(rows)
    keyed = [r["messages"] for r in records if any("answer" in m for m in r["messages"])]
    assert len(keyed) == sum("answer" in r for r in rows) > 100
    row = next(r for r in rows if "answer" in r and r["score"] >= 3)  # a clean row (noisy ones state a wrong answer)
    last_reply = [m for m in conversations.to_messages(row, "auto")[0] if m["role"] == "assistant"][-1]
    assert last_reply["answer"] == row["answer"] and row["answer"] in last_reply["content"]


def test_the_base_model_is_evaluated_once_per_sweep(lora_model, tokenizer, tmp_path):
    """A second experiment on the same model, data and eval settings reuses the first one's base
    evaluation; a change to the eval settings evaluates the base again."""
    from datasets import Dataset

    from lab2 import runs
    from lab2.data import Splits

    examples = [tokenize_conversation(c, tokenizer, 512) for c in TWO_CONVERSATIONS]
    dataset = Dataset.from_list([{k: e[k] for k in ("input_ids", "labels")} for e in examples])
    splits = Splits(dataset, dataset, dataset, {"test": TWO_CONVERSATIONS}, {"fingerprint": "f"})
    eval_section = {"prompts": ["Hi"], "num_reference_samples": 2, "max_new_tokens": 4, "ifeval_prompts": 0}
    first = evaluate_experiment(lora_model, tokenizer, splits, ExperimentConfig(experiment="a", eval=eval_section), tmp_path)
    assert "reused_from" not in first["base"] and first["base"]["eval_seconds"] > 0
    runs.write_json_atomic(tmp_path / "a" / runs.METRICS_FILE, {"experiment": "a", "eval": first})
    other_lora = ExperimentConfig(experiment="b", lora={"r": 32}, eval=eval_section)
    second = evaluate_experiment(lora_model, tokenizer, splits, other_lora, tmp_path)
    assert second["base"]["reused_from"] == "a" and second["base"]["eval_seconds"] == 0.0
    assert second["base"]["test_loss"] == first["base"]["test_loss"]
    # Another eval setting, model or data is another base evaluation; LoRA and training settings are not.
    longer = ExperimentConfig(experiment="c", eval={**eval_section, "max_new_tokens": 6})
    other_data = ExperimentConfig(experiment="d", data={"val_size": 3}, eval=eval_section)
    same = ExperimentConfig(experiment="e", train={"learning_rate": 1e-3, "seed": 5}, eval=eval_section)
    # a data-centric run: other training rows, the same held-out split, so the same base-model evaluation
    filtered = ExperimentConfig(experiment="f", data={"select": {"min_score": 3.0, "dedup": "near"},
                                                      "train_sources": [{"source": "pool"}, {"source": "x.jsonl", "rows": 5}]}, eval=eval_section)
    assert len({cfg.base_eval_hash for cfg in (longer, other_data, other_lora)}) == 3
    assert same.base_eval_hash == other_lora.base_eval_hash == filtered.base_eval_hash
