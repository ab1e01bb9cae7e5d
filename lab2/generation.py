"""Batched greedy generation, one routine for every reply lab2 scores: the evaluation's reference answers
and sample prompts (lab2.evaluate), IFEval's replies (lab2.ifeval) and the export's answers (lab2.export).
Batches are of similar prompt lengths (less left padding); replies come back in the caller's order."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def by_length(lengths: list[int]) -> list[int]:
    """Indices from shortest to longest (stable): batches of similar length pad little."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def in_order(values: list, order: list[int]) -> list:
    """Values computed in `order`, put back in the original order."""
    out = [None] * len(values)
    for value, index in zip(values, order):
        out[index] = value
    return out


@contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    try:
        yield
    finally:
        tokenizer.padding_side = side


def stop_token_ids(tokenizer) -> list[int]:
    from lab2.modeling import end_of_turn_token

    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)


@torch.no_grad()
def generate_replies(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 128, batch_size: int = 8, min_new_tokens: int = 0
) -> list[str]:
    """Greedy replies to conversations that end on a user turn (min_new_tokens: for timing equal work)."""
    model.eval()
    device = next(model.parameters()).device
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = by_length([len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts])  # less left padding
    replies: list[str] = []
    with _left_padding(tokenizer):
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                [prompts[i] for i in order[start : start + batch_size]], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                do_sample=False,
                temperature=None,
                top_p=None,
                eos_token_id=stop_token_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            replies += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return in_order(replies, order)
