"""Held-out evaluation, identical for every experiment and for the base model.

- `response_loss`: token-weighted mean loss over the assistant tokens of a split,
  in batches; perplexity = exp(test loss).
- `generate_replies` (lab2.generation): batched greedy generation with left padding.
- `reference_scores`: BLEU (sacrebleu) and ROUGE-L F1 (rouge-score) of generated
  replies against the test conversations' last reply.
- `exact_match`: on the test conversations whose last reply has one right answer (the data's
  `answer`), the share of generated replies that state it.
- IFEval (`lab2.ifeval`): instruction following, checked by lm-eval's code on a fixed set of prompts.
- The knowledge benchmark (`lab2.knowledge`): ARC questions scored by log-likelihood through lm-eval's
  harness, so a run that forgot what the base model knew shows it.
- `evaluate_model`: all of the above for one model; with a peft model,
  `with model.disable_adapter()` gives the base model under the same code.
"""

from __future__ import annotations

import math
import re
import time

import torch
import torch.nn.functional as F

from lab2 import ifeval, knowledge
from lab2.data import IGNORE_INDEX
from lab2.generation import by_length, generate_replies, in_order

HEAD_CHUNK = 512  # positions projected through the LM head at once: bounds the (chunk x vocab) logits


def _pad(rows: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    width = max(len(r) for r in rows)
    padded = [(r + [value] * (width - len(r))) if side == "right" else ([value] * (width - len(r)) + r) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each target token's negative log-likelihood under `logits` (N x vocab), in float32 whatever the
    model's dtype; an IGNORE_INDEX target scores 0. The one NLL of lab2: training's loss
    (lab2.train.reply_token_loss), HF evaluation (`response_loss`) and the GGUF check (`summed_nll`) all
    sum it, over the positions `reply_positions` chooses (tests/test_evaluate.py: the three agree to 1e-5)."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")


def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Summed `token_nll` of `targets` under `logits`, and how many were scored (the GGUF check's)."""
    return token_nll(logits, targets).sum().item(), int((targets != IGNORE_INDEX).sum())


def reply_positions(model, labels: torch.Tensor, **forward) -> tuple:
    """(LM head, hidden states, targets, row of each): the backbone's output at every position whose
    next token is a reply token, and nowhere else. The one choice of what lab2's NLL scores, for the
    training loss (lab2.train.reply_token_loss) and every evaluation (`response_loss`) alike; the LM
    head is left to the caller, so a 128k vocabulary never meets the prompt's positions."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(**forward, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return base.get_output_embeddings(), hidden[:, :-1][keep], targets[keep], keep.nonzero()[:, 0]


@torch.no_grad()
def response_loss(model, dataset, pad_token_id: int, batch_size: int = 8) -> dict:
    """Mean negative log-likelihood per assistant token, bits per byte of reply text, and each
    conversation's own summed NLL, tokens and bytes (for paired comparisons between runs).

    Only positions whose next token carries a label go through the LM head, so
    a 128k vocabulary never materialises as a (batch x length x vocab) tensor. Batches are of similar
    lengths (less padding: 22 % fewer positions on params/smol's held-out set); every per-conversation
    figure comes back in the dataset's order.
    """
    model.eval()
    device = next(model.parameters()).device
    order = by_length([len(ids) for ids in dataset["input_ids"]])
    nll_rows, token_rows = [], []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(order[start : start + batch_size])[:]
        input_ids = _pad(rows["input_ids"], pad_token_id).to(device)
        labels = _pad(rows["labels"], IGNORE_INDEX).to(device)
        attention_mask = _pad([[1] * len(r) for r in rows["input_ids"]], 0).to(device)
        head, selected, wanted, owner = reply_positions(model, labels, input_ids=input_ids, attention_mask=attention_mask)
        per_row = torch.zeros(len(input_ids), dtype=torch.float64, device=device)
        for i in range(0, len(wanted), HEAD_CHUNK):
            nll = token_nll(head(selected[i : i + HEAD_CHUNK]), wanted[i : i + HEAD_CHUNK])
            per_row.index_add_(0, owner[i : i + HEAD_CHUNK], nll.double())
        nll_rows += per_row.tolist()
        token_rows += torch.bincount(owner, minlength=len(input_ids)).tolist()  # reply tokens of each row
    nll_rows, token_rows = in_order(nll_rows, order), in_order(token_rows, order)
    byte_rows = list(dataset["reply_bytes"]) if "reply_bytes" in dataset.column_names else None
    total_nll, total_tokens = sum(nll_rows), sum(token_rows)
    return {
        "loss": total_nll / max(total_tokens, 1),
        "tokens": total_tokens,
        "bits_per_byte": total_nll / math.log(2) / sum(byte_rows) if byte_rows and sum(byte_rows) else None,
        "per_conversation": {"nll": nll_rows, "tokens": token_rows, "bytes": byte_rows},
    }


def reference_scores(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU (0-100, sacrebleu) and mean ROUGE-L F1 (0-1, rouge-score)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "rouge_l": sum(rouge) / len(rouge) if rouge else 0.0,
    }


# A number is one token, sign, thousands separators and decimals included ("-1,000.5"); anything else
# is split into words. So "42.5" never states 42, and "1,000" states 1000.
ANSWER_TOKEN = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|-?\d+(?:\.\d+)?|\w+")


def answer_tokens(text: str) -> list[str]:
    return [token.replace(",", "") if token[-1].isdigit() else token for token in ANSWER_TOKEN.findall(text.lower())]


def states_answer(reply: str, answer: str) -> bool:
    """Whether the reply states the answer: its whole numbers and words, in order, case-insensitive.
    A number counts only whole ('42' is not in '420', '4.2' or '42.5'; '1,000' is 1000), and a word
    only as a word."""
    reply_tokens, answer_tokens_ = answer_tokens(reply), answer_tokens(answer)
    n = len(answer_tokens_)
    return n > 0 and any(reply_tokens[i : i + n] == answer_tokens_ for i in range(len(reply_tokens) - n + 1))


def exact_match(replies: list[str], answers: list[str | None]) -> dict:
    """Accuracy over the replies whose conversation has an answer key (None when none has), and
    per reply whether it is right (None where there is no key)."""
    correct = [states_answer(reply, answer) if answer else None for reply, answer in zip(replies, answers)]
    scored = [c for c in correct if c is not None]
    return {"exact_match": sum(scored) / len(scored) if scored else None, "exact_match_items": len(scored), "correct": correct}


def prompt_and_reference(conversation: list[dict]) -> tuple[list[dict], str]:
    """Everything before the last assistant reply, and that reply."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:last], conversation[last]["content"]


def answer_key(conversation: list[dict]) -> str | None:
    """The last reply's one right answer, where the data gives it (lab2.data carries it)."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[last].get("answer")


def clean_yardstick(val: dict, scores: list | None, min_score: float | None) -> dict:
    """The validation loss (and bits per byte) on the conversations whose quality score is at least
    `min_score`, references known to be correct; each conversation's score and membership go with its
    per-conversation losses, so runs are paired on the same clean subset. Nothing without `min_score`."""
    if min_score is None:
        return {}
    rows = val["per_conversation"]
    if scores is None or len(scores) != len(rows["nll"]):
        raise ValueError("eval.clean_min_score: the validation conversations carry no quality scores to choose the clean ones by")
    clean = [score is not None and score >= min_score for score in scores]
    if not any(clean):
        raise ValueError(f"eval.clean_min_score: {min_score:g}: no validation conversation has a quality score that high")
    rows.update(score=list(scores), clean=clean)
    pick = lambda values: sum(v for v, c in zip(values, clean) if c)  # noqa: E731
    nll, tokens, size = pick(rows["nll"]), pick(rows["tokens"]), pick(rows["bytes"]) if rows["bytes"] else None
    return {"val_loss_clean": nll / max(tokens, 1), "val_bits_per_byte_clean": nll / math.log(2) / size if size else None,
            "val_clean_conversations": sum(clean), "clean_min_score": min_score}


def evaluate_model(model, tokenizer, splits, eval_cfg) -> dict:
    """val/test loss, perplexity, BLEU, ROUGE-L, exact match, IFEval and samples for one model."""
    start = time.perf_counter()
    val = response_loss(model, splits.validation, tokenizer.pad_token_id, eval_cfg.batch_size)
    test = response_loss(model, splits.test, tokenizer.pad_token_id, eval_cfg.batch_size)
    scored = splits.conversations["test"][: eval_cfg.num_reference_samples]
    pairs = [prompt_and_reference(c) for c in scored]
    answers = [answer_key(c) for c in scored]
    generated = generate_replies(model, tokenizer, [p for p, _ in pairs], eval_cfg.max_new_tokens, eval_cfg.batch_size)
    matched = exact_match(generated, answers)
    samples_out = generate_replies(
        model, tokenizer, [[{"role": "user", "content": p}] for p in eval_cfg.prompts], eval_cfg.max_new_tokens, eval_cfg.batch_size
    )
    return {
        "val_loss": val["loss"],
        **clean_yardstick(val, splits.scores.get("validation"), eval_cfg.clean_min_score),
        "test_loss": test["loss"],
        "perplexity": math.exp(test["loss"]),
        "val_tokens": val["tokens"],
        "test_tokens": test["tokens"],
        # Loss per byte of reply text: comparable between runs whose tokenizers differ.
        "val_bits_per_byte": val["bits_per_byte"],
        "test_bits_per_byte": test["bits_per_byte"],
        "per_conversation": {"validation": val["per_conversation"], "test": test["per_conversation"]},
        **reference_scores(generated, [r for _, r in pairs]),
        "exact_match": matched["exact_match"],
        "exact_match_items": matched["exact_match_items"],
        "num_reference_samples": len(pairs),
        "references": [
            {"prompt": p[-1]["content"], "reference": r, "output": g, **({"answer": a, "correct": c} if a else {})}
            for (p, r), g, a, c in zip(pairs, generated, answers, matched["correct"])
        ],
        "samples": [{"prompt": p, "output": o} for p, o in zip(eval_cfg.prompts, samples_out)],
        "ifeval": ifeval.evaluate(model, tokenizer, eval_cfg),
        "knowledge": knowledge.evaluate(model, tokenizer, eval_cfg),
        "eval_seconds": time.perf_counter() - start,
    }


def check_split_matches_training(exp_dir, splits, config_hash: str | None = None) -> None:
    """Refuse to evaluate on other data than the run was validated on, or another config's run."""
    from lab2 import runs

    metrics = runs.read_metrics(exp_dir)
    if not metrics or metrics.get("status") != "complete":
        raise RuntimeError(f"{exp_dir}: no complete training run to evaluate")
    if config_hash is not None and metrics.get("config_hash") != config_hash:
        raise RuntimeError(f"{exp_dir}: trained with config {metrics.get('config_hash')}, not this one ({config_hash})")
    trained_on = metrics.get("data", {}).get("fingerprint")
    if trained_on != splits.stats["fingerprint"]:
        raise RuntimeError(
            f"{exp_dir}: the evaluation split ({splits.stats['fingerprint']}) differs from training's ({trained_on})"
        )


def base_evaluation_in(output_root, key: str) -> dict | None:
    """A base-model evaluation with this key that another experiment in OUT already made."""
    from lab2 import runs

    for exp_dir in runs.experiment_dirs(output_root):
        base = ((runs.read_metrics(exp_dir) or {}).get("eval") or {}).get("base") or {}
        if base.get("base_key") == key and not base.get("reused_from"):
            return {**base, "reused_from": exp_dir.name, "eval_seconds": 0.0}
    return None


def evaluate_experiment(model, tokenizer, splits, cfg, output_root=None) -> dict:
    """The `eval` section of metrics.json: the fine-tuned model, and the base under `base`.

    The base model's evaluation depends only on the model, the data and the eval settings, not on
    the adapter: with `output_root`, one that a sibling experiment already made is reused (marked
    `reused_from`), so a sweep evaluates the base once rather than once per experiment."""
    from lab2 import runs
    from lab2.config import stable_hash

    runs.reset_peak_memory()  # evaluation's own peak, not training's from the same kernel
    results = evaluate_model(model, tokenizer, splits, cfg.eval)
    if cfg.eval.compare_base:
        key = stable_hash({"base_eval_hash": cfg.base_eval_hash, "split_fingerprint": splits.stats["fingerprint"]})
        results["base"] = base_evaluation_in(output_root, key) if output_root is not None else None
        if results["base"] is None:
            with model.disable_adapter():
                results["base"] = evaluate_model(model, tokenizer, splits, cfg.eval)
            results["base"]["base_key"] = key
    from lab2.modeling import precision_of

    results.update(
        precision=precision_of(model),  # the model these figures describe (4-bit base or not)
        eval_hash=cfg.eval_hash,
        split_fingerprint=splits.stats["fingerprint"],
        tokenizer_fingerprint=splits.stats.get("tokenizer_fingerprint"),
        peak_memory_mb=runs.peak_memory_mb(),
    )
    return results


def evaluate_run(model, tokenizer, splits, cfg, output_root) -> dict:
    """The evaluation stage of every entry point (evaluate.ipynb, lab2.ipynb): checks that `model` is
    this config's finished run on this split, evaluates it and writes its `eval` record.

    An evaluation already recorded for the same eval settings and split is kept as it is, so running
    a notebook again never replaces results with another measurement."""
    from pathlib import Path

    from lab2 import runs

    exp_dir = Path(output_root) / cfg.experiment
    check_split_matches_training(exp_dir, splits, cfg.config_hash)
    recorded = (runs.read_metrics(exp_dir) or {}).get("eval") or {}
    if recorded.get("eval_hash") == cfg.eval_hash and recorded.get("split_fingerprint") == splits.stats["fingerprint"]:
        print(f"{cfg.experiment}: already evaluated with these settings ({cfg.eval_hash}); keeping that evaluation")
        return recorded
    results = evaluate_experiment(model, tokenizer, splits, cfg, output_root)
    runs.write_record(exp_dir, "eval", {**results, "config_hash": cfg.config_hash})
    return results


def sample_answers(results: dict) -> str:
    """Each fixed prompt with the fine-tuned answer and, when measured, the base model's."""
    base = {s["prompt"]: s["output"] for s in (results.get("base") or {}).get("samples", [])}
    blocks = []
    for sample in results["samples"]:
        lines = [f"Q: {sample['prompt']}", f"A (fine-tuned): {sample['output']}"]
        if sample["prompt"] in base:
            lines.append(f"A (base):       {base[sample['prompt']]}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def comparison_table(results: dict) -> str:
    """Fine-tuned against base, as a small text table (IFEval's four accuracies under `ifeval_`)."""
    def flat(found: dict) -> dict:
        return {**found, **{f"ifeval_{k}": (found.get("ifeval") or {}).get(k) for k in ifeval.AGGREGATES},
                **{f"knowledge_{k}": (found.get("knowledge") or {}).get(k) for k in knowledge.MEASURES}}

    figures, base = flat(results), flat(results["base"]) if results.get("base") else None
    keys = ["val_loss", "val_loss_clean", "test_loss", "perplexity", "bleu", "rouge_l", "exact_match", *(f"ifeval_{k}" for k in ifeval.AGGREGATES),
            *(f"knowledge_{k}" for k in knowledge.MEASURES)]
    keys = [k for k in keys if figures.get(k) is not None]
    width = max(len(k) for k in keys) + 2
    lines = [f"{'metric':<{width}}{'fine-tuned':>12}" + (f"{'base':>12}{'change':>10}" if base else "")]
    for key in keys:
        line = f"{key:<{width}}{figures[key]:>12.4f}"
        if base and base.get(key) is not None:
            change = 100 * (figures[key] - base[key]) / base[key] if base[key] else float("nan")
            line += f"{base[key]:>12.4f}{change:>+9.1f}%"
        lines.append(line)
    if base:
        lines += shares_against_base(results)
    return "\n".join(lines)


def shares_against_base(results: dict) -> list[str]:
    """Exact match, IFEval and knowledge, fine-tuned minus base on the same items, with the paired 95 % interval and
    the report's verdict rule (one run: no seed noise known)."""
    from lab2.comparison import SHARES, share_items, share_pair

    lines = []
    for prefix, share in SHARES.items():
        tuned = share_items([results], prefix)
        found = share_pair(tuned, share_items([results["base"]], prefix), None)
        if found["verdict"] != "not recorded":
            lines.append(f"{share.name} fine-tuned minus base on the same {len(tuned[0])} {share.unit}: {100 * found['delta']:+.1f} points "
                         f"[{100 * found['low']:+.1f}, {100 * found['high']:+.1f}] (95 %): {found['verdict']}")
    return lines


def work_line(model, tokenizer, splits, cfg) -> str:
    """What the evaluation of one model will do, and how long its slowest part (IFEval) will take here."""
    work = (f"Evaluating: loss on {len(splits.validation)} validation and {len(splits.test)} test conversations, "
            f"{min(cfg.eval.num_reference_samples, len(splits.test))} reference replies; ")
    return work + ifeval.cost_line(model, tokenizer, cfg.eval) + " " + knowledge.cost_line(model, tokenizer, cfg.eval)
