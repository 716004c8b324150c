"""Training the generative retriever: stage 1 (standard GR), stage 2 (DGR distillation).

Stage 1 teaches the model to emit identifiers at all: cross-entropy on the identifier tokens of
  - query examples:    a training query -> the identifiers of each relevant passage, every view;
  - indexing examples: a passage's own text (cut to `max_doc_tokens`) -> its identifiers,
(in the n-gram view, the few `IdentifierIndex.targets` picks rather than all of them)
so every passage of the corpus is reachable, not only the judged ones (DSI's indexing task).
Only identifier tokens are scored; both kinds go through the one retrieval prompt, and a
batch runs as one packed row with the shared system text once (`components.dgr.packing`).

Stage 2 (DGR, Li et al. 2024) distils a teacher's rank list: per training query, m passages from
the teacher's run (positives from the qrels first, then the teacher's order; see
`sample_passages`), the student's score of each is the teacher-forced log-probability of its
identifier in one view (`distill_view`; in the n-gram view, the passage's n-gram that shares
the rarest words with the query: the one the model would generate), and

    loss = distill(student scores, teacher order / scores) + alpha * generation loss,

with distill = distilled RankNet, logistic (`components.dgr.ranknet`, this project's) or the
released hinge (`components.dgr.hinge_ranknet`), or listwise KL (`components.dgr.listwise_kl`),
or none (the control: stage 2's steps and batches on the
generation term alone), and the generation loss the stage-1 cross-entropy of the first
passage's identifier (the labelled positive, or the teacher's top passage). The teacher is any
run, so BM25 or a dense run can stand in for the LLM reranker. A list's m identifiers share
its query's prompt, which runs once per step (`shared_prompt_logprobs`); in `top_layers` mode
the frozen layers' states of each (prompt, identifier) row are computed once and reused every
epoch, so a step runs only the trainable layers (`components.dgr.frozen_trunk`).

Both stages run on the shared DeepSpeed loop (`components.training.loop`: AdamW, linear
warmup/decay, gradient clipping). Data order is a function of (seed, epoch) alone, so a resumed
run sees exactly the batches an uninterrupted run would have. Checkpoints (every
`checkpoint_every` steps and after the last one) are the loop's: an engine checkpoint of the
trainable weights and optimizer plus the loop state (`components.training.checkpoint`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from components.atomic import atomic_path
from components.config import DGRParams
from components.device import current_device
from components.dgr.frozen_trunk import FrozenTrunk
from components.dgr.hinge_ranknet import released_ranknet
from components.dgr.identifiers import Corpus, IdentifierIndex
from components.dgr.listwise_kl import listwise_kl
from components.dgr.packing import packable, packed_target_logprobs
from components.dgr.precision import bf16_layers
from components.dgr.ranknet import distilled_ranknet
from components.dgr.scoring import (
    QueryPrompt,
    make_lm_batch,
    shared_prompt_logprobs,
    target_logprobs,
)
from components.dgr.trie import encode_identifier
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.runs import Run
from components.teacher.training import TrainResult, apply_train_mode
from components.training.loop import LoopSettings, StepMetrics, seed_everything, train

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GRExample:
    """One stage-1 example: a source text (query or passage) -> one identifier."""

    source: str
    view: str
    identifier: str
    kind: Literal["query", "index"] = "query"


def passage_text(doc: Mapping[str, str]) -> str:
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def stage1_examples(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    corpus: Corpus,
    index: IdentifierIndex,
    views: Sequence[str] | None = None,
    indexing: bool = True,
    limit: int = 2,
) -> list[GRExample]:
    """Query examples for every relevant (grade > 0) passage, plus one indexing example per
    passage and identifier, in `views` (default: all views of the index); at most `limit`
    identifiers per view and passage (`dgr.targets_per_passage`)."""
    views = list(views) if views is not None else index.views
    examples = []
    for qid, judged in qrels.items():
        if qid not in queries:
            continue
        for doc_id, grade in judged.items():
            if grade > 0:
                examples += [
                    GRExample(queries[qid], view, identifier, "query")
                    for view in views
                    for identifier in index.targets(view, doc_id, query=queries[qid], limit=limit)
                ]
    if indexing:
        for doc_id, doc in corpus.items():
            text = passage_text(doc)
            examples += [
                GRExample(text, view, identifier, "index")
                for view in views
                for identifier in index.targets(view, doc_id, limit=limit)
            ]
    return examples


@dataclass(frozen=True)
class DistillList:
    """One stage-2 list: m passages in the order the student must learn (index 0 best)."""

    qid: str
    query: str
    doc_ids: tuple[str, ...]
    teacher_scores: tuple[float, ...]


def sample_passages(
    ranked: Sequence[tuple[str, float]],
    positives: Sequence[str],
    m: int,
    sampling: str = "top",
    top: int = 4,
    rng: random.Random | None = None,
) -> list[tuple[str, float]]:
    """m (doc id, teacher score) from a teacher list sorted best first; positives kept on top.

    Positives come first (in the teacher's order; those the teacher missed after them, with the
    list's best score as their teacher score). The remaining slots take the teacher's next
    passages ("top"), or its next `top` ones plus a uniform sample of the rest ("top_random",
    which shows the student some easier negatives), always in the teacher's order.
    """
    scores = dict(ranked)
    best = ranked[0][1] if ranked else 0.0
    positive_set = set(positives)
    head = [(d, s) for d, s in ranked if d in positive_set]
    head += [(d, best) for d in positives if d not in scores]
    head = head[:m]
    rest = [(d, s) for d, s in ranked if d not in positive_set]
    slots = m - len(head)
    if sampling == "top" or len(rest) <= slots:
        return head + rest[:slots]
    fixed = min(top, slots)
    rng = rng or random.Random(0)
    picked = sorted(rng.sample(range(fixed, len(rest)), slots - fixed))
    return head + rest[:fixed] + [rest[i] for i in picked]


def stage2_lists(
    queries: Mapping[str, str],
    teacher_run: Run,
    index: IdentifierIndex,
    params: DGRParams,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    epoch: int = 0,
    *,
    seed: int,
) -> list[DistillList]:
    """One list per query that is in both `queries` and `teacher_run`, with >= 2 passages.

    Only passages with an identifier in `params.distill_view` can be scored, so the others are
    left out. Random sampling is seeded by (seed, epoch, qid): each epoch sees a fresh sample, and
    a resumed run the same one.
    """
    lists = []
    for qid in sorted(set(queries) & set(teacher_run)):
        ranked = sorted(teacher_run[qid], key=lambda pair: (-pair[1], pair[0]))
        ranked = [(d, s) for d, s in ranked if index.identifiers(params.distill_view, d)]
        judged = (qrels or {}).get(qid, {})
        positives = [
            d
            for d, g in sorted(judged.items(), key=lambda kv: (-kv[1], kv[0]))
            if g > 0 and index.identifiers(params.distill_view, d)
        ]
        rng = random.Random(f"{seed}/{epoch}/{qid}")
        chosen = sample_passages(
            ranked, positives, params.num_passages, params.sampling, params.sampling_top, rng
        )
        if len(chosen) >= 2:
            doc_ids, scores = zip(*chosen, strict=True)
            lists.append(DistillList(qid, queries[qid], tuple(doc_ids), tuple(scores)))
    return lists


# --------------------------------------------------------------------------------- losses


def generation_loss(model: nn.Module, prompts, targets, pad_id: int) -> torch.Tensor:
    """Token-mean cross-entropy of `targets` given `prompts`. Packed (the shared system text
    once, no padding) where the model allows it; the padded batch otherwise."""
    if packable(model):
        logprobs, mask = packed_target_logprobs(model, prompts, targets)
    else:
        logprobs, mask = target_logprobs(model, make_lm_batch(prompts, targets, pad_id))
    return -logprobs.sum() / mask.sum().clamp_min(1)


class _Stage1:
    """Tokenised stage-1 examples and the loss of a batch of them."""

    def __init__(self, examples: Sequence[GRExample], tokenizer, params: DGRParams):
        if not examples:
            raise ValueError("stage 1 needs at least one example")
        query_prompt = QueryPrompt(tokenizer, params.max_query_tokens, params.use_chat_template)
        doc_prompt = QueryPrompt(tokenizer, params.max_doc_tokens, params.use_chat_template)
        self.prompts = [
            (query_prompt if e.kind == "query" else doc_prompt).encode([e.source])[0]
            for e in examples
        ]
        self.targets = [encode_identifier(tokenizer, e.view, e.identifier) for e in examples]
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.prompts)

    def loss(self, model, indices: Sequence[int], epoch: int) -> tuple[torch.Tensor, dict]:
        prompts = [self.prompts[i] for i in indices]
        targets = [self.targets[i] for i in indices]
        return generation_loss(model, prompts, targets, self.pad_id), {}


@torch.no_grad()
def evaluate_stage1(
    model: nn.Module, tokenizer, examples: Sequence[GRExample], params: DGRParams
) -> float:
    """Token-mean identifier cross-entropy over `examples` (e.g. a held-out set), in batches."""
    data = _Stage1(examples, tokenizer, params)
    total, tokens = 0.0, 0
    for start in range(0, len(data), params.batch_size):
        rows = range(start, min(start + params.batch_size, len(data)))
        batch = make_lm_batch(
            [data.prompts[i] for i in rows], [data.targets[i] for i in rows], data.pad_id
        )
        logprobs, mask = target_logprobs(model, batch)
        total, tokens = total - logprobs.sum().item(), tokens + int(mask.sum())
    return total / max(tokens, 1)


class _Stage2:
    """Stage-2 lists (re-sampled per epoch) and the DGR loss of a batch of them."""

    def __init__(self, make_lists: Callable[[int], list[DistillList]], tokenizer, index, params):
        self.make_lists = make_lists
        self.tokenizer = tokenizer
        self.index = index
        self.params = params
        self.prompt = QueryPrompt(tokenizer, params.max_query_tokens, params.use_chat_template)
        self._epoch, self._lists = 0, make_lists(0)
        if not self._lists:
            raise ValueError("stage 2 needs at least one query with >= 2 scorable passages")
        self._trunk_model: nn.Module | None = None
        self._trunk: FrozenTrunk | None = None

    def _trunk_for(self, model: nn.Module) -> FrozenTrunk | None:
        """The frozen-trunk scorer of `model` (made on its first step), or None where it trains
        below its top layers or `cache_frozen_states` is off."""
        if self._trunk_model is not model:
            self._trunk_model = model
            use = self.params.cache_frozen_states
            self._trunk = FrozenTrunk.for_model(model) if use else None
        return self._trunk

    def __len__(self) -> int:
        return len(self._lists)

    def lists(self, epoch: int) -> list[DistillList]:
        if epoch != self._epoch:
            self._epoch, self._lists = epoch, self.make_lists(epoch)
        return self._lists

    def loss(self, model, indices: Sequence[int], epoch: int) -> tuple[torch.Tensor, dict]:
        p = self.params
        lists = self.lists(epoch)  # as many per epoch: only the sampled negatives change
        batch = [lists[i] for i in indices]
        prompts = self.prompt.encode([item.query for item in batch])
        targets, owners = [], []
        for b, item in enumerate(batch):
            for doc_id in item.doc_ids:
                identifier = self.index.targets(p.distill_view, doc_id, item.query, limit=1)[0]
                targets.append(encode_identifier(self.tokenizer, p.distill_view, identifier))
                owners.append(b)
        trunk = self._trunk_for(model)
        if trunk is not None:
            logprobs, mask = trunk.logprobs(prompts, targets, owners)
        else:
            pad_id = self.tokenizer.pad_token_id
            logprobs, mask = shared_prompt_logprobs(model, prompts, targets, owners, pad_id)
        flat_scores = logprobs.sum(-1)
        width = max(len(item.doc_ids) for item in batch)
        scores = flat_scores.new_zeros(len(batch), width)
        teacher = torch.zeros(len(batch), width)
        real = torch.zeros(len(batch), width, dtype=torch.bool)
        first_rows, offset = [], 0
        for b, item in enumerate(batch):
            n = len(item.doc_ids)
            scores[b, :n] = flat_scores[offset : offset + n]
            teacher[b, :n] = torch.tensor(item.teacher_scores)
            real[b, :n] = True
            first_rows.append(offset)
            offset += n
        if p.distill_loss == "ranknet":
            distill = distilled_ranknet(scores, p.temperature, p.margin, p.pair_weighting, real)
        elif p.distill_loss == "ranknet_hinge":
            distill = released_ranknet(scores, p.hinge_margin, p.hinge_margin_step,
                                       p.hinge_first_weight, real)
        elif p.distill_loss == "listwise_kl":
            distill = listwise_kl(scores, teacher, p.temperature, mask=real)
        else:  # "none": the same steps on the generation term alone, to show what distilling adds
            distill = scores.new_zeros(())
        # Generation term: the stage-1 cross-entropy of each list's first (best) passage.
        generation = -logprobs[first_rows].sum() / mask[first_rows].sum().clamp_min(1)
        loss = distill + p.alpha * generation
        return loss, {"distill": distill.item(), "generation": generation.item()}


# ---------------------------------------------------------------------------- the loop


def train_stage1(
    base_model_dir: str | Path,
    examples: Sequence[GRExample],
    params: DGRParams,
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    on_step: Callable[[StepMetrics], None] | None = None,
    stop_after_steps: int | None = None,
    *,
    seed: int,
    max_steps: int,
) -> TrainResult:
    """Standard GR training of the model at `base_model_dir` for `max_steps` steps (the flow
    passes `dgr.stage1_steps`); the result goes to `output_dir`."""
    tokenizer = load_tokenizer(base_model_dir)
    task = _Stage1(examples, tokenizer, params)
    return _train(base_model_dir, task, params, checkpoint_dir, output_dir, on_step,
                  stop_after_steps, seed=seed, max_steps=max_steps, stage=1)


def train_stage2(
    base_model_dir: str | Path,
    queries: Mapping[str, str],
    teacher_run: Run,
    index: IdentifierIndex,
    params: DGRParams,
    checkpoint_dir: str | Path,
    output_dir: str | Path,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
    stop_after_steps: int | None = None,
    *,
    seed: int,
    max_steps: int,
) -> TrainResult:
    """DGR distillation of `teacher_run` into the (stage-1 trained) model at `base_model_dir`,
    for `max_steps` steps (the flow passes `dgr.stage2_steps`)."""
    tokenizer = load_tokenizer(base_model_dir)

    def make_lists(epoch: int) -> list[DistillList]:
        return stage2_lists(queries, teacher_run, index, params, qrels, epoch, seed=seed)

    task = _Stage2(make_lists, tokenizer, index, params)
    return _train(base_model_dir, task, params, checkpoint_dir, output_dir, on_step,
                  stop_after_steps, seed=seed, max_steps=max_steps, stage=2)


def _train(
    base_model_dir, task, params: DGRParams, checkpoint_dir, output_dir, on_step, stop_after, *,
    seed: int, max_steps: int, stage: int,
) -> TrainResult:
    seed_everything(seed)
    model = apply_train_mode(load_causal_lm(base_model_dir, device=current_device()), params)
    bf16_layers(model, params.bf16)
    identity = {**params.model_dump(exclude={"checkpoint_every", "keep_checkpoints"}),
                "seed": seed, "stage": stage, "max_steps": max_steps}
    result = train(model, task, LoopSettings.from_section(params, max_steps=max_steps),
                   checkpoint_dir, on_step, stop_after, seed=seed, identity=identity)
    out = None
    if result.completed:
        out = Path(output_dir)
        with atomic_path(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            load_tokenizer(base_model_dir).save_pretrained(tmp)
    return TrainResult(result.steps_done, result.total_steps, result.completed, out,
                       result.losses)
