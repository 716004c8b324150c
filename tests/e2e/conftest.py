"""A working copy of the repository in a tmp dir, with a small SciFact subset as its data.

The copy holds the tracked and untracked-but-not-ignored files (what a fresh clone plus
the current edits would hold), its own git history, mlflow.db and PREFECT_HOME. The fixture
itself lives in tests/conftest.py, so that every test folder shares one copy per session.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import yaml

from components.settings import REPO_ROOT

MINI = "scifact-mini"


def project_env(root: Path) -> dict[str, str]:
    """The environment a user's shell would have: no state pointing at the test session."""
    # Nor a distributed rendezvous: the test session's in-process DeepSpeed runs set
    # MASTER_PORT and keep that port bound, which a stage process must not try to reuse.
    launcher = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PREFECT_", "PIPELINE_")) and k not in launcher}
    env["PATH"] = f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    env.pop("RERANK_DISTILL_ROOT", None)
    return env


def run(command: list[str], root: Path, check: bool = True, timeout: int = 600,
        extra_env: dict[str, str] | None = None):
    result = subprocess.run(command, cwd=root, env={**project_env(root), **(extra_env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def copy_worktree(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def write_mini_scifact(source: Path, dest: Path, seed: int = 0) -> None:
    """40 test + 60 train queries, their relevant docs and 400 other docs."""
    rng = random.Random(seed)
    qrels = {}
    for split, n in (("test", 40), ("train", 60)):
        lines = (source / "qrels" / f"{split}.tsv").read_text().splitlines()
        rows = [line.split("\t") for line in lines[1:]]
        keep = set(rng.sample(sorted({r[0] for r in rows}), n))
        qrels[split] = [lines[0]] + ["\t".join(r) for r in rows if r[0] in keep]
    judged_docs = {line.split("\t")[1] for rows in qrels.values() for line in rows[1:]}
    judged_queries = {line.split("\t")[0] for rows in qrels.values() for line in rows[1:]}
    corpus = [json.loads(line) for line in (source / "corpus.jsonl").open()]
    others = [d for d in corpus if d["_id"] not in judged_docs]
    keep_docs = judged_docs | {d["_id"] for d in rng.sample(others, 400)}
    (dest / "qrels").mkdir(parents=True)
    with open(dest / "corpus.jsonl", "w") as out:
        for doc in corpus:
            if doc["_id"] in keep_docs:
                out.write(json.dumps(doc) + "\n")
    with open(dest / "queries.jsonl", "w") as out:
        for line in (source / "queries.jsonl").open():
            if json.loads(line)["_id"] in judged_queries:
                out.write(line)
    for split, rows in qrels.items():
        (dest / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n")


def make_project_copy(root: Path) -> Path:
    """A committed copy of the work tree at `root` with the bundled data pulled, the mini
    dataset beside it (untracked) and params.yaml set to the small test profile (the
    `repo_copy` fixture of tests/conftest.py)."""
    root.mkdir()
    copy_worktree(root)
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], root)
    # The bundled data arrive the way they do on a fresh clone: from the in-repo DVC remote.
    # All of them: stages that read training data depend on the whole data/raw folder.
    bundled = sorted(str(p.relative_to(root)) for p in (root / "data/raw").glob("*.dvc"))
    run(["dvc", "pull", "--quiet", *bundled], root)
    write_mini_scifact(root / "data/raw/scifact", root / "data/raw" / MINI)
    tiny = build_tiny_model(root / "tiny-llm")
    params = yaml.safe_load((root / "params.yaml").read_text())
    apply_test_profile(params, tiny)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def build_tiny_model(out: Path) -> Path:
    """A 2-layer random Llama with the real SmolLM2 tokenizer: the model stages' plumbing
    runs for real in seconds (the numbers it produces mean nothing)."""
    from transformers import AutoTokenizer

    from components.llm.base_model import build_tiny_causal_lm, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out.parent / "tiny-tokenizer")
    return build_tiny_causal_lm(out.parent / "tiny-tokenizer", out, hidden_size=64)


def apply_test_profile(params: dict, tiny_model: Path) -> None:
    """The small test profile: the mini dataset, the tiny model, a few steps per stage, this
    machine's CPU (the GPU profile asks for `cuda`: its code paths run here on the CPU)."""
    params["device"] = "cpu"
    params["data"].update(name=MINI, eval_queries=10)
    params["dense"].update(max_tokens=64)
    params["base_model"]["source"] = str(tiny_model)
    params["teacher"].update(max_steps=3, global_batch_groups=2, micro_batch_groups=1,
                             top_layers=1, checkpoint_every=1, max_doc_tokens=48, bf16=False,
                             curve_every=2, curve_queries=3)
    params["rank_lists"].update(train_queries=6, depth=5, train_depth=4, top_k_logits=16,
                                document_layers=[], latency_queries=4)
    params["rabtriever"].update(epochs=2, predictor_width=64, top_m=2, full_k=20,
                                maxsim_layers=[0, 2], latent_layer=2, attention_heads=2,
                                attention_head_dim=8, rounds=1, round_epochs=1, round_pool=8,
                                round_budget=4, latency_queries=4)
    params["promote"].update(queries=5, depth=5)
    params["dgr"].update(stage1_steps=3, stage2_steps=2, batch_size=2, num_beams=3,
                         top_layers=1, num_passages=3, semantic_dims=8, checkpoint_every=1,
                         latency_queries=4, bf16=False)
    params["biencoder"].update(steps=2, batch_size=2, top_layers=1, checkpoint_every=1,
                               full_k=20, bf16=False)
