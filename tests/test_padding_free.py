"""Padding-free batches: several examples in one row, with no attention across them."""

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from lab2.config import ExperimentConfig
from lab2.data import tokenize_conversation
from lab2.modeling import load_trainable_model

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "2 plus 2 is 4."}],
    [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": "The capital of Peru is Lima."}],
    [{"role": "system", "content": "Be formal."}, {"role": "user", "content": "Spell 'orbit' backwards."},
     {"role": "assistant", "content": "Certainly. 'orbit' spelled backwards is 'tibro'."}],
]


def _nll_sum_and_count(model, **inputs):
    labels = inputs.pop("labels")
    logits = model(**inputs, use_cache=False).logits[0, :-1].float()
    targets = labels[0, 1:]
    keep = targets != -100
    nll = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return nll.item(), int(keep.sum())


def test_packed_batch_loss_equals_its_sequences_alone(tiny_model_dir, tokenizer):
    cfg = ExperimentConfig(experiment="p", model={"name": str(tiny_model_dir), "dtype": "float32"}, lora={"r": 4, "alpha": 8})
    model = load_trainable_model(cfg).eval()
    with torch.no_grad():  # non-zero adapters, so the check covers the LoRA path too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    examples = [{k: v for k, v in tokenize_conversation(c, tokenizer, 512).items() if k != "truncated"} for c in CONVERSATIONS]

    alone_nll, alone_count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            nll, count = _nll_sum_and_count(model, input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
            alone_nll, alone_count = alone_nll + nll, alone_count + count

        batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no padding
        assert batch["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples)
        packed_nll, packed_count = _nll_sum_and_count(
            model, input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch["position_ids"]
        )
        # Negative control: the same row read as one long sequence does leak, and the check sees it.
        leaky_nll, _ = _nll_sum_and_count(model, input_ids=batch["input_ids"], labels=batch["labels"])

    assert packed_count == alone_count
    assert packed_nll / packed_count == pytest.approx(alone_nll / alone_count, rel=1e-5)
    assert abs(leaky_nll - alone_nll) / alone_nll > 1e-4  # 10x the tolerance above
