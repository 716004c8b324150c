"""Rankers with a known quality, logged as real MLflow pyfunc models for the promotion tests.

Each follows the `candidates` interface of components.promotion (query + candidate ids ->
doc_ids, scores) and puts each query's relevant documents at a fixed rank among its
candidates, so which of two versions is better is known in advance.
"""

import mlflow
import pandas as pd


class FixedRankRanker(mlflow.pyfunc.PythonModel):
    def __init__(self, relevant: dict[str, set[str]], rank_of_relevant: int):
        self.relevant = relevant  # query text -> relevant doc ids
        self.rank = rank_of_relevant

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        records = []
        for query, candidates in zip(model_input["query"], model_input["candidates"],
                                     strict=True):
            others = [d for d in candidates if d not in self.relevant[query]]
            hits = [d for d in candidates if d in self.relevant[query]]
            ranked = others[: self.rank - 1] + hits + others[self.rank - 1:]
            records.append({"query": query, "doc_ids": ranked,
                            "scores": [float(len(ranked) - i) for i in range(len(ranked))]})
        return pd.DataFrame(records)
