"""The catalogue of bad input: each kind fails at the earliest stage, `validate`, with a
message naming the file and line (or the params key) and the rule, and writes nothing but
the validation report.

Every entry builds a project (a BEIR folder under data/raw and a params.yaml) in a tmp dir and
runs the stage body of `flows.validate` on it, as `python -m flows.validate` would (the Prefect
wrapper only turns the exception into a Failed state; `tests/e2e` runs the real command and
checks that DVC then runs nothing downstream).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components.settings import REPO_ROOT
from flows._stage import EXPECTED_FAILURES
from flows.validate import validate
from tests.helpers import GOOD_CORPUS, GOOD_QRELS, GOOD_QUERIES, write_beir

DATASET = "bad-input"
TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class BadInput:
    kind: str
    data: dict  # keyword arguments of `write_beir`
    expect: tuple[str, ...]  # what the message must name: file:line or key, and the rule
    params: Callable[[dict], None] | None = None  # edits the parsed params.yaml
    params_text: Callable[[str], str] | None = None  # edits params.yaml as text


def _corpus_with(**changes) -> list[dict]:
    corpus = [dict(doc) for doc in GOOD_CORPUS]
    for index, doc in changes.items():
        corpus[int(index[1:])] = doc
    return corpus


def _qrels(**splits) -> dict:
    return {**GOOD_QRELS, **splits}


def _set(section: str, **values) -> Callable[[dict], None]:
    return lambda params: params[section].update(values)


GOOD_LINE = json.dumps(GOOD_CORPUS[0])
CATALOGUE = [
    # -- form: the loader cannot parse the file (rule format.parseable) ----------------------
    BadInput("malformed JSON line",
             dict(corpus_lines=[GOOD_LINE, '{"_id": "d2", "text": "broken']),
             ("format.parseable", "corpus.jsonl:2", "malformed JSON")),
    BadInput("non-UTF-8 bytes",
             dict(corpus_lines=[GOOD_LINE.encode(), b'{"_id": "d2", "text": "caf\xe9"}']),
             ("format.parseable", "corpus.jsonl:2", "not valid UTF-8")),
    BadInput("line that is not a JSON object", dict(corpus_lines=[GOOD_LINE, '["d2", "x"]']),
             ("format.parseable", "corpus.jsonl:2", "expected a JSON object")),
    BadInput("a JSON object naming a key twice",
             dict(corpus_lines=[GOOD_LINE, '{"_id": "d2", "text": "one", "text": "two"}']),
             ("format.parseable", "corpus.jsonl:2", "'text' appears twice")),
    BadInput("document id given as a boolean",
             dict(corpus_lines=[GOOD_LINE, '{"_id": true, "text": "x"}']),
             ("format.parseable", "corpus.jsonl:2", "must be JSON strings", "`_id` is bool")),
    BadInput("document id given as an object",
             dict(corpus_lines=[GOOD_LINE, '{"_id": {"x": 1}, "text": "x"}']),
             ("format.parseable", "corpus.jsonl:2", "`_id` is dict")),
    BadInput("document id given as NaN",
             dict(corpus_lines=[GOOD_LINE, '{"_id": NaN, "text": "x"}']),
             ("format.parseable", "corpus.jsonl:2", "`_id` is float")),
    BadInput("document text given as a list",
             dict(corpus_lines=[GOOD_LINE, '{"_id": "d2", "text": ["a", "b"]}']),
             ("format.parseable", "corpus.jsonl:2", "`text` is list")),
    BadInput("document title given as a number",
             dict(corpus_lines=[GOOD_LINE, '{"_id": "d2", "title": 7, "text": "x"}']),
             ("format.parseable", "corpus.jsonl:2", "`title` is int")),
    BadInput("query text given as a number",
             dict(queries=GOOD_QUERIES[:3] + [{"_id": "q4", "text": 12}]),
             ("format.parseable", "queries.jsonl:4", "`text` is int")),
    BadInput("JSON nested 100,000 deep",
             dict(corpus_lines=[GOOD_LINE, '{"_id": "d2", "text": ' + "[" * 100_000
                                + "]" * 100_000 + "}"]),
             ("format.parseable", "corpus.jsonl:2", "nested too deeply")),
    BadInput("text with a lone surrogate escape",
             dict(corpus_lines=[GOOD_LINE, '{"_id": "d2", "text": "caf\\ud800"}']),
             ("format.parseable", "corpus.jsonl:2", "lone surrogate")),
    BadInput("wrong qrels column header", dict(qrels_header="qid\tdocid\trel"),
             ("format.parseable", "qrels/test.tsv:1", "header must be")),
    BadInput("qrels row with a missing field",
             dict(qrels=_qrels(test=[("q3", "d5", "1"), ("q4", "d4")])),
             ("format.parseable", "qrels/test.tsv:3", "expected 3 tab-separated fields")),
    # -- content: the Great Expectations rules ---------------------------------------------
    BadInput("missing _id", dict(corpus=_corpus_with(i2={"title": "t", "text": "no id"})),
             ("corpus.id_present", "corpus.jsonl:3")),
    BadInput("wrong JSON field name (id for _id)",
             dict(corpus=[{"id" if k == "_id" else k: v for k, v in d.items()}
                          for d in GOOD_CORPUS]),
             ("corpus.id_present", "corpus.jsonl:1,2,3,4,5")),
    BadInput("document id with a newline (would inject run-file lines)",
             dict(corpus=_corpus_with(i4={"_id": "d5\nq3 Q0 d1 1 99 x", "title": "",
                                          "text": "injected"})),
             ("corpus.id_token", "corpus.jsonl:5")),
    BadInput("document id with an inner space",
             dict(corpus=_corpus_with(i1={"_id": "d 2", "title": "", "text": "spaced"})),
             ("corpus.id_token", "corpus.jsonl:2")),
    BadInput("document id with a leading space",
             dict(corpus=_corpus_with(i1={"_id": " d2", "title": "", "text": "spaced"})),
             ("corpus.id_token", "corpus.jsonl:2")),
    BadInput("query id with a tab", dict(queries=GOOD_QUERIES + [{"_id": "q\t5", "text": "x"}]),
             ("queries.id_token", "queries.jsonl:5")),
    BadInput("empty document id",
             dict(corpus=_corpus_with(i1={"_id": "", "title": "", "text": "no id"})),
             ("corpus.id_token", "corpus.jsonl:2")),
    BadInput("document id with a control character",
             dict(corpus=_corpus_with(i1={"_id": "d\x002", "title": "", "text": "nul"})),
             ("corpus.id_token", "corpus.jsonl:2")),
    BadInput("40 KB document id (Lucene drops it)",
             dict(corpus=_corpus_with(i1={"_id": "d" * 40_000, "title": "", "text": "long id"})),
             ("corpus.id_length", "corpus.jsonl:2")),
    BadInput("100 KB title (Lucene drops a 50 MB one)",
             dict(corpus=_corpus_with(i1={"_id": "d2", "title": "t" * 100_000,
                                          "text": "long title"})),
             ("corpus.title_length", "corpus.jsonl:2")),
    BadInput("duplicate document ids",
             dict(corpus=_corpus_with(i1={"_id": "d1", "title": "", "text": "copy"})),
             ("corpus.id_unique", "corpus.jsonl:1,2")),
    BadInput("duplicate query ids",
             dict(queries=GOOD_QUERIES + [{"_id": "q1", "text": "again"}]),
             ("queries.id_unique", "queries.jsonl:1,5")),
    BadInput("empty document text",
             dict(corpus=_corpus_with(i3={"_id": "d4", "title": "t", "text": "   "})),
             ("corpus.text_non_empty", "corpus.jsonl:4")),
    BadInput("missing document text", dict(corpus=_corpus_with(i3={"_id": "d4", "title": "t"})),
             ("corpus.text_present", "corpus.jsonl:4")),
    BadInput("empty query text", dict(queries=GOOD_QUERIES[:3] + [{"_id": "q4", "text": ""}]),
             ("queries.text_non_empty", "queries.jsonl:4")),
    BadInput("10 MB document",
             dict(corpus=_corpus_with(i4={"_id": "d5", "title": "", "text": "x" * TEN_MB})),
             ("corpus.text_length", "corpus.jsonl:5")),
    BadInput("empty corpus", dict(corpus=[]), ("corpus.row_count", "corpus.jsonl", "observed 0")),
    BadInput("qrels row naming an unknown document",
             dict(qrels=_qrels(test=[("q3", "d5", "1"), ("q4", "d99", "1")])),
             ("qrels.test.doc_exists", "qrels/test.tsv:3", "d99")),
    BadInput("qrels row naming an unknown query",
             dict(qrels=_qrels(train=[("q1", "d1", "1"), ("q77", "d3", "1")])),
             ("qrels.train.query_exists", "qrels/train.tsv:3", "q77")),
    BadInput("non-integer grade",
             dict(qrels=_qrels(test=[("q3", "d5", "1.5"), ("q4", "d4", "1")])),
             ("qrels.test.grade_integer", "qrels/test.tsv:2", "1.5")),
    BadInput("grade of 10^20",
             dict(qrels=_qrels(test=[("q3", "d5", "1" + "0" * 20), ("q4", "d4", "1")])),
             ("qrels.test.grade_integer", "qrels/test.tsv:2")),
    BadInput("grade out of range",
             dict(qrels=_qrels(test=[("q3", "d5", "7"), ("q4", "d4", "1")])),
             ("qrels.test.grade_allowed", "qrels/test.tsv:2")),
    BadInput("a query without any relevant document",
             dict(qrels=_qrels(test=[("q3", "d5", "1"), ("q4", "d4", "0")])),
             ("qrels.test.query_has_relevant_doc", "qrels/test.tsv:3")),
    BadInput("a query split with no relevant documents",
             dict(qrels=_qrels(test=[("q3", "d5", "0"), ("q4", "d4", "0")])),
             ("qrels.test.query_has_relevant_doc", "qrels/test.tsv:2,3")),
    BadInput("train and test queries overlap",
             dict(qrels=_qrels(test=[("q3", "d5", "1"), ("q1", "d1", "1")])),
             ("qrels.test.disjoint_from_train", "qrels/test.tsv:3", "q1")),
    BadInput("a (query, document) pair judged twice",
             dict(qrels=_qrels(test=[("q3", "d5", "1"), ("q3", "d5", "1"), ("q4", "d4", "1")])),
             ("qrels.test.pair_unique", "qrels/test.tsv")),
    # -- params.yaml --------------------------------------------------------------------------
    BadInput("params.yaml typo", {}, ("params.yaml", "bm25.deptth", "unknown key"),
             params=_set("bm25", deptth=10)),
    BadInput("params value of the wrong type", {},
             ("params.yaml", "bm25.depth", "valid integer", "'many'"),
             params=_set("bm25", depth="many")),
    BadInput("params value out of range", {}, ("params.yaml", "bm25.b", "less than or equal"),
             params=_set("bm25", b=1.5)),
    BadInput("params.yaml that is not valid YAML", {}, ("params.yaml", "not valid YAML"),
             params_text=lambda text: text + "bm25: [unclosed\n"),
    BadInput("params.yaml with a key twice", {}, ("params.yaml", "'seed' appears twice"),
             params_text=lambda text: text + "seed: 7\n"),
    BadInput("params.yaml with a section twice", {}, ("params.yaml", "'bm25' appears twice"),
             params_text=lambda text: text + "bm25:\n  k1: 1.2\n"),
    BadInput("empty params.yaml", {}, ("params.yaml", "the file is empty"),
             params_text=lambda text: ""),
    BadInput("params.yaml with a YAML alias (alias bombs)", {}, ("params.yaml", "aliases"),
             params_text=lambda text: text.replace("seed: 42", "seed: &s 42\nextra: *s")),
    BadInput("seed given as a boolean", {}, ("params.yaml", "seed", "the boolean True"),
             params=lambda params: params.update(seed=True)),
    BadInput("seed out of numpy's range", {}, ("params.yaml", "seed", "greater than or equal"),
             params=lambda params: params.update(seed=-1)),
    BadInput("BM25 depth Lucene cannot allocate", {},
             ("params.yaml", "bm25.depth", "less than or equal to 100000"),
             params=_set("bm25", depth=3_000_000_000)),
    BadInput("metric trec_eval does not know", {},
             ("params.yaml", "evaluate.metrics", "'nDCG@10' is not a trec_eval measure"),
             params=_set("evaluate", metrics=["nDCG@10"], primary="nDCG@10")),
    BadInput("primary metric not among the metrics", {},
             ("params.yaml", "evaluate", "'P_1' is not among metrics"),
             params=_set("evaluate", primary="P_1")),
    BadInput("min_docs above max_docs", {},
             ("params.yaml", "validate", "min_docs (10) is above max_docs (5)"),
             params=_set("validate", min_docs=10, max_docs=5)),
    BadInput("empty tracking experiment name", {},
             ("params.yaml", "tracking.experiment", "at least 1 character"),
             params=_set("tracking", experiment="")),
    BadInput("test split with no qrels file", {},
             ("params.yaml", "data.test_split", "qrels/tset.tsv does not exist", "test, train"),
             params=_set("data", test_split="tset")),
    BadInput("dataset name that does not exist", {},
             ("params.yaml", "data.name", "does not exist", "no-such-dataset", DATASET),
             params=_set("data", name="no-such-dataset")),
]

# The kinds the issue lists, each of which the catalogue must hold.
REQUIRED_KINDS = [
    "malformed JSON line", "missing _id", "duplicate document ids", "empty document text",
    "non-UTF-8 bytes", "qrels row naming an unknown document",
    "qrels row naming an unknown query", "non-integer grade", "grade out of range",
    "a query split with no relevant documents", "train and test queries overlap",
    "10 MB document", "empty corpus", "wrong qrels column header", "params.yaml typo",
    "params value of the wrong type", "dataset name that does not exist",
]


def test_catalogue_holds_every_kind_the_issue_lists():
    kinds = [case.kind for case in CATALOGUE]
    assert len(set(kinds)) == len(kinds) >= 15
    assert set(REQUIRED_KINDS) <= set(kinds)


def _project(root: Path, case: BadInput) -> Path:
    """A project folder holding the case's dataset and params.yaml; returns the params file."""
    write_beir(root / "data" / "raw" / DATASET, **case.data)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["name"] = DATASET
    params["validate"]["allowed_grades"] = [0, 1, 2]
    if case.params:
        case.params(params)
    text = yaml.safe_dump(params, sort_keys=False)
    if case.params_text:
        text = case.params_text(text)
    path = root / "params.yaml"
    path.write_text(text)
    return path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "outputs").rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.kind for case in CATALOGUE])
def test_bad_input_fails_in_validate_naming_file_line_and_rule(case, tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_DISTILL_ROOT", str(tmp_path))
    params_file = _project(tmp_path, case)
    with pytest.raises(EXPECTED_FAILURES) as info:
        validate.fn.__wrapped__(params_path=str(params_file))  # the stage body
    message = str(info.value)
    for piece in case.expect:
        assert piece in message, f"{piece!r} missing from:\n{message[:2000]}"
    assert "Traceback" not in message
    # Only the validation report may be written, and only for a dataset that was read.
    report_dir = f"outputs/{DATASET}/validation"
    assert _files(tmp_path) <= {f"{report_dir}/report.json", f"{report_dir}/report.md"}
    if case.data:
        report = json.loads((tmp_path / report_dir / "report.json").read_text())
        assert report["success"] is False
        assert case.expect[0] in {failure["rule"] for failure in report["failures"]}
        markdown = (tmp_path / report_dir / "report.md").read_text()
        assert f"`{case.expect[0]}`" in markdown


def test_good_project_passes_validate(tmp_path, monkeypatch):
    """The fixtures are bad only where they say: the untouched project validates."""
    monkeypatch.setenv("RERANK_DISTILL_ROOT", str(tmp_path))
    summary = validate.fn.__wrapped__(params_path=str(_project(tmp_path, BadInput("good", {}, ()))))
    assert summary.startswith("validation passed")
