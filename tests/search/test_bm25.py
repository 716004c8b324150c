import pytest

from components.data.beir import DataFormatError, load_beir
from components.evaluation.costs import folder_bytes
from components.search import bm25
from tests.helpers import GOOD_CORPUS, GOOD_QUERIES


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    corpus = {d["_id"]: {"title": d["title"], "text": d["text"]} for d in GOOD_CORPUS}
    return bm25.build_index(corpus, tmp_path_factory.mktemp("bm25") / "index", threads=1)


def test_each_query_finds_its_document_first(index):
    queries = {q["_id"]: q["text"] for q in GOOD_QUERIES}
    run = bm25.search(index, queries, k=3)
    assert {qid: hits[0][0] for qid, hits in run.items()} == {
        "q1": "d1", "q2": "d3", "q3": "d5", "q4": "d4"}
    assert all(len(hits) <= 3 for hits in run.values())
    assert folder_bytes(index) > 0


def test_title_is_indexed(index):
    # "Vitamin" appears in d2's title and text; "heart" only in d1's title.
    run = bm25.search(index, {"q": "heart"}, k=5)
    assert [d for d, _ in run["q"]] == ["d1"]


@pytest.mark.slow
def test_reproduces_pyserini_beir_flat_on_scifact(tmp_path):
    """Pyserini's published BEIR flat BM25 on SciFact test: nDCG@10 0.6789, R@100 0.9253."""
    from components.evaluation.metrics import mean_metrics, per_query_metrics
    from components.settings import REPO_ROOT

    dataset = load_beir(REPO_ROOT / "data" / "raw" / "scifact")
    bm25.build_index(dataset.corpus_dict(), tmp_path / "index")
    qrels = dataset.qrels_dict("test")
    queries = {qid: dataset.queries_dict()[qid] for qid in qrels}
    run = bm25.search(tmp_path / "index", queries, k=100)
    scores = mean_metrics(per_query_metrics(run, qrels, ["ndcg_cut_10", "recall_100"],
                                            sorted(qrels)))
    assert scores["ndcg_cut_10"] == pytest.approx(0.6789, abs=0.005)
    assert scores["recall_100"] == pytest.approx(0.9253, abs=0.005)


def test_a_document_lucene_drops_fails_the_index_naming_it(tmp_path):
    """Lucene drops a document whose id (an untokenised term) is over 32,766 bytes and
    Anserini carries on; validate refuses such ids, and the index is checked all the same."""
    long_id = "d" * 40_000
    corpus = {"d1": {"title": "", "text": "aspirin and the heart"},
              long_id: {"title": "", "text": "a document with a very long id"}}
    with pytest.raises(DataFormatError) as info:
        bm25.build_index(corpus, tmp_path / "index", threads=1)
    assert f"{long_id[:80]!r} is not in the BM25 index" in str(info.value)
    assert "40000 bytes" in str(info.value)
    assert not (tmp_path / "index").exists()  # nothing half-written for DVC to accept
