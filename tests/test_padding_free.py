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
    cfg = ExperimentConfig(experiment="p", model={"name": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False}, lora={"r": 4, "alpha": 8})
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


def test_reply_token_loss_equals_the_models_own_loss_and_gradients(tiny_model_dir, tokenizer):
    """lab2's CPU training loss applies the LM head only at labelled positions: same value, same gradients."""
    from lab2.train import reply_token_loss

    cfg = ExperimentConfig(experiment="p", model={"name": str(tiny_model_dir), "dtype": "float32", "load_in_4bit": False}, lora={"r": 4, "alpha": 8})
    model = load_trainable_model(cfg).train()
    with torch.no_grad():  # non-zero adapters, so that lora_A gets a gradient too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    examples = [{k: v for k, v in tokenize_conversation(c, tokenizer, 512).items() if k != "truncated"} for c in CONVERSATIONS]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    items = int((batch["labels"] != -100).sum()) + 7  # as across gradient accumulation: more items than this batch has

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    own_loss, own_grads = loss_and_grads(lambda: model(**batch, use_cache=False, num_items_in_batch=items).loss)
    ours_loss, ours_grads = loss_and_grads(lambda: reply_token_loss(model, batch, items))
    assert ours_loss == pytest.approx(own_loss, rel=1e-5)
    assert own_grads.keys() == ours_grads.keys() and any(g.abs().sum() > 0 for g in own_grads.values())
    for name, grad in own_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert reply_token_loss(model, batch).item() == pytest.approx(model(**batch, use_cache=False).loss.item(), rel=1e-5)
