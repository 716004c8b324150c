"""Stage `promote`: move the registry alias `champion` to challengers that earned it.

Each dataset has its own registered models (`<data.name>.<model>`, components.registry), so
the decisions of one dataset never move another's champion.

    python -m flows.promote                          # every model in promote.models
    python -m flows.promote --model rabtriever --version 3

The frozen promotion split is the first `promote.queries` of the held-out dev queries
(`outputs/<dataset>/splits.json`, never a test query), each with its BM25 top-`promote.depth`
candidates; it changes only when those parameters or the data change. Every decision names
the split and its size. Decisions go to the MLflow experiment `promotion` (one tagged run
each), to stdout, and to `outputs/<dataset>/promotion/decisions.json`. A model whose
training stage skipped this dataset on purpose (e.g. GR/DGR when the models train on another
dataset's queries) is not judged: its decision says why, and the registry is left alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import typer

from components import tracking
from components.atomic import write_text_atomic
from components.config import load_params
from components.data.beir import load_beir
from components.data.judgements import read_judgements
from components.data.splits import HELDOUT, QuerySplits
from components.layout import Layout
from components.promotion import PromotionSplit, promote
from components.registry import registered_name
from components.runs import read_trec_run
from components.teacher.data import document_text
from flows._stage import StageFailed, stage_flow


def promotion_split(params) -> PromotionSplit:
    """The first `promote.queries` held-out dev queries with their BM25 candidates. When the
    models train on another dataset (`data.train_name`), its held-out queries over its corpus."""
    layout = Layout(params.data.name)
    cfg = params.promote
    splits = QuerySplits.load(layout.splits_file)
    qids = splits.heldout[: cfg.queries]
    if not qids:
        raise StageFailed(f"no held-out dev queries in {layout.splits_file} to judge on")
    train_dir = params.data.train_dataset_dir()
    qrels = read_judgements(train_dir, splits.train_split, qids)
    run_path = (layout.train_bm25_run(splits.train_name, splits.train_split)
                if splits.trains_elsewhere else layout.run_dir("bm25") / f"{HELDOUT}.trec")
    bm25_run, _ = read_trec_run(run_path)
    candidates = {q: [d for d, _ in bm25_run.get(q, [])[: cfg.depth]] for q in qids}
    dataset = load_beir(train_dir, qrels=False)
    corpus, queries = dataset.corpus_dict(), dataset.queries_dict()
    documents = {d: document_text(corpus[d]) for ids in candidates.values() for d in ids}
    return PromotionSplit({q: queries[q] for q in qids}, qrels, candidates, documents,
                          name=f"{splits.train_name}/{HELDOUT}")


# Models that read the candidates' text, so they can be judged on another corpus's queries;
# the others search an index of the evaluated corpus.
READS_TEXT = {"teacher-reranker"}


# Retrievers whose product is their own ranking of the corpus: judged by search, as `evaluate`
# reports them, not by reordering the split's BM25 candidates.
JUDGED_BY_SEARCH = {"dgr"}


# Registered model -> the folder under outputs/<dataset>/ where its stage writes summary.json.
STAGE_OUTPUTS = {"teacher-reranker": "teacher", "rabtriever": "rabtriever", "dgr": "dgr"}


def skipped_on_this_dataset(layout: Layout, model: str) -> str | None:
    """The reason the model's stage gave for not training on this dataset, if it skipped."""
    summary = layout.root / STAGE_OUTPUTS.get(model, model) / "summary.json"
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("skipped")


@stage_flow("promote")
def promote_flow(params_path: str = "params.yaml", models: list[str] | None = None,
                 version: int | None = None) -> list[dict]:
    params = load_params(params_path)
    cfg = params.promote
    models = models or cfg.models
    if version is not None and len(models) != 1:
        raise StageFailed("--version needs exactly one --model")
    section = {"promote": cfg.model_dump(), "data": params.data.model_dump()}
    with tracking.stage_run("promote", params.tracking.experiment, section,
                            params.data.dataset_dir()):
        split = promotion_split(params)
        layout = Layout(params.data.name)
        decisions = []
        for model in models:
            name = registered_name(model, params.data.name)
            reason = skipped_on_this_dataset(layout, model)
            if not reason and params.data.trains_elsewhere and model not in READS_TEXT:
                reason = (f"its index holds {params.data.name} documents, and the held-out "
                          f"dev queries are {params.data.train_name}'s")
            if reason:
                print(f"{name}: not judged: {reason}")
                decisions.append({"model": name, "dataset": params.data.name,
                                  "verdict": "skipped", "reason": reason, **split.describe()})
                continue
            try:
                decision = promote(name, split, cfg.primary, cfg.metrics, cfg.alpha, cfg.test,
                                   version=version, by_search=model in JUDGED_BY_SEARCH,
                                   dataset=params.data.name)
            except LookupError as exc:
                raise StageFailed(str(exc)) from None
            how = (f"its own top {params.promote.depth}" if model in JUDGED_BY_SEARCH
                   else f"BM25 top-{params.promote.depth}")
            print(f"{decision.summary()}\n  (judged on {split.name}: {len(split.queries)} "
                  f"queries, {how})")
            decisions.append({**decision.__dict__, "dataset": params.data.name,
                              "verdict": decision.verdict, **split.describe()})
        out = layout.root / "promotion" / "decisions.json"
        write_text_atomic(out, json.dumps(decisions, indent=2) + "\n")
        mlflow.log_dict(decisions, "promotion/decisions.json")
    return decisions


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    model: list[str] = typer.Option(None, help="Model (repeatable; registered as "
                                                "<data.name>.<model>); default: promote.models."),
    version: int = typer.Option(None, help="Version to judge instead of the challenger alias."),
) -> None:
    state = promote_flow(params_path=str(params), models=model or None, version=version,
                         return_state=True)
    if state.is_failed():
        typer.echo(state.message or "promote failed", err=True)
        sys.exit(1)


if __name__ == "__main__":
    app()
