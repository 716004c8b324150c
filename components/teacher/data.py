"""Training groups for the teacher: one positive + n hard negatives from a BM25 run.

Negatives are sampled from the top `depth` BM25 hits that the qrels do not mark relevant: close
enough to the query to be hard, which is what a reranker must learn to separate. Sampling is
seeded per query (not by iteration order), so adding or removing one query leaves every other
group unchanged; the visiting order is a seeded permutation per epoch, so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Corpus = Mapping[str, Mapping[str, str]]  # docid -> {"title": ..., "text": ...}
Qrels = Mapping[str, Mapping[str, int]]  # qid -> {docid: grade}
Run = Mapping[str, Sequence[tuple[str, float]]]  # qid -> [(docid, score)], as components.runs


@dataclass(frozen=True)
class TrainingGroup:
    """One query with its documents; the positive is always at index 0."""

    qid: str
    query: str
    docids: tuple[str, ...]
    texts: tuple[str, ...]

    def pairs(self) -> list[tuple[str, str]]:
        """(document, query) pairs in group order, as the reranker consumes them."""
        return [(text, self.query) for text in self.texts]


def document_text(doc: Mapping[str, str]) -> str:
    """Title and body as one string (the title often carries the key terms)."""
    title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
    return f"{title}. {text}" if title and text else title or text


def build_groups(
    corpus: Corpus,
    queries: Mapping[str, str],
    qrels: Qrels,
    run: Run,
    n_negatives: int = 5,
    depth: int = 30,
    seed: int = 0,
    min_grade: int = 1,
) -> list[TrainingGroup]:
    """One group per (query, relevant document): [positive, n negatives].

    Negatives: `n_negatives` distinct docs sampled from the query's top `depth` BM25 hits with a
    grade below `min_grade`. When the run has too few, the rest are random corpus documents
    (easy negatives, so the group size stays fixed). Queries without a relevant document in the
    corpus, or without text, are skipped. Order: by qid, then positive docid.
    """
    corpus_ids = sorted(corpus)
    groups = []
    for qid in sorted(qrels):
        if qid not in queries:
            continue
        relevant = {d for d, grade in qrels[qid].items() if grade >= min_grade}
        positives = sorted(d for d in relevant if d in corpus)
        if not positives:
            continue
        rng = random.Random(f"{seed}:{qid}")  # str seeds hash deterministically (not hash())
        hard = [d for d, _ in list(run.get(qid, ()))[:depth] if d not in relevant and d in corpus]
        hard = list(dict.fromkeys(hard))  # a run may repeat a docid; keep first occurrence
        for positive in positives:
            negatives = rng.sample(hard, min(n_negatives, len(hard)))
            if len(negatives) < n_negatives:
                negatives += _random_negatives(
                    rng, corpus_ids, relevant | set(negatives), n_negatives - len(negatives)
                )
            docids = (positive, *negatives)
            groups.append(
                TrainingGroup(
                    qid=qid,
                    query=queries[qid],
                    docids=docids,
                    texts=tuple(document_text(corpus[d]) for d in docids),
                )
            )
    return groups


def _random_negatives(
    rng: random.Random, corpus_ids: list[str], exclude: set[str], count: int
) -> list[str]:
    available = len(corpus_ids) - len(exclude & set(corpus_ids))
    if available < count:
        raise ValueError(f"corpus too small: need {count} more negatives, {available} available")
    chosen: list[str] = []
    while len(chosen) < count:
        candidate = corpus_ids[rng.randrange(len(corpus_ids))]
        if candidate not in exclude and candidate not in chosen:
            chosen.append(candidate)
    return chosen


def epoch_order(n_groups: int, epoch: int, seed: int) -> list[int]:
    """The group visiting order for one epoch: a permutation fixed by (seed, epoch)."""
    order = list(range(n_groups))
    random.Random(f"order:{seed}:{epoch}").shuffle(order)
    return order


def global_batches(n_groups: int, epoch: int, seed: int, global_batch: int) -> list[list[int]]:
    """The epoch's optimizer-step batches (group indices); the last partial batch is dropped so
    every step has the same global batch size."""
    order = epoch_order(n_groups, epoch, seed)
    steps = n_groups // global_batch
    return [order[s * global_batch : (s + 1) * global_batch] for s in range(steps)]


TOY_TOPICS = (
    "apple",
    "river",
    "violin",
    "castle",
    "tiger",
    "rocket",
    "garden",
    "winter",
    "coffee",
    "island",
    "doctor",
    "engine",
    "forest",
    "mirror",
    "planet",
    "silver",
)


def toy_retrieval_data(n_topics: int = 8, seed: int = 0, offset: int = 0):
    """A tiny synthetic collection for plumbing checks: (corpus, queries, qrels, run).

    Query `q{i}` asks about one topic word. Its relevant document `d{i}` talks about the word;
    each topic also has a distractor `n{i}` ("Nothing in this note concerns ..."). The "BM25" run
    ranks every distractor above every relevant document (seeded shuffle within each part), so
    hard negatives are distractors: a model can learn the difference from a few steps, which is
    what the behavioural tests need. `offset` picks topics further down the list (held-out data).
    """
    if n_topics < 2 or offset + n_topics > len(TOY_TOPICS):
        raise ValueError(f"need 2 <= n_topics and offset + n_topics <= {len(TOY_TOPICS)}")
    topics = TOY_TOPICS[offset : offset + n_topics]
    corpus = {}
    for i, word in enumerate(topics):
        corpus[f"d{i}"] = {
            "title": "",
            "text": f"This text is about the {word}. The {word} is here.",
        }
        corpus[f"n{i}"] = {"title": "", "text": f"Nothing in this note concerns any {word} at all."}
    queries = {f"q{i}": f"Tell me about the {word}." for i, word in enumerate(topics)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n_topics)}
    rng = random.Random(seed)
    run = {}
    for qid in queries:
        distractors = [d for d in corpus if d.startswith("n")]
        relevant = [d for d in corpus if d.startswith("d")]
        rng.shuffle(distractors)
        rng.shuffle(relevant)
        ranked = distractors + relevant
        run[qid] = [(d, float(len(ranked) - r)) for r, d in enumerate(ranked)]
    return corpus, queries, qrels, run
