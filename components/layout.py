"""Where each stage writes, per dataset. `dvc.yaml` declares the same paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from components.settings import repo_root


def run_key(identity: dict[str, Any]) -> str:
    """A short digest of what determines a training run's result (params, data hash)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class Layout:
    def __init__(self, dataset: str, root: Path | None = None):
        self.dataset = dataset
        self.root = (root or repo_root()) / "outputs" / dataset

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    @property
    def splits_file(self) -> Path:
        """The query splits `validate` carves (components/data/splits.py)."""
        return self.root / "splits.json"

    @property
    def bm25_index(self) -> Path:
        return self.root / "bm25" / "index"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, system: str) -> Path:
        return self.runs_dir / system

    def train_bm25_index(self, train_name: str) -> Path:
        """Index of another dataset's corpus, when the models train on it (`data.train_name`)."""
        return self.root / "bm25" / "train" / train_name / "index"

    def train_bm25_run(self, train_name: str, split: str) -> Path:
        """BM25 run of the training queries: this dataset's own run, or the bm25 stage's run
        over `train_name`'s corpus (kept out of `runs/`, which `evaluate` scores)."""
        if train_name == self.dataset:
            return self.run_dir("bm25") / f"{split}.trec"
        return self.root / "bm25" / "train" / train_name / f"{split}.trec"

    @property
    def base_model(self) -> Path:
        """Shared by every dataset: the converted base LLM checkpoint."""
        return self.root.parent / "base_model"

    @property
    def teacher_model(self) -> Path:
        return self.root / "teacher" / "model"

    @property
    def teacher_curve(self) -> Path:
        """Loss and dev metric per step (`components.teacher.curve`), a DVC plot."""
        return self.root / "teacher" / "curve.csv"

    @property
    def teacher_checkpoints(self) -> Path:
        """Resume points; not a DVC output (DVC would delete it before a rerun)."""
        return self.root / "teacher" / "checkpoints"

    def checkpoints(self, stage: str) -> Path:
        """Resume points of a student's training, one subfolder per `run_key`.

        Outside the stage's DVC outputs: DVC deletes those before it reruns a stage, which
        would throw away the checkpoints a killed run left to resume from.
        """
        return self.root / "checkpoints" / stage

    @property
    def rank_lists_dir(self) -> Path:
        return self.root / "rank_lists"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"
