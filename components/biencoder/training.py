"""Contrastive fine-tuning of the bi-encoder baseline (components.biencoder.model).

Data: the teacher's training groups (components.teacher.data.build_groups), one per
(training query, relevant document), each with n BM25 hard negatives. A step takes
`batch_size` groups: every query is contrasted with its positive, its hard negatives and all
other documents of the step (in-batch negatives). The loop (DeepSpeed), its checkpoints and
resume are components.training.loop's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from components.biencoder.loss import contrastive_loss
from components.biencoder.model import BiEncoder
from components.config import BiEncoderParams
from components.teacher.data import TrainingGroup
from components.teacher.training import apply_train_mode
from components.training.loop import (
    LoopResult,
    LoopSettings,
    StepMetrics,
    seed_everything,
    train,
)


class ContrastiveTask:
    """Pre-tokenised groups and the in-batch contrastive loss of a batch of them."""

    def __init__(self, encoder: BiEncoder, groups: Sequence[TrainingGroup], temperature: float):
        if not groups:
            raise ValueError("contrastive training needs at least one group")
        self.encoder = encoder
        self.temperature = temperature
        self.query_rows = encoder.token_rows([g.query for g in groups], "query")
        docs = sorted({(d, t) for g in groups for d, t in zip(g.docids, g.texts, strict=True)})
        self.doc_rows = dict(zip([d for d, _ in docs],
                                 encoder.token_rows([t for _, t in docs], "passage"),
                                 strict=True))
        self.group_docs = [g.docids for g in groups]

    def __len__(self) -> int:
        return len(self.query_rows)

    def loss(self, model: nn.Module, batch: list[int], epoch: int):
        # Each document once per step, even when several groups share it.
        doc_ids = list(dict.fromkeys(d for i in batch for d in self.group_docs[i]))
        row = {d: j for j, d in enumerate(doc_ids)}
        queries = self.encoder.embed_rows([self.query_rows[i] for i in batch])
        documents = self.encoder.embed_rows([self.doc_rows[d] for d in doc_ids])
        positives = torch.as_tensor([row[self.group_docs[i][0]] for i in batch],
                                    device=queries.device)
        loss = contrastive_loss(queries, documents, positives, self.temperature)
        return loss, {"documents": float(len(doc_ids))}


def train_biencoder(encoder: BiEncoder, groups: Sequence[TrainingGroup],
                    params: BiEncoderParams, checkpoint_dir: str | Path,
                    on_step: Callable[[StepMetrics], None] | None = None,
                    stop_after: int | None = None, *, seed: int) -> LoopResult:
    """Train `encoder.model` in place for `params.steps` steps (resuming from `checkpoint_dir`
    if it holds a checkpoint)."""
    seed_everything(seed)
    encoder.model = apply_train_mode(encoder.model, params)
    task = ContrastiveTask(encoder, groups, params.temperature)
    identity = {**params.model_dump(exclude={"checkpoint_every", "keep_checkpoints"}),
                "seed": seed}
    result = train(encoder.model, task, LoopSettings.from_section(params, max_steps=params.steps),
                   checkpoint_dir, on_step, stop_after, seed=seed, identity=identity)
    encoder.model.eval()
    return result
