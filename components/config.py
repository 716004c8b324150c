"""Typed schema for `params.yaml`.

`params.yaml` holds every knob with its value and a comment; this module holds their types and
bounds only, no second set of defaults: every key is required, so a missing key, a typo or a
wrong type fails fast with the file and the key named (pydantic `extra="forbid"`). A few keys
may be `null` in the file to mean "the dataset's own" (`components/data/catalog.py`).
Each stage reads only its own section (plus `data` and `seed`). Profiles, which change some
keys of the file, are `components/profiles.py`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import pytrec_eval
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from components import strict_yaml
from components.data import catalog
from components.settings import repo_root

DEVICE_SETTING = r"^(auto|cpu|cuda(:\d+)?)$"  # components.device reads it


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, raw: Any) -> Any:
        # pydantic reads `seed: true` as 1; a YAML boolean where a number belongs is a slip.
        if isinstance(raw, dict):
            for name, value in raw.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field and field.annotation in (int, float):
                    raise ValueError(f"{name}: expected a number, got the boolean {value!r}")
        return raw


class DataParams(Section):
    name: str
    root: str
    # null in params.yaml = the dataset's entry in components/data/catalog.py (filled below)
    train_name: str
    train_split: str
    test_split: str
    eval_queries: int = Field(ge=0)  # 0 = all test queries
    dev_queries: int = Field(ge=1)  # held-out dev queries carved from the training queries
    dev_max_share: float = Field(gt=0, le=0.5)  # ...at most this share of them
    train_queries: int = Field(ge=0)  # 0 = all train queries

    @model_validator(mode="before")
    @classmethod
    def _catalog_defaults(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not raw.get("name"):
            return raw  # a missing name is reported as missing
        spec = catalog.spec(str(raw["name"]))
        resolved = {"train_name": spec.train_name or raw["name"],
                    "train_split": spec.train_split, "test_split": spec.test_split}
        # Only an explicit null resolves: a missing key is an error like any other.
        return {**raw, **{k: v for k, v in resolved.items() if k in raw and raw[k] is None}}

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
    allowed_grades: list[int]
    max_doc_chars: int = Field(gt=0)
    max_title_chars: int = Field(gt=0)
    max_query_chars: int = Field(gt=0)
    max_id_chars: int = Field(gt=0, le=32766)  # Lucene drops a term over 32,766 bytes
    min_docs: int = Field(ge=1)
    max_docs: int = Field(ge=1)
    min_queries: int = Field(ge=1)
    max_queries: int = Field(ge=1)
    sample_size: int = Field(ge=1)

    @model_validator(mode="after")
    def _ranges_ordered(self) -> ValidateParams:
        for low, high in (("min_docs", "max_docs"), ("min_queries", "max_queries")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) is above {high} "
                                 f"({getattr(self, high)})")
        return self


# Lucene allocates k result slots per query: a depth in the billions fails inside the JVM.
MAX_DEPTH = 100_000


def trec_measure(metric: str) -> str:
    """trec_eval measure for a key: ndcg_cut_10 -> ndcg_cut.10, recall_100 -> recall.100."""
    if metric == "recip_rank_10":
        return "recip_rank"
    family, _, cutoff = metric.rpartition("_")
    return f"{family}.{cutoff}" if cutoff.isdigit() and family else metric


def _known_metric(name: str) -> str:
    family, _, cutoff = trec_measure(name).partition(".")
    if family not in pytrec_eval.supported_measures or (cutoff and not cutoff.isdigit()):
        raise ValueError(f"{name!r} is not a trec_eval measure (e.g. ndcg_cut_10, recall_100, "
                         "recip_rank_10, map, P_1)")
    return name


class BM25Params(Section):
    k1: float = Field(gt=0)
    b: float = Field(ge=0, le=1)
    depth: int = Field(ge=1, le=MAX_DEPTH)
    threads: int = Field(ge=1)
    fields: Literal["flat"]


# A trec_eval measure key, checked before any stage runs (not after metrics.json is written).
MetricName = Annotated[str, AfterValidator(_known_metric)]


class EvaluateParams(Section):
    metrics: list[MetricName] = Field(min_length=1)
    primary: MetricName
    alpha: float = Field(gt=0, lt=1)  # significance level of the marks in the table
    test: Literal["t-test", "permutation"]  # paired test per metric and query set

    @model_validator(mode="after")
    def _primary_reported(self) -> EvaluateParams:
        if self.primary not in self.metrics:
            raise ValueError(f"primary {self.primary!r} is not among metrics {self.metrics}")
        return self


class DenseParams(Section):
    depth: int = Field(ge=1, le=MAX_DEPTH)  # hits retrieved per query
    batch_size: int = Field(ge=1)  # texts per encoder forward
    bf16: bool  # bf16 autocast where the CPU/GPU has native bf16
    max_tokens: int | None = Field(ge=8)  # word pieces per text (None: the encoder's 256)
    index: Literal["flat", "ivf", "hnsw"]  # FAISS index type (components.search.faiss_index)
    ivf_lists: int = Field(ge=0)  # ivf: k-means cells (0: 4·sqrt(documents))
    nprobe: int = Field(ge=1)  # ivf: cells scanned per query
    hnsw_m: int = Field(ge=4, le=256)  # hnsw: graph links per document
    ef_search: int = Field(ge=1)  # hnsw: candidates kept while searching


class PromoteParams(Section):
    primary: MetricName  # must be at least as good as the champion's
    metrics: list[MetricName]  # not significantly worse
    alpha: float = Field(gt=0, lt=1)  # significance level of the paired tests
    test: Literal["t-test", "permutation"]
    queries: int = Field(ge=1)  # frozen split: the first N held-out dev queries
    depth: int = Field(ge=1)  # BM25 candidates the rerankers reorder
    models: list[str]  # promoted by the stage


class BaseModelParams(Section):
    source: str  # a bundled GGUF (components.llm.base_model.BUNDLED_GGUF), a HF id or path


class TeacherParams(Section):
    task: str  # null in params.yaml = the dataset's prompt (catalog)
    train_mode: Literal["lora", "top_layers", "full"]
    top_layers: int = Field(ge=1)
    lora_r: int = Field(ge=1)
    lora_alpha: int = Field(ge=1)
    lora_dropout: float = Field(ge=0, lt=1)
    lora_target_modules: list[str] = Field(min_length=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    max_steps: int = Field(ge=1)
    global_batch_groups: int = Field(ge=1)
    micro_batch_groups: int = Field(ge=1)
    negatives: int = Field(ge=1)
    mining_depth: int = Field(ge=1)
    max_doc_tokens: int = Field(ge=8)
    temperature: float = Field(gt=0)
    bf16: bool
    zero_stage: int = Field(ge=0, le=3)
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    curve_every: int = Field(ge=0)  # 0: no dev curve
    curve_queries: int = Field(ge=0)  # 0: every evaluated dev query


class RankListsParams(Section):
    depth: int = Field(ge=1)
    # 0: the reranker's own score (the papers'); auto: chosen on dev by rank_lists
    first_stage_weight: Annotated[float, Field(ge=0, le=1)] | Literal["auto"]
    latency_queries: int = Field(ge=1)
    train_queries: int = Field(ge=0)
    train_depth: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    top_k_logits: int = Field(ge=0)
    document_layers: list[Annotated[int, Field(ge=0)]] | None


class RabtrieverParams(Section):
    predictor_form: Literal["attention", "maxsim", "mlp", "film"]
    maxsim_layers: list[int]  # [] = no late-interaction features (not for the maxsim form)
    latent_layer: int = Field(ge=1)
    attention_heads: int = Field(ge=1)
    attention_head_dim: int = Field(ge=1)
    maxsim_doc_tokens: int | None = Field(ge=8)  # None: the teacher's cut
    predictor_width: int = Field(ge=8)
    predictor_dropout: float = Field(ge=0, lt=1)
    predictor_depth: int = Field(ge=1)
    pooling: Literal["mean", "last"]
    epochs: int = Field(ge=1)
    top_m: int = Field(ge=1)
    latency_queries: int = Field(ge=1)
    rounds: int = Field(ge=0)
    round_epochs: int = Field(ge=1)
    round_pool: int = Field(ge=1)
    round_budget: int = Field(ge=1)
    jepa_weight: float = Field(ge=0)
    rkl_weight: float = Field(ge=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    batch_size: int = Field(ge=1)
    grad_clip: float = Field(ge=0)  # 0 = off
    jepa_form: Literal["kl", "smooth_l1"]
    jepa_temperature: float = Field(gt=0)
    smooth_l1_beta: float = Field(gt=0)
    jepa_normalize: Literal["layer", "l2"]
    rkl_temperature: float = Field(gt=0)
    rkl_top_k: int = Field(ge=0)
    score_batch_size: int = Field(ge=1)
    # none: rerank the first stage's top-K only | full: also retrieve over the whole corpus
    corpus: Literal["none", "full"]
    full_k: int = Field(ge=1)
    encode_batch_size: int = Field(ge=1)

    @model_validator(mode="after")
    def _maxsim_has_layers(self) -> RabtrieverParams:
        if self.predictor_form == "maxsim" and not self.maxsim_layers:
            raise ValueError("predictor_form maxsim needs at least one of maxsim_layers")
        if self.jepa_weight + self.rkl_weight == 0:
            raise ValueError("jepa_weight and rkl_weight are both 0: nothing to train on")
        return self


IdentifierView = Literal["title", "semantic_id", "span", "terms", "ngram"]


class DGRParams(Section):
    views: list[IdentifierView]
    view_weights: dict[str, float]
    eval_queries: int = Field(ge=0)
    latency_queries: int = Field(ge=1)
    semantic_dims: int = Field(ge=2)
    ngram_words: int = Field(ge=1)
    ngram_max_words: int = Field(ge=1)
    title_max_words: int = Field(ge=1)
    span_words: int = Field(ge=1)
    terms_count: int = Field(ge=1)
    semantic_branching: int = Field(ge=2)
    semantic_leaf_size: int = Field(ge=1)
    semantic_max_depth: int = Field(ge=1)
    targets_per_passage: int = Field(ge=1)
    indexing_examples: bool
    normalize_views: bool
    teacher_run: str
    train_mode: Literal["full", "top_layers"]
    top_layers: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    grad_clip: float = Field(ge=0)  # 0 = off
    batch_size: int = Field(ge=1)
    max_query_tokens: int = Field(ge=8)
    max_doc_tokens: int = Field(ge=8)
    use_chat_template: bool
    stage1_steps: int = Field(ge=1)
    stage2_steps: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    num_passages: int = Field(ge=2)
    sampling: Literal["top", "top_random"]
    sampling_top: int = Field(ge=0)
    distill_loss: Literal["ranknet", "ranknet_hinge", "listwise_kl", "none"]
    distill_view: IdentifierView
    alpha: float = Field(ge=0)
    temperature: float = Field(gt=0)
    margin: float = Field(ge=0)
    pair_weighting: Literal["reciprocal_sum", "delta", "uniform"]
    hinge_margin: float = Field(ge=0)
    hinge_margin_step: float = Field(ge=0)
    hinge_first_weight: float = Field(gt=0)
    cache_frozen_states: bool
    num_beams: int = Field(ge=1)
    bf16: bool  # decoder layers in bf16 where native; the LM head stays fp32


class BiEncoderParams(Section):
    enabled: bool
    train_mode: Literal["top_layers", "full"]
    top_layers: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    grad_clip: float = Field(ge=0)  # 0 = off
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)  # queries per step (each with its positive + negatives)
    negatives: int = Field(ge=0)  # BM25 hard negatives per query
    mining_depth: int = Field(ge=1)
    temperature: float = Field(gt=0)
    max_doc_tokens: int = Field(ge=8)
    max_query_tokens: int = Field(ge=8)
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    full_k: int = Field(ge=1)
    encode_batch_size: int = Field(ge=1)
    bf16: bool


class TrackingParams(Section):
    experiment: str = Field(min_length=1)


class DistributedParams(Section):
    """How the teacher stage's training is launched. Not a DVC param of the stage: every optimizer
    step consumes the same global batch whatever the process count, so the result does not
    depend on it."""

    num_processes: int = Field(ge=1)  # >1: training runs under `launcher`, one per rank
    launcher: Literal["torchrun", "deepspeed"]


class ScheduleParams(Section):
    """The Prefect deployment of the whole pipeline (`python -m flows.deploy`)."""

    deployment: str
    cron: str
    timezone: str

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
    profile: str
    seed: int = Field(ge=0, lt=2**32)  # numpy and torch accept 0..2**32-1
    device: str = Field(pattern=DEVICE_SETTING)  # auto | cpu | cuda | cuda:N (components.device)
    data: DataParams
    validate: ValidateParams
    bm25: BM25Params
    evaluate: EvaluateParams
    dense: DenseParams
    base_model: BaseModelParams
    teacher: TeacherParams
    rank_lists: RankListsParams
    rabtriever: RabtrieverParams
    dgr: DGRParams
    biencoder: BiEncoderParams
    promote: PromoteParams
    tracking: TrackingParams
    distributed: DistributedParams
    schedule: ScheduleParams

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
        if not isinstance(raw, dict) or not isinstance(raw.get("teacher"), dict):
            return raw
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        teacher = raw["teacher"]
        if "task" not in teacher or teacher["task"] is not None or not data.get("name"):
            return raw  # a missing key (or dataset name) is reported as missing
        task = catalog.spec(str(data["name"])).prompt_task
        return {**raw, "teacher": {**teacher, "task": task}}


class ParamsError(ValueError):
    """params.yaml failed validation; the message names the file and every bad key."""


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid parameters"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (typo?)")
        elif item["type"] == "missing":
            lines.append(f"  - {key}: missing (every key is written in the params file)")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_params(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate params.yaml (default: the repo's). Raises ParamsError."""
    path = Path(path) if path else repo_root() / "params.yaml"
    try:
        raw = strict_yaml.load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raise ParamsError(f"{path}: the file is empty; every section must be written out "
                          "(see the repository's params.yaml)")
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
    if not folder.is_dir():
        parent = folder.parent
        have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise ParamsError(
            f"{params_path}: invalid parameters\n  - data.name: dataset folder {folder} does not "
            f"exist (data.name must name a folder under data.root; found: "
            f"{', '.join(have) or 'none'})"
        )
    # A split name is a qrels file name; a typo would otherwise be a KeyError in some stage.
    for key, split, dataset in (("data.test_split", params.data.test_split, folder),
                                ("data.train_split", params.data.train_split,
                                 params.data.train_dataset_dir())):
        if not (dataset / "qrels" / f"{split}.tsv").is_file():
            have = sorted(f.stem for f in (dataset / "qrels").glob("*.tsv"))
            raise ParamsError(
                f"{params_path}: invalid parameters\n  - {key}: {dataset}/qrels/{split}.tsv does "
                f"not exist (a split is a qrels file name; found: {', '.join(have) or 'none'})"
            )
    return folder
