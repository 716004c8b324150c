"""What the frozen teacher's states know about relevance, with no predictor at all.

    .venv/bin/python scripts/probe_frozen_features.py [--layers 4 10 20 30] [--params params.yaml]

Reranks BM25's top-`rank_lists.depth` of the evaluation queries (as `Rabtriever (rerank@K)`
does) by zero-shot similarities of the trained teacher's states, each text encoded alone:

- single vector: cosine between the query and the document, each mean-pooled over its own
  tokens in the document prompt (the pooling of Rabtriever's document index, applied to the
  query too);
- multi-vector: ColBERT's MaxSim over every token state of the query and of the document
  (each query token's best cosine in the document, averaged), at several decoder layers.

Reports nDCG@10 (pytrec_eval) of each, beside BM25 and a random order of the same candidates.
Needs the pipeline's `distill_jepa` outputs (teacher and document index). Token states are not
stored: the multi-vector rows encode every candidate again (~6 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jepa_eval import StudentBench  # noqa: E402

from components.config import load_params  # noqa: E402
from components.evaluation.metrics import mean_metrics, per_query_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--layers", nargs="+", type=int, default=[4, 10, 20, 30],
                        help="decoder layers whose token states MaxSim compares (0 = embeddings)")
    args = parser.parse_args()
    bench = StudentBench.load(load_params(args.params))
    retriever, depth = bench.retriever, bench.depth
    prompts, tokenizer = retriever.prompts, retriever.tokenizer
    prefix = len(tokenizer(prompts.chat_prefix, add_special_tokens=False)["input_ids"])
    row = {d: i for i, d in enumerate(retriever.doc_ids)}
    candidates = {q: [d for d, _ in bench.bm25.get(q, [])[:depth] if d in row]
                  for q in bench.qids}

    def ndcg(run) -> float:
        return mean_metrics(per_query_metrics(run, bench.qrels, ["ndcg_cut_10"], bench.qids))[
            "ndcg_cut_10"]

    rows = {"BM25": ndcg({q: [(d, -i) for i, d in enumerate(c)] for q, c in candidates.items()})}
    rng = random.Random(0)
    rows["random order of the same candidates (mean of 20)"] = sum(
        ndcg({q: [(d, rng.random()) for d in c] for q, c in candidates.items()})
        for _ in range(20)) / 20

    queries = retriever.encode_documents([bench.queries[q] for q in bench.qids])
    docs = retriever.doc_embeddings
    rows["single vector: cosine of mean-pooled states"] = ndcg({
        q: [(d, float(F.cosine_similarity(queries[i], docs[row[d]], dim=0)))
            for d in candidates[q]]
        for i, q in enumerate(bench.qids)})

    @torch.inference_mode()
    def token_states(text: str) -> dict[int, torch.Tensor]:
        """Unit-norm states of the text's own tokens (after the chat prefix), per layer."""
        ids = tokenizer(prompts.build_document_prompt(text), add_special_tokens=False,
                        return_tensors="pt")["input_ids"]
        hidden = retriever.model(input_ids=ids, output_hidden_states=True).hidden_states
        return {layer: F.normalize(hidden[layer][0, prefix:].float(), dim=-1)
                for layer in args.layers}

    started, doc_states = time.perf_counter(), {}
    runs = {layer: {} for layer in args.layers}
    for q in bench.qids:
        query = token_states(bench.queries[q])
        for d in candidates[q]:
            if d not in doc_states:
                doc_states[d] = token_states(bench.texts[d])
        for layer in args.layers:
            runs[layer][q] = [(d, float((query[layer] @ doc_states[d][layer].T).max(1).values
                                        .mean())) for d in candidates[q]]
    for layer in args.layers:
        rows[f"multi-vector: MaxSim of token states, layer {layer}"] = ndcg(runs[layer])
    print(f"{len(bench.qids)} queries, BM25 top {depth}, "
          f"{len(doc_states)} documents re-encoded in {time.perf_counter() - started:.0f}s\n")
    print("| scoring (no training) | nDCG@10 |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
