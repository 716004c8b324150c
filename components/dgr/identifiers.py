"""Passage identifiers for generative retrieval: several views of one passage (MINDER-style).

A generative retriever decodes a string that names a passage. One view alone is brittle (titles
are missing in many corpora and shared by passages of one article; a semantic code carries no
words the query could match), so every passage gets identifiers in several views:

- "title":       the passage title, cut to `title_max_words` words. Skipped where empty.
- "semantic_id": a hierarchical k-means code over document embeddings (DSI's semantic docids),
                 rendered "3-1-4". Every passage has exactly one, and no two passages share it,
                 so this view alone keeps every passage reachable.
- "span":        the first `span_words` words of the text: a salient span / pseudo query that
                 works without titles (the leading sentence of a passage usually states its topic).
- "terms":       the passage's top `terms_count` TF-IDF terms, best first.
- "ngram":       every `ngram_words`-word window of the first `ngram_max_words` words of title and
                 text (SEAL's and MINDER's body substrings, word-aligned so that a token trie can
                 hold them instead of an FM-index). A model can copy words of the query into such
                 an identifier, so this view reaches passages it never memorised; the others
                 must be learnt passage by passage.

Which identifiers of a passage a training example targets is `IdentifierIndex.targets`: all of
them in the one-identifier views; in the n-gram view (about a hundred per passage) the few that
share the rarest words with the query, or, for an indexing example, the rarest ones.

Identifiers may be shared (two passages titled alike): the index maps an identifier to every
passage that carries it, and the retriever scores all of them. This module knows nothing about
tokenizers; `trie.py` turns identifiers into token sequences.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from components.atomic import write_text_atomic

TITLE, SEMANTIC_ID, SPAN, TERMS, NGRAM = "title", "semantic_id", "span", "terms", "ngram"
KNOWN_VIEWS = (TITLE, SEMANTIC_ID, SPAN, TERMS, NGRAM)
INDEX_FORMAT_VERSION = 1

Corpus = Mapping[str, Mapping[str, str]]  # doc id -> {"title": ..., "text": ...} (BEIR layout)


@dataclass(frozen=True)
class IdentifierParams:
    """Which views to build, and the knobs of each."""

    views: tuple[str, ...] = (TITLE, SEMANTIC_ID, SPAN)
    title_max_words: int = 16
    span_words: int = 10
    terms_count: int = 6
    ngram_words: int = 3
    ngram_max_words: int = 100  # bounds the trie: ~100 entries per passage
    semantic_branching: int = 10  # k of every k-means split
    semantic_leaf_size: int = 10  # clusters this small are not split again
    semantic_max_depth: int = 6  # safety stop; the final digit still disambiguates
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.views) - set(KNOWN_VIEWS)
        if unknown or not self.views:
            raise ValueError(f"views must be a non-empty subset of {KNOWN_VIEWS}, got {self.views}")
        if self.ngram_words < 1 or self.ngram_max_words < self.ngram_words:
            raise ValueError("ngram_words must be >= 1 and <= ngram_max_words")
        if self.semantic_branching < 2 or self.semantic_leaf_size < 1:
            raise ValueError("semantic_branching must be >= 2 and semantic_leaf_size >= 1")


def clean(text: str | None) -> str:
    """Whitespace-normalised text: identifiers that differ only in spacing are the same one."""
    return " ".join((text or "").split())


def first_words(text: str | None, n: int) -> str:
    return " ".join((text or "").split()[:n])


def title_identifiers(corpus: Corpus, max_words: int = 16) -> dict[str, list[str]]:
    return {d: [t] for d, doc in corpus.items() if (t := first_words(doc.get("title"), max_words))}


def span_identifiers(corpus: Corpus, n_words: int = 10) -> dict[str, list[str]]:
    """The first words of the text (of the title where the text is empty)."""
    out = {}
    for doc_id, doc in corpus.items():
        span = first_words(doc.get("text"), n_words) or first_words(doc.get("title"), n_words)
        if span:
            out[doc_id] = [span]
    return out


def ngram_identifiers(
    corpus: Corpus, n_words: int = 3, max_words: int = 100
) -> dict[str, list[str]]:
    """Every n-word window of the first `max_words` words of title + text, in text order (a
    shorter passage gives its whole text as one identifier)."""
    out = {}
    for doc_id, doc in corpus.items():
        words = clean(f"{doc.get('title') or ''} {doc.get('text') or ''}").split()[:max_words]
        windows = range(max(1, len(words) - n_words + 1))
        grams = list(dict.fromkeys(" ".join(words[i : i + n_words]) for i in windows))
        if grams and grams[0]:
            out[doc_id] = grams
    return out


def word_key(word: str) -> str:
    """What two words must share to count as the same word when matching a query: lower-cased
    letters only (so "Rapamycin," matches "rapamycin"); "" for numbers, punctuation and
    one-letter words, which carry no topic (numbers would otherwise look rare)."""
    key = re.sub(r"[^a-z]", "", word.lower())
    return key if len(key) > 1 else ""


def tfidf_identifiers(corpus: Corpus, n_terms: int = 6) -> dict[str, list[str]]:
    """Top TF-IDF terms of title + text, best first (ties by term, so the result is stable)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    doc_ids = list(corpus)
    texts = [
        clean(f"{corpus[d].get('title') or ''} {corpus[d].get('text') or ''}") for d in doc_ids
    ]
    vectorizer = TfidfVectorizer(stop_words="english", lowercase=True)
    try:
        matrix = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # every document empty or only stop words: no vocabulary at all
        return {}
    vocab = vectorizer.get_feature_names_out()
    out = {}
    for row, doc_id in enumerate(doc_ids):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        pairs = sorted(zip(-matrix.data[start:end], vocab[matrix.indices[start:end]], strict=True))
        if pairs:
            out[doc_id] = [" ".join(term for _, term in pairs[:n_terms])]
    return out


def semantic_ids(
    doc_ids: Sequence[str],
    embeddings: np.ndarray,
    branching: int = 10,
    leaf_size: int = 10,
    max_depth: int = 6,
    seed: int = 0,
) -> dict[str, str]:
    """Hierarchical k-means codes: doc id -> "c1-c2-...-ck", unique per document.

    Recursively split by k-means (k = `branching`) until a cluster holds <= `leaf_size`
    documents (or `max_depth` is reached, or k-means cannot split it, as with duplicate
    embeddings); the path of cluster numbers is the code. A leaf with several documents appends
    each one's position in the leaf as a final digit (which may exceed 9 only in those stopped
    leaves), so codes are unique, and no code is a prefix of another.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(doc_ids):
        raise ValueError(f"embeddings must be [{len(doc_ids)}, dim], got {vectors.shape}")
    if len(set(doc_ids)) != len(doc_ids):
        raise ValueError("doc_ids must be unique")
    codes: dict[str, str] = {}
    stack = [(np.arange(len(doc_ids)), [])]
    while stack:
        members, path = stack.pop()
        clusters = []
        if len(members) > leaf_size and len(path) < max_depth:
            k = min(branching, len(members))
            with warnings.catch_warnings():
                # Duplicate embeddings give fewer clusters than k: handled below (leaf).
                warnings.simplefilter("ignore", ConvergenceWarning)
                kmeans = KMeans(n_clusters=k, n_init=1, random_state=seed)
                labels = kmeans.fit_predict(vectors[members])
            clusters = [members[labels == c] for c in range(k) if (labels == c).any()]
        if len(clusters) > 1:
            stack.extend((group, [*path, c]) for c, group in enumerate(clusters))
        elif len(members) == 1 and path:
            codes[doc_ids[members[0]]] = "-".join(map(str, path))
        else:
            for position, member in enumerate(members):
                codes[doc_ids[member]] = "-".join(map(str, [*path, position]))
    return codes


class IdentifierIndex:
    """Identifiers of every passage in every view, and the reverse map (shared ids included).

    `doc_identifiers[view][doc_id]` is that passage's list of identifiers in the view.
    """

    def __init__(self, doc_identifiers: Mapping[str, Mapping[str, Sequence[str]]]):
        self.doc_identifiers = {
            view: {doc: [clean(i) for i in ids if clean(i)] for doc, ids in per_doc.items()}
            for view, per_doc in doc_identifiers.items()
        }
        self._docs: dict[str, dict[str, list[str]]] = {}
        self._idf_cache: dict[str, float] | None = None
        for view, per_doc in self.doc_identifiers.items():
            reverse = self._docs.setdefault(view, {})
            for doc_id, identifiers in per_doc.items():
                for identifier in identifiers:
                    docs = reverse.setdefault(identifier, [])
                    if doc_id not in docs:
                        docs.append(doc_id)

    @property
    def views(self) -> list[str]:
        return list(self.doc_identifiers)

    def identifiers(self, view: str, doc_id: str) -> list[str]:
        """The passage's identifiers in `view` (empty when it has none there)."""
        return self.doc_identifiers.get(view, {}).get(doc_id, [])

    def docs(self, view: str, identifier: str) -> list[str]:
        """Every passage carrying `identifier` in `view` (empty for an unknown identifier)."""
        return self._docs.get(view, {}).get(identifier, [])

    def targets(
        self, view: str, doc_id: str, query: str | None = None, limit: int = 2
    ) -> list[str]:
        """The identifiers of a passage that training teaches the model to generate.

        Every identifier, except in the n-gram view: there the `limit` n-grams whose words
        shared with `query` are rarest in the corpus (sum of IDF; ties: text order), the window
        a model that copies from the query would produce; without a query (an indexing example)
        the `limit` rarest n-grams of the passage, its most specific phrases.
        """
        identifiers = self.identifiers(view, doc_id)
        if view != NGRAM or not identifiers:
            return identifiers
        idf = self._idf()
        shared = {word_key(w) for w in query.split()} if query is not None else None

        def weight(gram: str) -> float:
            keys = {word_key(w) for w in gram.split()} - {""}
            if shared is not None:
                keys &= shared
            # Summed in sorted order: in set order the float sum of equal IDFs could round
            # differently per process (str hashes are salted), and so break ties, pick other
            # training examples and train another model.
            return sum(idf.get(k, 0.0) for k in sorted(keys))

        order = sorted(range(len(identifiers)), key=lambda i: (-weight(identifiers[i]), i))
        return [identifiers[i] for i in order[:limit]]

    def _idf(self) -> dict[str, float]:
        """Inverse document frequency of word keys over the passages' n-grams (cached)."""
        if self._idf_cache is None:
            per_doc = self.doc_identifiers.get(NGRAM, {})
            counts: dict[str, int] = {}
            for grams in per_doc.values():
                for key in {word_key(w) for g in grams for w in g.split()} - {""}:
                    counts[key] = counts.get(key, 0) + 1
            n = len(per_doc)
            self._idf_cache = {k: math.log((1 + n) / (1 + c)) for k, c in counts.items()}
        return self._idf_cache

    def view_identifiers(self, view: str) -> dict[str, list[str]]:
        """identifier -> passages, for one view."""
        return self._docs.get(view, {})

    def doc_ids(self) -> set[str]:
        return {doc for per_doc in self.doc_identifiers.values() for doc in per_doc}

    def to_dict(self) -> dict:
        return {"format_version": INDEX_FORMAT_VERSION, "views": self.doc_identifiers}

    @classmethod
    def from_dict(cls, data: Mapping) -> IdentifierIndex:
        if data.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"unsupported identifier index format {data.get('format_version')}")
        return cls(data["views"])

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> IdentifierIndex:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


def build_identifier_index(
    corpus: Corpus,
    params: IdentifierParams | None = None,
    embeddings: np.ndarray | None = None,
    doc_ids: Sequence[str] | None = None,
) -> IdentifierIndex:
    """Identifiers of `corpus` in `params.views`.

    The semantic view needs `embeddings` ([n_docs, dim], any encoder; the caller chooses) with
    their row order in `doc_ids` (default: the corpus order).
    """
    params = params or IdentifierParams()
    views: dict[str, dict[str, list[str]]] = {}
    for view in params.views:
        if view == TITLE:
            views[view] = title_identifiers(corpus, params.title_max_words)
        elif view == SPAN:
            views[view] = span_identifiers(corpus, params.span_words)
        elif view == TERMS:
            views[view] = tfidf_identifiers(corpus, params.terms_count)
        elif view == NGRAM:
            views[view] = ngram_identifiers(corpus, params.ngram_words, params.ngram_max_words)
        elif view == SEMANTIC_ID:
            if embeddings is None:
                raise ValueError("the semantic_id view needs document embeddings")
            ids = list(doc_ids) if doc_ids is not None else list(corpus)
            codes = semantic_ids(
                ids,
                embeddings,
                params.semantic_branching,
                params.semantic_leaf_size,
                params.semantic_max_depth,
                params.seed,
            )
            views[view] = {doc: [code] for doc, code in codes.items()}
    return IdentifierIndex(views)
