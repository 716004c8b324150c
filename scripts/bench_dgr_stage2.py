"""Seconds per DGR stage-2 step with and without the frozen-trunk cache (docs/results.md).

    .venv/bin/python scripts/bench_dgr_stage2.py [--steps 12] [--queries 60] \
        [--teacher-run bm25] [--params params.yaml]

Stage 2 as `dgr` runs it (the `dgr` parameters of params.yaml, the base model, the
n-gram identifiers) on the first `--queries` training queries of a teacher run, over a corpus of
their listed passages and relevant ones. Trains `--steps` steps from the base model twice: with
the frozen layers' states of each row computed once (`cache_frozen_states`, the default) and
without. The first epoch of the cached run also fills the cache, so the table gives the first
epoch and the later steps apart. Any teacher run works (the cost does not depend on the order):
the BM25 run exists as soon as the `bm25` stage has run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import torch  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.dgr.identifiers import IdentifierParams, build_identifier_index  # noqa: E402
from components.dgr.training import train_stage2  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.runs import read_trec_run  # noqa: E402
from flows.dgr import train_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--teacher-run", default="bm25")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params(args.params)
    cfg, layout = params.dgr, Layout(params.data.name)
    dataset = load_beir(params.data.dataset_dir())
    corpus, queries = dataset.corpus_dict(), dataset.queries_dict()
    split = params.data.train_split
    run, _ = read_trec_run(layout.run_dir(args.teacher_run) / f"{split}.trec")
    qrels = dataset.qrels_dict(split)
    qids = [q for q in sorted(run) if q in qrels][: args.queries]
    teacher = {q: sorted(run[q], key=lambda pair: -pair[1])[:10] for q in qids}
    doc_ids = sorted({d for q in qids for d, _ in teacher[q]} | {d for q in qids for d in qrels[q]})
    sub_corpus = {d: corpus[d] for d in doc_ids if d in corpus}
    index = build_identifier_index(
        sub_corpus, IdentifierParams(views=("ngram",), ngram_words=cfg.ngram_words,
                                     seed=params.seed))  # fmt: skip
    sub_qrels = {q: {d: g for d, g in qrels[q].items() if d in sub_corpus} for q in qids}
    lists_per_step = min(cfg.batch_size, len(qids))
    epoch_steps = -(-len(qids) // lists_per_step)
    print(f"{len(qids)} queries, {len(sub_corpus)} passages, {torch.get_num_threads()} threads, "
          f"{epoch_steps} steps per epoch")

    rows = {}
    for cached in (True, False):
        train = dataclasses.replace(
            train_params(cfg, params.seed, args.steps), distill_view="ngram",
            cache_frozen_states=cached, checkpoint_every=10**6)  # fmt: skip
        times = [time.perf_counter()]
        with tempfile.TemporaryDirectory() as tmp:
            train_stage2(layout.base_model, queries, teacher, index, train, Path(tmp) / "ckpt",
                         Path(tmp) / "model", qrels=sub_qrels,
                         on_step=lambda _m, t=times: t.append(time.perf_counter()))  # fmt: skip
        steps = [b - a for a, b in zip(times, times[1:], strict=False)]
        first, later = steps[:epoch_steps], steps[epoch_steps:]
        rows[cached] = {
            "first_epoch_s_per_step": sum(first) / len(first),
            "later_s_per_step": sum(later) / len(later) if later else None,
            "all_s_per_step": sum(steps) / len(steps),
        }
        print(f"cache_frozen_states={cached}: {json.dumps(rows[cached])}")
    print("| frozen-trunk cache | s/step, first epoch | s/step, later epochs | s/step, all |")
    print("|---|---|---|---|")
    for cached, row in rows.items():
        later = f"{row['later_s_per_step']:.2f}" if row["later_s_per_step"] else "-"
        print(f"| {'on' if cached else 'off'} | {row['first_epoch_s_per_step']:.2f} | {later} | "
              f"{row['all_s_per_step']:.2f} |")


if __name__ == "__main__":
    main()
