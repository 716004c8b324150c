"""Dense baseline on a dozen synthetic documents with the real (bundled) MiniLM encoder."""

import json

import faiss
import numpy as np
import pytest

from components.evaluation.costs import folder_bytes
from components.runs import read_trec_run, write_trec_run
from components.search.dense import (
    DOC_IDS_FILE,
    INDEX_FILE,
    META_FILE,
    DenseIndex,
    bundled_model_dir,
    doc_text,
    load_encoder,
)
from components.search.faiss_index import IndexSpec

CORPUS = {
    "d01": {"title": "Coffee and sleep", "text": "Caffeine taken late in the day delays sleep."},
    "d02": {"title": "Volcanoes", "text": "Magma rising through the crust erupts as lava."},
    "d03": {"title": "Vaccines", "text": "Immunisation trains the immune system to fight a virus."},
    "d04": {"title": "Photosynthesis", "text": "Plants turn sunlight, water and CO2 into sugar."},
    "d05": {"title": "Exercise", "text": "Regular aerobic exercise lowers resting blood pressure."},
    "d06": {"title": "Antibiotics", "text": "Overuse of antibiotics breeds resistant bacteria."},
    "d07": {"title": "Black holes", "text": "Not even light escapes a black hole's event horizon."},
    "d08": {"title": "Bees", "text": "Honey bees pollinate many of the crops people eat."},
    "d09": {"title": "Smoking", "text": "Tobacco smoke is the leading cause of lung cancer."},
    "d10": {"title": "Glaciers", "text": "Rising temperatures make mountain glaciers retreat."},
    "d11": {"title": "Chess engines", "text": "Programs now beat every human chess player."},
    "d12": {"title": "", "text": "Drinking enough water matters for kidney function."},
}

# Each query paraphrases one document with different words.
QUERIES = {
    "q1": "Does drinking espresso in the evening make it harder to fall asleep?",
    "q2": "cigarettes cause cancer of the lungs",
    "q3": "working out often reduces hypertension",
    "q4": "bacteria become resistant when antimicrobial drugs are used too much",
    "q5": "ice sheets in the mountains shrink as the climate warms",
}
EXPECTED_TOP = {"q1": "d01", "q2": "d09", "q3": "d05", "q4": "d06", "q5": "d10"}


@pytest.fixture(scope="module")
def encoder():
    return load_encoder()


@pytest.fixture(scope="module")
def index(encoder):
    return DenseIndex.build(CORPUS, encoder, batch_size=4)


def test_bundled_model_is_found_offline():
    assert (bundled_model_dir() / "model.safetensors").is_file()


def test_doc_text_joins_title_and_text_like_mteb():
    assert doc_text({"title": "T", "text": "body"}) == "T body"
    assert doc_text({"title": "", "text": "body "}) == "body"
    assert doc_text({"text": "body"}) == "body"


def test_each_query_retrieves_its_paraphrased_document_first(index):
    run = index.search(QUERIES, k=3)
    assert {qid: ranked[0][0] for qid, ranked in run.items()} == EXPECTED_TOP


def test_run_format_is_sorted_cosine_scores_and_trec_roundtrips(index, tmp_path):
    run = index.search(QUERIES, k=5)
    assert set(run) == set(QUERIES)
    for ranked in run.values():
        assert len(ranked) == 5
        assert all(isinstance(d, str) and d in CORPUS for d, _ in ranked)
        assert all(isinstance(s, float) and -1.0 - 1e-5 <= s <= 1.0 + 1e-5 for _, s in ranked)
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True)
        assert len({d for d, _ in ranked}) == 5
    write_trec_run(tmp_path / "dense.trec", run, tag="dense")
    back, tag = read_trec_run(tmp_path / "dense.trec")
    assert tag == "dense"
    assert {q: [d for d, _ in r] for q, r in back.items()} == {
        q: [d for d, _ in r] for q, r in run.items()
    }


def test_scores_equal_cosine_similarity_of_the_encoder(index, encoder):
    ranked = index.search({"q": QUERIES["q2"]}, k=1)["q"]
    q, d = encoder.encode([QUERIES["q2"], doc_text(CORPUS[ranked[0][0]])])
    cosine = float(q @ d / np.linalg.norm(q) / np.linalg.norm(d))
    assert ranked[0][1] == pytest.approx(cosine, abs=1e-4)


def test_k_larger_than_corpus_returns_every_document_once(index):
    ranked = index.search({"q": "anything"}, k=100)["q"]
    assert sorted(d for d, _ in ranked) == sorted(CORPUS)


def test_save_load_roundtrip_gives_identical_results(index, encoder, tmp_path):
    folder = index.save(tmp_path / "dense_index")
    assert {p.name for p in folder.iterdir()} == {INDEX_FILE, DOC_IDS_FILE, META_FILE}
    assert json.loads((folder / DOC_IDS_FILE).read_text()) == list(CORPUS)
    assert folder_bytes(folder) > len(CORPUS) * 384 * 4  # float32 vectors at least
    loaded = DenseIndex.load(folder, encoder)
    assert len(loaded) == len(CORPUS)
    assert loaded.search(QUERIES, k=4) == index.search(QUERIES, k=4)


def test_max_tokens_is_kept_with_the_index(tmp_path):
    built = DenseIndex.build(CORPUS, load_encoder(), batch_size=4, max_tokens=8)
    assert built.encoder.max_seq_length == 8
    folder = built.save(tmp_path / "short")
    assert json.loads((folder / META_FILE).read_text())["max_tokens"] == 8
    loaded = DenseIndex.load(folder, load_encoder())
    assert loaded.encoder.max_seq_length == 8  # queries are cut as the documents were
    assert loaded.search(QUERIES, k=4) == built.search(QUERIES, k=4)


def test_a_graph_index_keeps_its_type_and_search_setting_through_save_and_load(
        index, encoder, tmp_path):
    spec = IndexSpec("hnsw", hnsw_m=8, ef_search=64)
    graph = DenseIndex.build(CORPUS, encoder, batch_size=4, spec=spec)
    reopened = DenseIndex.load(graph.save(tmp_path / "hnsw"), encoder)
    assert reopened.spec == spec and faiss.downcast_index(reopened.index).hnsw.efSearch == 64
    # Twelve documents, 64 candidates kept: the graph search visits all, as flat does.
    assert reopened.search(QUERIES, k=5) == index.search(QUERIES, k=5)


def test_load_refuses_an_index_built_by_another_model(index, encoder, tmp_path):
    folder = index.save(tmp_path / "dense_index")
    with pytest.raises(ValueError, match="built with"):
        DenseIndex.load(folder, encoder, model_name="some/other-model")


def test_bad_inputs_raise(index, encoder):
    with pytest.raises(ValueError, match="empty corpus"):
        DenseIndex.build({}, encoder)
    with pytest.raises(ValueError, match="k must be"):
        index.search(QUERIES, k=0)
    assert index.search({}, k=3) == {}
