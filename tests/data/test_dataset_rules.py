"""Validation rules particular to the bundled datasets: each one fails on a fixture that
breaks it, naming the rule and the file (the folder name selects the rules)."""

import pytest

from components.validation.report import validate_dataset
from components.validation.suites import ESCONV_STRATEGY_IDS
from tests.helpers import section, write_beir

PARAMS = section("validate")
STRATEGIES = [{"_id": s, "title": s, "text": f"description of {s}"} for s in ESCONV_STRATEGY_IDS]
CONTEXTS = [{"_id": q, "text": f"seeker: context {q}"} for q in ("dev-0", "test-0", "test-1")]


def _failed_rules(root, train_split="dev"):
    report = validate_dataset(root, PARAMS, train_split=train_split)
    return {f.rule: f for f in report.failures}


def test_esconv_strategy_good_and_two_strategies_for_one_query(tmp_path):
    good = {"dev": [("dev-0", "questions", "1")],
            "test": [("test-0", "other", "1"), ("test-1", "information", "1")]}
    root = write_beir(tmp_path / "good" / "esconv-strategy", STRATEGIES, CONTEXTS, good)
    assert _failed_rules(root) == {}
    bad = {**good, "test": [*good["test"], ("test-1", "questions", "1")]}
    root = write_beir(tmp_path / "bad" / "esconv-strategy", STRATEGIES[:7], CONTEXTS, {
        **bad, "test": [r for r in bad["test"] if r[1] != "self-disclosure"]})
    failed = _failed_rules(root)
    assert set(failed) == {"qrels.test.one_strategy_per_query", "corpus.eight_strategies"}
    assert failed["qrels.test.one_strategy_per_query"].file.endswith("qrels/test.tsv")
    assert failed["qrels.test.one_strategy_per_query"].sample_values == [2]


def test_esconv_reply_relevant_document_is_the_next_reply(tmp_path):
    replies = [{"_id": f"{q['_id']}-r", "title": "", "text": "a reply"} for q in CONTEXTS]
    qrels = {"dev": [("dev-0", "dev-0-r", "1")],
             "test": [("test-0", "test-1-r", "1"), ("test-1", "test-1-r", "1")]}
    failed = _failed_rules(write_beir(tmp_path / "esconv-reply", replies, CONTEXTS, qrels))
    assert set(failed) == {"qrels.test.relevant_is_next_reply"}
    assert failed["qrels.test.relevant_is_next_reply"].sample_lines == [2]


def test_robot_test_instruction_seen_in_training_is_caught(tmp_path):
    goals = [{"_id": "g1", "title": "", "text": "Goal state: the stove is on."}]
    queries = [{"_id": "a", "text": "turn on the stove"},
               {"_id": "b", "text": "Turn on  the stove"}]
    qrels = {"train": [("a", "g1", "1")], "test": [("b", "g1", "1")]}
    failed = _failed_rules(write_beir(tmp_path / "robot-instructions", goals, queries, qrels),
                           train_split="train")
    assert set(failed) == {"qrels.test.instruction_unseen_in_train"}
    assert failed["qrels.test.instruction_unseen_in_train"].sample_values == ["turn on the stove"]


@pytest.mark.parametrize("grades, rules", [
    (["1", "2", "3"], set()),
    (["0", "2", "3"], {"qrels.test.grades_1_to_3"}),
    (["1", "1", "2"], {"qrels.test.graded"}),
])
def test_trec_dl19_graded_relevance(tmp_path, grades, rules):
    docs = [{"_id": d, "title": "", "text": f"passage {d}"} for d in ("p1", "p2", "p3")]
    queries = [{"_id": "q1", "text": "a question"}]
    qrels = {"test": [("q1", d, g) for d, g in zip(("p1", "p2", "p3"), grades, strict=True)]}
    root = write_beir(tmp_path / "trec-dl19-subset", docs, queries, qrels)
    assert set(_failed_rules(root, train_split="train")) == rules
