"""The teacher's training curve: one row per optimizer step (loss, learning rate, throughput)
plus the dev curve's metric on the steps it was measured (`components.teacher.dev_curve`).

Rows are appended to a JSON-lines log beside the checkpoints as they come, so a run killed and
resumed keeps the steps before its last checkpoint; steps repeated after a resume replace the
earlier ones. At the end the log becomes `teacher/curve.csv`, a DVC plot (`dvc plots show`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

from components.atomic import write_text_atomic

LOG_NAME = "curve.jsonl"


class TrainingCurve:
    def __init__(self, log: Path):
        self.log = Path(log)

    def add(self, step) -> None:
        """Append one `StepMetrics` (its `dev` dict flattened into columns)."""
        row = {k: v for k, v in asdict(step).items() if k != "dev"} | step.dev
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        """One row per step, the last report of a step winning, in step order."""
        if not self.log.is_file():
            return []
        by_step = {}
        for line in self.log.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                by_step[row["step"]] = row
        return [by_step[s] for s in sorted(by_step)]

    def write_csv(self, path: Path) -> Path:
        rows = self.rows()
        columns = ["step", "epoch", "loss", "lr", "tokens_per_s", "elapsed_s"]
        columns += sorted({k for row in rows for k in row} - set(columns) - {"total_steps"})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(Path(path), buffer.getvalue())
        return Path(path)
