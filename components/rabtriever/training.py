"""On-policy training of the Rabtriever predictor on cached teacher outputs.

Training never runs the LLM: it reads the cached embeddings and teacher outputs of
`components/rabtriever/distillation_data.py`; only on-policy rounds ask the teacher for more
(`components/rabtriever/rounds.py`).

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

Then, with `rabtriever.rounds` > 0, the distillation is on-policy in the full sense: each round
the student ranks a wider candidate pool than the teacher's list, the teacher scores the
student's own top documents it has not seen, and training continues on the grown pools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from components.config import RabtrieverParams
from components.rabtriever.distillation_data import JepaTrainingData
from components.rabtriever.jepa_loss import jepa_loss
from components.rabtriever.predictor import Predictor, RabtrieverScorer
from components.rabtriever.reverse_kl import reverse_kl
from components.training import loop

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    steps: int
    loss: float
    jepa: float
    rkl: float
    agreement: float | None  # student/teacher pairwise agreement on the pools at epoch start
    sampled: dict[str, list[str]] = field(default_factory=dict)  # qid -> docs trained on
    round: int = 0  # the on-policy round (0: the first pools); `epoch` counts within it


@dataclass
class JepaTrainResult:
    epochs: list[EpochStats]
    steps: int
    final_agreement: float | None
    rounds: list = field(default_factory=list)  # a `RoundRecord` per on-policy round


LogFn = Callable[[int, dict[str, float]], None]


class PoolGrower(Protocol):
    """What grows the training pools between rounds (`components/rabtriever/rounds.py`)."""

    def grow(self, predictor: Predictor, scorer: RabtrieverScorer, data: JepaTrainingData,
             round_index: int, folder: Path | None) -> Any: ...  # fmt: skip


@torch.no_grad()
def student_scores(
    predictor: Predictor, scorer: RabtrieverScorer, data: JepaTrainingData, batch_size: int = 4096
) -> torch.Tensor:
    """[P] current student scores of every teacher-scored pair."""
    was_training = predictor.training
    predictor.eval()
    out = torch.empty(len(data.pairs.query_index))
    if predictor.latent_layer is not None:  # token states [n, T, H] per pass: small passes
        batch_size = min(batch_size, 256)
    for rows in torch.arange(len(out)).split(batch_size):
        out[rows] = scorer.score(data.predict(predictor, rows)).cpu()
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
    """(JEPA, reverse KL) of these pair rows; a loss whose weight is 0 is not computed (0)."""
    pairs = data.pairs
    pred = data.predict(predictor, rows)
    device, zero = pred.device, pred.new_zeros(())
    jepa = zero if params.jepa_weight == 0 else jepa_loss(
        scorer.normalize(pred),
        pairs.hidden[rows].to(device),
        form=params.jepa_form,
        temperature=params.jepa_temperature,
        normalize=params.jepa_normalize,
        beta=params.smooth_l1_beta,
    )  # fmt: skip
    rkl = zero if params.rkl_weight == 0 else reverse_kl(
        scorer.vocab_logits(pred),
        pairs.logits[rows].to(device),
        None if pairs.logit_ids is None else pairs.logit_ids[rows].to(device),
        top_k=params.rkl_top_k,
        temperature=params.rkl_temperature,
    )  # fmt: skip
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


def _train_round(
    predictor: Predictor,
    scorer: RabtrieverScorer,
    data: JepaTrainingData,
    params: RabtrieverParams,
    log_fn: LogFn | None,
    checkpoint_dir: str | Path | None,
    *,
    seed: int,
    epochs: int,
    round_index: int,
    step_offset: int,
    epoch_offset: int,
) -> tuple[list[EpochStats], int]:
    """`epochs` on-policy epochs over the current pools, on the shared loop (fresh optimizer)."""
    task = OnPolicyTask(scorer, data, params, seed)
    steps_per_epoch = -(-len(task) // params.batch_size)
    settings = loop.LoopSettings(
        lr=params.lr, weight_decay=params.weight_decay, batch_size=params.batch_size,
        max_steps=epochs * steps_per_epoch, decay=False, grad_clip=params.grad_clip,
        checkpoint_every=steps_per_epoch,
    )  # fmt: skip
    # A round's identity leaves out only the count it trains, which may grow on resume: a
    # change of the epochs before it (which its stored asks and weights depend on) is refused.
    exclude = {"epochs", "round_epochs"} if round_index == 0 else {"round_epochs"}
    identity = {**params.model_dump(exclude=exclude), "seed": seed, "round": round_index,
                "predictor": predictor.config}

    def on_step(m: loop.StepMetrics) -> None:
        log_fn(step_offset + m.step, {"loss": m.loss, **m.parts,
                                      "epoch": float(epoch_offset + m.epoch),
                                      "round": float(round_index)})  # fmt: skip

    result = loop.train(predictor, task, settings, checkpoint_dir,
                        on_step if log_fn is not None else None, seed=seed, identity=identity)
    history = [replace(h, round=round_index) for h in task.result()]
    for stats in history:
        log.info("round %d epoch %d: loss %.4f (jepa %.4f, rkl %.4f), agreement at start %s",
                 round_index, stats.epoch, stats.loss, stats.jepa, stats.rkl, stats.agreement)
    return history, result.steps_done


def train_predictor(
    predictor: Predictor,
    scorer: RabtrieverScorer,
    data: JepaTrainingData,
    params: RabtrieverParams,
    log_fn: LogFn | None = None,
    checkpoint_dir: str | Path | None = None,
    *,
    seed: int,
    rounds: PoolGrower | None = None,
) -> JepaTrainResult:
    """Train `predictor` in place (see the module docstring); resume from `checkpoint_dir`.

    Loss = `jepa_weight` x JEPA + `rkl_weight` x reverse KL. `log_fn(step, {"loss", "jepa",
    "rkl", "epoch", "round"})` is called after every optimizer step ("epoch" counts on across
    rounds). `params.epochs` over the
    given pools; then, with `rounds`, `params.rounds` on-policy rounds: each lets `rounds` grow
    the pools with the teacher's scores of the student's own new candidates (`rounds.grow`,
    `components/rabtriever/rounds.py`) and trains `params.round_epochs` more epochs. Each round
    checkpoints into its own folder (`round<r>`); a resumed run repeats no teacher call. The
    epoch count of the part a run was interrupted in may grow on resumption (the learning rate
    is constant); any other change is refused.
    """
    if any(p.requires_grad for p in scorer.parameters()):
        raise ValueError("the LLM's norm and LM head must be frozen (Rabtriever freezes them)")
    if predictor.uses_features:  # a resumed run then loads the same statistics with the weights
        if data.features is None:
            raise ValueError(f"the {predictor.form} predictor trains on pair features: "
                             "none were given")  # fmt: skip
        # Fitted once, on the first pools: the rounds' pairs must not move what was learnt.
        predictor.fit_feature_scaling(data.features)
    history, steps = _train_round(predictor, scorer, data, params, log_fn, checkpoint_dir,
                                  seed=seed, epochs=params.epochs, round_index=0, step_offset=0,
                                  epoch_offset=0)  # fmt: skip
    records: list = []
    for round_index in range(1, params.rounds + 1 if rounds is not None else 1):
        folder = None if checkpoint_dir is None else Path(checkpoint_dir) / f"round{round_index}"
        records.append(rounds.grow(predictor, scorer, data, round_index, folder))
        more, done = _train_round(
            predictor, scorer, data, params, log_fn, folder, seed=seed + 1_000_003 * round_index,
            epochs=params.round_epochs, round_index=round_index, step_offset=steps,
            epoch_offset=params.epochs + (round_index - 1) * params.round_epochs,
        )  # fmt: skip
        history += more
        steps += done
    predictor.eval()
    groups, teacher = data.pairs.query_index, data.pairs.scores
    final = None
    if teacher is not None:
        final = pairwise_agreement(
            student_scores(predictor, scorer, data, params.score_batch_size), teacher, groups
        )
    return JepaTrainResult(epochs=history, steps=steps, final_agreement=final, rounds=records)
