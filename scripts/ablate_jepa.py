"""Loss ablation for Rabtriever: JEPA only, reverse KL only, both (and loss forms).

    .venv/bin/python scripts/ablate_jepa.py [--epochs 40] [--params params.yaml]

Needs the pipeline's `rank_lists` and `distill_jepa` outputs (teacher states, the document
index). Caches the training embeddings once, then trains a fresh predictor per setting and
reports rerank@K nDCG@10 on the evaluation queries (trec_eval via pytrec_eval) and the
student's agreement with the teacher on the training pools.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import torch  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.data.sampling import sample_query_ids  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.models.prompts import PromptTemplate  # noqa: E402
from components.models.rabtriever import Predictor, Rabtriever  # noqa: E402
from components.runs import read_trec_run  # noqa: E402
from components.training.jepa_trainer import JepaTrainParams, train_predictor  # noqa: E402
from components.training.teacher_data import document_text  # noqa: E402
from flows.distill_jepa import teacher_training_data  # noqa: E402
from scripts.jepa_eval import rerank_ndcg  # noqa: E402

SETTINGS = {
    "both (kl τ=1 + rkl)": dict(jepa_form="kl", rkl_weight=1.0),
    "both (smooth_l1 + rkl)": dict(jepa_form="smooth_l1", rkl_weight=1.0),
    "JEPA only (smooth_l1)": dict(jepa_form="smooth_l1", rkl_weight=0.0),
    "JEPA only (kl τ=0.1)": dict(jepa_form="kl", jepa_temperature=0.1, rkl_weight=0.0),
    "both (kl τ=0.1 + rkl)": dict(jepa_form="kl", jepa_temperature=0.1, rkl_weight=1.0),
    "reverse KL only": dict(jepa_weight=0.0, rkl_weight=1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    params = load_params(args.params)
    cfg, layout = params.jepa, Layout(params.data.name)
    dataset = load_beir(params.data.dataset_dir())
    queries = dataset.queries_dict()
    texts = {d: document_text(doc) for d, doc in dataset.corpus_dict().items()}
    retriever = Rabtriever.from_pretrained(
        layout.teacher_model, template=PromptTemplate.load(params.teacher.task),
        max_doc_tokens=params.teacher.max_doc_tokens, pooling=cfg.pooling,
        bf16=params.teacher.bf16)
    retriever.load_index(layout.root / "rabtriever")
    data = teacher_training_data(retriever, layout.rank_lists_dir, params.data.train_split,
                                 queries, texts, cfg.encode_batch_size)
    split = params.data.test_split
    qrels = dataset.qrels_dict(split)
    qids = sample_query_ids(qrels, params.data.eval_queries, params.seed)
    bm25, _ = read_trec_run(layout.run_dir("bm25") / f"{split}.trec")
    query_embs = retriever.encode_queries([queries[q] for q in qids])
    depth = params.rank_lists.depth

    print(f"| setting | epochs | train s | agreement (train pools) | rerank@{depth} nDCG@10 |")
    print("|---|---|---|---|---|")
    for name, overrides in SETTINGS.items():
        torch.manual_seed(params.seed)
        predictor = Predictor(retriever.model.config.hidden_size, width=cfg.predictor_width,
                              depth=cfg.predictor_depth, form=cfg.predictor_form)
        train_cfg = replace(JepaTrainParams(epochs=args.epochs, top_m=cfg.top_m, lr=cfg.lr,
                                            batch_size=cfg.batch_size, seed=params.seed),
                            **overrides)
        started = time.perf_counter()
        result = train_predictor(predictor, retriever.scorer, data, train_cfg)
        seconds = time.perf_counter() - started
        ndcg = rerank_ndcg(retriever, predictor, qids, query_embs, bm25, qrels, depth)
        print(f"| {name} | {args.epochs} | {seconds:.0f} | {result.final_agreement:.3f} | "
              f"{ndcg:.4f} |", flush=True)


if __name__ == "__main__":
    main()
