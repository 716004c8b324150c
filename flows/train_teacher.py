"""Stage `train_teacher`: fine-tune the LLM reranker with a real DeepSpeed engine.

Listwise softmax cross-entropy over groups of one relevant document and `teacher.negatives`
BM25 hard negatives from training queries. Checkpoints every `teacher.checkpoint_every`
steps; a killed run started again resumes from the last checkpoint. The final model is logged
to MLflow with its prompt template and registered as `teacher-reranker@challenger`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow

from components import registry, tracking
from components.config import load_params
from components.data.beir import load_beir
from components.data.sampling import sample_query_ids
from components.layout import Layout, run_key
from components.models.prompts import TEMPLATES_PATH, PromptTemplate
from components.models.teacher_pyfunc import log_teacher_model
from components.runs import read_trec_run
from components.training.deepspeed_trainer import TrainParams, train_teacher
from components.training.teacher_data import build_groups
from flows._stage import StageFailed, run_cli, stage_flow

REGISTERED_NAME = "teacher-reranker"


def train_params(params) -> TrainParams:
    cfg = params.teacher
    return TrainParams(
        train_mode=cfg.train_mode, top_layers=cfg.top_layers, lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, lr=cfg.lr, warmup_ratio=cfg.warmup_ratio,
        max_steps=cfg.max_steps, micro_batch_groups=cfg.micro_batch_groups,
        global_batch_groups=cfg.global_batch_groups, max_doc_tokens=cfg.max_doc_tokens,
        temperature=cfg.temperature, bf16=cfg.bf16, zero_stage=cfg.zero_stage,
        checkpoint_every=cfg.checkpoint_every, seed=params.seed)


def run_fingerprint(params, data_hash: str) -> str:
    """Checkpoints are only resumed by a run with the same settings and data."""
    return run_key({"teacher": params.teacher.model_dump(), "seed": params.seed,
                    "base": params.base_model.model_dump(), "data": data_hash,
                    "train_queries": params.data.train_queries})


@stage_flow("train_teacher")
def train_teacher_stage(params_path: str = "params.yaml") -> str:
    params = load_params(params_path)
    cfg, layout = params.teacher, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"teacher": cfg.model_dump(), "data": params.data.model_dump()}
    with tracking.stage_run("train_teacher", params.tracking.experiment, section, dataset_dir):
        dataset = load_beir(dataset_dir)
        qrels = dataset.qrels_dict(params.data.train_split)
        keep = set(sample_query_ids(qrels, params.data.train_queries, params.seed))
        bm25_run, _ = read_trec_run(layout.run_dir("bm25") / f"{params.data.train_split}.trec")
        groups = build_groups(dataset.corpus_dict(), dataset.queries_dict(),
                              {q: r for q, r in qrels.items() if q in keep}, bm25_run,
                              n_negatives=cfg.negatives, depth=cfg.mining_depth,
                              seed=params.seed)
        if not groups:
            raise StageFailed("no training groups: no training query has a relevant document")
        template = PromptTemplate.load(cfg.task)
        needed = cfg.max_steps * cfg.global_batch_groups
        print(f"{len(groups)} training groups of 1+{cfg.negatives}; {cfg.max_steps} steps x "
              f"{cfg.global_batch_groups} groups = {needed} groups "
              f"({needed / len(groups):.2f} epochs)")
        mlflow.log_params({"train_groups": len(groups), "template_version": template.version})
        mlflow.log_dict(template.to_dict(), "prompt_template.json")

        def log_step(step):
            mlflow.log_metrics({"loss": step.loss, "lr": step.lr,
                                "tokens_per_s": step.tokens_per_s}, step=step.step)
            print(f"step {step.step}/{step.total_steps} loss {step.loss:.4f} "
                  f"lr {step.lr:.2e} {step.tokens_per_s:.0f} tok/s {step.elapsed_s:.0f}s")

        checkpoints = layout.teacher_checkpoints / run_fingerprint(
            params, tracking.dvc_data_hash(dataset_dir))
        result = train_teacher(layout.base_model, groups, template, train_params(params),
                               checkpoints, layout.teacher_model, on_step=log_step)
        if not result.completed:
            raise StageFailed(f"training stopped at step {result.steps}/{result.total_steps}")
        mlflow.log_metrics({"final_loss": result.losses[-1] if result.losses else float("nan"),
                            "steps": result.steps})
        with tempfile.TemporaryDirectory() as workdir:
            info = log_teacher_model(layout.teacher_model, TEMPLATES_PATH, cfg.task,
                                     cfg.max_doc_tokens, cfg.bf16, Path(workdir),
                                     registered_name=REGISTERED_NAME)
        registry.set_alias(REGISTERED_NAME, info.registered_model_version, "challenger")
        # Kept until the stage is done: a run killed after training resumes at its last step.
        shutil.rmtree(layout.teacher_checkpoints, ignore_errors=True)
        print(f"registered {REGISTERED_NAME} v{info.registered_model_version} as challenger")
    return str(layout.teacher_model)


if __name__ == "__main__":
    run_cli(train_teacher_stage)
