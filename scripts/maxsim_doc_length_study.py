"""How much of each document the maxsim predictor should read (`jepa.maxsim_doc_tokens`).

    .venv/bin/python scripts/maxsim_doc_length_study.py [--params params.yaml]
        [--dev-queries 300] [--cuts 128 256 512 1024]

The teacher reads each document cut at `teacher.max_doc_tokens` (128 in the CPU default), and
on SciFact nearly every abstract is longer than that. The student encodes each document alone,
at a cost linear in its length, so its compared token states can read further. Needs the
pipeline's `distill_jepa` outputs (a maxsim student) and `rank_lists`. For each cut it encodes
the token states of the candidates and of the stage's training pools (a pass only as deep as
the deepest compared layer), fits the IDF table on the indexed corpus at that cut, and reranks
BM25's top-K:

- with MaxSim at the deepest layer alone (no training);
- with a predictor trained as the stage trains it (its 600 teacher pairs, its parameters), the
  pooled vectors kept at the teacher's cut as in the stage.

on dev (`--dev-queries` training queries the distillation did not use; documents outside the
index are encoded here), where the cut is chosen, and on test (the stage's evaluation queries).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from statistics import fmean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import torch  # noqa: E402
from jepa_eval import (  # noqa: E402
    CandidateStates,
    StudentBench,
    dev_split,
    eval_split,
    split_ndcg,
)

from components.config import load_params  # noqa: E402
from components.models.prompts import PromptBuilder  # noqa: E402
from components.training.jepa_trainer import train_predictor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--dev-queries", type=int, default=300)
    parser.add_argument("--cuts", type=int, nargs="+", default=[128, 256, 512, 1024])
    args = parser.parse_args()
    params = load_params(args.params)
    bench = StudentBench.load(params)
    retriever = bench.retriever
    if not retriever.token_layers:
        raise SystemExit("the stage's student is not a maxsim predictor (jepa.predictor_form)")
    deepest = max(retriever.token_layers)
    data = bench.stage_training_data()
    splits = {"dev": dev_split(bench, data, args.dev_queries), "test": eval_split(bench)}
    candidates = {d for split in splits.values() for c in split.cands.values() for d in c}
    pooled = CandidateStates(bench, candidates)  # pooled vectors: the teacher's cut, as the stage
    queries = {q: retriever.encode_query(bench.queries[q])
               for split in splits.values() for q in split.qids}  # fmt: skip
    train_texts = [bench.queries[q] for q in data.query_ids]
    docs = sorted(candidates | set(data.doc_ids))
    index_texts = [bench.texts[d] for d in retriever.doc_ids]
    token_ids = [retriever.tokenizer(bench.texts[d], add_special_tokens=False)["input_ids"]
               for d in docs]  # fmt: skip
    lengths = {d: len(ids) for d, ids in zip(docs, token_ids, strict=True)}
    column = 2 * retriever.token_layers.index(deepest)  # MaxSim at the deepest layer

    def ndcg(split: str, scores) -> float:
        rerank = splits[split]
        return fmean(split_ndcg(rerank, {q: scores(q) for q in rerank.qids}).values())

    def study(cut: int) -> dict[str, dict[str, float]]:
        """The two rows of one cut: MaxSim alone, and a predictor trained at that cut."""
        started = time.perf_counter()
        # The stage's student, reading `cut` tokens of each document for its token states.
        retriever.maxsim_doc_tokens = cut
        retriever.token_prompts = PromptBuilder(retriever.template, retriever.tokenizer, cut)
        retriever.fit_idf(index_texts)
        tokens = retriever.document_token_states([bench.texts[d] for d in docs])
        row = {d: i for i, d in enumerate(docs)}
        encode_s = time.perf_counter() - started
        features = {}
        for split in splits.values():
            for q in split.qids:
                embs, _ = pooled.get(split.cands[q])
                doc_tokens = tokens.select([row[d] for d in split.cands[q]])
                features[q] = retriever.features(queries[q].tokens, queries[q].pooled, embs,
                                                 doc_tokens)  # fmt: skip
        train_features = retriever.pair_features(
            train_texts, data.doc_embs, tokens.select([row[d] for d in data.doc_ids]),
            data.pairs.query_index, data.pairs.doc_index,
        )  # fmt: skip
        predictor = bench.fresh_predictor()  # copies the IDF table fitted above
        train_predictor(predictor, retriever.scorer, replace(data, features=train_features),
                        bench.train_params())  # fmt: skip
        predictor.eval()

        def trained(q: str) -> torch.Tensor:
            with torch.no_grad():
                state = queries[q].state.reshape(1, -1)
                return retriever.scorer.score(predictor(state, torch.zeros(1), features[q]))

        whole = sum(lengths[d] <= cut for d in candidates) / len(candidates)
        out = {
            f"MaxSim L{deepest} alone, {cut} tokens":
                {s: ndcg(s, lambda q: features[q][:, column]) for s in splits},
            f"maxsim predictor, {cut} tokens ({whole:.0%} of candidates whole)":
                {s: ndcg(s, trained) for s in splits},
        }  # fmt: skip
        seconds = time.perf_counter() - started
        print(f"cut {cut}: {len(docs)} documents to layer {deepest} in {encode_s:.0f}s, "
              f"{seconds:.0f}s with training", flush=True)  # fmt: skip
        return out

    bm25 = {s: ndcg(s, lambda q, s=s: -torch.arange(len(splits[s].cands[q]),
                                                     dtype=torch.float32))
            for s in splits}  # fmt: skip
    rows = {"BM25": bm25}
    for cut in args.cuts:
        rows.update(study(cut))

    dev = splits["dev"]
    print(f"\nrerank BM25 top-{bench.depth}; dev: {len(dev.qids)} held-out training queries "
          f"({len(pooled.missing)} documents encoded here); test: {len(bench.qids)} evaluation "
          f"queries\n")  # fmt: skip
    print("| scoring | dev nDCG@10 | test nDCG@10 |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {values['dev']:.4f} | {values['test']:.4f} |")


if __name__ == "__main__":
    main()
