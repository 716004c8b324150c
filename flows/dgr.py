"""Stage `dgr`: generative retrieval (GR) and its distillation from the teacher (DGR).

1. Identifiers for every passage of the corpus in the views of `dgr.views` (word
   n-grams, title, semantic id from hierarchical k-means over TF-IDF/SVD vectors, a leading
   span, TF-IDF terms), and one prefix trie over their token sequences, so constrained beam
   search only yields existing identifiers.
2. Stage 1 (GR): training queries (never the held-out dev ones) -> identifiers of their
   relevant passages, plus indexing examples (passage text -> identifiers) of every passage;
   cross-entropy on identifier tokens.
3. Stage 2 (DGR): starting from the GR model, the teacher's rank lists of the training
   queries train the model's passage scores (identifier log-probabilities) with the distilled
   RankNet loss (or `dgr.distill_loss`), plus `dgr.alpha` x the generation loss.
The `GR (no distillation)` row is the stage-1 model; `DGR` is stage 1 + stage 2. Both decode
with the same beam search, so distillation adds nothing at inference.
The teacher is any run of the pipeline (`dgr.teacher_run`: teacher, bm25, ...).
"""

from __future__ import annotations

import json
import shutil
import time

import mlflow
import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from components import tracking
from components.atomic import write_text_atomic
from components.config import load_params
from components.data.beir import load_beir
from components.data.judgements import read_judgements
from components.data.splits import HELDOUT, QuerySplits
from components.device import current_device, use_device
from components.dgr.identifiers import IdentifierParams, build_identifier_index
from components.dgr.retriever import GenerativeRetriever, RetrieverConfig
from components.dgr.training import stage1_examples, train_stage1, train_stage2
from components.dgr.trie import build_trie
from components.evaluation.costs import folder_bytes, time_each, write_cost
from components.layout import Layout, run_key
from components.llm.base_model import load_tokenizer
from components.runs import read_trec_run, write_trec_run
from components.serving import register_challenger
from flows._stage import StageFailed, run_cli, stage_flow

MODEL = "dgr"


def tfidf_embeddings(corpus: dict, doc_ids: list[str], dims: int, seed: int) -> np.ndarray:
    """Cheap document vectors for the semantic-id clustering (LSA: TF-IDF + truncated SVD)."""
    texts = [f"{corpus[d]['title']} {corpus[d]['text']}" for d in doc_ids]
    tfidf = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit_transform(texts)
    dims = max(2, min(dims, tfidf.shape[1] - 1, len(doc_ids) - 1))
    vectors = TruncatedSVD(dims, random_state=seed).fit_transform(tfidf)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


CROSS_DATASET_NOTE = (
    "GR/DGR not trained: generative retrieval learns to generate the identifiers of the "
    "corpus it is evaluated on, from training queries over that corpus; data.train_name "
    "({train}) is another dataset, so {name} has none. Rows pending: needs training queries "
    "over the {name} corpus.")


def skip_cross_dataset(layout: Layout, params) -> dict:
    """Leave the stage's outputs in place, empty but for a note saying why."""
    note = CROSS_DATASET_NOTE.format(train=params.data.train_name, name=params.data.name)
    for folder in (layout.root / "dgr", layout.run_dir("gr"), layout.run_dir("dgr")):
        write_text_atomic(folder / "SKIPPED.md", note + "\n")
    summary = {"skipped": note}
    write_text_atomic(layout.root / "dgr" / "summary.json", json.dumps(summary, indent=2))
    mlflow.set_tag("skipped", note)
    print(note)
    return summary


def retriever_config(cfg) -> RetrieverConfig:
    return RetrieverConfig(view_weights=dict(cfg.view_weights), batch_size=cfg.batch_size,
                           normalize=cfg.normalize_views, max_query_tokens=cfg.max_query_tokens,
                           use_chat_template=cfg.use_chat_template, bf16=cfg.bf16)


def register(params) -> str:
    """Log the stage's DGR model with its trie and identifiers as `<dataset>.dgr`'s
    challenger; the version. Also `flows.register`."""
    cfg, out = params.dgr, Layout(params.data.name).root / "dgr"
    return register_challenger(
        "dgr", MODEL, params.data.name,
        {"model": out / "dgr_model", "trie": out / "trie.json",
         "identifiers": out / "identifiers.json"},
        retriever_config(cfg).to_dict(), k=cfg.num_beams)


@stage_flow("dgr")
def dgr(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    cfg, layout = params.dgr, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    out = layout.root / "dgr"
    section = {"dgr": cfg.model_dump(), "data": params.data.model_dump()}
    with tracking.stage_run("dgr", params.tracking.experiment, section, dataset_dir):
        if params.data.trains_elsewhere:
            return skip_cross_dataset(layout, params)
        use_device(params.device)
        dataset = load_beir(dataset_dir, qrels=False)
        corpus, queries = dataset.corpus_dict(), dataset.queries_dict()
        splits = QuerySplits.load(layout.splits_file)
        # Identifiers, trie and indexing examples cover the whole corpus.
        doc_ids = sorted(corpus)
        started = time.perf_counter()
        embeddings = tfidf_embeddings(corpus, doc_ids, cfg.semantic_dims, params.seed)
        index = build_identifier_index(
            corpus, IdentifierParams(
                views=tuple(cfg.views), ngram_words=cfg.ngram_words,
                ngram_max_words=cfg.ngram_max_words, title_max_words=cfg.title_max_words,
                span_words=cfg.span_words, terms_count=cfg.terms_count,
                semantic_branching=cfg.semantic_branching,
                semantic_leaf_size=cfg.semantic_leaf_size,
                semantic_max_depth=cfg.semantic_max_depth, seed=params.seed),
            embeddings=embeddings, doc_ids=doc_ids)
        tokenizer = load_tokenizer(layout.base_model)
        trie = build_trie(index, tokenizer)
        out.mkdir(parents=True, exist_ok=True)
        index.save(out / "identifiers.json")
        trie.save(out / "trie.json")
        print(f"identifiers for {len(doc_ids)} passages in views {list(cfg.views)} "
              f"({time.perf_counter() - started:.0f}s)")

        train_split = params.data.train_split
        teacher_run, _ = read_trec_run(layout.run_dir(cfg.teacher_run) / f"{train_split}.trec")
        # The training queries' judgements only: the held-out dev queries train nothing.
        qrels = read_judgements(dataset_dir, train_split, splits.train)
        train_qids = [q for q in teacher_run if q in qrels]
        if not train_qids:
            raise StageFailed(f"the {cfg.teacher_run} run has no {train_split} queries")
        examples = stage1_examples(queries, qrels, corpus, index, indexing=cfg.indexing_examples,
                                   limit=cfg.targets_per_passage)
        metrics = {"passages": len(doc_ids), "stage1_examples": len(examples)}

        def logger(prefix):
            def log_step(step):
                mlflow.log_metrics({f"{prefix}_loss": step.loss}, step=step.step)
                if step.step % 10 == 0 or step.step == step.total_steps:
                    print(f"{prefix} step {step.step}/{step.total_steps} loss {step.loss:.4f}")
            return log_step

        checkpoints = layout.checkpoints("dgr")
        run_dir = checkpoints / run_key(
            {"params": params.model_dump(), "data": tracking.dvc_data_hash(dataset_dir)})
        started = time.perf_counter()
        stage1 = train_stage1(layout.base_model, examples, cfg, run_dir / "stage1",
                              out / "gr_model", logger("stage1"), seed=params.seed,
                              max_steps=cfg.stage1_steps)
        metrics["stage1_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        teacher = {q: teacher_run[q] for q in train_qids}
        train_stage2(out / "gr_model", queries, teacher, index, cfg, run_dir / "stage2",
                     out / "dgr_model", qrels=qrels, on_step=logger("stage2"), seed=params.seed,
                     max_steps=cfg.stage2_steps)
        metrics["stage2_seconds"] = time.perf_counter() - started
        print(f"stage 1: {stage1.steps} steps; stage 2: {cfg.stage2_steps} steps")

        # Decoding reads queries as training did (same token cut, same chat template).
        config = retriever_config(cfg)
        # Decoding is the slow part on CPU: the first `dgr.eval_queries` of each evaluated set.
        evaluated = {split: qids[: cfg.eval_queries or None] for split, qids in
                     ((splits.test_split, splits.evaluated), (HELDOUT, splits.dev_evaluated))
                     if qids}
        for system, model_dir in (("gr", out / "gr_model"), ("dgr", out / "dgr_model")):
            retriever = GenerativeRetriever.from_pretrained(
                model_dir, out / "trie.json", out / "identifiers.json", config,
                device=current_device())
            for split, qids in evaluated.items():
                asked = {q: queries[q] for q in qids}
                # The test split's first `dgr.latency_queries` one at a time: each call's wall
                # time is the decoding latency a user sees. The rest in batches of
                # `dgr.batch_size`: the same beams per query, fewer passes over the weights.
                timed = qids[: cfg.latency_queries] if split == splits.test_split else []
                ranked, seconds = time_each(
                    timed, lambda q, r=retriever, a=asked: r.search({q: a[q]}, k=cfg.num_beams)[q])
                run = dict(zip(timed, ranked, strict=True))
                rest = {q: asked[q] for q in qids[len(timed):]}
                started = time.perf_counter()
                run.update(retriever.search(rest, k=cfg.num_beams) if rest else {})
                batched = time.perf_counter() - started
                write_trec_run(layout.run_dir(system) / f"{split}.trec", run, system.upper(),
                               topics=qids)
                if rest:
                    metrics[f"{system}_{split}_batched_ms_per_query"] = 1000 * batched / len(rest)
                if not timed:
                    print(f"{system}: decoded {len(qids)} {split} queries in batches "
                          f"({1000 * batched / len(rest):.0f} ms/query)")
                    continue
                metrics[f"{system}_ms_per_query"] = 1000 * sum(seconds) / len(timed)
                write_cost(layout.run_dir(system), seconds,
                           folder_bytes(out / "trie.json", out / "identifiers.json"),
                           f"identifier trie + identifier map ({', '.join(cfg.views)})")
                print(f"{system}: decoded {len(qids)} {split} queries; one at a time "
                      f"{metrics[f'{system}_ms_per_query']:.0f} ms/query ({len(timed)})")
        write_text_atomic(out / "summary.json", json.dumps(metrics, indent=2))
        mlflow.log_metrics(metrics)
        register(params)
        shutil.rmtree(checkpoints, ignore_errors=True)  # done: no resume needed
    return metrics


if __name__ == "__main__":
    run_cli(dgr)
