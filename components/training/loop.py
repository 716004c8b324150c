"""The one training loop of every trainer (teacher, DGR, bi-encoder, Rabtriever's predictor).

It runs on a DeepSpeed engine (`components.training.engine`), so any trainer gets ZeRO,
several processes and the GPU: AdamW on the trainable parameters (weight decay, torch's betas
and eps), a linear warm-up then linear decay (or a constant rate), gradient clipping, and a
checkpoint every N steps and after the last one (`components.training.checkpoint`).

A task supplies the data and the loss: `task.loss(model, example_indices, epoch) -> (loss,
{part: value})`, with `len(task)` examples. Each optimizer step takes one batch of
`batch_size` examples (all ranks together): the batch is split by rank, and each rank's share
into micro-batches of `micro_batch_size` (gradient accumulation). By default the batches of an
epoch are a seeded permutation of the examples, a function of (seed, epoch) alone; a task may
choose its own (`task.batches(model, epoch)`, called at the start of each epoch with the current
model: Rabtriever's on-policy selection). The epoch's batches are part of the checkpoint, so a
resumed run takes exactly the batches an uninterrupted one would have taken, whatever chose them.
A task with state of its own (statistics per epoch) may keep it in the checkpoint too
(`task.state_dict() -> JSON`, `task.load_state_dict(state)`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from components.training import checkpoint
from components.training.engine import build_engine, deepspeed_config, init_distributed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads of a trainer's params section (`from_section` takes the keys that
    share its names)."""

    lr: float
    weight_decay: float
    batch_size: int  # examples per optimizer step, all ranks together
    max_steps: int
    warmup_ratio: float = 0.0  # share of the steps spent warming up
    decay: bool = True  # linear decay to 0 after the warm-up; False: constant
    grad_clip: float | None = 0.0  # max global gradient norm; 0: off; None: as `base_config`
    micro_batch_size: int | None = None  # per rank and forward; None: the rank's whole share
    checkpoint_every: int = 10**9  # steps between checkpoints (and one after the last step)
    keep_checkpoints: int = 1
    zero_stage: int = 0
    bf16: bool = False  # DeepSpeed bf16 weights (CUDA); not the trainers' CPU autocast

    @classmethod
    def from_section(cls, section: Any, **values) -> LoopSettings:
        keys = ("lr", "weight_decay", "warmup_ratio", "grad_clip", "batch_size",
                "checkpoint_every", "keep_checkpoints")
        return cls(**{k: getattr(section, k) for k in keys if hasattr(section, k)} | values)


class Task(Protocol):
    def __len__(self) -> int: ...

    def loss(self, model: nn.Module, batch: list[int],
             epoch: int) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class StepMetrics:
    step: int  # optimizer steps done, 1-based
    total_steps: int
    epoch: int  # the epoch this step belonged to (0-based)
    loss: float  # mean over the step's micro-batches, all ranks
    lr: float  # learning rate used for this step
    elapsed_s: float  # since this call started
    step_s: float = 0.0  # this step: forward, backward, optimizer
    parts: dict[str, float] = field(default_factory=dict)  # the task's parts, averaged likewise
    evaluation: dict[str, float] = field(default_factory=dict)  # `evaluate`'s, on its steps


@dataclass
class LoopResult:
    steps_done: int
    total_steps: int
    completed: bool
    losses: list[float]  # of the steps run by this call (not those before a resume)
    engine: Any = field(default=None, repr=False)  # the DeepSpeed engine (weights under ZeRO-3)


def warmup_linear_decay(total_steps: int, warmup_steps: int,
                        decay: bool = True) -> Callable[[int], float]:
    """LR factor: linear warmup to 1 over `warmup_steps` (first step > 0), then linear to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if not decay:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_batches(n: int, epoch: int, seed: int, batch_size: int) -> list[list[int]]:
    """A seeded permutation of range(n) in batches (the last one may be shorter)."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train(model: nn.Module, task: Task, settings: LoopSettings,
          checkpoint_dir: str | Path | None, on_step: Callable[[StepMetrics], None] | None = None,
          stop_after: int | None = None, *, seed: int, identity: Mapping[str, Any],
          base_config: dict | None = None,
          evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          eval_every: int = 0) -> LoopResult:
    """Train `model` in place for `settings.max_steps` steps, resuming from `checkpoint_dir`
    when it holds a checkpoint of the same `identity` (what the run's checkpoints must have been
    written with; another one is refused). `checkpoint_dir` None: no checkpoints.

    `on_step` is called on rank 0 after every optimizer step. `stop_after` ends the call after
    that many steps with a checkpoint (time-boxed runs; tests simulate an interruption with it).
    `base_config`: a DeepSpeed config the run's values are filled into (ZeRO options).
    `evaluate(module)` runs every `eval_every` steps and after the last step, in eval mode
    without gradients, on every rank (under ZeRO-3 the forward gathers weights collectively);
    rank 0's result goes to `on_step` as `StepMetrics.evaluation`.
    """
    rank, world, _ = init_distributed()
    per_rank = settings.batch_size // world
    micro = settings.micro_batch_size or per_rank
    if settings.batch_size % (micro * world):
        raise ValueError(f"batch_size {settings.batch_size} must be a multiple of "
                         f"micro_batch_size x world_size = {micro} x {world}")
    grad_accum = per_rank // micro
    total = settings.max_steps
    warmup = int(settings.warmup_ratio * total)
    config = deepspeed_config(settings, world, grad_accum, base_config)
    engine = build_engine(model, settings, config, warmup_linear_decay(total, warmup,
                                                                       settings.decay))
    engine.train()
    identity = checkpoint.as_json(dict(identity))
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None

    epoch, position, batches = 0, 0, None
    state = checkpoint.load(engine, folder, identity, rank) if folder else None
    if state is not None:
        epoch, position, batches = state["epoch"], state["position"], state["batches"]
        if state.get("task") is not None:
            task.load_state_dict(state["task"])
        if rank == 0:
            log.info("resumed from %s at step %d", folder, engine.global_steps)

    losses: list[float] = []
    started = time.perf_counter()
    while engine.global_steps < total:
        if batches is None:
            batches = _batches(task, engine.module, epoch, seed, settings.batch_size)
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]
        local = shard_for_rank(batches[position], rank, world)
        chunks = [local[i : i + micro] for i in range(0, len(local), micro)]
        if len(chunks) != grad_accum:
            raise ValueError(f"a batch of {len(batches[position])} examples does not split into "
                             f"{grad_accum} micro-batches on each of {world} ranks")
        sums: dict[str, float] = {}
        for chunk in chunks:
            loss, parts = task.loss(engine.module, chunk, epoch)
            engine.backward(loss)  # DeepSpeed scales by 1/grad_accum and steps at the boundary
            engine.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        means = _mean_over_ranks(sums, grad_accum * world, world)
        losses.append(means.pop("loss"))
        step_epoch = epoch
        position += 1
        if position == len(batches):
            epoch, position, batches = epoch + 1, 0, None
        step_s = time.perf_counter() - t0
        stop = stop_after is not None and len(losses) >= stop_after
        done = engine.global_steps >= total
        evaluation = {}
        if evaluate is not None and eval_every and (engine.global_steps % eval_every == 0 or done):
            engine.module.eval()
            with torch.no_grad():
                evaluation = evaluate(engine.module)
            engine.module.train()
        if rank == 0 and on_step is not None:
            on_step(StepMetrics(engine.global_steps, total, step_epoch, losses[-1], lr,
                                time.perf_counter() - started, step_s, means, evaluation))
        # The last step too: a stage killed after training resumes past it, not before.
        if folder and (engine.global_steps % settings.checkpoint_every == 0 or stop or done):
            state = {"step": engine.global_steps, "epoch": epoch, "position": position,
                     "batches": batches, "identity": identity,
                     "task": task.state_dict() if hasattr(task, "state_dict") else None}
            checkpoint.save(engine, folder, state, settings.keep_checkpoints, rank)
        if stop:
            break
    steps = engine.global_steps
    return LoopResult(steps, total, steps >= total, losses, engine)


def _batches(task, model: nn.Module, epoch: int, seed: int, batch_size: int) -> list[list[int]]:
    if hasattr(task, "batches"):
        return [list(map(int, b)) for b in task.batches(model, epoch)]
    return epoch_batches(len(task), epoch, seed, batch_size)


def shard_for_rank(batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a batch (the last ranks' may be shorter)."""
    per_rank = -(-len(batch) // world)
    return batch[rank * per_rank : (rank + 1) * per_rank]


def _mean_over_ranks(sums: dict[str, float], count: int, world: int) -> dict[str, float]:
    """Per-key sums of this rank's micro-batches -> means over every rank's micro-batches."""
    if world > 1:
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
        if torch.cuda.is_available():  # NCCL reduces device tensors only
            totals = totals.cuda()
        torch.distributed.all_reduce(totals)
        sums = dict(zip(keys, totals.cpu().tolist(), strict=True))
    return {k: v / count for k, v in sums.items()}
