"""The 4-bit merge question, measured: which weights should a QLoRA adapter be merged into?

An adapter trained on nf4 weights is evaluated on them (nf4 base + adapter: the model whose figures the
report shows). The GGUF gets a merged 16-bit model. Two routes, each checked against the model as
evaluated on the same held-out conversations, through lab2.export.merge_adapter itself:
  original     the checkpoint's 16-bit weights + the adapter;
  dequantized  the nf4 weights dequantised (what training saw) + the adapter.
Per route: perplexity and its change from the evaluated model, mean KL(evaluated || merged) per reply
token, top-1 agreement, and the share of greedy answers identical to the evaluated model's.

Two models:
  SmolLM2-135M-Instruct  real weights; a QLoRA run of params/smol/qlora/qlora.yaml (its first seed),
                         trained here by lab2 unless --run names one already trained;
  Llama-3.2-1B shapes    random weights, a random adapter (B drawn, not zero): the numbers say how closely
                         each route reproduces the evaluated model, not how good it is.
Writes bench/results/merge_routes.json.

    .venv/bin/python bench/merge_routes.py [--run outputs/qlora/qlora-seed3407] [--skip-1b]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lab2 import data, evaluate, export, generation, modeling, runs
from lab2.config import ExperimentConfig, load_config
from lab2.data import IGNORE_INDEX


@torch.no_grad()
def reply_log_probs(model, dataset, pad_token_id: int) -> list[torch.Tensor]:
    """Per conversation: log-softmax over the vocabulary at each position that predicts a reply token."""
    model.eval()
    decoder, head = evaluate._backbone_and_head(model)
    out = []
    for row in dataset:
        ids = torch.tensor([row["input_ids"]])
        targets = torch.tensor(row["labels"][1:])
        hidden = decoder(input_ids=ids).last_hidden_state[0, :-1][targets != IGNORE_INDEX]
        out.append(F.log_softmax(head(hidden).float(), dim=-1))
    return out


def agreement(reference: list[torch.Tensor], other: list[torch.Tensor], dataset) -> dict:
    nll_ref = nll_other = kl = top1 = count = 0.0
    for ref, oth, row in zip(reference, other, dataset):
        targets = torch.tensor(row["labels"][1:])
        targets = targets[targets != IGNORE_INDEX]
        nll_ref -= ref.gather(1, targets[:, None]).sum().item()
        nll_other -= oth.gather(1, targets[:, None]).sum().item()
        kl += (ref.exp() * (ref - oth)).sum().item()
        top1 += (ref.argmax(-1) == oth.argmax(-1)).sum().item()
        count += len(targets)
    return {
        "perplexity": math.exp(nll_other / count),
        "perplexity_vs_evaluated_pct": 100 * (math.exp((nll_other - nll_ref) / count) - 1),
        "kl_per_token": kl / count,
        "top1_agreement": top1 / count,
        "tokens": int(count),
    }


def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    return generation.generate_replies(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens, 8)


def compare_routes(cfg: ExperimentConfig, adapter_dir: Path, work: Path, test_prompts: int, max_new_tokens: int) -> dict:
    """The evaluated model and each merge route on cfg's test conversations; greedy answers to the eval
    prompts and to the last user turn of the first `test_prompts` test conversations."""
    tokenizer = modeling.load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = data.build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    test = splits.test
    prompts = cfg.eval.prompts + [evaluate.prompt_and_reference(c)[0][-1]["content"] for c in splits.conversations["test"][:test_prompts]]
    start = time.perf_counter()
    evaluated = modeling.load_trained_model(cfg, adapter_dir)
    reference = reply_log_probs(evaluated, test, tokenizer.pad_token_id)
    reference_answers = greedy(evaluated, tokenizer, prompts, max_new_tokens)
    result = {"evaluated": {"precision": modeling.precision_of(evaluated), "perplexity": None, "seconds": time.perf_counter() - start}}
    del evaluated
    for route in ("original", "dequantized"):
        start = time.perf_counter()
        merged_dir = work / f"merged-{route}"
        export.merge_adapter(cfg, adapter_dir, merged_dir, route)
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)  # as export's reference
        measured = agreement(reference, reply_log_probs(merged, test, tokenizer.pad_token_id), test)
        answers = greedy(merged, tokenizer, prompts, max_new_tokens)
        measured["identical_answers"] = export.identical_share(answers, reference_answers)
        measured["answers_compared"] = len(prompts)
        measured["seconds"] = time.perf_counter() - start
        result[route] = measured
        result["evaluated"]["perplexity"] = measured["perplexity"] / (1 + measured["perplexity_vs_evaluated_pct"] / 100)
        del merged
        shutil.rmtree(merged_dir)
    result["test_conversations"] = len(test)
    return result


def smol_case(run_dir: Path | None, work: Path) -> dict:
    params = Path("params/smol/qlora/qlora.yaml")
    if run_dir is None:
        from lab2 import train

        cfg = load_config(params, {"experiment": "qlora", "seeds": None})
        train.run(cfg, work / "smol")
        run_dir = work / "smol" / "qlora"
    cfg = ExperimentConfig.model_validate(runs.read_metrics(run_dir)["config"])
    return {"model": "SmolLM2-135M-Instruct (real weights), QLoRA run of params/smol/qlora/qlora.yaml", "run": str(run_dir),
            **compare_routes(cfg, run_dir / "adapter", work, 28, cfg.eval.max_new_tokens)}


def one_b_case(work: Path) -> dict:
    from peft import LoraConfig, get_peft_model

    model_dir = work / "llama-3.2-1b-random"
    if not (model_dir / "config.json").exists():
        modeling.build_random_llama(model_dir, dtype=torch.bfloat16, **modeling.LLAMA_32_1B)
    cfg = ExperimentConfig(
        experiment="onebit", model={"name": str(model_dir), "max_seq_length": 256, "load_in_4bit": True, "dtype": "float32"},
        lora={"r": 16, "alpha": 16}, data={"source": "data/sample_conversations.jsonl", "subset": 100, "val_size": 4, "test_size": 6},
        eval={"prompts": ["What is the capital of France?", "What is 12 plus 30?"], "max_new_tokens": 16},
    )
    # A random adapter on the nf4 base, of a trained adapter's size: B drawn (not zero) and scaled so the
    # adapter moves each layer's output by about a tenth.
    base = modeling.load_base_model(cfg.model)
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=cfg.lora.target_modules, init_lora_weights=False))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.mul_(0.1)
    adapter_dir = work / "onebit-adapter"
    lora.save_pretrained(adapter_dir)
    del lora, base
    return {"model": "Llama-3.2-1B architecture (random weights), a random r=16 adapter on its nf4 weights",
            **compare_routes(cfg, adapter_dir, work, 4, cfg.eval.max_new_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="an already trained 4-bit run of params/smol/qlora (else one is trained)")
    parser.add_argument("--workdir", default="/tmp/lab2-bench-1b")
    parser.add_argument("--skip-1b", action="store_true")
    parser.add_argument("--out", default="bench/results/merge_routes.json")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lab2-merge-", dir=work) as tmp:
        cases = {"smollm2": smol_case(Path(args.run) if args.run else None, Path(tmp))}
        if not args.skip_1b:
            cases["llama_1b_architecture"] = one_b_case(Path(tmp))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}", **cases}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
