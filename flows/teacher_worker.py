"""The training body of `teacher`, one process per rank under a launcher.

`flows.teacher` trains in its own process when `distributed.num_processes` is 1. Above
that it starts this module under `torchrun` or the `deepspeed` launcher (`launch_command`) and
reads back what rank 0 reports: one `teacher-step {json}` line per optimizer step on stdout and
the result as JSON in `--result`. The stage process keeps the Prefect flow run and the MLflow
run; nothing here imports Prefect or starts an MLflow run.

Every rank builds the same training groups from params.yaml (deterministic in the seed) and
the trainer shards each global batch by rank, so the loss curve does not depend on the process
count (tests/teacher/test_two_process.py compares 1 and 2 processes).

Other machines, the same module by hand (see README, "Operations"):

    torchrun --nnodes 2 --node_rank R --master_addr HOST0 --master_port 29500 \
        --nproc_per_node 8 -m flows.teacher_worker --params params.yaml --result result.json
    deepspeed --hostfile hostfile --no_local_rank --module flows.teacher_worker \
        --params params.yaml --result result.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from components import tracking
from components.atomic import write_text_atomic
from components.config import Params, load_params
from components.data.beir import load_beir
from components.data.judgements import read_judgements
from components.data.sampling import sample_query_ids
from components.data.splits import HELDOUT, QuerySplits
from components.device import use_device
from components.layout import Layout, run_key
from components.llm.prompts import PromptTemplate
from components.runs import read_trec_run
from components.settings import repo_root
from components.teacher.data import TrainingGroup, build_groups, document_text
from components.teacher.dev_curve import DevSample, dev_query_ids
from components.teacher.training import StepMetrics, TrainResult

STEP_PREFIX = "teacher-step "
# Set by a launcher in every rank; their absence means "not started by a launcher".
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def run_fingerprint(params: Params, data_hash: str) -> str:
    """Checkpoints are only resumed by a run with the same settings and data."""
    # The dev curve's knobs change what is reported, not what is trained.
    teacher = params.teacher.model_dump(exclude={"curve_every", "curve_queries"})
    return run_key({"teacher": teacher, "seed": params.seed,
                    "base": params.base_model.model_dump(), "data": data_hash,
                    "train_queries": params.data.train_queries,
                    "dev": [params.data.dev_queries, params.data.dev_max_share]})


@dataclass
class TrainingInputs:
    groups: list[TrainingGroup]
    template: PromptTemplate
    checkpoints: Path
    dev: DevSample | None  # what the dev curve reranks (None: no held-out dev queries here)


def training_inputs(params: Params) -> TrainingInputs:
    """Groups of one relevant document + BM25 hard negatives, the prompt, the resume folder."""
    cfg, layout = params.teacher, Layout(params.data.name)
    train_dir = params.data.train_dataset_dir()  # data.train_name (usually data.name)
    dataset = load_beir(train_dir, qrels=False)
    # The training queries only: the held-out dev queries never reach a training stage.
    splits = QuerySplits.load(layout.splits_file)
    qrels = read_judgements(train_dir, params.data.train_split, splits.train)
    keep = set(sample_query_ids(qrels, params.data.train_queries, params.seed))
    bm25_run, _ = read_trec_run(layout.train_bm25_run(params.data.train_name,
                                                      params.data.train_split))
    groups = build_groups(dataset.corpus_dict(), dataset.queries_dict(),
                          {q: r for q, r in qrels.items() if q in keep}, bm25_run,
                          n_negatives=cfg.negatives, depth=cfg.mining_depth, seed=params.seed)
    checkpoints = layout.teacher_checkpoints / run_fingerprint(
        params, tracking.dvc_data_hash(train_dir))
    return TrainingInputs(groups, PromptTemplate.load(cfg.task), checkpoints,
                          dev_sample(params, splits, dataset))


def dev_sample(params: Params, splits: QuerySplits, dataset) -> DevSample | None:
    """`teacher.curve_queries` held-out dev queries with BM25's top `rank_lists.depth` (the
    rerank the `rank_lists` stage evaluates), or None when the dataset has no dev split over its
    own corpus (it trains on another dataset) or the curve is off."""
    qids = dev_query_ids(splits.dev_evaluated, params.teacher.curve_queries)
    if not qids or not params.teacher.curve_every:
        return None
    layout = Layout(params.data.name)
    run, _ = read_trec_run(layout.run_dir("bm25") / f"{HELDOUT}.trec")
    depth = params.rank_lists.depth
    candidates = {q: list(run.get(q, ()))[:depth] for q in qids}
    corpus, queries = dataset.corpus_dict(), dataset.queries_dict()
    texts = {d: document_text(corpus[d]) for hits in candidates.values() for d, _ in hits}
    qrels = read_judgements(params.data.dataset_dir(), splits.train_split, qids)
    return DevSample({q: queries[q] for q in qids}, candidates, texts, qrels,
                     params.evaluate.primary, depth)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(num_processes: int, launcher: str, params_path: str,
                   result_path: Path, master_port: int | None = None) -> list[str]:
    """The command that runs this module in `num_processes` processes on this machine."""
    port = str(master_port or free_port())
    worker = ["flows.teacher_worker", "--params", str(params_path), "--result", str(result_path)]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                str(num_processes), "--master_addr", "127.0.0.1", "--master_port", port,
                "-m", *worker]
    if launcher == "deepspeed":
        # --num_gpus is the launcher's name for processes per node (CPU ranks too).
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus",
                str(num_processes), "--master_addr", "127.0.0.1", "--master_port", port,
                "--no_local_rank", "--module", *worker]
    raise ValueError(f"launcher must be torchrun or deepspeed, got {launcher!r}")


def launch_env(num_processes: int) -> dict[str, str]:
    """The launcher's environment: its own rendezvous, the repo importable, cores shared."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    root = str(repo_root())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    # Without a GPU the ranks share the CPU: one thread each would leave cores idle, the
    # default (all cores each) oversubscribes them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    return env


def parse_step(line: str) -> StepMetrics | None:
    """A `teacher-step {json}` line from rank 0, or None for any other output line."""
    if not line.startswith(STEP_PREFIX):
        return None
    return StepMetrics(**json.loads(line[len(STEP_PREFIX):]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--result", required=True, help="JSON written by rank 0 at the end")
    args = parser.parse_args(argv)

    from components.teacher.training import train_teacher

    params = load_params(args.params)
    use_device(params.device)
    inputs = training_inputs(params)
    layout = Layout(params.data.name)
    rank = int(os.environ.get("RANK", "0"))

    def report_step(step: StepMetrics) -> None:
        print(STEP_PREFIX + json.dumps(asdict(step)), flush=True)

    result: TrainResult = train_teacher(layout.base_model, inputs.groups, inputs.template,
                                        params.teacher, inputs.checkpoints,
                                        layout.teacher_model, on_step=report_step,
                                        seed=params.seed, dev_sample=inputs.dev)
    if rank == 0:
        write_text_atomic(Path(args.result), json.dumps(
            {**asdict(result), "output_dir": str(result.output_dir or "")}))


if __name__ == "__main__":
    main()
