"""The training-frequency prior: the bar a model must clear where the corpus is a label set.

When every query is judged against the same few documents (ESConv's eight support strategies),
a model can score well without reading the query at all, by ranking the labels by how often
they were right in training. That ranking is this baseline: one list for every query, each
document scored by its number of relevant judgements among the training queries.
A teacher or student that is not above it has learnt the label distribution, not the task.

It is fitted on the training queries the models train on (`QuerySplits.train`), never on the
held-out dev queries or the test split, and it ranks only documents seen in training: the
others would all tie at zero.
"""

from __future__ import annotations

from collections import Counter

from components.runs import Run

PRIOR = "prior"  # its run name in reports (components.evaluation.report.SYSTEM_NAMES)


def label_frequencies(train_qrels: dict[str, dict[str, int]]) -> Counter:
    """document id -> number of training queries that judge it relevant (grade > 0)."""
    counts: Counter = Counter()
    for judged in train_qrels.values():
        counts.update(doc for doc, grade in judged.items() if grade > 0)
    return counts


def prior_run(train_qrels: dict[str, dict[str, int]], query_ids: list[str]) -> Run:
    """The same ranking for every query in `query_ids`: most frequent training label first."""
    counts = label_frequencies(train_qrels)
    if not counts:
        raise ValueError("the training judgements hold no relevant document to count")
    ranking = [(doc, float(n)) for doc, n in counts.most_common()]
    return {qid: list(ranking) for qid in query_ids}
