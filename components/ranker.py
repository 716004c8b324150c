"""The one interface every system answers: index documents, rerank candidates, search a corpus.

The teacher (`LLMReranker`), Rabtriever, the bi-encoder (`BiEncoder`) and DGR
(`GenerativeRetriever`) implement `Ranker`, batch-shaped like the rest of the pipeline: queries
are {qid: text} and every answer is a `components.runs.Run`, {qid: [(docid, score), ...]} best
first. Serving (`components.serving`) and promotion treat the systems alike through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from components.runs import Run


class Ranker(Protocol):
    """What serving and promotion need of a system.

    - `index(corpus)`: doc id -> text; what the system needs to answer with these ids. The
      teacher keeps the texts; Rabtriever and the bi-encoder encode them (replacing any index
      they held); DGR's identifiers are built at training time, so it only checks the ids.
    - `rerank(queries, candidates)`: one ranking per query of `queries`, of all of its
      `candidates[qid]` (doc ids), best first with ties broken by doc id.
    - `search(queries, k)`: the top `k` documents of the indexed corpus per query. The teacher
      scores (document, query) pairs and cannot search a corpus: it raises NotImplementedError.
    """

    # True when `rerank` reads the candidates' texts handed to `index` (the teacher), so it can
    # judge any corpus's documents given their texts; False when it answers from what it
    # indexed or learned by id.
    reads_text: bool

    def index(self, corpus: Mapping[str, str]) -> None: ...

    def rerank(self, queries: Mapping[str, str],
               candidates: Mapping[str, Sequence[str]]) -> Run: ...  # fmt: skip

    def search(self, queries: Mapping[str, str], k: int) -> Run: ...


def ranked(scored: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """(docid, score) pairs best first, ties broken by doc id: every `rerank`'s order."""
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))
