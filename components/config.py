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


class TrackingParams(Section):
    experiment: str = "rerank-distill"


class Params(Section):
    profile: str = "cpu"
    seed: int = 42
    data: DataParams = DataParams()
    validation: ValidationParams = ValidationParams()
    bm25: BM25Params = BM25Params()
    evaluate: EvaluateParams = EvaluateParams()
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
