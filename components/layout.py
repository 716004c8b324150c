"""Where each stage writes, per dataset. `dvc.yaml` declares the same paths."""

from __future__ import annotations

from pathlib import Path

from components.settings import repo_root


class Layout:
    def __init__(self, dataset: str, root: Path | None = None):
        self.root = (root or repo_root()) / "outputs" / dataset

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    @property
    def bm25_index(self) -> Path:
        return self.root / "bm25" / "index"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, system: str) -> Path:
        return self.runs_dir / system

    @property
    def base_model(self) -> Path:
        """Shared by every dataset: the converted base LLM checkpoint."""
        return self.root.parent / "base_model"

    @property
    def teacher_model(self) -> Path:
        return self.root / "teacher" / "model"

    @property
    def teacher_checkpoints(self) -> Path:
        """Resume points; not a DVC output (DVC would delete it before a rerun)."""
        return self.root / "teacher" / "checkpoints"

    @property
    def rank_lists_dir(self) -> Path:
        return self.root / "rank_lists"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"
