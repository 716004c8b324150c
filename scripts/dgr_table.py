"""DGR robustness table: nDCG@10 by teacher run x distillation loss (docs/benchmarks.md).

    .venv/bin/python scripts/dgr_table.py [--stage1-steps 50] [--queries 20] \
        [--teachers teacher bm25] [--losses ranknet listwise_kl] [--params params.yaml] \
        [--views title span --distill-view title] [--out dgr_table_100q]

Needs the pipeline's `distill_dgr` outputs (identifiers.json, trie.json) and the train-split
rank lists of every named teacher run (`outputs/<dataset>/runs/<teacher>/<train split>.trec`).
`--views` builds identifiers and a trie in those views instead of using the stage's (all
views weighted 1; `--distill-view` names the one stage 2 scores passages by).
Trains stage 1 (GR) once, then stage 2 (DGR) from that model for each teacher x loss, all with
the same seed and the `dgr` parameters otherwise; decodes the first `--queries` of the
evaluation sample with each model and reports nDCG@10 (pytrec_eval), R@10 and the paired
t-test of each DGR against GR. The loss `none` is the control: stage 2's steps on the
generation term alone. Writes `outputs/<dataset>/dgr_table/table.{md,json}` (or the `--out`
folder there; the JSON holds every model's per-query nDCG@10 for further paired tests).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.settings import configure_environment  # noqa: E402

configure_environment()

from components.config import load_params  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.data.sampling import sample_query_ids  # noqa: E402
from components.dgr.identifiers import (  # noqa: E402
    IdentifierIndex,
    IdentifierParams,
    build_identifier_index,
)
from components.dgr.retriever import GenerativeRetriever, RetrieverConfig  # noqa: E402
from components.dgr.training import stage1_examples, train_stage1, train_stage2  # noqa: E402
from components.dgr.trie import build_trie  # noqa: E402
from components.evaluation.metrics import mean_metrics, per_query_metrics  # noqa: E402
from components.evaluation.significance import compare  # noqa: E402
from components.layout import Layout, run_key  # noqa: E402
from components.models.base_model import load_tokenizer  # noqa: E402
from components.runs import read_trec_run  # noqa: E402
from flows.distill_dgr import tfidf_embeddings, train_params  # noqa: E402

METRICS = ["ndcg_cut_10", "recall_10"]


def evaluate(model_dir: Path, dgr_dir: Path, config: RetrieverConfig, queries: dict,
             qrels: dict, k: int) -> tuple[dict, float]:
    retriever = GenerativeRetriever.from_pretrained(
        model_dir, dgr_dir / "trie.json", dgr_dir / "identifiers.json", config)
    started = time.perf_counter()
    run = retriever.search(queries, k=k)
    seconds = time.perf_counter() - started
    return per_query_metrics(run, qrels, METRICS, list(queries)), seconds / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--stage1-steps", type=int, default=None,
                        help="GR steps (default: dgr.stage1_steps)")
    parser.add_argument("--queries", type=int, default=None,
                        help="test queries decoded (default: dgr.eval_queries)")
    parser.add_argument("--teachers", nargs="+", default=["teacher", "bm25"])
    parser.add_argument("--losses", nargs="+", default=["ranknet", "listwise_kl"])
    parser.add_argument("--views", nargs="+", default=None,
                        help="identifier views (default: the stage's identifiers, dgr.views)")
    parser.add_argument("--distill-view", default=None,
                        help="view stage 2 scores passages by (default: dgr.distill_view)")
    parser.add_argument("--out", default=None,
                        help="output folder under outputs/<dataset> (default: dgr_table)")
    args = parser.parse_args()
    params = load_params(args.params)
    cfg, layout = params.dgr, Layout(params.data.name)
    if args.views:
        cfg = cfg.model_copy(update={
            "views": args.views, "view_weights": dict.fromkeys(args.views, 1.0),
            "distill_view": args.distill_view or cfg.distill_view})
    stage1_steps = args.stage1_steps or cfg.stage1_steps
    n_queries = args.queries or cfg.eval_queries
    dgr_dir, out = layout.root / "dgr", layout.root / "dgr_table"
    dataset = load_beir(params.data.dataset_dir())
    queries, corpus = dataset.queries_dict(), dataset.corpus_dict()
    # The stage's corpus in the stage's order: the order of the indexing examples, and so the
    # stage-1 model, depends on it.
    doc_ids = json.loads((layout.rank_lists_dir / "corpus_subset.json").read_text())
    sub_corpus = {d: corpus[d] for d in doc_ids}
    if args.views:  # identifiers and trie in other views, built as the stage builds them
        out = layout.root / f"dgr_table_{'_'.join(args.views)}"
        dgr_dir = out / "identifiers"
        dgr_dir.mkdir(parents=True, exist_ok=True)
        index = build_identifier_index(
            sub_corpus, IdentifierParams(views=tuple(args.views), ngram_words=cfg.ngram_words,
                                         seed=params.seed),
            embeddings=tfidf_embeddings(corpus, doc_ids, cfg.semantic_dims, params.seed),
            doc_ids=doc_ids)
        build_trie(index, load_tokenizer(layout.base_model)).save(dgr_dir / "trie.json")
        index.save(dgr_dir / "identifiers.json")
    if args.out:
        out = layout.root / args.out
    index = IdentifierIndex.load(dgr_dir / "identifiers.json")

    train_split, split = params.data.train_split, params.data.test_split
    teacher_runs = {name: read_trec_run(layout.run_dir(name) / f"{train_split}.trec")[0]
                    for name in args.teachers}
    train_qrels = dataset.qrels_dict(train_split)
    # The stage's training queries: those of the default teacher's rank lists.
    train_qids = [q for q in teacher_runs[args.teachers[0]] if q in train_qrels]
    qrels = {q: {d: g for d, g in train_qrels[q].items() if d in sub_corpus}
             for q in train_qids}
    test_qrels = dataset.qrels_dict(split)
    qids = sample_query_ids(test_qrels, params.data.eval_queries, params.seed)[:n_queries]
    test_queries = {q: queries[q] for q in qids}
    config = RetrieverConfig(view_weights=dict(cfg.view_weights), batch_size=cfg.batch_size)

    # Checkpoints are keyed by what determines the result, so a rerun with other settings
    # never resumes from this one's.
    checkpoints = out / "checkpoints" / run_key(
        {"dgr": cfg.model_dump(), "seed": params.seed, "stage1_steps": stage1_steps,
         "teachers": args.teachers})
    started = time.perf_counter()
    examples = stage1_examples(queries, qrels, sub_corpus, index, indexing=True)
    train_stage1(layout.base_model, examples, train_params(cfg, params.seed, stage1_steps),
                 checkpoints / "stage1", out / "gr_model")
    print(f"stage 1: {stage1_steps} steps over {len(examples)} examples "
          f"({time.perf_counter() - started:.0f}s)", flush=True)
    gr, gr_seconds = evaluate(out / "gr_model", dgr_dir, config, test_queries, test_qrels,
                              cfg.num_beams)
    rows = [{"teacher": "—", "loss": "— (GR, stage 1 only)", "seconds_per_query": gr_seconds,
             **{m: mean_metrics({m: gr[m]})[m] for m in METRICS}, "p_vs_gr": None,
             "per_query_ndcg_cut_10": gr["ndcg_cut_10"]}]
    print({k: v for k, v in rows[-1].items() if not k.startswith("per_query")}, flush=True)
    for teacher in args.teachers:
        run = {q: teacher_runs[teacher][q] for q in train_qids if q in teacher_runs[teacher]}
        for loss in args.losses:
            tp = train_params(cfg.model_copy(update={"distill_loss": loss}), params.seed,
                              cfg.stage2_steps)
            name = f"{teacher}-{loss}"
            train_stage2(out / "gr_model", queries, run, index, tp,
                         checkpoints / name, out / name, qrels=qrels)
            dgr, seconds = evaluate(out / name, dgr_dir, config, test_queries, test_qrels,
                                    cfg.num_beams)
            p_value, _ = compare(dgr["ndcg_cut_10"], gr["ndcg_cut_10"])
            rows.append({"teacher": teacher, "loss": loss, "seconds_per_query": seconds,
                         **{m: mean_metrics({m: dgr[m]})[m] for m in METRICS},
                         "p_vs_gr": p_value, "per_query_ndcg_cut_10": dgr["ndcg_cut_10"]})
            print({k: v for k, v in rows[-1].items() if not k.startswith("per_query")}, flush=True)

    lines = [f"DGR on `{params.data.name}` {split}, first {len(qids)} queries of the evaluation "
             f"sample; stage 1 {stage1_steps} steps, stage 2 {cfg.stage2_steps} steps, "
             f"seed {params.seed}; views {', '.join(cfg.views)}, stage 2 scores by "
             f"{cfg.distill_view}.", "",
             "| teacher run | distillation loss | nDCG@10 | R@10 | p vs GR (nDCG@10) | s/query |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        p = "" if r["p_vs_gr"] is None else f"{r['p_vs_gr']:.3f}"
        lines.append(f"| {r['teacher']} | {r['loss']} | {r['ndcg_cut_10']:.4f} | "
                     f"{r['recall_10']:.4f} | {p} | {r['seconds_per_query']:.1f} |")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # done: no resume needed
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
