"""Efficiency study: teacher vs Rabtriever latency as a function of document length.

    .venv/bin/python scripts/bench_efficiency.py [--teacher outputs/scifact/teacher/model]
        [--rabtriever outputs/scifact/rabtriever] [--lengths 64 128 256 512 1024]
        [--depth 10] [--queries 3] [--out docs/efficiency]

For each document length L (in tokens; windows of real SciFact text cut to exactly L tokens)
and `--depth` K candidates per query, on the first `--queries` evaluated test queries of the
run's splits (texts only; no judgement is read), one query at a time:

- teacher (online): one forward over K prompts of document + query (cost grows with L, and
  attention quadratically),
- Rabtriever (online): one forward over the query alone (its answer state; with
  late-interaction features also its token states) + predictor passes over the K documents'
  stored encodings (the attention form's cross-attention over their token states and the
  features' MaxSim are linear in L, no LLM work),
- Rabtriever (offline): encoding the K documents alone, once per corpus, reported per
  document.

Writes `<out>.json` and `<out>.png` and logs both, with the figures as metrics, to the MLflow
experiment `benchmarks`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import torch  # noqa: E402

from components.data.beir import load_beir  # noqa: E402
from components.data.splits import QuerySplits  # noqa: E402
from components.rabtriever.model import Rabtriever  # noqa: E402
from components.teacher.reranker import LLMReranker  # noqa: E402
from components.tracking import ensure_experiment, git_commit  # noqa: E402


def documents_of_length(tokenizer, corpus_texts: list[str], length: int, count: int) -> list[str]:
    """`count` documents of exactly `length` tokens: consecutive windows of real text."""
    ids: list[int] = []
    for text in corpus_texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length * count:
            break
    return [tokenizer.decode(ids[i * length:(i + 1) * length]) for i in range(count)]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and lazy initialisation are not latency
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(teacher, student, corpus_texts, queries, length: int, depth: int) -> dict:
    """Median latencies at one document length (see the module docstring)."""
    docs = documents_of_length(student.tokenizer, corpus_texts, length, depth)
    ids = [f"d{i}" for i in range(len(docs))]
    student.set_index(ids, *student.encode_corpus(docs))
    teacher_s = statistics.median(
        median_seconds(lambda q=q: teacher.score_pairs([(d, q) for d in docs], depth), 1)
        for q in queries)
    student_s = statistics.median(
        median_seconds(lambda q=q: student.rerank({"q": q}, {"q": ids}), 3) for q in queries)
    encode_s = median_seconds(lambda: student.encode_corpus(docs), 1) / len(docs)
    row = {"doc_tokens": length, "teacher_ms_per_query": 1000 * teacher_s,
           "student_ms_per_query": 1000 * student_s,
           "student_offline_ms_per_doc": 1000 * encode_s}
    print(json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, default=Path("outputs/scifact/teacher/model"))
    parser.add_argument("--rabtriever", type=Path, default=Path("outputs/scifact/rabtriever"))
    parser.add_argument("--dataset", type=Path, default=Path("data/raw/scifact"))
    parser.add_argument("--splits", type=Path, default=Path("outputs/scifact/splits.json"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("docs/efficiency"))
    args = parser.parse_args()
    torch.manual_seed(0)

    dataset = load_beir(args.dataset, qrels=False)
    corpus_texts = [f"{d['title']} {d['text']}" for d in dataset.corpus_dict().values()]
    test_ids = QuerySplits.load(args.splits).evaluated[: args.queries]
    queries = [dataset.queries_dict()[q] for q in test_ids]
    student = Rabtriever.load(args.rabtriever, model_path=args.teacher, bf16=args.bf16)
    # Same weights, no document truncation: the lengths are set by this benchmark.
    student.prompts.max_doc_tokens = None
    student.token_prompts.max_doc_tokens = None  # the same builder, or the maxsim cut's
    teacher = LLMReranker(student.model, student.tokenizer, student.template,
                          max_doc_tokens=None, bf16=args.bf16)

    rows = [measure(teacher, student, corpus_texts, queries, length, args.depth)
            for length in args.lengths]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"depth": args.depth, "queries": len(queries), "bf16": args.bf16,
              "threads": torch.get_num_threads(), "git_commit": git_commit(), "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.depth, args.out.with_suffix(".png"))
    mlflow.set_experiment(experiment_id=ensure_experiment("benchmarks"))
    with mlflow.start_run(run_name="efficiency"):
        mlflow.log_params({"depth": args.depth, "queries": len(queries), "bf16": args.bf16})
        for row in rows:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "doc_tokens"},
                               step=row["doc_tokens"])
        mlflow.log_artifact(str(args.out.with_suffix(".json")))
        mlflow.log_artifact(str(args.out.with_suffix(".png")))


def plot(rows: list[dict], depth: int, path: Path) -> None:
    lengths = [r["doc_tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(lengths, [r["teacher_ms_per_query"] for r in rows], "o-",
            label=f"teacher, online (rerank {depth} docs)")
    ax.plot(lengths, [r["student_ms_per_query"] for r in rows], "s-",
            label=f"Rabtriever, online (rerank {depth} docs)")
    ax.plot(lengths, [r["student_offline_ms_per_doc"] for r in rows], "^--",
            label="Rabtriever, offline (encode 1 doc, once)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("milliseconds")
    ax.set_title("Latency vs document length")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
