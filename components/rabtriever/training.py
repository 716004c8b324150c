"""On-policy training of the Rabtriever predictor on cached teacher outputs.

Training never runs the LLM. Every input is cached once (`build_training_data` does it):
- query embeddings  [Q, H]: `encode_queries` (pre-norm answer-position state, query prompt);
- doc embeddings    [D, H]: `encode_documents` (post-norm pooled states, document prompt);
- per teacher-scored (query, doc) pair: the teacher's answer-position state with the document in
  the prompt (`PairStates.hidden`, AFTER the final norm) and its logits there, either the full
  vocabulary [P, V] or the top-k (`PairStates.topk_ids` / `topk_logits`, [P, k]);
- for the maxsim predictor, per pair its late-interaction features [P, k] (MaxSim of the two
  texts' token states; `components/rabtriever/late_interaction.py`), which hold no trainable part.

Each epoch the student scores every training query's candidate pool (the pairs the teacher
scored) with its current predictor and keeps its own top-m: on-policy, so training spends its
steps where the student would put documents in front of a user, which is where its mistakes
matter (GKD's argument for on-policy distillation). It trains on those pairs with

    loss = JEPA(norm(pred), teacher_hidden) + lambda * reverse_KL(student logits || teacher logits)

Only the predictor is optimised; the norm and LM head used to read the prediction out are the
LLM's own frozen modules. It trains on the shared DeepSpeed loop (`components.training.loop`;
a constant learning rate, no warm-up), whose task hook picks each epoch's pairs with the current
predictor. Resuming: the loop's checkpoint after every epoch holds the predictor, the optimizer,
the loop state and this task's history; data order and dropout are functions of (seed, epoch),
so a resumed run repeats exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from components.config import RabtrieverParams
from components.rabtriever.jepa_loss import jepa_loss
from components.rabtriever.model import Rabtriever
from components.rabtriever.predictor import Predictor, RabtrieverScorer
from components.rabtriever.reverse_kl import reverse_kl
from components.teacher.reranker import LLMReranker, PairStates
from components.training import loop

log = logging.getLogger(__name__)


@dataclass
class TeacherPairs:
    """The teacher's outputs for the (query, doc) pairs it scored, row-aligned."""

    query_index: torch.Tensor  # [P] long, row in the query embeddings
    doc_index: torch.Tensor  # [P] long, row in the document embeddings
    hidden: torch.Tensor  # [P, H] answer-position state AFTER the final norm
    logits: torch.Tensor  # [P, V] full vocab, or [P, k] values at `logit_ids`
    logit_ids: torch.Tensor | None = None  # [P, k] vocab ids; None: `logits` is full vocab
    scores: torch.Tensor | None = None  # [P] teacher scores (only for agreement statistics)

    def __post_init__(self):
        n = len(self.query_index)
        if not (len(self.doc_index) == len(self.hidden) == len(self.logits) == n):
            raise ValueError("query_index, doc_index, hidden and logits must have one row per pair")
        if self.logit_ids is not None and self.logit_ids.shape != self.logits.shape:
            raise ValueError(f"logit ids {self.logit_ids.shape} != logits {self.logits.shape}")

    @classmethod
    def from_pair_states(
        cls, query_index: Sequence[int], doc_index: Sequence[int], states: PairStates
    ) -> TeacherPairs:
        """From `LLMReranker.forward_pair_states(pairs, top_k=k)` (k > 0: its top-k logits)."""
        if states.topk_logits is None:
            raise ValueError("forward_pair_states was run without top_k; no logits to distil")
        return cls(
            query_index=torch.as_tensor(query_index, dtype=torch.long),
            doc_index=torch.as_tensor(doc_index, dtype=torch.long),
            hidden=states.hidden,
            logits=states.topk_logits,
            logit_ids=states.topk_ids,
            scores=states.scores,
        )


@dataclass
class JepaTrainingData:
    """Everything training reads, cached: embeddings plus the teacher's pair outputs."""

    query_embs: torch.Tensor  # [Q, H] pre-norm query states
    doc_embs: torch.Tensor  # [D, H] pooled post-norm document states
    pairs: TeacherPairs
    query_ids: Sequence[str] | None = None  # names for the sampling record; default: row numbers
    doc_ids: Sequence[str] | None = None
    features: torch.Tensor | None = None  # [P, k] late-interaction features (maxsim predictor)

    def pair_features(self, rows: torch.Tensor) -> torch.Tensor | None:
        return None if self.features is None else self.features[rows]


@dataclass
class EpochStats:
    epoch: int
    steps: int
    loss: float
    jepa: float
    rkl: float
    agreement: float | None  # student/teacher pairwise agreement on the pools at epoch start
    sampled: dict[str, list[str]] = field(default_factory=dict)  # qid -> docs trained on


@dataclass
class JepaTrainResult:
    epochs: list[EpochStats]
    steps: int
    final_agreement: float | None


LogFn = Callable[[int, dict[str, float]], None]


def build_training_data(
    retriever: Rabtriever,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    pools: Mapping[str, Sequence[str]],
    top_k: int = 64,
    batch_size: int = 8,
) -> JepaTrainingData:
    """Run the frozen LLM once over everything training needs.

    `pools`: qid -> the documents the teacher ranked for it (e.g. its top-n of the BM25 run).
    The teacher is the retriever's own LLM with the same prompt and truncation, which is what
    makes its states valid targets for this student. Only pooled documents are encoded.
    `top_k`: teacher logits cached per pair (k of the vocabulary; the full row would be 49k).
    """
    qids = [q for q in queries if pools.get(q)]
    docids = list(dict.fromkeys(d for q in qids for d in pools[q]))
    q_row = {q: i for i, q in enumerate(qids)}
    d_row = {d: i for i, d in enumerate(docids)}
    pairs = [(q, d) for q in qids for d in dict.fromkeys(pools[q])]
    teacher = LLMReranker(
        retriever.model, retriever.tokenizer, retriever.template, retriever.max_doc_tokens,
        bf16=retriever.bf16,
    )  # fmt: skip
    log.info(
        "caching teacher outputs: %d queries, %d docs, %d pairs", *map(len, (qids, docids, pairs))
    )
    states = teacher.forward_pair_states(
        [(corpus[d], queries[q]) for q, d in pairs], batch_size=batch_size, top_k=top_k
    )
    doc_embs, doc_tokens = retriever.encode_corpus([corpus[d] for d in docids], batch_size)
    teacher_pairs = TeacherPairs.from_pair_states(
        [q_row[q] for q, _ in pairs], [d_row[d] for _, d in pairs], states
    )
    query_texts = [queries[q] for q in qids]
    return JepaTrainingData(
        query_embs=retriever.encode_queries(query_texts, batch_size),
        doc_embs=doc_embs,
        pairs=teacher_pairs,
        query_ids=qids,
        doc_ids=docids,
        features=retriever.pair_features(
            query_texts, doc_embs, doc_tokens, teacher_pairs.query_index,
            teacher_pairs.doc_index, batch_size,
        ),  # fmt: skip
    )


@torch.no_grad()
def student_scores(
    predictor: Predictor, scorer: RabtrieverScorer, data: JepaTrainingData, batch_size: int = 4096
) -> torch.Tensor:
    """[P] current student scores of every teacher-scored pair."""
    was_training = predictor.training
    predictor.eval()
    pairs, out = data.pairs, torch.empty(len(data.pairs.query_index))
    device = next(predictor.parameters()).device
    for start in range(0, len(out), batch_size):
        rows = slice(start, start + batch_size)
        q = data.query_embs[pairs.query_index[rows]].to(device)
        d = data.doc_embs[pairs.doc_index[rows]].to(device)
        f = data.pair_features(torch.arange(len(out))[rows])
        out[rows] = scorer.score(predictor(q, d, None if f is None else f.to(device))).cpu()
    predictor.train(was_training)
    return out


def pairwise_agreement(student: torch.Tensor, teacher: torch.Tensor, groups: torch.Tensor) -> float:
    """Fraction of within-query pairs the student orders as the teacher does (ties: half).

    Over pairs (i, j) of the same query with teacher[i] > teacher[j]; 0.5 is chance (and what a
    student that scores every document alike gets), 1.0 the teacher's exact order.
    """
    agree, total = 0.0, 0
    for g in groups.unique():
        rows = (groups == g).nonzero().squeeze(1)
        t, s = teacher[rows], student[rows]
        ordered = t[:, None] > t[None, :]
        diff = s[:, None] - s[None, :]
        agree += ((diff > 0).float() + 0.5 * (diff == 0).float())[ordered].sum().item()
        total += int(ordered.sum())
    return agree / total if total else float("nan")


def select_on_policy(
    scores: torch.Tensor,
    groups: torch.Tensor,
    top_m: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pair rows of each query's top-m pairs by the student's own scores, sorted.

    Ties are broken at random (seeded by `generator`), not by position: the untrained student
    gives every document of a query the same score, so its first epoch is a uniform sample of
    the teacher's pool rather than whatever the pool happened to list first.
    """
    chosen = []
    for g in groups.unique():
        rows = (groups == g).nonzero().squeeze(1)
        if generator is not None:
            rows = rows[torch.randperm(len(rows), generator=generator)]
        best = torch.sort(scores[rows], descending=True, stable=True).indices[:top_m]
        chosen.append(rows[best])
    return torch.cat(chosen).sort().values


def _step_losses(
    predictor: Predictor,
    scorer: RabtrieverScorer,
    data: JepaTrainingData,
    rows: torch.Tensor,
    params: RabtrieverParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(predictor.parameters()).device
    pairs = data.pairs
    features = data.pair_features(rows)
    pred = predictor(
        data.query_embs[pairs.query_index[rows]].to(device),
        data.doc_embs[pairs.doc_index[rows]].to(device),
        None if features is None else features.to(device),
    )
    jepa = jepa_loss(
        scorer.normalize(pred),
        pairs.hidden[rows].to(device),
        form=params.jepa_form,
        temperature=params.jepa_temperature,
        normalize=params.jepa_normalize,
        beta=params.smooth_l1_beta,
    )
    rkl = reverse_kl(
        scorer.vocab_logits(pred),
        pairs.logits[rows].to(device),
        None if pairs.logit_ids is None else pairs.logit_ids[rows].to(device),
        top_k=params.rkl_top_k,
        temperature=params.rkl_temperature,
    )
    return jepa, rkl


def _names(ids: Sequence[str] | None, index: int) -> str:
    return str(index) if ids is None else ids[index]


class OnPolicyTask:
    """The loop's task: each epoch the student's own top-m pairs, in a seeded order.

    `history` holds an `EpochStats` per epoch started, with running sums of the step losses
    (`result` turns them into means); it is the task state the loop checkpoints.
    """

    def __init__(self, scorer: RabtrieverScorer, data: JepaTrainingData,
                 params: RabtrieverParams, seed: int):
        self.scorer, self.data, self.params, self.seed = scorer, data, params, seed
        self.history: list[EpochStats] = []
        groups = data.pairs.query_index
        # Pools are fixed, so every epoch selects as many pairs.
        self.selected = int(torch.unique(groups, return_counts=True)[1].clamp(max=params.top_m)
                            .sum())

    def __len__(self) -> int:
        return self.selected

    def batches(self, model: Predictor, epoch: int) -> list[list[int]]:
        # Seeding per epoch (not once) keeps the old trainer's numbers; the global seed covers
        # dropout, the generator tie-breaking and batch order.
        epoch_seed = self.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        data, groups, teacher = self.data, self.data.pairs.query_index, self.data.pairs.scores
        scores = student_scores(model, self.scorer, data, self.params.score_batch_size)
        agreement = pairwise_agreement(scores, teacher, groups) if teacher is not None else None
        chosen = select_on_policy(scores, groups, self.params.top_m, generator)
        order = chosen[torch.randperm(len(chosen), generator=generator)]
        batches = [rows.tolist() for rows in order.split(self.params.batch_size)]
        sampled: dict[str, list[str]] = {}
        for row in chosen.tolist():
            qid = _names(data.query_ids, int(groups[row]))
            sampled.setdefault(qid, []).append(_names(data.doc_ids, int(data.pairs.doc_index[row])))
        self.history.append(EpochStats(epoch, len(batches), 0.0, 0.0, 0.0, agreement, sampled))
        return batches

    def loss(self, model: Predictor, batch: list[int], epoch: int):
        p = self.params
        jepa, rkl = _step_losses(model, self.scorer, self.data, torch.tensor(batch), p)
        loss = p.jepa_weight * jepa + p.rkl_weight * rkl
        stats = self.history[-1]
        stats.loss, stats.jepa, stats.rkl = (stats.loss + loss.item(), stats.jepa + jepa.item(),
                                             stats.rkl + rkl.item())
        return loss, {"jepa": jepa.item(), "rkl": rkl.item()}

    def state_dict(self) -> dict:
        return {"history": [asdict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [EpochStats(**h) for h in state["history"]]

    def result(self) -> list[EpochStats]:
        """The history with mean losses per epoch."""
        return [replace(h, loss=h.loss / max(h.steps, 1), jepa=h.jepa / max(h.steps, 1),
                        rkl=h.rkl / max(h.steps, 1)) for h in self.history]


def train_predictor(
    predictor: Predictor,
    scorer: RabtrieverScorer,
    data: JepaTrainingData,
    params: RabtrieverParams,
    log_fn: LogFn | None = None,
    checkpoint_dir: str | Path | None = None,
    *,
    seed: int,
) -> JepaTrainResult:
    """Train `predictor` in place (see the module docstring); resume from `checkpoint_dir`.

    Loss = `jepa_weight` x JEPA + `rkl_weight` x reverse KL. `log_fn(step, {"loss", "jepa",
    "rkl", "epoch"})` is called after every optimizer step. `params.epochs` may grow between a
    run and its resumption (the learning rate is constant); any other change is refused.
    """
    if any(p.requires_grad for p in scorer.parameters()):
        raise ValueError("the LLM's norm and LM head must be frozen (Rabtriever freezes them)")
    if predictor.uses_tokens:  # a resumed run then loads the same statistics with the weights
        if data.features is None:
            raise ValueError("the maxsim predictor trains on pair features: none were given")
        predictor.fit_feature_scaling(data.features)
    task = OnPolicyTask(scorer, data, params, seed)
    steps_per_epoch = -(-len(task) // params.batch_size)
    settings = loop.LoopSettings(
        lr=params.lr, weight_decay=params.weight_decay, batch_size=params.batch_size,
        max_steps=params.epochs * steps_per_epoch, decay=False, grad_clip=params.grad_clip,
        checkpoint_every=steps_per_epoch,
    )  # fmt: skip
    identity = {**params.model_dump(exclude={"epochs"}), "seed": seed,
                "predictor": predictor.config}

    def on_step(m: loop.StepMetrics) -> None:
        log_fn(m.step, {"loss": m.loss, **m.parts, "epoch": float(m.epoch)})

    result = loop.train(predictor, task, settings, checkpoint_dir,
                        on_step if log_fn is not None else None, seed=seed, identity=identity)
    history = task.result()
    for stats in history:
        log.info("epoch %d: loss %.4f (jepa %.4f, rkl %.4f), agreement at start %s",
                 stats.epoch, stats.loss, stats.jepa, stats.rkl, stats.agreement)
    predictor.eval()
    groups, teacher = data.pairs.query_index, data.pairs.scores
    final = None
    if teacher is not None:
        final = pairwise_agreement(
            student_scores(predictor, scorer, data, params.score_batch_size), teacher, groups
        )
    return JepaTrainResult(epochs=history, steps=result.steps_done, final_agreement=final)
