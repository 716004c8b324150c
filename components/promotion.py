"""Champion/challenger promotion in the MLflow model registry.

A registered model's `challenger` (or any version named by hand) is evaluated on a frozen
promotion split, the current `champion` on exactly the same queries and candidates, and the
alias `champion` moves only when the challenger is

- at least as good on the primary metric (mean over the split; ties promote), and
- not significantly worse on any other listed metric (paired test, p < alpha).

With no champion yet, the challenger wins by default. Every decision is an MLflow run in the
`promotion` experiment, tagged with the model, its dataset, the split and its size, both
versions, the verdict and the reason, with both sides' metrics and the p-values, and the
per-query metrics as an artifact.

The models are loaded through `mlflow.pyfunc.load_model("models:/<name>/<version>")` and asked
in the one format every system serves (`components.serving`): each split query's qid, text,
candidate ids and the candidates' texts in, a long frame of qid, rank, docid, score out. A
reranker reorders the same candidates (a text-reading one, the teacher, reads their texts); a
retriever judged by search (`by_search`: DGR, whose product is its own ranking of the whole
corpus) gets the queries alone and answers to the split's depth.

A version's per-query metrics on a split are cached: the decision run that first evaluated it
holds them (`eval/v<version>.json`) and the model version gets the tag
`promotion_eval.<split id>` = that run's id, so a champion is evaluated once per split.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.evaluation.metrics import mean_metrics, per_query_metrics
from components.evaluation.significance import compare
from components.registry import version_of
from components.runs import Run
from components.tracking import ensure_experiment

EXPERIMENT = "promotion"
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class PromotionSplit:
    """The frozen queries (with their first-stage candidates) every version is judged on."""

    queries: dict[str, str]  # qid -> text
    qrels: dict[str, dict[str, int]]
    candidates: dict[str, list[str]]  # qid -> BM25 top-depth doc ids
    documents: dict[str, str]  # doc id -> text, for every candidate
    name: str = "promotion"  # which queries these are, e.g. `scifact/heldout`

    @property
    def split_id(self) -> str:
        """Stable name of the split's content: queries, judgements and candidates."""
        content = json.dumps([self.queries, self.qrels, self.candidates], sort_keys=True)
        return hashlib.sha1(content.encode()).hexdigest()[:12]

    def describe(self) -> dict:
        """What every decision records about the queries it was made on."""
        return {"split": self.name, "split_queries": len(self.queries),
                "split_depth": max((len(c) for c in self.candidates.values()), default=0),
                "split_id": self.split_id}


@dataclass
class Decision:
    model: str
    challenger_version: str
    champion_version: str | None
    promoted: bool
    reason: str
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def verdict(self) -> str:
        return "promoted" if self.promoted else "kept champion"

    def summary(self) -> str:
        lines = [f"{self.model}: challenger v{self.challenger_version} vs champion "
                 f"{'v' + self.champion_version if self.champion_version else '(none)'}"
                 f" -> {self.verdict}: {self.reason}"]
        for metric, value in self.challenger_metrics.items():
            champion = self.champion_metrics.get(metric)
            p_value = self.p_values.get(metric)
            lines.append(f"  {metric}: challenger {value:.4f}"
                         + (f", champion {champion:.4f}" if champion is not None else "")
                         + (f", p = {p_value:.4f}" if p_value is not None else ""))
        return "\n".join(lines)


def request(split: PromotionSplit, by_search: bool = False) -> pd.DataFrame:
    """The split as one pyfunc input: per query (sorted by id) its text, candidates and their
    texts; the queries alone when the model is judged by its own search."""
    qids = sorted(split.queries)
    if by_search:
        return pd.DataFrame({"qid": qids, "query": [split.queries[q] for q in qids]})
    return pd.DataFrame({
        "qid": qids,
        "query": [split.queries[q] for q in qids],
        "candidates": [list(split.candidates[q]) for q in qids],
        "documents": [[split.documents[d] for d in split.candidates[q]] for q in qids],
    })  # fmt: skip


def rank_split(model, split: PromotionSplit, by_search: bool = False) -> Run:
    """Ask a loaded pyfunc model for a ranking of every query of the split."""
    run: Run = {q: [] for q in split.queries}
    depth = max((len(c) for c in split.candidates.values()), default=10)
    answer = model.predict(request(split, by_search), params={"k": depth} if by_search else None)
    for row in answer.itertuples(index=False):
        run[str(row.qid)].append((str(row.docid), float(row.score)))
    return run


def _cache_tag(split: PromotionSplit, by_search: bool = False) -> str:
    return f"promotion_eval.{split.split_id}" + (".search" if by_search else "")


def evaluate_version(name: str, version: str, split: PromotionSplit, metrics: list[str],
                     by_search: bool = False) -> tuple[dict[str, dict[str, float]], bool]:
    """metric -> {qid: value} for one model version; True when it came from the cache."""
    client = MlflowClient()
    cached_run = client.get_model_version(name, version).tags.get(_cache_tag(split, by_search))
    if cached_run:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(cached_run, f"eval/v{version}.json", tmp)
            per_query = json.loads(Path(path).read_text())
        if set(metrics) <= set(per_query):
            return {m: per_query[m] for m in metrics}, True
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    run = rank_split(model, split, by_search)
    qids = sorted(split.queries)
    return per_query_metrics(run, split.qrels, metrics, qids), False


def decide(challenger: dict[str, dict[str, float]], champion: dict[str, dict[str, float]],
           primary: str, metrics: list[str], alpha: float,
           test: str) -> tuple[bool, str, dict[str, float]]:
    """(promote?, reason, p-values) from both sides' per-query metrics on the same queries."""
    p_values, worse = {}, []
    for metric in metrics:
        p_value, diff = compare(challenger[metric], champion[metric], method=test)
        p_values[metric] = p_value
        if metric != primary and p_value < alpha and diff < 0:
            worse.append(f"{metric} (p = {p_value:.4f})")
    mean_challenger = mean_metrics({primary: challenger[primary]})[primary]
    mean_champion = mean_metrics({primary: champion[primary]})[primary]
    if mean_challenger < mean_champion:
        reason = f"{primary} {mean_challenger:.4f} < champion's {mean_champion:.4f}"
        return False, reason, p_values
    if worse:
        return False, f"significantly worse on {', '.join(worse)}", p_values
    return True, (f"{primary} {mean_challenger:.4f} >= champion's {mean_champion:.4f} and not "
                  f"significantly worse on {', '.join(m for m in metrics if m != primary)}"
                  ), p_values


def promote(name: str, split: PromotionSplit, primary: str, metrics: list[str],
            alpha: float = 0.05, test: str = "t-test",
            version: str | int | None = None, by_search: bool = False,
            dataset: str | None = None) -> Decision:
    """Judge `version` (default: the `challenger` alias) against `champion`; log the decision.
    `by_search`: the model ranks the split's queries by its own search, not their candidates.
    `dataset`: the pipeline's dataset, a tag of the decision run."""
    metrics = list(dict.fromkeys([primary, *metrics]))
    challenger_version = str(version) if version is not None else version_of(name, CHALLENGER)
    if challenger_version is None:
        raise LookupError(f"registered model {name!r} has no '{CHALLENGER}' alias; train it "
                          f"first or pass --version")
    champion_version = version_of(name, CHAMPION)
    ensure_experiment(EXPERIMENT)
    tags = {"model": name, "challenger_version": challenger_version,
            "champion_version": champion_version or "none", "split_id": split.split_id,
            "split": split.name, "split_queries": str(len(split.queries)), "kind": "promotion"}
    if dataset:
        tags["dataset"] = dataset
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(EXPERIMENT).experiment_id,
                          run_name=f"promote-{name}-v{challenger_version}", tags=tags,
                          nested=mlflow.active_run() is not None) as run:
        challenger, cached = evaluate_version(name, challenger_version, split, metrics,
                                              by_search)
        _store_evaluation(name, challenger_version, split, challenger, cached, run.info.run_id,
                          by_search)
        decision = Decision(name, challenger_version, champion_version, False, "",
                            mean_metrics(challenger))
        if champion_version is None:
            decision.promoted, decision.reason = True, "no champion yet: the first version wins"
        elif champion_version == challenger_version:
            decision.reason = "this version already is the champion"
        else:
            try:
                champion, cached = evaluate_version(name, champion_version, split, metrics,
                                                    by_search)
            except (MlflowException, KeyError) as exc:
                # The challenger, asked the same way, just answered. A champion that cannot
                # even be loaded was logged by code this repository no longer has (an older
                # pyfunc format); one that raises KeyError cannot rank the gate's candidates
                # (a reranker whose document index was built for other queries, e.g. before
                # the dev split changed). Either way it cannot serve these queries, so the
                # challenger replaces it.
                what = ("no longer loads" if isinstance(exc, MlflowException)
                        else "cannot rank the gate's candidates")
                decision.promoted = True
                decision.reason = (f"champion v{champion_version} {what} "
                                   f"({str(exc).splitlines()[0][:200]}); the challenger "
                                   f"replaces it")
                champion = None
            if champion is not None:
                _store_evaluation(name, champion_version, split, champion, cached,
                                  run.info.run_id, by_search)
                decision.champion_metrics = mean_metrics(champion)
                decision.promoted, decision.reason, decision.p_values = decide(
                    challenger, champion, primary, metrics, alpha, test)
        decision.run_id = run.info.run_id
        mlflow.set_tags({"verdict": decision.verdict, "reason": decision.reason})
        mlflow.log_params({"primary": primary, "alpha": alpha, "test": test,
                           "queries": len(split.queries), "by_search": by_search})
        mlflow.log_metrics({f"challenger_{m}": v for m, v in decision.challenger_metrics.items()}
                           | {f"champion_{m}": v for m, v in decision.champion_metrics.items()}
                           | {f"p_{m}": v for m, v in decision.p_values.items()})
    if decision.promoted:
        MlflowClient().set_registered_model_alias(name, CHAMPION, challenger_version)
    return decision


def _store_evaluation(name: str, version: str, split: PromotionSplit,
                      per_query: Mapping[str, Mapping[str, float]], cached: bool,
                      run_id: str, by_search: bool = False) -> None:
    """Keep a fresh evaluation in this decision run and point the version's cache tag at it."""
    if cached:
        return
    mlflow.log_dict(dict(per_query), f"eval/v{version}.json")
    MlflowClient().set_model_version_tag(name, version, _cache_tag(split, by_search), run_id)
