"""Check that teacher training gives the same loss curve in 1 process and in 2 (torchrun, gloo).

    .venv/bin/python scripts/ds_two_process_check.py [--steps 10] [--workdir DIR]

Builds a tiny random 2-layer Llama on the real SmolLM2 tokenizer, then trains it on the toy
collection twice with the same global batch: once single-process (ZeRO 0, no launcher) and once
under `torchrun --nproc_per_node 2` (ZeRO 1, gloo on 127.0.0.1, data sharded by rank). Each run
starts in a fresh subprocess so neither inherits the other's process group. Prints both curves
and the max abs difference; exits 1 when it exceeds --tol.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ is not a package; make `components` importable

from components.settings import configure_environment  # noqa: E402

configure_environment()


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)  # two workers on two shared cores
    from components.llm.prompts import PromptTemplate
    from components.teacher.data import build_groups, toy_retrieval_data
    from components.teacher.training import TrainParams, train_teacher

    corpus, queries, qrels, run = toy_retrieval_data(n_topics=16)
    groups = build_groups(corpus, queries, qrels, run, n_negatives=3, depth=16, seed=0)
    params = TrainParams(
        train_mode="full",
        lr=1e-3,
        warmup_ratio=0.2,
        max_steps=args.steps,
        micro_batch_groups=1,
        global_batch_groups=4,
        zero_stage=args.zero_stage,
        checkpoint_every=10**9,
        bf16=False,  # fp32 on both sides: the comparison is about sharding, not precision
    )
    result = train_teacher(
        args.model_dir,
        groups,
        PromptTemplate.load("default"),
        params,
        checkpoint_dir=Path(args.out).with_suffix(".ckpt"),
        output_dir=Path(args.out).with_suffix(".model"),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.out).write_text(json.dumps(result.losses))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def driver(args) -> int:
    from transformers import AutoTokenizer

    from components.llm.base_model import build_tiny_causal_lm, smollm2_gguf_path

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ds_two_process_"))
    model_dir = work / "tiny_model"
    if not model_dir.exists():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(work / "tokenizer")
        build_tiny_causal_lm(work / "tokenizer", model_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)  # each run gets its own rendezvous
    common = [str(Path(__file__).resolve()), "--worker", "--model-dir", str(model_dir)]
    common += ["--steps", str(args.steps)]
    one, two = work / "losses_1proc.json", work / "losses_2proc.json"
    subprocess.run(
        [sys.executable, *common, "--zero-stage", "0", "--out", str(one)], env=env, check=True
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *common,
            "--zero-stage",
            "1",
            "--out",
            str(two),
        ],
        env=env,
        check=True,
    )
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    print("step  1-process  2-process")
    for step, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        print(f"{step:4d}  {x:9.6f}  {y:9.6f}")
    print(f"max abs diff over {len(a)} steps: {diff:.3g} (tolerance {args.tol:g})")
    return 0 if diff <= args.tol else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--workdir", type=str, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=str, help=argparse.SUPPRESS)
    parser.add_argument("--zero-stage", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=str, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
