import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.dgr.identifiers import (
    IdentifierIndex,
    IdentifierParams,
    build_identifier_index,
    ngram_identifiers,
    semantic_ids,
    span_identifiers,
    tfidf_identifiers,
    title_identifiers,
)

ROOT = Path(__file__).resolve().parents[2]


def test_semantic_ids_are_unique_short_paths():
    rng = np.random.default_rng(0)
    doc_ids = [f"d{i}" for i in range(200)]
    codes = semantic_ids(doc_ids, rng.normal(size=(200, 16)), branching=4, leaf_size=5, seed=0)
    assert set(codes) == set(doc_ids)
    assert len(set(codes.values())) == 200
    for code in codes.values():
        assert all(part.isdigit() for part in code.split("-"))
    # Prefix-free: no document's path is an inner node of another's.
    paths = {tuple(c.split("-")) for c in codes.values()}
    for path in paths:
        assert not any(other[: len(path)] == path for other in paths - {path})


def test_semantic_ids_follow_clusters_and_disambiguate_leaves():
    # Two well-separated blobs of three: one split, then each leaf numbers its members.
    blob = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01]])
    vectors = np.concatenate([blob, blob + 100.0])
    codes = semantic_ids(list("abcdef"), vectors, branching=2, leaf_size=3)
    first = {codes[d].split("-")[0] for d in "abc"}
    second = {codes[d].split("-")[0] for d in "def"}
    assert len(first) == 1 and len(second) == 1 and first != second
    assert sorted(codes[d].split("-")[1] for d in "abc") == ["0", "1", "2"]


def test_identical_embeddings_still_get_unique_codes():
    codes = semantic_ids([f"d{i}" for i in range(7)], np.ones((7, 4)), branching=3, leaf_size=2)
    assert len(set(codes.values())) == 7


def test_text_views(corpus):
    titles = title_identifiers(corpus)
    assert "d02" not in titles  # no title, no title identifier
    assert titles["d00"] == [corpus["d00"]["title"]]
    spans = span_identifiers(corpus, n_words=4)
    assert spans["d05"] == [" ".join(corpus["d05"]["text"].split()[:4])]
    terms = tfidf_identifiers(corpus, n_terms=3)
    assert all(len(v[0].split()) <= 3 for v in terms.values())
    assert set(terms["d07"][0].split()) <= set(
        (corpus["d07"]["title"] + " " + corpus["d07"]["text"]).split()
    )


def test_ngram_view_holds_every_window_of_the_passage_head():
    corpus = {
        "a": {"title": "Rapamycin in flies", "text": "lowers  triglyceride levels, 2013."},
        "b": {"title": "", "text": "short"},
        "c": {"title": "", "text": "one two one two one"},
    }
    grams = ngram_identifiers(corpus, n_words=3, max_words=6)
    # Whitespace normalised, cut after 6 words.
    assert grams["a"] == [
        "Rapamycin in flies",
        "in flies lowers",
        "flies lowers triglyceride",
        "lowers triglyceride levels,",
    ]
    assert grams["b"] == ["short"]  # shorter than n: the whole text
    assert grams["c"] == ["one two one", "two one two"]  # repeated windows kept once


def test_ngram_targets_follow_the_rarest_words_shared_with_the_query():
    ngrams = {
        "a": ["the effect of", "effect of rapamycin", "rapamycin on flies", "on flies in"],
        "b": ["the effect of", "effect of diet"],
        "c": ["the effect of", "of flies and"],
    }
    index = IdentifierIndex({"ngram": ngrams, "title": {"a": ["Rapamycin"]}})
    # "rapamycin" occurs in one passage, "flies" in two, "effect" in all: rarest shared wins.
    assert index.targets("ngram", "a", "Does rapamycin affect flies?", limit=1) == [
        "rapamycin on flies"
    ]
    # Only words every passage has in common: all tie, text order decides.
    assert index.targets("ngram", "a", "the EFFECT of diet", limit=2) == [
        "the effect of",
        "effect of rapamycin",
    ]
    # No query (an indexing example): the passage's rarest phrases.
    assert index.targets("ngram", "a", limit=1) == ["rapamycin on flies"]
    # One-identifier views: every identifier, whatever the query.
    assert index.targets("title", "a", "anything") == ["Rapamycin"]
    assert index.targets("ngram", "missing", "rapamycin") == []


def test_shared_identifier_maps_to_all_passages(identifier_index, corpus):
    shared = corpus["d00"]["title"]
    assert sorted(identifier_index.docs("title", shared)) == ["d00", "d01"]
    assert identifier_index.docs("title", "no such title") == []
    assert identifier_index.identifiers("title", "d02") == []
    # Every passage is reachable through its unique semantic id.
    assert {
        d for ids in identifier_index.view_identifiers("semantic_id").values() for d in ids
    } == set(corpus)
    assert all(len(d) == 1 for d in identifier_index.view_identifiers("semantic_id").values())


def test_index_json_round_trip(identifier_index, tmp_path):
    identifier_index.save(tmp_path / "ids.json")
    loaded = IdentifierIndex.load(tmp_path / "ids.json")
    assert loaded.doc_identifiers == identifier_index.doc_identifiers
    assert loaded.view_identifiers("title") == identifier_index.view_identifiers("title")


def test_params_are_validated(corpus):
    with pytest.raises(ValueError, match="views"):
        IdentifierParams(views=("titel",))
    with pytest.raises(ValueError, match="embeddings"):
        build_identifier_index(corpus, IdentifierParams(views=("semantic_id",)))


def test_ngram_targets_do_not_depend_on_the_hash_seed():
    # "gamma" and "delta" occur once each (equal IDF), so the two windows tie exactly and text
    # order must decide. Summed in set order, the IDFs would round differently from process to
    # process (str hashes are salted), and so would the training examples.
    script = """
from components.dgr.identifiers import IdentifierIndex
grams = {
    "a": ["alpha beta gamma", "alpha beta delta"],
    "b": ["alpha beta zeta"],
    "c": ["alpha beta eta"],
    "d": ["beta theta iota"],
    "e": ["beta kappa lambda"],
    "f": ["mu nu xi"],
}
index = IdentifierIndex({"ngram": grams})
print(index.targets("ngram", "a", "alpha beta gamma delta", limit=2))
"""
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        for seed in range(12)
    }
    # With 6 passages, alpha in 3 and beta in 5, the three IDFs sum to two different floats
    # depending on the order of addition.
    assert outputs == {"['alpha beta gamma', 'alpha beta delta']\n"}
