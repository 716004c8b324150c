"""Which decoder layers should the maxsim predictor compare? Every candidate layer, dev and test.

    .venv/bin/python scripts/maxsim_layer_study.py [--layers 1 2 3 4 5 6 8 10 12]
                                                  [--params params.yaml] [--dev-queries 60]

Needs the pipeline's `distill_jepa` outputs (a maxsim student) and `rank_lists`. The stage
compares token states at `jepa.maxsim_layers` ([0, 4]); this asks whether another layer, or a
third one, orders candidates better. It encodes the token states of every query and candidate
document at each of `--layers` once (one pass to the deepest), then reranks BM25's top-K of:

- dev: `--dev-queries` training queries that the distillation did not use (as in
  `maxsim_study.py`), where a layer can be chosen without looking at test;
- test: the stage's evaluation queries (as `Rabtriever (rerank@K)`).

Rows: MaxSim and IDF-weighted MaxSim of each layer alone (no training); a fresh maxsim
predictor trained on the stage's teacher pairs (same parameters as the stage) with the
stage's layer-0 and pooled-cosine features and layer L in place of layer 4; and the same with
layer L added to layers 0 and 4 (a second stored layer, twice the index).
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
    stage_features,
)

from components.config import load_params  # noqa: E402
from components.models.late_interaction import maxsim_features  # noqa: E402
from components.models.rabtriever import Predictor, document_token_states  # noqa: E402
from components.training.jepa_trainer import train_predictor  # noqa: E402

STAGE_LAYER = 4  # the stored layer of the CPU default (jepa.maxsim_layers: [0, 4])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--layers", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6, 8, 10, 12])
    parser.add_argument("--dev-queries", type=int, default=60)
    args = parser.parse_args()
    layers = sorted(set(args.layers))
    if min(layers) < 1:
        raise SystemExit("--layers: decoder layers >= 1 (layer 0 is in every trained row)")
    params = load_params(args.params)
    bench = StudentBench.load(params)
    retriever, cfg = bench.retriever, params.jepa
    if not retriever.token_layers:
        raise SystemExit("the stage's student is not a maxsim predictor (jepa.predictor_form)")
    data = bench.stage_training_data()
    dev, test = dev_split(bench, data, args.dev_queries), eval_split(bench)
    splits = {"dev": dev, "test": test}
    started = time.perf_counter()

    def token_states(texts: list[str]):
        return document_token_states(
            retriever.model, retriever.tokenizer, retriever.prompts, texts, layers,
            cfg.encode_batch_size, retriever.bf16,
        )  # fmt: skip

    # Every query and document once, read through the document prompt as the stage reads them.
    qids = sorted(set(data.query_ids) | set(dev.qids) | set(test.qids))
    docs = sorted(set(data.doc_ids) | {d for s in splits.values() for c in s.cands.values()
                                       for d in c})  # fmt: skip
    query_row, doc_row = {q: i for i, q in enumerate(qids)}, {d: i for i, d in enumerate(docs)}
    query_tokens = token_states([bench.queries[q] for q in qids])
    doc_tokens = token_states([bench.texts[d] for d in docs])
    encoded_s = time.perf_counter() - started
    embedding = retriever.model.get_input_embeddings()
    no_pooled = torch.zeros(retriever.model.config.hidden_size)

    def layer_features(qid: str, cands: list[str]) -> torch.Tensor:
        """[n, 2 * len(layers)]: MaxSim, MaxSim^idf per layer (the pooled cosine left out)."""
        features = maxsim_features(
            query_tokens.select([query_row[qid]]), doc_tokens.select([doc_row[d] for d in cands]),
            no_pooled, no_pooled.expand(len(cands), -1), retriever.predictor.idf, layers,
            embedding,
        )  # fmt: skip
        return features[:, :-1]

    # The stage's five features (layer 0, layer 4, pooled cosine) of the dev and test candidates.
    states = CandidateStates(bench, {d for c in dev.cands.values() for d in c})
    stage = {name: stage_features(bench, states, split) for name, split in splits.items()}
    probe_features = {name: {q: layer_features(q, split.cands[q]) for q in split.qids}
                      for name, split in splits.items()}  # fmt: skip
    pairs = zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True)
    train_probe = torch.cat([layer_features(data.query_ids[q], [data.doc_ids[d]])
                             for q, d in pairs])  # fmt: skip

    def ndcg(name: str, scores: dict[str, torch.Tensor]) -> float:
        return fmean(split_ndcg(splits[name], scores).values())

    def trained(predictor_layers: list[int], columns: list[int]) -> dict[str, float]:
        """A fresh maxsim predictor on [layer 0's two, `columns` of the probe, pooled cosine]."""

        def assemble(five: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
            """Layer 0's two columns and the pooled cosine of the stage's five, the probe's
            `columns` between them."""
            return torch.cat([five[:, :2], probe[:, columns], five[:, -1:]], dim=1)

        torch.manual_seed(params.seed)
        predictor = Predictor(
            retriever.model.config.hidden_size,
            form="maxsim",
            layers=predictor_layers,
            vocab_size=retriever.predictor.vocab_size,
        )
        predictor.idf.copy_(retriever.predictor.idf)
        features = assemble(data.features, train_probe)
        train_predictor(predictor, retriever.scorer, replace(data, features=features),
                        bench.train_params())  # fmt: skip
        predictor.eval()
        out = {}
        for name, split in splits.items():
            scores = {}
            for q in split.qids:
                encoded, five = stage[name][q]
                with torch.no_grad():
                    prediction = predictor(encoded.state.reshape(1, -1), torch.zeros(1),
                                           assemble(five, probe_features[name][q]))  # fmt: skip
                    scores[q] = retriever.scorer.score(prediction)
            out[name] = ndcg(name, scores)
        return out

    rank = {name: {q: -torch.arange(len(s.cands[q]), dtype=torch.float32) for q in s.qids}
            for name, s in splits.items()}  # fmt: skip
    rows = {"BM25": {name: ndcg(name, rank[name]) for name in splits}}
    for i, layer in enumerate(layers):
        for j, kind in enumerate(("MaxSim", "MaxSim-idf")):
            rows[f"{kind} L{layer} alone (no training)"] = {
                name: ndcg(name, {q: probe_features[name][q][:, 2 * i + j] for q in s.qids})
                for name, s in splits.items()}  # fmt: skip
    for i, layer in enumerate(layers):
        rows[f"maxsim predictor, layers 0 + {layer}"] = trained([0, layer], [2 * i, 2 * i + 1])
    if STAGE_LAYER in layers:
        k = layers.index(STAGE_LAYER)
        for i, layer in enumerate(layers):
            if layer != STAGE_LAYER:
                rows[f"maxsim predictor, layers 0 + {STAGE_LAYER} + {layer}"] = trained(
                    [0, STAGE_LAYER, layer], [2 * k, 2 * k + 1, 2 * i, 2 * i + 1]
                )

    print(
        f"{len(qids)} queries and {len(docs)} documents encoded to layer {max(layers)} in "
        f"{encoded_s:.0f}s; {len(dev.qids)} dev and {len(test.qids)} test queries, BM25 top "
        f"{bench.depth}; {time.perf_counter() - started:.0f}s in all\n"
    )
    print("| scoring | dev nDCG@10 | test nDCG@10 |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {values['dev']:.4f} | {values['test']:.4f} |")


if __name__ == "__main__":
    main()
