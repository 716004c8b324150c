"""The query splits: a seeded held-out dev split, disjoint from training, stable under
other settings; and the one door for judgements, which records its readers."""

from __future__ import annotations

import json

import pytest

from components.data.beir import load_beir
from components.data.judgements import AUDIT_ENV, STAGE_ENV, read_judgements
from components.data.splits import QuerySplits
from tests.helpers import write_beir


def carve(train_ids, eval_queries=2, dev_queries=3, share=0.25, seed=7, test_ids=None):
    test_ids = test_ids or [f"t{i}" for i in range(6)]
    return QuerySplits.carve("ds", "ds", "test", "train", test_ids, train_ids, eval_queries,
                             dev_queries, share, seed)


def test_heldout_is_disjoint_from_train_and_covers_the_training_queries():
    train_ids = [f"q{i}" for i in range(40)]
    splits = carve(train_ids)
    assert len(splits.heldout) == 3
    assert not set(splits.heldout) & set(splits.train)
    assert sorted(splits.heldout + splits.train) == sorted(train_ids)
    assert splits.evaluated == sorted(splits.evaluated) and len(splits.evaluated) == 2
    assert set(splits.evaluated) <= set(splits.test)


def test_heldout_is_capped_by_share_and_stable_when_the_test_sample_changes():
    train_ids = [f"q{i}" for i in range(20)]
    assert len(carve(train_ids, dev_queries=100).heldout) == 5  # 25% of 20
    assert carve(train_ids, eval_queries=2).heldout == carve(train_ids, eval_queries=4).heldout
    assert carve(train_ids, seed=1).heldout != carve(train_ids, seed=2).heldout


def test_splits_round_trip_and_a_missing_file_names_the_stage(tmp_path):
    splits = carve([f"q{i}" for i in range(40)])
    splits.save(tmp_path / "splits.json")
    assert QuerySplits.load(tmp_path / "splits.json") == splits
    with pytest.raises(FileNotFoundError, match="validate"):
        QuerySplits.load(tmp_path / "missing.json")


def test_cross_dataset_training_scores_no_heldout_queries_on_this_corpus():
    splits = QuerySplits.carve("trec", "scifact", "test", "train", ["t1"], ["q1", "q2", "q3",
                                                                            "q4"], 0, 1, 0.25, 0)
    assert splits.trains_elsewhere and splits.heldout and splits.dev_evaluated == []


def test_every_qrels_read_is_recorded_with_its_stage(tmp_path, monkeypatch):
    root = write_beir(tmp_path / "ds", qrels={"test": [("q1", "d1", "1")],
                                               "train": [("q2", "d2", "1"), ("q3", "d1", "1")]})
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv(AUDIT_ENV, str(audit))
    monkeypatch.setenv(STAGE_ENV, "some_stage")
    dataset = load_beir(root, qrels=False)
    assert not audit.exists()  # corpus and queries only: no judgement read yet
    assert read_judgements(root, "train", ["q3"]) == {"q3": {"d1": 1}}
    dataset.qrels_dict("test")
    reads = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["stage"], r["file"].rsplit("/", 1)[-1]) for r in reads] == [
        ("some_stage", "train.tsv"), ("some_stage", "test.tsv")]
