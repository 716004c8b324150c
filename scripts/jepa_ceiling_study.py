"""Where the maxsim student's ranking stops, and whether another loss, a trained token
projection or a lexical score moves it. Dev: held-out training queries; test: the stage's.

    .venv/bin/python scripts/jepa_ceiling_study.py [--params params.yaml] [--dev-queries 60]
        [--epochs 30] [--rank 32]

Needs the pipeline's `distill_jepa` outputs (a maxsim student) and `rank_lists`. Reranks
BM25's top-K. Rows:

- BM25 (the candidates' own order) and the stage's trained predictor;
- least squares of the teacher's scores on the five features, centred within each training
  query: the closest any linear read-out of these features fits the teacher's order;
- the stage's trainer with the pair's BM25 score (Lucene, from the BM25 runs) as a sixth
  feature;
- a trained low-rank correction of the layer-4 token states before the two layer-4 MaxSims,
  x -> x + B A x (rank `--rank`, B initialised to zero, so training starts from the stage's
  features), trained together with the predictor's weights (from the stage's predictor) by
  each of three losses: the JEPA loss (smooth L1), a reverse KL on the two-way answer
  distribution (p(Yes) against p(No)), and a listwise KL to the teacher's scores over each
  query's pool; and, as the control, the same three losses training the predictor's weights
  alone. These rows see every pair of the pools each epoch (no on-policy sampling), four
  queries a step.

The test column's p is a paired t-test against BM25 on the same queries.
"""

from __future__ import annotations

import argparse
import copy
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
import torch.nn.functional as F  # noqa: E402
from jepa_eval import (  # noqa: E402
    CandidateStates,
    StudentBench,
    dev_split,
    eval_split,
    split_ndcg,
)
from scipy.stats import ttest_rel  # noqa: E402
from torch import nn  # noqa: E402

from components.config import load_params  # noqa: E402
from components.losses.jepa import jepa_loss  # noqa: E402
from components.losses.listwise_kl import listwise_kl  # noqa: E402
from components.models.late_interaction import TokenStates  # noqa: E402
from components.models.rabtriever import Predictor, document_token_states  # noqa: E402
from components.runs import read_trec_run  # noqa: E402
from components.training.jepa_trainer import train_predictor  # noqa: E402

LOSSES = ("jepa", "answer_rkl", "listwise_kl")


class LowRankCorrection(nn.Module):
    """unit(x + B A x): starts as the identity (B = 0), so the features start as the stage's."""

    def __init__(self, hidden: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)
        nn.init.normal_(self.down.weight, std=hidden**-0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.up(self.down(x)), dim=-1)


def layer_maxsims(
    correct: nn.Module, query: torch.Tensor, weights: torch.Tensor, docs: TokenStates, layer: int
) -> torch.Tensor:
    """[n, 2] MaxSim and IDF-weighted MaxSim of one query's token states [|q|, H] against the
    documents' at `layer`, after `correct` (as `late_interaction.maxsim_features` computes
    them, with the correction applied to both sides)."""
    q = correct(query)
    d = correct(docs.states[layer].float())
    sim = torch.einsum("qh,nth->nqt", q, d).masked_fill(~docs.mask[:, None, :], -2.0)
    best = sim.max(-1).values
    return torch.stack([best.mean(-1), best @ weights], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--dev-queries", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    params = load_params(args.params)
    bench = StudentBench.load(params)
    retriever, cfg = bench.retriever, params.jepa
    if retriever.token_layers != [0, 4]:
        raise SystemExit("needs the stage's maxsim student with layers [0, 4]")
    layer, stage = 4, retriever.predictor
    data, pool_tokens = bench.stage_training_pools()
    dev, test = dev_split(bench, data, args.dev_queries), eval_split(bench)
    splits = {"dev": dev, "test": test}
    states = CandidateStates(bench, {d for c in dev.cands.values() for d in c})

    def query_pack(tokens: TokenStates, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states [|q|, H], normalised IDF weights [|q|]) of one query."""
        keep = tokens.mask[row]
        weights = stage.idf[tokens.token_ids[row, keep]].clamp(min=0)
        return tokens.states[layer][row, keep].float(), weights / weights.sum().clamp(min=1e-9)

    # Per split and query: answer state, stage features [K, 5], token states of query and docs.
    # `encode_query` already reads the query as a document for its token states.
    encoded = {}
    for name, split in splits.items():
        for q in split.qids:
            enc = retriever.encode_query(bench.queries[q])
            embs, doc_tokens = states.get(split.cands[q])
            feats = retriever.features(enc.tokens, enc.pooled, embs, doc_tokens)
            encoded[name, q] = (enc.state, feats, query_pack(enc.tokens, 0), doc_tokens)
    # The training queries' token states, as the stage's `pair_features` read them (the
    # training data keeps only the features computed from them).
    train_q_tokens = document_token_states(
        retriever.model, retriever.tokenizer, retriever.prompts,
        [bench.queries[q] for q in data.query_ids], [layer], 16, retriever.bf16)  # fmt: skip

    # BM25 score of every pair (training pools, dev and test candidates) from the BM25 runs.
    bm25 = {}
    for split_name in (params.data.train_split, params.data.test_split):
        run = read_trec_run(bench.layout.run_dir("bm25") / f"{split_name}.trec")[0]
        bm25.update({(q, d): s for q, hits in run.items() for d, s in hits})

    def evaluate(score_fn) -> dict[str, dict[str, float]]:
        """split -> qid -> nDCG@10 of score_fn(split, qid) over that query's candidates."""
        with torch.no_grad():
            return {
                name: split_ndcg(split, {q: score_fn(name, q) for q in split.qids})
                for name, split in splits.items()
            }

    rows: dict[str, dict[str, dict[str, float]]] = {}
    rows["BM25"] = evaluate(lambda s, q: -torch.arange(len(splits[s].cands[q]), dtype=torch.float))

    def read_out(predictor: Predictor, state: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return retriever.scorer.score(predictor(state.reshape(1, -1), None, feats))

    rows["the stage's predictor (JEPA, on-policy)"] = evaluate(
        lambda s, q: read_out(stage, *encoded[s, q][:2])
    )

    # Least squares of the teacher's scores on the features, centred within each query.
    groups = data.pairs.query_index.numpy()
    x, y = data.features.numpy().astype(np.float64), data.pairs.scores.numpy().astype(np.float64)
    for g in np.unique(groups):
        x[groups == g] -= x[groups == g].mean(0)
        y[groups == g] -= y[groups == g].mean()
    coef = torch.as_tensor(np.linalg.lstsq(x, y, rcond=None)[0], dtype=torch.float32)
    rows["least squares on the teacher's scores (no JEPA), five features"] = evaluate(
        lambda s, q: encoded[s, q][1] @ coef
    )

    # The stage's trainer with BM25's score as a sixth feature.
    def with_bm25(feats: torch.Tensor, pairs: list[tuple[str, str]]) -> torch.Tensor:
        column = torch.tensor([[bm25[pair]] for pair in pairs], dtype=feats.dtype)
        return torch.cat([feats, column], dim=1)

    train_pairs = [
        (data.query_ids[q], data.doc_ids[d])
        for q, d in zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True)
    ]
    # A five-feature predictor widened to six (its standardisation refitted by the trainer).
    predictor = bench.fresh_predictor()
    hidden = predictor.hidden_size
    predictor.feature_mean, predictor.feature_std = torch.zeros(6), torch.ones(6)
    predictor.features_out = nn.Linear(6, hidden)
    nn.init.zeros_(predictor.features_out.weight)
    nn.init.zeros_(predictor.features_out.bias)
    six = replace(data, features=with_bm25(data.features, train_pairs))
    train_predictor(predictor, retriever.scorer, six, bench.train_params())
    predictor.eval()

    def score_with_bm25(s: str, q: str) -> torch.Tensor:
        feats = with_bm25(encoded[s, q][1], [(q, d) for d in splits[s].cands[q]])
        return read_out(predictor, encoded[s, q][0], feats)

    rows["the stage's trainer, + BM25 score as a sixth feature"] = evaluate(score_with_bm25)

    # Pools by query; every pair every epoch.
    members: dict[int, list[int]] = {}
    for p, g in enumerate(data.pairs.query_index.tolist()):
        members.setdefault(g, []).append(p)
    pools = {g: torch.tensor(m) for g, m in members.items()}

    def train(loss_name: str, corrected: bool):
        torch.manual_seed(params.seed)
        student = copy.deepcopy(stage).train()
        correct = LowRankCorrection(hidden, args.rank)
        trained = list(student.parameters()) + (list(correct.parameters()) if corrected else [])
        optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=0.01)
        for _ in range(args.epochs):
            order = torch.randperm(len(pools)).tolist()
            for start in range(0, len(order), 4):
                loss = torch.zeros(())
                for g in order[start : start + 4]:
                    pairs = pools[g]
                    feats = data.features[pairs].clone()
                    if corrected:
                        docs = pool_tokens.select(data.pairs.doc_index[pairs])
                        q_states, weights = query_pack(train_q_tokens, g)
                        feats[:, 2:4] = layer_maxsims(correct, q_states, weights, docs, layer)
                    pred = student(data.query_embs[g][None], None, feats)
                    scores, teacher = retriever.scorer.score(pred), data.pairs.scores[pairs]
                    if loss_name == "jepa":
                        target = data.pairs.hidden[pairs]
                        loss = loss + jepa_loss(retriever.scorer.normalize(pred), target,
                                                form="smooth_l1")  # fmt: skip
                    elif loss_name == "answer_rkl":  # KL(student || teacher) over {Yes, No}
                        s_yes, t_yes = F.logsigmoid(scores), F.logsigmoid(teacher)
                        s_no, t_no = F.logsigmoid(-scores), F.logsigmoid(-teacher)
                        rkl = s_yes.exp() * (s_yes - t_yes) + s_no.exp() * (s_no - t_no)
                        loss = loss + rkl.mean()
                    else:
                        loss = loss + listwise_kl(scores, teacher)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        student.eval()

        def score(s, q):
            state, feats, (q_states, weights), docs = encoded[s, q]
            if corrected:
                feats = feats.clone()
                feats[:, 2:4] = layer_maxsims(correct, q_states, weights, docs, layer)
            return read_out(student, state, feats)

        return evaluate(score)

    for loss_name in LOSSES:
        for corrected in (False, True):
            what = f"rank-{args.rank} layer-4 correction + weights" if corrected else "weights only"
            rows[f"{what}, {loss_name}, from the stage's predictor"] = train(loss_name, corrected)

    print(f"rerank BM25 top-{bench.depth}; dev: {len(dev.qids)} held-out training queries; "
          f"test: {len(test.qids)} evaluation queries; {args.epochs} epochs\n")  # fmt: skip
    print("| scoring | dev nDCG@10 | test nDCG@10 | test p vs BM25 |\n|---|---|---|---|")
    base = [rows["BM25"]["test"][q] for q in test.qids]
    for name, values in rows.items():
        cells = [f"{fmean(values[s].values()):.4f}" for s in ("dev", "test")]
        ours = [values["test"][q] for q in test.qids]
        p = "" if name == "BM25" else f"{ttest_rel(ours, base).pvalue:.2f}"
        print(f"| {name} | {cells[0]} | {cells[1]} | {p} |")


if __name__ == "__main__":
    main()
