"""One rank of the two-process check in test_two_process.py: train the teacher, write the losses.

    python tests/teacher/two_process_worker.py --model-dir DIR --steps N --zero-stage Z --out F

Run plainly (one process) or under `torchrun --nproc_per_node 2` (gloo on 127.0.0.1; the
trainer shards each global batch by rank). Both runs train the same tiny model on the toy
collection with the same global batch; rank 0 writes the per-step losses to `--out` as JSON.
The caller sets PYTHONPATH to the repository root so `components` imports.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from components.settings import REPO_ROOT, configure_environment

configure_environment()


def train(model_dir: str, steps: int, zero_stage: int, out: Path) -> None:
    import torch

    torch.set_num_threads(1)  # two workers on two shared cores
    from components.config import load_params
    from components.llm.prompts import PromptTemplate
    from components.teacher.data import build_groups, toy_retrieval_data
    from components.teacher.training import train_teacher

    corpus, queries, qrels, run = toy_retrieval_data(n_topics=16)
    groups = build_groups(corpus, queries, qrels, run, n_negatives=3, depth=16, seed=0)
    settings = {
        "train_mode": "full",
        "lr": 1e-3,
        "warmup_ratio": 0.2,
        "max_steps": steps,
        "micro_batch_groups": 1,
        "global_batch_groups": 4,
        "max_doc_tokens": 192,
        "zero_stage": zero_stage,
        "checkpoint_every": 10**9,
        "bf16": False,  # fp32 on both sides: the comparison is about sharding, not precision
    }
    params = load_params(REPO_ROOT / "params.yaml",
                         overrides={f"teacher.{k}": v for k, v in settings.items()}).teacher
    result = train_teacher(
        model_dir,
        groups,
        PromptTemplate.load("default"),
        params,
        checkpoint_dir=out.with_suffix(".ckpt"),
        output_dir=out.with_suffix(".model"),
        seed=0,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps(result.losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--zero-stage", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    train(args.model_dir, args.steps, args.zero_stage, args.out)


if __name__ == "__main__":
    main()
