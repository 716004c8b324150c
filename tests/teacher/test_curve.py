"""The training curve file: steps reported again after a resume replace the earlier reports."""

from __future__ import annotations

import csv

from components.teacher.curve import TrainingCurve
from components.teacher.training import StepMetrics


def _step(step: int, loss: float, dev: dict | None = None) -> StepMetrics:
    return StepMetrics(step=step, total_steps=4, epoch=0, loss=loss, lr=1e-3, tokens_per_s=100.0,
                       elapsed_s=float(step), dev=dev or {})


def test_resumed_steps_replace_earlier_reports_in_step_order(tmp_path):
    curve = TrainingCurve(tmp_path / "ckpt" / "curve.jsonl")
    for step, loss in [(1, 2.0), (2, 1.5), (3, 1.2)]:  # killed after step 3
        curve.add(_step(step, loss, {"dev_ndcg_cut_10": 0.5} if step == 2 else None))
    for step, loss in [(3, 1.1), (4, 0.9)]:  # resumed from the step-2 checkpoint
        curve.add(_step(step, loss, {"dev_ndcg_cut_10": 0.7} if step == 4 else None))
    path = curve.write_csv(tmp_path / "curve.csv")
    rows = list(csv.DictReader(path.open()))
    assert [(r["step"], r["loss"], r["dev_ndcg_cut_10"]) for r in rows] == [
        ("1", "2.0", ""), ("2", "1.5", "0.5"), ("3", "1.1", ""), ("4", "0.9", "0.7")]
    assert list(rows[0])[:4] == ["step", "epoch", "loss", "lr"]
