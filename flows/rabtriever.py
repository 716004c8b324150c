"""Stage `rabtriever`: Rabtriever, JEPA on-policy distillation of the teacher.

The student is the trained teacher, frozen, plus a small predictor between its last layer
and its LM head. Training reads cached tensors: query embeddings (query encoded
alone), document embeddings (document encoded alone) and the teacher's stored states from
`rank_lists` (its answer-position hidden state and top-k logits per pair). Each epoch the
student trains on its own top-m documents of every training query's teacher-scored pool; then,
in `rabtriever.rounds` on-policy rounds, it ranks the first stage's wider top-`round_pool` of
those queries, the teacher (its own LLM) scores the student's top documents it has not seen,
and training goes on over the grown pools (`components/rabtriever/rounds.py`).
Documents the teacher already read in `rank_lists` come with their states from there
(`rank_lists/documents`, `components/rabtriever/pair_documents.py`); only the others are encoded
here.

Evaluation, on the evaluated test queries and the held-out dev queries: rerank BM25's top-K
(the same K as `BM25 → teacher`; the CPU default, `rabtriever.corpus: none`, encodes only those
candidates) and, with `rabtriever.corpus: full`, retrieve over the dataset's whole corpus.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
import torch
from safetensors.torch import load_file

from components import tracking
from components.atomic import write_text_atomic
from components.config import load_params
from components.data.beir import load_beir
from components.data.splits import HELDOUT, QuerySplits
from components.device import use_device
from components.evaluation.costs import folder_bytes, read_cost, time_each, write_cost
from components.fusion import interpolate, read_weight
from components.layout import Layout, run_key
from components.llm.prompts import PromptTemplate
from components.rabtriever.distillation_data import JepaTrainingData, TeacherPairs
from components.rabtriever.late_interaction import TokenStates
from components.rabtriever.model import Rabtriever
from components.rabtriever.pair_documents import CollectedDocuments, model_fingerprint
from components.rabtriever.predictor import Predictor
from components.rabtriever.rounds import Candidates, TeacherRounds
from components.rabtriever.training import train_predictor
from components.runs import read_trec_run, write_trec_run
from components.serving import register_challenger
from components.teacher.data import document_text
from components.teacher.reranker import LLMReranker
from flows._stage import StageFailed, run_cli, stage_flow

MODEL = "rabtriever"


def collected_documents(layout: Layout, retriever: Rabtriever) -> CollectedDocuments | None:
    """The documents `rank_lists` kept from the teacher's passes, if they fit this student."""
    folder = layout.rank_lists_dir / "documents"
    if not folder.is_dir():
        print("rank_lists kept no document states (rank_lists.document_layers: null)")
        return None
    collected = CollectedDocuments.load(folder)
    reason = collected.mismatch(retriever, model_fingerprint(layout.teacher_model))
    if reason is not None:
        print(f"not using the {len(collected.keys)} documents rank_lists kept: {reason}")
        return None
    return collected


def encode_documents(
    retriever: Rabtriever,
    texts: list[str],
    collected: CollectedDocuments | None,
    batch_size: int,
) -> tuple[torch.Tensor, TokenStates | None, int]:
    """`retriever.encode_corpus(texts)`, from `collected` where it holds a text; also how many
    texts the student had to encode itself."""
    if collected is None:
        return *retriever.encode_corpus(texts, batch_size), len(texts)
    return collected.encode(retriever, texts, batch_size)


def teacher_training_data(
    retriever: Rabtriever,
    rank_lists_dir: Path,
    split: str,
    queries: dict[str, str],
    doc_texts: dict[str, str],
    batch_size: int,
    collected: CollectedDocuments | None = None,
) -> tuple[JepaTrainingData, int]:
    """Cached embeddings (with the pool documents' token states when the predictor reads them)
    + the teacher's stored per-pair states for the training pools, and how many pool documents
    were encoded here (the rest come from `collected`). A predictor's IDF table must be fitted
    first (`Rabtriever.fit_idf`) when it reads late-interaction features: they use it."""
    pairs = pd.read_parquet(rank_lists_dir / "pairs.parquet")
    pairs = pairs[pairs["split"] == split].sort_values("state_row")
    if pairs.empty:
        raise StageFailed(f"{rank_lists_dir}/pairs.parquet has no {split} pairs to distil")
    states = load_file(str(rank_lists_dir / f"{split}_states.safetensors"))
    if "topk_logits" not in states:
        raise StageFailed("rank_lists stored no top-k logits; set rank_lists.top_k_logits > 0")
    qids = list(dict.fromkeys(pairs["query_id"]))
    docids = list(dict.fromkeys(pairs["doc_id"]))
    q_row = {q: i for i, q in enumerate(qids)}
    d_row = {d: i for i, d in enumerate(docids)}
    rows = torch.as_tensor(pairs["state_row"].to_numpy().copy())
    query_texts = [queries[q] for q in qids]
    doc_embs, doc_tokens, encoded = encode_documents(
        retriever, [doc_texts[d] for d in docids], collected, batch_size
    )
    teacher_pairs = TeacherPairs(
        query_index=torch.as_tensor([q_row[q] for q in pairs["query_id"]]),
        doc_index=torch.as_tensor([d_row[d] for d in pairs["doc_id"]]),
        hidden=states["hidden"][rows],
        logits=states["topk_logits"][rows],
        logit_ids=states["topk_ids"][rows],
        scores=torch.as_tensor(pairs["score"].to_numpy(), dtype=torch.float32),
    )
    data = JepaTrainingData.encoded(retriever, query_texts, qids, docids, doc_embs, doc_tokens,
                                    teacher_pairs, batch_size)  # fmt: skip
    return data, encoded


def teacher_rounds(
    retriever: Rabtriever,
    data: JepaTrainingData,
    first_stage: dict,
    queries: dict[str, str],
    doc_texts: dict[str, str],
    collected: CollectedDocuments | None,
    cfg,
    teacher_batch_size: int,
) -> tuple[TeacherRounds, int]:
    """The on-policy rounds' candidates (the first stage's top-`round_pool` of every
    distillation query; documents not yet in `data` are encoded and appended) and the teacher
    that answers them: the student's own LLM, prompted as in `rank_lists`. Also how many
    documents were encoded here."""
    known = set(data.doc_ids)
    wide = {q: [d for d, _ in first_stage.get(q, [])[: cfg.round_pool]] for q in data.query_ids}
    new = list(dict.fromkeys(d for docs in wide.values() for d in docs if d not in known))
    encoded = 0
    if new:
        embs, tokens, encoded = encode_documents(
            retriever, [doc_texts[d] for d in new], collected, cfg.encode_batch_size
        )
        data.add_documents(new, embs, tokens)
    q_row = {q: i for i, q in enumerate(data.query_ids)}
    d_row = {d: i for i, d in enumerate(data.doc_ids)}
    pairs = [(q_row[q], d_row[d]) for q, docs in wide.items() for d in docs]
    query_index = torch.as_tensor([q for q, _ in pairs], dtype=torch.long)
    doc_index = torch.as_tensor([d for _, d in pairs], dtype=torch.long)
    features = retriever.pair_features(
        [queries[q] for q in data.query_ids], data.doc_embs, data.doc_tokens, query_index,
        doc_index, cfg.encode_batch_size,
    )  # fmt: skip
    teacher = LLMReranker(retriever.model, retriever.tokenizer, retriever.template,
                          retriever.max_doc_tokens, bf16=retriever.bf16)  # fmt: skip
    top_k = data.pairs.logits.shape[1]

    def ask(query_rows: list[int], doc_rows: list[int]) -> TeacherPairs:
        texts = [(doc_texts[data.doc_ids[d]], queries[data.query_ids[q]])
                 for q, d in zip(query_rows, doc_rows, strict=True)]  # fmt: skip
        states = teacher.forward_pair_states(texts, batch_size=teacher_batch_size, top_k=top_k)
        return TeacherPairs.from_pair_states(query_rows, doc_rows, states)

    candidates = Candidates(query_index, doc_index, features)
    return TeacherRounds(candidates, ask, cfg.top_m, cfg.round_budget), encoded


def index_documents(mode: str, corpus_ids, first_stage: dict, evaluated: dict,
                    depth: int) -> list[str]:
    """The documents the student indexes: the whole corpus (`rabtriever.corpus: full`), or only the
    first stage's top-`depth` candidates of the evaluated queries (`none`: rerank only, the
    CPU default). Never a set chosen by judgements."""
    if mode == "full":
        return sorted(corpus_ids)
    return sorted({d for split, qids in evaluated.items() for q in qids
                   for d, _ in first_stage[split].get(q, [])[:depth]})


def register(params) -> str:
    """Log the stage's student (the teacher's LLM, its predictor and index: `save` keeps the
    index in the `rabtriever` folder) as `<dataset>.rabtriever`'s challenger; the version."""
    layout = Layout(params.data.name)
    return register_challenger(
        "rabtriever", MODEL, params.data.name,
        {"base_model": layout.teacher_model, "rabtriever": layout.root / "rabtriever"},
        {"bf16": params.teacher.bf16})


@stage_flow("rabtriever")
def rabtriever(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    cfg, layout = params.rabtriever, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"rabtriever": cfg.model_dump(), "data": params.data.model_dump()}
    with tracking.stage_run("rabtriever", params.tracking.experiment, section, dataset_dir):
        dataset = load_beir(dataset_dir, qrels=False)
        queries = dataset.queries_dict()
        doc_texts = {d: document_text(doc) for d, doc in dataset.corpus_dict().items()}
        retriever = Rabtriever.from_pretrained(
            layout.teacher_model,
            template=PromptTemplate.load(params.teacher.task),
            max_doc_tokens=params.teacher.max_doc_tokens,
            pooling=cfg.pooling,
            bf16=params.teacher.bf16,
            maxsim_doc_tokens=cfg.maxsim_doc_tokens,
            device=use_device(params.device),
        )
        torch.manual_seed(params.seed)
        predictor = Predictor(
            retriever.model.config.hidden_size,
            width=cfg.predictor_width,
            depth=cfg.predictor_depth,
            dropout=cfg.predictor_dropout,
            form=cfg.predictor_form,
            layers=cfg.maxsim_layers,
            vocab_size=retriever.model.get_input_embeddings().num_embeddings,
            latent_layer=cfg.latent_layer,
            heads=cfg.attention_heads,
            head_dim=cfg.attention_head_dim,
        )
        retriever.predictor = predictor
        mlflow.log_param("predictor_parameters", predictor.num_parameters())
        splits = QuerySplits.load(layout.splits_file)
        depth = params.rank_lists.depth
        # The evaluated queries: the test sample and the held-out dev queries, each reranking
        # BM25's top-K (the same K as `BM25 → teacher`).
        evaluated = {split: qids for split, qids in
                     ((splits.test_split, splits.evaluated), (HELDOUT, splits.dev_evaluated))
                     if qids}
        first_stage = {split: read_trec_run(layout.run_dir("bm25") / f"{split}.trec")[0]
                       for split in evaluated}
        doc_ids = index_documents(cfg.corpus, doc_texts, first_stage, evaluated, depth)
        if predictor.uses_features:
            # IDF over the whole corpus (token ids only): it does not depend on which
            # documents this run indexes.
            retriever.fit_idf(list(doc_texts.values()))

        if params.data.trains_elsewhere:  # the training pools are another dataset's
            train = load_beir(params.data.train_dataset_dir(), qrels=False)
            train_queries = train.queries_dict()
            train_texts = {d: document_text(doc) for d, doc in train.corpus_dict().items()}
        else:
            train_queries, train_texts = queries, doc_texts
        started = time.perf_counter()
        collected = collected_documents(layout, retriever)
        data, pool_encoded = teacher_training_data(
            retriever,
            layout.rank_lists_dir,
            params.data.train_split,
            train_queries,
            train_texts,
            cfg.encode_batch_size,
            collected,
        )
        cache_seconds = time.perf_counter() - started
        print(
            f"cached {len(data.query_ids)} queries, {len(data.doc_ids)} docs "
            f"({pool_encoded} encoded here, the rest from rank_lists), "
            f"{len(data.pairs.query_index)} teacher pairs in {cache_seconds:.0f}s"
        )

        def log_step(step, values):
            mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

        started = time.perf_counter()
        checkpoints = layout.checkpoints("rabtriever")
        # The teacher too: a round's stored answers are the teacher's, reused on resume.
        run_dir = checkpoints / run_key(
            {"params": params.model_dump(), "data": tracking.dvc_data_hash(dataset_dir),
             "teacher": model_fingerprint(layout.teacher_model)}
        )
        rounds, round_docs = None, 0
        if cfg.rounds:
            rounds, round_docs = teacher_rounds(
                retriever, data, read_trec_run(layout.train_bm25_run(
                    params.data.train_name, params.data.train_split))[0],
                train_queries, train_texts, collected, cfg, params.rank_lists.batch_size,
            )  # fmt: skip
        result = train_predictor(
            retriever.predictor, retriever.scorer, data, cfg, log_fn=log_step,
            checkpoint_dir=run_dir, seed=params.seed, rounds=rounds,
        )  # fmt: skip
        train_seconds = time.perf_counter() - started
        for record in result.rounds:
            print(f"round {record.round}: the student ranked {record.candidates} candidate "
                  f"pairs; {record.unseen_in_top} of its top-{cfg.top_m} were new to the "
                  f"teacher, which scored {record.asked} in {record.teacher_seconds:.0f}s")
            mlflow.log_metrics({f"round{record.round}_{k}": float(v) for k, v in
                                asdict(record).items() if k != "round"})  # fmt: skip
        retriever.predictor.eval()
        for stats in result.epochs:
            print(
                f"round {stats.round} epoch {stats.epoch}: loss {stats.loss:.4f} "
                f"(jepa {stats.jepa:.4f}, rkl {stats.rkl:.4f}) agreement with teacher at "
                f"epoch start {stats.agreement}"
            )

        started = time.perf_counter()
        # Reuse the training pools' embeddings, unless they are another corpus's documents.
        known = {} if params.data.trains_elsewhere else {d: i for i, d in enumerate(data.doc_ids)}
        fresh = [d for d in doc_ids if d not in known]
        # Nothing fresh when the training pools already hold the whole corpus (ESConv's 8
        # strategies), and the tokenizer refuses an empty batch.
        fresh_embs, fresh_tokens, fresh_encoded = encode_documents(
            retriever, [doc_texts[d] for d in fresh], collected, cfg.encode_batch_size
        ) if fresh else (None, None, 0)
        # Index row i of [known pool documents; fresh documents] for each doc id, in order.
        width = len(data.doc_embs)
        rows = {d: i for i, d in enumerate(fresh)}
        source = [known[d] if d in known else width + rows[d] for d in doc_ids]
        all_embs = data.doc_embs if fresh_embs is None else torch.cat([data.doc_embs, fresh_embs])
        tokens = None
        if retriever.token_layers:
            # The training documents' token states (grown by the rounds) and the fresh ones.
            parts = [t for t in (data.doc_tokens, fresh_tokens) if t is not None]
            tokens = TokenStates.concat(parts).select(source)
        retriever.set_index(doc_ids, all_embs[source], tokens)
        encode_seconds = time.perf_counter() - started
        print(
            f"document index: {len(doc_ids)} documents ({cfg.corpus}), "
            f"{len(fresh)} new ({fresh_encoded} encoded here) in {encode_seconds:.0f}s"
        )

        # The first `latency_queries` test queries one at a time: each call's wall time is the
        # latency a user sees (one LLM forward over the query, then predictor passes over the
        # precomputed documents); every other query in one call, its queries encoded in batches.
        indexed = set(doc_ids)
        timings: dict[str, list[float]] = {}
        for split, qids in evaluated.items():
            candidates = {q: [d for d, _ in first_stage[split].get(q, [])[:depth] if d in indexed]
                          for q in qids}  # fmt: skip
            timed = qids[: cfg.latency_queries] if split == splits.test_split else []
            ranked, timings[f"rerank/{split}"] = time_each(
                timed, lambda q, c=candidates: retriever.rerank({q: queries[q]}, {q: c[q]})[q]
            )
            bulk = qids[len(timed) :]
            bulk_run = retriever.rerank({q: queries[q] for q in bulk}, candidates) if bulk else {}
            ranked += [bulk_run[q] for q in bulk]
            # Mixed with BM25's scores as the teacher's ranking is (rank_lists.first_stage_weight).
            reranked = interpolate(first_stage[split], dict(zip(qids, ranked, strict=True)),
                                   read_weight(layout.rank_lists_dir))
            write_trec_run(layout.run_dir("rabtriever_rerank") / f"{split}.trec", reranked,
                           "Rabtriever-rerank", topics=qids)
            if cfg.corpus == "full":
                ranked, timings[f"full/{split}"] = time_each(
                    qids, lambda q: retriever.search({q: queries[q]}, cfg.full_k)[q])
                write_trec_run(layout.run_dir("rabtriever_full") / f"{split}.trec",
                               dict(zip(qids, ranked, strict=True)), "Rabtriever-full",
                               topics=qids)
        test = splits.test_split
        rerank_s = timings[f"rerank/{test}"]
        rerank_ms = 1000 * sum(rerank_s) / len(rerank_s)
        retriever.save(layout.root / "rabtriever")
        # The student's index (pooled embeddings, token states for maxsim); rerank mode also
        # searches BM25's.
        embeddings = folder_bytes(*sorted((layout.root / "rabtriever").glob("doc_*")))
        what = "document embeddings" + (" + token states" if retriever.token_layers else "")
        bm25_cost = read_cost(layout.run_dir("bm25"))
        bm25_s = bm25_cost["latency"]["median_ms"] / 1000 if bm25_cost else 0.0
        write_cost(layout.run_dir("rabtriever_rerank"), [s + bm25_s for s in rerank_s],
                   embeddings + folder_bytes(layout.bm25_index),
                   f"Lucene index + {len(doc_ids)} {what}; rerank top-{depth}")
        full_ms = None
        if cfg.corpus == "full":
            full_s = timings[f"full/{test}"]
            full_ms = 1000 * sum(full_s) / len(full_s)
            write_cost(layout.run_dir("rabtriever_full"), full_s, embeddings,
                       f"{len(doc_ids)} {what} (whole corpus), full scan")
        else:  # the stage's output folder says why it holds no run
            write_text_atomic(layout.run_dir("rabtriever_full") / "DISABLED.md",
                              "No full-corpus run: rabtriever.corpus is `none` (rerank only). Set "
                              "`rabtriever.corpus: full` to encode the whole corpus.\n")
        summary = {
            "corpus": cfg.corpus,
            "predictor_parameters": predictor.num_parameters(),
            "corpus_docs": len(doc_ids),
            "cache_seconds": cache_seconds,
            "train_seconds": train_seconds,
            "encode_seconds": encode_seconds,
            "docs_encoded": pool_encoded + fresh_encoded,
            "rerank_ms_per_query": rerank_ms,
            "full_ms_per_query": full_ms,  # None: no full-corpus index (rabtriever.corpus: none)
            "final_agreement": result.final_agreement,
            "rounds": [asdict(r) for r in result.rounds],
            "round_docs_encoded": round_docs,
            "teacher_pairs": len(data.pairs.query_index),
        }
        summary_text = json.dumps(summary, indent=2)
        write_text_atomic(layout.root / "rabtriever" / "summary.json", summary_text)
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        register(params)
        shutil.rmtree(checkpoints, ignore_errors=True)  # done: no resume needed
        print(summary_text)
    return summary


if __name__ == "__main__":
    run_cli(rabtriever)
