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


from components.config import load_params  # noqa: E402
from components.training.jepa_trainer import JepaTrainParams, train_predictor  # noqa: E402
from scripts.jepa_eval import StudentBench  # noqa: E402

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
    cfg = params.jepa
    bench = StudentBench.load(params)
    data = bench.stage_training_data()
    depth = bench.depth

    print(f"| setting | epochs | train s | agreement (train pools) | rerank@{depth} nDCG@10 |")
    print("|---|---|---|---|---|")
    for name, overrides in SETTINGS.items():
        predictor = bench.fresh_predictor()
        train_cfg = replace(JepaTrainParams(epochs=args.epochs, top_m=cfg.top_m, lr=cfg.lr,
                                            batch_size=cfg.batch_size, seed=params.seed),
                            **overrides)
        started = time.perf_counter()
        result = train_predictor(predictor, bench.retriever.scorer, data, train_cfg)
        seconds = time.perf_counter() - started
        ndcg = bench.rerank_ndcg(predictor)
        print(f"| {name} | {args.epochs} | {seconds:.0f} | {result.final_agreement:.3f} | "
              f"{ndcg:.4f} |", flush=True)


if __name__ == "__main__":
    main()
