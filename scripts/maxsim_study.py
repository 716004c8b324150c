"""What the maxsim predictor's features are worth, on held-out training queries and on test.

    .venv/bin/python scripts/maxsim_study.py [--params params.yaml] [--dev-queries 60]

Needs the pipeline's `distill_jepa` outputs (a maxsim student: its token-state index and IDF
table) and `rank_lists`. Reranks BM25's top-K with predictors trained on the stage's teacher
pairs, each on:

- dev: `--dev-queries` training queries that the distillation did not use (seeded sample;
  their BM25 top-K from the train run; documents outside the index are encoded here), where
  choices can be made without looking at test;
- test: the stage's evaluation queries (BM25 top-K, as `Rabtriever (rerank@K)`).

Rows: each single feature with no training; the maxsim predictor on every feature (the stage's
setting), with the query's pooled vector read through the document prompt instead (one more
LLM pass per query), and on subsets of them (the other columns' weights held at zero); and a
supervised ceiling: logistic regression on the dev queries' relevance labels over the same
features, scored on test. The last shows what any linear use of these features can reach.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from statistics import fmean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from jepa_eval import (  # noqa: E402
    CandidateStates,
    StudentBench,
    dev_split,
    eval_split,
    split_ndcg,
    stage_features,
)
from sklearn.linear_model import LogisticRegression  # noqa: E402

from components.config import load_params  # noqa: E402
from components.training.jepa_trainer import train_predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--dev-queries", type=int, default=60)
    args = parser.parse_args()
    params = load_params(args.params)
    bench = StudentBench.load(params)
    retriever, depth = bench.retriever, bench.depth
    if not retriever.token_layers:
        raise SystemExit("the stage's student is not a maxsim predictor (jepa.predictor_form)")
    layers = retriever.token_layers
    names = [f"{kind} L{layer}" for layer in layers for kind in ("MaxSim", "MaxSim-idf")]
    names.append("pooled cosine")
    data = bench.stage_training_data()

    # Dev: held-out training queries, their BM25 top-K; encode the documents not in the index.
    dev, test = dev_split(bench, data, args.dev_queries), eval_split(bench)
    states = CandidateStates(bench, {d for c in dev.cands.values() for d in c})
    missing = states.missing

    def query_features(split):
        """qid -> (QueryEncoding, features [K, k]) for each query's candidates, and the same
        features with the pooled cosine taken from the query read through the document prompt
        (the alternative to the stage's query-prompt segment; one more full pass per query)."""
        out, alternative = stage_features(bench, states, split), {}
        as_documents = retriever.encode_documents([bench.queries[q] for q in split.qids])
        for q, pooled in zip(split.qids, as_documents, strict=True):
            encoded, features = out[q]
            changed = features.clone()
            changed[:, -1] = torch.cosine_similarity(pooled[None], states.get(split.cands[q])[0])
            alternative[q] = (encoded, changed)
        return out, alternative

    dev_features, dev_alternative = query_features(dev)
    test_features, test_alternative = query_features(test)
    sets = {"dev": (dev, dev_features), "test": (test, test_features)}
    alternative_sets = {"dev": dev_alternative, "test": test_alternative}

    def ndcg(split, score_fn, features: dict | None = None) -> float:
        rerank, feats = sets[split]
        feats = feats if features is None else features[split]
        return fmean(split_ndcg(rerank, {q: score_fn(*feats[q]) for q in rerank.qids}).values())

    rows = {"BM25": {s: ndcg(s, lambda e, f: -torch.arange(len(f), dtype=torch.float32))
                     for s in sets}}  # fmt: skip
    for column, name in enumerate(names):
        rows[f"{name} alone (no training)"] = {s: ndcg(s, lambda e, f, c=column: f[:, c])
                                               for s in sets}  # fmt: skip

    def trained(columns: list[int], features: torch.Tensor | None = None,
                eval_features: dict | None = None) -> dict[str, float]:  # fmt: skip
        """Train on `features` (default: the stage's) with only `columns` live; score with
        `eval_features` (split -> qid -> (QueryEncoding, [K, k]); default: the stage's)."""
        predictor = bench.fresh_predictor()
        subset = (data.features if features is None else features).clone()
        subset[:, [c for c in range(len(names)) if c not in columns]] = 0.0
        train_predictor(predictor, retriever.scorer, replace(data, features=subset),
                        bench.train_params())  # fmt: skip
        predictor.eval()
        keep = torch.zeros(len(names))
        keep[columns] = 1.0

        def score(encoded, features):
            # Dropped columns sit at their training mean (0 after standardisation).
            features = features * keep + predictor.feature_mean * (1 - keep)
            state = encoded.state.reshape(1, -1)
            with torch.no_grad():
                return retriever.scorer.score(predictor(state, torch.zeros(1), features))

        return {s: ndcg(s, score, eval_features) for s in sets}

    every = list(range(len(names)))
    rows["maxsim predictor, every feature (the stage's setting)"] = trained(every)
    # The pooled cosine from the query read as a document instead of its query-prompt segment.
    train_texts = [bench.queries[q] for q in data.query_ids]
    as_documents = retriever.encode_documents(train_texts)[data.pairs.query_index]
    features = data.features.clone()
    features[:, -1] = torch.cosine_similarity(as_documents, data.doc_embs[data.pairs.doc_index])
    rows["maxsim predictor, pooled cosine from the query as a document (+1 LLM pass)"] = trained(
        every, features, alternative_sets
    )
    rows["maxsim predictor, without the pooled cosine"] = trained(every[:-1])
    for i, layer in enumerate(layers):
        rows[f"maxsim predictor, layer {layer} MaxSims only"] = trained([2 * i, 2 * i + 1])
        rows[f"maxsim predictor, without IDF weighting at layer {layer}"] = trained(
            [c for c in every if c != 2 * i + 1]
        )

    # Supervised ceiling: relevance labels of the dev queries, a linear model on the features.
    x, y = [], []
    for q in dev.qids:
        x.append(dev_features[q][1].numpy())
        y += [int(dev.qrels.get(q, {}).get(d, 0) > 0) for d in dev.cands[q]]
    model = LogisticRegression(C=1.0, max_iter=1000).fit(np.concatenate(x), y)
    rows["supervised ceiling: logistic regression on dev labels"] = {
        "dev": float("nan"),
        "test": ndcg("test", lambda e, f: torch.as_tensor(model.decision_function(f.numpy()))),
    }

    print(
        f"rerank BM25 top-{depth}; dev: {len(dev.qids)} held-out training queries "
        f"({len(missing)} documents encoded here); test: {len(bench.qids)} evaluation queries\n"
    )
    print("| scoring | dev nDCG@10 | test nDCG@10 |\n|---|---|---|")
    for name, values in rows.items():
        cells = ["" if np.isnan(values[s]) else f"{values[s]:.4f}" for s in ("dev", "test")]
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
