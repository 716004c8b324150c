"""The cross-dataset summary, built from per-dataset results.csv files."""

import json

import pandas as pd

from components.evaluation.summary import collect, pending, side_by_side, write_summary


def _results(root, dataset, rows):
    path = root / dataset / "eval" / "results.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _outputs(tmp_path):
    _results(tmp_path, "scifact", [
        {"split": "test", "query set": "all", "queries": 300, "system": "BM25",
         "nDCG@10": 0.6789, "R@10": 0.8},
        {"split": "test", "query set": "subset-100-ab", "queries": 100, "system": "BM25",
         "nDCG@10": 0.70, "R@10": 0.8},
        {"split": "test", "query set": "subset-100-ab", "queries": 100,
         "system": "BM25 → teacher", "nDCG@10": 0.75, "R@10": 0.8},
        {"split": "train", "query set": "all", "queries": 809, "system": "BM25",
         "nDCG@10": 0.1, "R@10": 0.8},
    ])
    _results(tmp_path, "esconv-strategy", [
        {"split": "test", "query set": "all", "queries": 2775, "system": "BM25",
         "nDCG@10": 0.40, "R@1": 0.2, "R@3": 0.4},
        {"split": "dev", "query set": "all", "queries": 2985, "system": "BM25",
         "nDCG@10": 0.9, "R@1": 0.9, "R@3": 0.9},
    ])
    (tmp_path / "trec-dl19-subset" / "dgr").mkdir(parents=True)
    (tmp_path / "trec-dl19-subset" / "dgr" / "summary.json").write_text(
        json.dumps({"skipped": "GR/DGR not trained: no training queries"}))
    for run in ("biencoder_rerank", "biencoder_full"):
        (tmp_path / "scifact" / "runs" / run).mkdir(parents=True)
        (tmp_path / "scifact" / "runs" / run / "DISABLED.md").write_text("bi-encoder is off\n")
    return tmp_path


def test_collect_keeps_test_split_primary_and_headline(tmp_path):
    long = collect(_outputs(tmp_path))
    assert set(long["split"]) == {"test"}  # scifact train and esconv dev rows left out
    esconv = long[long["dataset"] == "esconv-strategy"].set_index("metric")["value"]
    assert esconv.to_dict() == {"ndcg_cut_10": 0.40, "recall_1": 0.2}
    assert long.loc[long["dataset"] == "esconv-strategy", "headline"].tolist() == [False, True]


def test_side_by_side_columns_per_dataset_and_query_set(tmp_path):
    table = side_by_side(collect(_outputs(tmp_path)), headline=False)
    assert list(table.columns) == ["scifact (all, 300 q)", "scifact (subset, 100 q)",
                                   "esconv-strategy (all, 2775 q)"]
    assert list(table.index) == ["BM25", "BM25 → teacher"]
    assert table.loc["BM25 → teacher", "scifact (subset, 100 q)"] == 0.75
    assert pd.isna(table.loc["BM25 → teacher", "esconv-strategy (all, 2775 q)"])
    headline = side_by_side(collect(tmp_path), headline=True)
    assert "esconv-strategy (all, 2775 q) R@1" in headline.columns


def test_write_summary_lists_pending_systems_and_skip_notes(tmp_path):
    long, markdown = write_summary(_outputs(tmp_path))
    assert (tmp_path / "summary.md").read_text() == markdown
    assert len(pd.read_csv(tmp_path / "summary.csv")) == len(long)
    todo = pending(long, ["scifact", "esconv-strategy"])
    assert "BM25 → teacher" not in todo["scifact"] and "DGR" in todo["scifact"]
    assert "BM25" not in todo["esconv-strategy"]
    assert "| esconv-strategy | dialogue context -> support strategy" in markdown
    assert "dev | test | R@1" in markdown
    assert markdown.count("note: bi-encoder is off") == 1
