"""TRL SFT training of one experiment, with resume, history and its train record.

`train_experiment` is the whole story of a run:
  records/train.json says "running" -> SFTTrainer trains (validation every eval_steps,
  a checkpoint every save_steps, resuming from the newest checkpoint if one is
  there) -> the adapter is saved -> records/train.json says "complete" with the
  history, times, throughput and peak memory (lab2/runs.py writes the record and joins it with the
  other stages' into metrics.json, the view people read). A finished run is not trained again.
  The training loss is `reply_token_loss`: lab2's one NLL (`evaluate.token_nll`) on reply tokens.

transformers and TRL are imported inside the functions, never at module import: on the Unsloth
backend they must come after `unsloth` (see lab2/backend.py), and the trainer subclasses whatever
`trl.SFTTrainer` is when a run starts, which is Unsloth's `UnslothSFTTrainer` once it is imported.
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from lab2 import backend, data, modeling, runs
from lab2.config import ExperimentConfig
from lab2.data import IGNORE_INDEX, Splits

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
RUN_IDENTITY = "lab2_run.json"  # in every checkpoint folder: which run wrote it


class NonFiniteLossError(runs.RunFailed):
    pass


class ForeignCheckpointError(runs.RunFailed):
    """A checkpoint written by another configuration (or another split) than this run's."""


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step number (never the newest file time)."""
    best, best_step = None, -1
    for path in Path(checkpoint_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        # trainer_state.json is written last, so its presence marks a finished save.
        if match and (path / "trainer_state.json").is_file() and int(match.group(1)) > best_step:
            best, best_step = path, int(match.group(1))
    return best


def run_identity(cfg: ExperimentConfig, splits: Splits) -> dict:
    """What a checkpoint must match to be resumed: the params (config hash) and the data split."""
    return {"experiment": cfg.experiment, "config_hash": cfg.config_hash, "split_fingerprint": splits.stats["fingerprint"]}


def write_run_identity(checkpoint: Path, identity: dict) -> None:
    runs.write_json_atomic(Path(checkpoint) / RUN_IDENTITY, identity)


def identity_mismatch(checkpoint: Path, identity: dict) -> str | None:
    """None when `checkpoint` was written by this run; else one line saying whose it is."""
    path = Path(checkpoint) / RUN_IDENTITY
    if not path.is_file():
        return f"{checkpoint} records no run identity ({RUN_IDENTITY}: written by an older lab2 or another tool)"
    import json

    found = json.loads(path.read_text())
    for key in ("config_hash", "split_fingerprint"):
        if found.get(key) != identity[key]:
            return (f"{checkpoint} was written by another run ({key} {found.get(key)} of experiment "
                    f"{found.get('experiment')!r}; this run's is {identity[key]})")
    return None


def refuse_foreign(checkpoint: Path, identity: dict) -> None:
    problem = identity_mismatch(checkpoint, identity)
    if problem:
        raise ForeignCheckpointError(
            f"{problem}: not resuming from it. Delete that folder, or give this run its own train.checkpoint_dir or experiment name"
        )


def restore_from_hub(repo_id: str, checkpoint_dir: Path, identity: dict) -> Path | None:
    """Fetch the Trainer's `last-checkpoint/` from a Hub repo into checkpoint-<step>/, if it is this run's.

    A repo that does not exist yet (the first run) or holds no checkpoint yet gives None."""
    import json

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    staging = checkpoint_dir / ".hub-download"
    try:
        snapshot_download(repo_id, allow_patterns=["last-checkpoint/*"], local_dir=staging)  # token: HF_TOKEN
    except RepositoryNotFoundError:
        print(f"{repo_id}: no such Hub repo yet; training from the start (the Trainer creates it at the first checkpoint)")
        return None
    try:
        state = staging / "last-checkpoint" / "trainer_state.json"
        if not state.is_file():
            return None
        refuse_foreign(staging / "last-checkpoint", identity)
        target = checkpoint_dir / f"checkpoint-{json.loads(state.read_text())['global_step']}"
        (staging / "last-checkpoint").replace(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resume_point(cfg: ExperimentConfig, checkpoint_dir: Path, own_folder: bool, identity: dict) -> Path | None:
    """The checkpoint this run resumes from (local, else the Hub), checked to be this run's.

    The experiment's own `checkpoints/` folder belongs to it: checkpoints there of other params are
    discarded (the run is redone, as its changed config hash says). A folder set by
    `train.checkpoint_dir` (Drive, a shared disk) may hold anything: another run's checkpoint there
    is refused, never resumed and never deleted."""
    found = latest_checkpoint(checkpoint_dir)
    if found is not None and own_folder and identity_mismatch(found, identity):
        print(f"{cfg.experiment}: params changed since the last run; discarding its checkpoints")
        shutil.rmtree(checkpoint_dir)
        found = None
    if found is not None:
        refuse_foreign(found, identity)
    elif cfg.train.checkpoint_hub_repo:
        found = restore_from_hub(cfg.train.checkpoint_hub_repo, checkpoint_dir, identity)
    return found


# --------------------------------------------------------------------------- trainer


def non_finite_loss_guard():
    """A callback that stops training at the first non-finite logged loss, without checkpointing it."""
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def __init__(self) -> None:
            self.bad_step: int | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.bad_step = state.global_step
                control.should_training_stop = True
                control.should_save = False  # never checkpoint broken weights

    return StopOnNonFiniteLoss()


def checkpoint_announcer(experiment: str):
    """A callback that prints one line per saved checkpoint: where a re-run would resume from."""
    from transformers import TrainerCallback

    class AnnounceCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            print(f"{experiment}: checkpoint-{state.global_step} saved (a re-run resumes from here)", flush=True)

    return AnnounceCheckpoints()


def reply_token_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """The model's own causal-LM loss, with the LM head applied only where a label is.

    Replies are a small share of a conversation's tokens (about a fifth in the shipped data, under
    ChatML's default system prompt), and a (positions x vocabulary) logits tensor and its softmax are
    a large share of a small model's step on CPU. Same sum of token NLLs, divided by the same count
    (`num_items_in_batch` across gradient accumulation, else the batch's labels): the same loss and
    gradients (tests/test_train.py checks both against the model's own)."""
    from lab2.evaluate import reply_positions, token_nll

    forward = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    head, hidden, targets, _ = reply_positions(model, inputs["labels"], **forward)
    nll = token_nll(head(hidden), targets).sum()  # the same NLL as every evaluation
    count = num_items_in_batch if num_items_in_batch is not None else len(targets)
    return nll / count


def measured_trainer_class():
    """lab2's trainer over the `trl.SFTTrainer` of this moment (Unsloth's, once unsloth is imported)."""
    import trl

    return _measured_subclass(trl.SFTTrainer)


@functools.cache
def _measured_subclass(sft_trainer: type) -> type:
    from transformers import Trainer

    class MeasuredSFTTrainer(sft_trainer):
        """SFTTrainer that counts the tokens it trains on and the time spent evaluating."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tokens_seen = 0  # non-padding tokens
            self.positions = 0  # token positions computed, padding included
            self.trained_tokens = 0  # tokens that carry loss (assistant replies)
            self.eval_seconds = 0.0
            self.last_log = (time.perf_counter(), 0)  # (when, tokens seen) at the last training log: tokens/s between logs

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            self.tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            self.positions += inputs["input_ids"].numel()
            self.trained_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if torch.cuda.is_available():  # TRL's (or Unsloth's) fused loss: no (batch x length x vocab) logits
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # On CPU that tiled head is a Triton kernel with no CPU path. No KV cache: with one,
            # transformers stops reading packed position_ids as separate sequences.
            if return_outputs or not model.training:  # evaluation wants the model's outputs: its own loss
                return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)
            return reply_token_loss(model, inputs, num_items_in_batch)

        def _save_checkpoint(self, model, trial):
            # Written before the Trainer's own files, so that a Hub push of the folder carries it and a
            # folder without trainer_state.json (a save cut short) is never taken as a checkpoint.
            folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            write_run_identity(folder, self.run_identity)
            return super()._save_checkpoint(model, trial)

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:  # a training step's log: the tokens per second since the last one, for the tracker
                now, (since, tokens) = time.perf_counter(), self.last_log
                logs["tokens_per_second"] = (self.tokens_seen - tokens) / max(now - since, 1e-9)
                self.last_log = (now, self.tokens_seen)
            return super().log(logs, *args, **kwargs)

        def evaluate(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                self.eval_seconds += time.perf_counter() - start

    MeasuredSFTTrainer.__qualname__ = "MeasuredSFTTrainer"
    return MeasuredSFTTrainer


def keep_adapter_in_fp32(model) -> int:
    """Undo TRL 1.15's cast of a quantised model's LoRA weights to bf16 (SFTTrainer.__init__, "When using
    QLoRA"); returns how many tensors it cast back. A T4 has no native bf16, and a resumed run gets its
    adapter back in fp32 from peft's loader, so it would go on with other numbers than the run it continues
    (measured: the step after a resume at step 6 gave loss 11.127954 against 11.127778 uninterrupted).
    fp32 is what peft makes them; the optimizer, created later by train(), sees fp32 parameters."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
            cast += 1
    return cast


def epochs_of(cfg: ExperimentConfig, train_examples: int) -> float:
    """How many passes over the training rows the run makes: above 1, rows repeat."""
    t = cfg.train
    if t.max_steps is None:
        return float(t.epochs)
    return t.max_steps * t.batch_size * t.gradient_accumulation_steps / max(train_examples, 1)


def sft_config(cfg: ExperimentConfig, checkpoint_dir: Path, dtype: torch.dtype):
    from trl import SFTConfig

    t = cfg.train
    on_cuda = torch.cuda.is_available()
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        max_steps=t.max_steps if t.max_steps is not None else -1,
        num_train_epochs=t.epochs if t.epochs is not None else 1.0,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        optim=t.optimizer,
        weight_decay=t.weight_decay,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must be seen, not averaged away
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # lab2.data already truncated every example to max_seq_length (and counted it); TRL
        # refuses a max_length it cannot enforce on padding-free batches.
        max_length=None if t.padding_free else cfg.model.max_seq_length,
        padding_free=t.padding_free,
        bf16=on_cuda and dtype == torch.bfloat16,
        fp16=on_cuda and dtype == torch.float16,
        use_cpu=not on_cuda,
        report_to="none",
        disable_tqdm=False,
        # Optional: every checkpoint also goes to the Hub (`last-checkpoint/`), so a new VM can resume.
        push_to_hub=t.checkpoint_hub_repo is not None,
        hub_model_id=t.checkpoint_hub_repo,
        hub_strategy="checkpoint",
        hub_private_repo=True,
    )


def split_history(log_history: list[dict]) -> tuple[list[dict], list[dict]]:
    train, evals = [], []
    for entry in log_history:
        if "loss" in entry:
            train.append({k: entry[k] for k in ("step", "loss", "learning_rate", "grad_norm") if k in entry})
        if "eval_loss" in entry:
            evals.append({"step": entry["step"], "eval_loss": entry["eval_loss"]})
    return train, evals


# --------------------------------------------------------------------------- the run


def train_experiment(cfg: ExperimentConfig, model, tokenizer, splits: Splits, exp_dir: str | Path) -> dict:
    """Train (or resume, or skip if already complete) and return the run's train record. A recipe in
    three steps: setup (checkpoints, the running record, the trainer), train, save (adapter, record)."""
    exp_dir = Path(exp_dir)
    if runs.is_complete(exp_dir, cfg.config_hash):
        print(f"{cfg.experiment}: already complete with this config ({cfg.config_hash}); not training again")
        return runs.read_metrics(exp_dir)

    # Setup. The checkpoint to resume from is found before the record says "running".
    identity = run_identity(cfg, splits)
    checkpoint_dir, resume_from = checkpoint_plan(cfg, exp_dir, identity)
    record = running_record(cfg, model, splits, resume_from)
    runs.write_record(exp_dir, "train", record)
    trainer, nan_guard = build_trainer(cfg, model, tokenizer, splits, checkpoint_dir, identity, tracker_callbacks(cfg, exp_dir, resume_from))
    # Training's own peak from here: on a CPU, loading (fp32 weights read, then quantised to nf4) peaks on its own.
    load_peak_mb = runs.peak_memory_mb()
    runs.reset_peak_memory()

    try:  # train, then save the adapter; a failure is recorded, then raised
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if nan_guard.bad_step is not None:
            raise NonFiniteLossError(
                f"training loss became non-finite at step {nan_guard.bad_step}: "
                f"train.learning_rate={cfg.train.learning_rate:g} is probably too high"
            )
        history, eval_history = split_history(trainer.state.log_history)
        if not eval_history or eval_history[-1]["step"] != trainer.state.global_step:
            # Always end on a validation loss measured at the final step.
            trainer.evaluate()
            history, eval_history = split_history(trainer.state.log_history)
        save_start = time.perf_counter()
        model.save_pretrained(exp_dir / ADAPTER)
        tokenizer.save_pretrained(exp_dir / ADAPTER)
        save_seconds = time.perf_counter() - save_start
    except BaseException as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        runs.write_record(exp_dir, "train", record)
        raise

    record.update(status="complete", finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  train=train_summary(trainer, output, model, history, eval_history, save_seconds, load_peak_mb))
    runs.write_record(exp_dir, "train", record)
    return record


def checkpoint_plan(cfg: ExperimentConfig, exp_dir: Path, identity: dict) -> tuple[Path, Path | None]:
    """Where this run checkpoints (its own folder, or train.checkpoint_dir), and what it resumes from."""
    own_folder = not cfg.train.checkpoint_dir
    checkpoint_dir = exp_dir / CHECKPOINTS if own_folder else Path(cfg.train.checkpoint_dir) / cfg.experiment
    resume_from = resume_point(cfg, checkpoint_dir, own_folder, identity)
    if resume_from is not None:
        warnings.warn(f"{cfg.experiment}: resuming from {resume_from}", stacklevel=3)
    return checkpoint_dir, resume_from


def running_record(cfg: ExperimentConfig, model, splits: Splits, resume_from: Path | None) -> dict:
    """The train record as training starts: what runs, on what, from where."""
    return {
        "experiment": cfg.experiment,
        "status": "running",
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash,
        "env": runs.environment_info(),
        # What the weights really are (nf4, or a dtype): asked-for 4-bit that this machine cannot do shows here.
        "precision": modeling.precision_of(model),
        "data": {**splits.stats, "epochs": epochs_of(cfg, len(splits.train))},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(resume_from) if resume_from else None,
    }


TRACKER_DIR = "tensorboard"  # in the run's own folder: `make clean` removes it, a resume continues it, --logdir OUT finds all


def tracker_callbacks(cfg: ExperimentConfig, exp_dir: Path, resume_from: Path | None) -> list:
    """The run's live curves (`train.tracker`): transformers' own TensorBoardCallback, writing event files into
    OUT/<experiment>/tensorboard/ (training loss, learning rate, grad norm, tokens per second, validation loss).
    A resumed run hides what the interrupted one logged after its checkpoint (SummaryWriter's purge_step),
    so its curves continue with no stretch drawn twice; a run that starts afresh starts empty curves."""
    if cfg.train.tracker == "none":
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    folder = exp_dir / TRACKER_DIR
    if resume_from is None:
        shutil.rmtree(folder, ignore_errors=True)  # another run's curves (an older config) are not this one's
    purge = int(resume_from.name.rsplit("-", 1)[1]) + 1 if resume_from is not None else None  # checkpoint-N
    callback = TensorBoardCallback(SummaryWriter(log_dir=str(folder), purge_step=purge))
    callback.logging_dir = str(folder)  # where it writes again after training ends (a final evaluation)
    return [callback]


def build_trainer(cfg: ExperimentConfig, model, tokenizer, splits: Splits, checkpoint_dir: Path, identity: dict,
                  callbacks: list = ()):
    """lab2's SFT trainer for this run, and its non-finite-loss guard; `callbacks`: the tracker's."""
    nan_guard = non_finite_loss_guard()
    trainer = measured_trainer_class()(
        model=model,
        args=sft_config(cfg, checkpoint_dir, backend.resolve_dtype(cfg.model.dtype)),  # fp16 on a T4
        train_dataset=splits.train,
        eval_dataset=splits.validation,
        processing_class=tokenizer,
        callbacks=[nan_guard, checkpoint_announcer(cfg.experiment), *callbacks],
    )
    trainer.run_identity = identity
    if backend.resolve_backend(cfg.model) == "hf":  # Unsloth's trainer keeps its own adapter dtype
        keep_adapter_in_fp32(model)
    return trainer, nan_guard


def train_summary(trainer, output, model, history: list[dict], eval_history: list[dict], save_seconds: float,
                  load_peak_mb: float) -> dict:
    """The record's `train` section: losses, steps, time, throughput and memory of the run just trained."""
    train_seconds = output.metrics["train_runtime"]
    step_seconds = max(train_seconds - trainer.eval_seconds, 1e-9)
    return {
        "final_loss": history[-1]["loss"] if history else None,
        "final_eval_loss": eval_history[-1]["eval_loss"],
        "total_steps": trainer.state.global_step,
        "training_time_seconds": train_seconds,
        "periodic_eval_seconds": trainer.eval_seconds,
        "adapter_save_seconds": save_seconds,
        "tokens": trainer.tokens_seen,
        "padding_fraction": 1 - trainer.tokens_seen / max(trainer.positions, 1),
        "trained_tokens": trainer.trained_tokens,
        "tokens_per_second": trainer.tokens_seen / step_seconds,
        "trained_tokens_per_second": trainer.trained_tokens / step_seconds,
        "peak_memory_mb": runs.peak_memory_mb(),  # while training (weights, activations, optimizer state)
        "load_peak_memory_mb": load_peak_mb,  # while loading the model and data, before training
        "weights_memory_mb": model.get_memory_footprint() / 2**20,  # the model as held: nf4 layers at about 4 bits
        "history": history,
        "eval_history": eval_history,
    }


def trained_model(cfg: ExperimentConfig, tokenizer, splits: Splits, exp_dir: str | Path, train_if_needed: bool = True):
    """(model, metrics) of a run, by the one path every entry point takes (train.ipynb, evaluate.ipynb,
    lab2.ipynb, `python -m lab2 train`).

    A run that finished with these params: its saved adapter, never a fresh LoRA (a re-run of a notebook
    must evaluate what was trained). Otherwise a new LoRA, trained now or resumed from its checkpoint;
    with `train_if_needed=False` (evaluation on its own) that is an error in one line."""
    exp_dir = Path(exp_dir)
    if runs.is_complete(exp_dir, cfg.config_hash):
        print(f"{cfg.experiment}: already complete with this config ({cfg.config_hash}); loading its saved adapter")
        return modeling.load_trained_model(cfg, exp_dir / ADAPTER), runs.read_metrics(exp_dir)
    if not train_if_needed:
        raise runs.RunFailed(f"{exp_dir}: no complete training run with this config ({cfg.config_hash}); train it first")
    model = modeling.load_trainable_model(cfg)
    return model, train_experiment(cfg, model, tokenizer, splits, exp_dir)


def run(cfg: ExperimentConfig, output_root: str | Path) -> dict:
    """What notebooks/train.ipynb does, in one call: for `python -m lab2 train` and tests."""
    backend.import_backend(cfg.model)  # Unsloth, when it is the backend, before transformers/trl/peft
    tokenizer = modeling.load_tokenizer(cfg.model.name, cfg.data.chat_template)
    splits = data.build_splits(cfg.data, tokenizer, cfg.model.max_seq_length)
    return trained_model(cfg, tokenizer, splits, Path(output_root) / cfg.experiment)[1]
