"""On-policy rounds: the student brings candidates, the teacher scores the ones it has not seen.

Round r (1 .. `rabtriever.rounds`), after the training on `rank_lists`' fixed pools:
1. the student scores every distillation query's wide candidate pool: the first stage's top
   `rabtriever.round_pool` (wider than the `rank_lists.train_depth` the teacher scored; three
   times it by default), each document encoded alone like any indexed one;
2. per query, the documents of the student's own top-`top_m` that the teacher has not scored are
   the round's asks, taken rank by rank across queries (every query's best new candidate before
   any query's second) until `round_budget` teacher calls;
3. the teacher (the student's own frozen LLM, document first in the prompt) scores them with
   the outputs distillation needs, they join the pools, and training goes on
   (`training.train_predictor`).
So the teacher labels the student's own ranked samples, including documents outside the list
it scored in `rank_lists` (on-policy distillation in GKD's sense: the student's samples, the
teacher's labels). Each round's asks and answers are saved in the round's checkpoint folder
before training on them: a resumed run repeats no teacher call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.atomic import atomic_path
from components.rabtriever.distillation_data import JepaTrainingData, TeacherPairs
from components.rabtriever.predictor import Predictor, RabtrieverScorer

ASKED_FILE = "asked.safetensors"
RECORD_FILE = "round.json"

# (query rows, document rows) -> the teacher's outputs for those pairs, row-aligned.
TeacherFn = Callable[[list[int], list[int]], TeacherPairs]


@dataclass
class Candidates:
    """The wide pools the student ranks each round: (query row, document row) pairs of the
    training data, with their late-interaction features when the predictor reads them."""

    query_index: torch.Tensor  # [C] long
    doc_index: torch.Tensor  # [C] long
    features: torch.Tensor | None = None  # [C, k]


@dataclass
class RoundRecord:
    round: int
    candidates: int  # pairs the student ranked
    unseen_in_top: int  # of the student's top-m per query, pairs the teacher had not scored
    asked: int  # teacher calls this round (<= round_budget)
    teacher_seconds: float
    asked_teacher_mean: float  # the teacher's mean score of what it was asked (log-odds)


@torch.no_grad()
def rank_candidates(predictor: Predictor, scorer: RabtrieverScorer, data: JepaTrainingData,
                    candidates: Candidates, batch_size: int = 256) -> torch.Tensor:  # fmt: skip
    """[C] the student's current scores of the candidate pairs."""
    was_training = predictor.training
    predictor.eval()
    out = torch.empty(len(candidates.query_index))
    for rows in torch.arange(len(out)).split(batch_size):
        features = None if candidates.features is None else candidates.features[rows]
        pred = data.predict_pairs(
            predictor, candidates.query_index[rows], candidates.doc_index[rows], features
        )
        out[rows] = scorer.score(pred).cpu()
    predictor.train(was_training)
    return out


def pick_asks(scores: torch.Tensor, candidates: Candidates, scored: set[tuple[int, int]],
              top_m: int, budget: int) -> tuple[list[int], int]:  # fmt: skip
    """Candidate rows to ask the teacher about, and how many unscored pairs the student's
    top-m held in all: per query its top-m by score (ties by row) not yet scored, taken rank by
    rank across queries (queries in row order) up to `budget`."""
    per_query: dict[int, list[int]] = {}
    for q in candidates.query_index.unique().tolist():
        rows = (candidates.query_index == q).nonzero().squeeze(1)
        best = rows[torch.sort(scores[rows], descending=True, stable=True).indices[:top_m]]
        per_query[q] = [int(r) for r in best
                        if (q, int(candidates.doc_index[r])) not in scored]  # fmt: skip
    unseen = sum(map(len, per_query.values()))
    asks: list[int] = []
    for rank in range(top_m):
        for rows in per_query.values():
            if rank < len(rows) and len(asks) < budget:
                asks.append(rows[rank])
    return asks, unseen


class TeacherRounds:
    """Grows the training pools between rounds (`training.PoolGrower`)."""

    def __init__(self, candidates: Candidates, teacher: TeacherFn, top_m: int, budget: int):
        self.candidates, self.teacher = candidates, teacher
        self.top_m, self.budget = top_m, budget

    def grow(self, predictor: Predictor, scorer: RabtrieverScorer, data: JepaTrainingData,
             round_index: int, folder: Path | None) -> RoundRecord:  # fmt: skip
        if folder is not None and (folder / RECORD_FILE).exists():  # resumed: no teacher call
            stored = load_file(str(folder / ASKED_FILE))
            features = stored.pop("features", None)
            data.add_pairs(TeacherPairs(**stored), features)
            return RoundRecord(**json.loads((folder / RECORD_FILE).read_text()))
        cand = self.candidates
        scores = rank_candidates(predictor, scorer, data, cand)
        scored = set(zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(),
                         strict=True))  # fmt: skip
        asks, unseen = pick_asks(scores, cand, scored, self.top_m, self.budget)
        if not asks:  # the student's top-m are all scored already: nothing to ask
            return RoundRecord(round_index, len(scores), unseen, 0, 0.0, float("nan"))
        started = time.perf_counter()
        rows = torch.as_tensor(asks, dtype=torch.long)
        answers = self.teacher(cand.query_index[rows].tolist(), cand.doc_index[rows].tolist())
        seconds = time.perf_counter() - started
        features = None if cand.features is None else cand.features[rows]
        record = RoundRecord(
            round=round_index, candidates=len(scores), unseen_in_top=unseen, asked=len(asks),
            teacher_seconds=seconds,
            asked_teacher_mean=float("nan") if answers.scores is None
            else float(answers.scores.mean()),
        )  # fmt: skip
        if folder is not None:
            self._save(folder, answers, features, record)
        data.add_pairs(answers, features)
        return record

    @staticmethod
    def _save(folder: Path, answers: TeacherPairs, features: torch.Tensor | None,
              record: RoundRecord) -> None:  # fmt: skip
        tensors = {k: v.contiguous() for k, v in asdict(answers).items() if v is not None}
        if features is not None:
            tensors["features"] = features.contiguous()
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / ASKED_FILE) as tmp:
            save_file(tensors, tmp)
        # Written last: its presence says the round's answers are complete on disk.
        with atomic_path(folder / RECORD_FILE) as tmp:
            tmp.write_text(json.dumps(asdict(record), indent=2))


__all__ = ["Candidates", "RoundRecord", "TeacherRounds", "pick_asks", "rank_candidates"]
