"""Stage `teacher`: fine-tune the LLM reranker with a real DeepSpeed engine.

Listwise softmax cross-entropy over groups of one relevant document and `teacher.negatives`
BM25 hard negatives from training queries. Checkpoints every `teacher.checkpoint_every`
steps; a killed run started again resumes from the last checkpoint. The final model is logged
to MLflow with its prompt template and registered as `<dataset>.teacher-reranker@challenger`
(components.registry.registered_name).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow

from components import tracking
from components.config import load_params
from components.device import use_device
from components.layout import Layout
from components.llm.prompts import TEMPLATES_PATH
from components.serving import register_challenger
from components.teacher.curve import LOG_NAME, TrainingCurve
from components.teacher.training import StepMetrics, TrainResult, train_teacher
from flows._stage import StageFailed, run_cli, stage_flow
from flows.teacher_worker import (
    launch_command,
    launch_env,
    parse_step,
    training_inputs,
)

MODEL = "teacher-reranker"


def register(params) -> str:
    """Log the stage's model to the active MLflow run as `<dataset>.teacher-reranker`'s
    challenger; the new version. Also `flows.register`, for models pulled with DVC."""
    cfg = params.teacher
    return register_challenger(
        "teacher", MODEL, params.data.name,
        {"model": Layout(params.data.name).teacher_model, "template": TEMPLATES_PATH},
        {"task": cfg.task, "max_doc_tokens": cfg.max_doc_tokens, "bf16": cfg.bf16})


def train_launched(params, params_path: str, on_step) -> TrainResult:
    """`distributed.num_processes` ranks of flows.teacher_worker under the chosen launcher."""
    dist = params.distributed
    with tempfile.TemporaryDirectory() as workdir:
        result_path = Path(workdir) / "result.json"
        command = launch_command(dist.num_processes, dist.launcher, params_path, result_path)
        print("$ " + " ".join(command))
        process = subprocess.Popen(command, env=launch_env(dist.num_processes),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in process.stdout:
                step = parse_step(line)
                if step is not None:
                    on_step(step)
                elif line.strip():
                    print(line.rstrip())
            process.wait()
        except BaseException:
            process.terminate()  # both launchers pass SIGTERM on to their ranks
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        if process.returncode != 0 or not result_path.is_file():
            raise StageFailed(f"{dist.launcher} with {dist.num_processes} processes failed "
                              f"(exit {process.returncode})")
        raw = json.loads(result_path.read_text())
    raw["output_dir"] = Path(raw["output_dir"]) if raw["output_dir"] else None
    return TrainResult(**raw)


@stage_flow("teacher")
def teacher_stage(params_path: str = "params.yaml") -> str:
    params = load_params(params_path)
    cfg, layout = params.teacher, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"teacher": cfg.model_dump(), "data": params.data.model_dump(),
               "distributed": params.distributed.model_dump()}
    with tracking.stage_run("teacher", params.tracking.experiment, section, dataset_dir,
                            extra_tags={"train_dataset": params.data.train_name}):
        use_device(params.device)  # under a launcher, each rank takes its own (teacher_worker)
        inputs = training_inputs(params)
        groups, template = inputs.groups, inputs.template
        if not groups:
            raise StageFailed("no training groups: no training query has a relevant document")
        needed = cfg.max_steps * cfg.global_batch_groups
        print(f"{len(groups)} training groups of 1+{cfg.negatives}; {cfg.max_steps} steps x "
              f"{cfg.global_batch_groups} groups = {needed} groups "
              f"({needed / len(groups):.2f} epochs)")
        mlflow.log_params({"train_groups": len(groups), "template_version": template.version})
        mlflow.log_dict(template.to_dict(), "prompt_template.json")

        if inputs.dev is not None:
            print(f"dev curve: {len(inputs.dev.queries)} held-out dev queries x BM25 top "
                  f"{inputs.dev.depth}, every {cfg.curve_every} steps")
        curve = TrainingCurve(inputs.checkpoints / LOG_NAME)

        def log_step(step: StepMetrics) -> None:
            mlflow.log_metrics({"loss": step.loss, "lr": step.lr,
                                "tokens_per_s": step.tokens_per_s, **step.dev}, step=step.step)
            curve.add(step)
            dev = "".join(f" {k} {v:.4f}" for k, v in step.dev.items())
            print(f"step {step.step}/{step.total_steps} loss {step.loss:.4f} "
                  f"lr {step.lr:.2e} {step.tokens_per_s:.0f} tok/s {step.elapsed_s:.0f}s{dev}")

        if params.distributed.num_processes > 1:
            result = train_launched(params, params_path, log_step)
        else:
            result = train_teacher(layout.base_model, groups, template, cfg, inputs.checkpoints,
                                   layout.teacher_model, on_step=log_step, seed=params.seed,
                                   dev_sample=inputs.dev)
        if not result.completed:
            raise StageFailed(f"training stopped at step {result.steps}/{result.total_steps}")
        mlflow.log_artifact(str(curve.write_csv(layout.teacher_curve)))
        mlflow.log_metrics({"final_loss": result.losses[-1] if result.losses else float("nan"),
                            "steps": result.steps})
        register(params)
        # Kept until the stage is done: a run killed after training resumes at its last step.
        shutil.rmtree(layout.teacher_checkpoints, ignore_errors=True)
    return str(layout.teacher_model)


if __name__ == "__main__":
    run_cli(teacher_stage)
