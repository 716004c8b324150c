"""Great Expectations suites against a good fixture and one bad fixture per rule."""

import json

import pytest

from components.config import ValidationParams
from components.validation.report import validate_dataset
from tests.helpers import GOOD_CORPUS, GOOD_QRELS, GOOD_QUERIES, write_beir

PARAMS = ValidationParams(allowed_grades=[0, 1, 2], max_doc_chars=500)


def _validate(root, params=PARAMS):
    return validate_dataset(root, params, train_split="train")


def test_good_fixture_passes(tmp_path):
    report = _validate(write_beir(tmp_path / "ds"))
    assert report.success, report.summary()
    assert report.expectations_run > 20
    assert "passed" in report.summary()


def _corpus_with(**changes):
    corpus = [dict(doc) for doc in GOOD_CORPUS]
    for index, doc in changes.items():
        corpus[int(index[1:])] = doc
    return corpus


BAD_CASES = {
    "duplicate doc id": (
        dict(corpus=_corpus_with(i1={"_id": "d1", "title": "", "text": "copy"})),
        "corpus.id_unique", "corpus.jsonl", [1, 2]),
    "missing _id": (
        dict(corpus=_corpus_with(i2={"title": "t", "text": "no id"})),
        "corpus.id_present", "corpus.jsonl", [3]),
    "empty text": (
        dict(corpus=_corpus_with(i3={"_id": "d4", "title": "t", "text": "   "})),
        "corpus.text_non_empty", "corpus.jsonl", [4]),
    "missing text": (
        dict(corpus=_corpus_with(i3={"_id": "d4", "title": "t"})),
        "corpus.text_present", "corpus.jsonl", [4]),
    "document too long": (
        dict(corpus=_corpus_with(i4={"_id": "d5", "title": "", "text": "x" * 501})),
        "corpus.text_length", "corpus.jsonl", [5]),
    "empty query text": (
        dict(queries=GOOD_QUERIES[:3] + [{"_id": "q4", "text": ""}]),
        "queries.text_non_empty", "queries.jsonl", [4]),
    "qrels row names unknown doc": (
        dict(qrels={**GOOD_QRELS, "test": [("q3", "d5", "1"), ("q4", "d99", "1")]}),
        "qrels.test.doc_exists", "qrels/test.tsv", [3]),
    "qrels row names unknown query": (
        dict(qrels={**GOOD_QRELS, "train": [("q1", "d1", "1"), ("q77", "d3", "1")]}),
        "qrels.train.query_exists", "qrels/train.tsv", [3]),
    "non-integer grade": (
        dict(qrels={**GOOD_QRELS, "test": [("q3", "d5", "1.5"), ("q4", "d4", "1")]}),
        "qrels.test.grade_integer", "qrels/test.tsv", [2]),
    "grade out of range": (
        dict(qrels={**GOOD_QRELS, "test": [("q3", "d5", "7"), ("q4", "d4", "1")]}),
        "qrels.test.grade_allowed", "qrels/test.tsv", [2]),
    "query without relevant doc": (
        dict(qrels={**GOOD_QRELS, "test": [("q3", "d5", "1"), ("q4", "d4", "0")]}),
        "qrels.test.query_has_relevant_doc", "qrels/test.tsv", [3]),
    "train and test overlap": (
        dict(qrels={**GOOD_QRELS, "test": [("q3", "d5", "1"), ("q1", "d1", "1")]}),
        "qrels.test.disjoint_from_train", "qrels/test.tsv", [3]),
    "duplicate judgement": (
        dict(qrels={**GOOD_QRELS, "test": [("q3", "d5", "1"), ("q3", "d5", "1"),
                                           ("q4", "d4", "1")]}),
        "qrels.test.pair_unique", "qrels/test.tsv", []),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_violation_names_rule_file_and_line(tmp_path, case):
    kwargs, rule, file_suffix, lines = BAD_CASES[case]
    report = _validate(write_beir(tmp_path / "ds", **kwargs))
    assert not report.success
    failure = next((f for f in report.failures if f.rule == rule), None)
    assert failure is not None, f"expected rule {rule}, got {[f.rule for f in report.failures]}"
    assert failure.file.endswith(file_suffix)
    assert failure.bad_rows >= 1
    if lines:
        assert failure.sample_lines == lines
    assert rule in report.summary() and file_suffix in report.summary()
    assert f"`{rule}`" in report.to_markdown()
    assert json.loads(report.to_json())["success"] is False


def test_row_count_bounds(tmp_path):
    params = ValidationParams(allowed_grades=[0, 1, 2], min_docs=10)
    report = _validate(write_beir(tmp_path / "ds"), params)
    assert [f.rule for f in report.failures] == ["corpus.row_count"]
    assert "observed 5" in report.failures[0].sample_values[0]


def test_format_errors_become_report_failures(tmp_path):
    root = write_beir(tmp_path / "ds", corpus_lines=[json.dumps(GOOD_CORPUS[0]), "{oops"])
    report = _validate(root)
    assert not report.success
    assert report.failures[0].rule == "format.parseable"
    assert report.failures[0].file.endswith("corpus.jsonl")
    assert report.failures[0].sample_lines == [2]
