"""DGR decoding: one query at a time against batches of queries (docs/results.md).

    .venv/bin/python scripts/bench_dgr_decoding.py [--model outputs/scifact/dgr/gr_model] \
        [--queries 16] [--batch-size 8] [--params params.yaml]

Constrained beam search as `dgr` runs it (the stage's `dgr` parameters, n-gram
identifiers of the passages BM25 lists for the test queries plus the relevant ones) over the
first `--queries` of the evaluation sample: each query alone, then the same queries in batches
of `--batch-size`. Prints seconds per query both ways and how many of the queries got the same
top-10 passages both ways. `--model` defaults to the base model (decoding cost does not depend on
the weights' values; the stage's GR model can be named instead once it exists).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import torch  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.data.splits import QuerySplits  # noqa: E402
from components.dgr.identifiers import IdentifierParams, build_identifier_index  # noqa: E402
from components.dgr.retriever import GenerativeRetriever, RetrieverConfig  # noqa: E402
from components.dgr.trie import build_trie  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.llm.base_model import load_causal_lm, load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    cfg, layout = params.dgr, Layout(params.data.name)
    model_dir = Path(args.model) if args.model else layout.base_model
    dataset = load_beir(params.data.dataset_dir(), qrels=False)
    corpus, queries = dataset.corpus_dict(), dataset.queries_dict()
    qids = QuerySplits.load(layout.splits_file).evaluated[: args.queries]
    doc_ids = sorted(corpus)
    index = build_identifier_index(
        corpus,
        IdentifierParams(views=("ngram",), ngram_words=cfg.ngram_words, seed=params.seed))
    tokenizer = load_tokenizer(model_dir)
    retriever = GenerativeRetriever(
        load_causal_lm(model_dir), tokenizer, build_trie(index, tokenizer), index,
        RetrieverConfig(view_weights={"ngram": 1.0}, batch_size=args.batch_size))
    texts = {q: queries[q] for q in qids}
    print(f"{len(qids)} queries, {len(doc_ids)} passages, beams {cfg.num_beams}, "
          f"{torch.get_num_threads()} threads")

    started = time.perf_counter()
    single = {q: retriever.search({q: texts[q]}, k=cfg.num_beams)[q] for q in qids}
    single_s = (time.perf_counter() - started) / len(qids)
    started = time.perf_counter()
    batched = retriever.search(texts, k=cfg.num_beams)
    batched_s = (time.perf_counter() - started) / len(qids)
    same = sum([d for d, _ in single[q]] == [d for d, _ in batched[q]] for q in qids)
    print("| decoding | s/query |\n|---|---|")
    print(f"| one query at a time | {single_s:.2f} |")
    print(f"| batches of {args.batch_size} | {batched_s:.2f} |")
    print(f"same top-{cfg.num_beams} both ways: {same}/{len(qids)} queries")


if __name__ == "__main__":
    main()
