"""Choose a default on the held-out dev queries: rerun stages once per value of one key.

    .venv/bin/python scripts/dev_sweep.py --key rabtriever.rkl_weight --values 0 0.1 1 \
        --stages rabtriever --systems rabtriever_rerank [--params params.yaml]

Needs a finished default run (`make pipeline`): its outputs are copied into a scratch
workspace (`--scratch`, default `.run/sweep`), where `python -m flows.<stage>` reruns each
stage of `--stages` with the key set to each value (RERANK_DISTILL_ROOT points the stages at
the copy; the workspace, its registry and `params.yaml` are not touched). Each value's runs
of `--systems` are then scored on the held-out dev queries only (`heldout`, see
components/data/splits.py), never on test: the table gives the primary metric, the difference
from the first value with its paired test (Holm-corrected over the values) and per-query
win/tie/loss. The first value should be the current default; with `--reference current` the
default run's own dev runs (copied, not rerun) are the reference row instead, which saves
rerunning the default when its outputs are up to date (`dvc status` clean).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ is not a package; make `components` importable

from components.config import load_params  # noqa: E402
from components.data.judgements import read_judgements  # noqa: E402
from components.data.splits import HELDOUT, QuerySplits  # noqa: E402
from components.evaluation.headline import win_tie_loss  # noqa: E402
from components.evaluation.metrics import METRIC_LABELS, per_query_metrics  # noqa: E402
from components.evaluation.significance import compare, holm  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.runs import read_run_topics, read_trec_run  # noqa: E402


def parse_value(text: str):
    """`0.1` -> 0.1, `[0, 4]` -> [0, 4], `full` -> "full" (YAML's reading, as in params.yaml)."""
    return yaml.safe_load(text)


def scratch_workspace(scratch: Path) -> None:
    """A copy of what the stages read and write: data, outputs, the MLflow store."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    shutil.copytree(ROOT / "data" / "raw", scratch / "data" / "raw")
    shutil.copytree(ROOT / "outputs", scratch / "outputs", symlinks=True)
    if (ROOT / "mlflow.db").is_file():
        shutil.copy2(ROOT / "mlflow.db", scratch / "mlflow.db")
    (scratch / "mlruns").mkdir(exist_ok=True)


def run_stages(stages: list[str], params_file: Path, scratch: Path, log: Path) -> None:
    env = {**os.environ, "RERANK_DISTILL_ROOT": str(scratch),
           "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
           "PREFECT_HOME": str(scratch / ".prefect")}
    with open(log, "a", encoding="utf-8") as out:
        for stage in stages:
            result = subprocess.run([sys.executable, "-m", f"flows.{stage}", "--params",
                                     str(params_file)], cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
            if result.returncode != 0:
                raise SystemExit(f"{stage} failed with {params_file.name}; see {log}")


def dev_scores(layout: Layout, system: str, qrels: dict, metric: str) -> dict[str, float]:
    path = layout.run_dir(system) / f"{HELDOUT}.trec"
    run, _ = read_trec_run(path)
    qids = sorted(set(read_run_topics(path) or run) & set(qrels))
    return per_query_metrics(run, qrels, [metric], qids)[metric]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True, 
                        help="dotted params key, e.g. rabtriever.rkl_weight")
    parser.add_argument("--values", nargs="+", required=True, type=parse_value)
    parser.add_argument("--stages", nargs="+", required=True)
    parser.add_argument("--systems", nargs="+", required=True, help="run folders to score")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--scratch", type=Path, default=ROOT / ".run" / "sweep")
    parser.add_argument("--reference", choices=["first", "current"], default="first",
                        help="first: the first value is rerun and is the reference; current: "
                             "the default run's outputs (as copied) are the reference")
    args = parser.parse_args()

    params = load_params(args.params)
    metric = params.evaluate.primary
    splits = QuerySplits.load(Layout(params.data.name).splits_file)
    if not splits.dev_evaluated:
        raise SystemExit(f"{params.data.name} has no held-out dev queries over its own corpus")
    qrels = read_judgements(params.data.dataset_dir(), splits.train_split, splits.dev_evaluated)
    scratch = args.scratch.resolve()
    scratch_workspace(scratch)
    layout = Layout(params.data.name, root=scratch)
    raw = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    scores: dict[tuple[str, str], dict[str, float]] = {}
    values_rerun = list(args.values)
    values = values_rerun
    if args.reference == "current":
        for system in args.systems:
            scores[("current", system)] = dev_scores(layout, system, qrels, metric)
        values = ["current", *values_rerun]
    for value in values_rerun:
        node = raw
        *parents, leaf = args.key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        params_file = scratch / f"params-{values_rerun.index(value)}.yaml"
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        load_params(params_file)  # a bad value fails here, naming the key
        print(f"{args.key} = {value!r}: running {', '.join(args.stages)}", flush=True)
        run_stages(args.stages, params_file, scratch, scratch / "sweep.log")
        for system in args.systems:
            scores[(str(value), system)] = dev_scores(layout, system, qrels, metric)

    label = METRIC_LABELS.get(metric, metric)
    base = str(values[0])
    print(f"\n{args.key} on the held-out dev queries ({len(qrels)} queries, {label}; "
          f"difference and paired {params.evaluate.test} against {args.key} = {base}, "
          "Holm-corrected over the values)\n")
    print(f"| system | {args.key} | {label} | Δ | p (Holm) | W/T/L |")
    print("|---|---|---|---|---|---|")
    for system in args.systems:
        reference = scores[(base, system)]
        others = [str(v) for v in values[1:]]
        tests = [compare(scores[(v, system)], reference, method=params.evaluate.test)
                 for v in others]
        adjusted = dict(zip(others, holm([p for p, _ in tests]), strict=True))
        for value in [base, *others]:
            per_query = scores[(value, system)]
            mean = sum(per_query.values()) / len(per_query)
            if value == base:
                print(f"| {system} | {value} | {mean:.4f} | — | — | — |")
                continue
            diff = mean - sum(reference.values()) / len(reference)
            wins, ties, losses = win_tie_loss(per_query, reference)
            print(f"| {system} | {value} | {mean:.4f} | {diff:+.4f} | {adjusted[value]:.3f} | "
                  f"{wins}/{ties}/{losses} |")


if __name__ == "__main__":
    main()
