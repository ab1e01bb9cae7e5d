"""Training throughput: lab2 against the usual recipe, side by side in one run.

The reference does what Unsloth's Llama-3.2 conversational notebook does with TRL: SFTTrainer
with its defaults, packing off, batch 2, gradient accumulation 4, DataCollatorForSeq2Seq. On CPU the
reference uses the model's own loss (TRL 1.15's is a Triton kernel with no CPU path), and lab2 its
padding-free batches and the LM head on reply tokens only (`train.reply_token_loss`).
Both get the same model, the same reply-masked examples, step count and seed. Reported for
each: useful tokens/s (neither padding nor masked), padding fraction, and validation loss
measured afterwards by the same code. Writes bench/results/train_throughput.json.

    .venv/bin/python bench/train_throughput.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Trainer
from trl import SFTConfig, SFTTrainer

from lab2 import config, data, evaluate, modeling, train
from lab2.data import IGNORE_INDEX


class CountingSFTTrainer(SFTTrainer):
    """Stock SFTTrainer, counting what each training step computes (in training_step, exactly:
    the dataloader collates one batch ahead, so counting in the collator would over-count)."""

    positions = real = useful = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.positions += inputs["input_ids"].numel()
        self.real += int(inputs["attention_mask"].sum())
        self.useful += int((inputs["labels"] != IGNORE_INDEX).sum())
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if torch.cuda.is_available():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL 1.15's own loss is a Triton kernel, which has no CPU path (it fails here); the model's own
        # loss is the same quantity, so on CPU the two sides differ in batching only.
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def reference_run(cfg, tokenizer, splits, out_dir: Path) -> tuple[dict, object]:
    t = cfg.train
    torch.manual_seed(t.seed)
    model = modeling.load_trainable_model(cfg)
    trainer = CountingSFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out_dir), max_steps=t.max_steps, learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
            warmup_steps=t.warmup_steps, per_device_train_batch_size=2, gradient_accumulation_steps=4, optim=t.optimizer,
            weight_decay=t.weight_decay, seed=t.seed, data_seed=t.seed, packing=False, logging_steps=1, save_strategy="no",
            eval_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False,
            gradient_checkpointing=False, max_length=cfg.model.max_seq_length,
        ),
        train_dataset=splits.train, processing_class=tokenizer, data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True),
    )
    seconds = trainer.train().metrics["train_runtime"]
    return {
        "training_seconds": seconds,
        "useful_tokens": trainer.useful,
        "useful_tokens_per_second": trainer.useful / seconds,
        "padding_fraction": 1 - trainer.real / trainer.positions,
    }, model


def lab2_run(cfg, tokenizer, splits, out_root: Path) -> tuple[dict, object]:
    model = modeling.load_trainable_model(cfg)
    metrics = train.train_experiment(cfg, model, tokenizer, splits, out_root / cfg.experiment)["train"]
    step_seconds = metrics["training_time_seconds"] - metrics["periodic_eval_seconds"]
    return {
        "training_seconds": step_seconds,
        "useful_tokens": metrics["trained_tokens"],
        "useful_tokens_per_second": metrics["trained_tokens_per_second"],
        "padding_fraction": metrics["padding_fraction"],
    }, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/tiny_random/baseline.yaml", help="params/smol/baseline.yaml: the real model")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (x 8 examples each)")
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    args = parser.parse_args()

    overrides = {"seeds": None, "train": {"max_steps": args.steps, "eval_steps": args.steps, "save_steps": args.steps,
                                          "batch_size": 2, "gradient_accumulation_steps": 4, "warmup_steps": 1}}
    cfg = config.load_config(args.params, overrides)
    tokenizer = modeling.load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = data.build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    with tempfile.TemporaryDirectory() as tmp:
        reference, ref_model = reference_run(cfg, tokenizer, splits, Path(tmp) / "reference")
        reference["val_loss"] = evaluate.response_loss(ref_model, splits.validation, tokenizer.pad_token_id)["loss"]
        ours, our_model = lab2_run(cfg, tokenizer, splits, Path(tmp))
        ours["val_loss"] = evaluate.response_loss(our_model, splits.validation, tokenizer.pad_token_id)["loss"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": cfg.model.name,
        "optimizer_steps": args.steps,
        "examples_per_step": 8,
        "reference": reference,
        "lab2": ours,
        "useful_tokens_per_second_ratio": ours["useful_tokens_per_second"] / reference["useful_tokens_per_second"],
        "val_loss_difference": ours["val_loss"] - reference["val_loss"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
