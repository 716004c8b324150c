"""A plain PyTorch training loop with resumable checkpoints, shared by the single-model trainers.

The teacher trains through a DeepSpeed engine (components.teacher.training); models
that need no sharding (the DGR generative retriever, the bi-encoder baseline) use this loop:
AdamW on the trainable parameters, linear warm-up then linear decay, gradient clipping, and a
checkpoint every N steps.

A task supplies the data and the loss: `len(task)` examples, and
`task.loss(model, batch_indices, epoch) -> (loss, {part: value})`. Batches are a seeded
permutation per epoch, so a resumed run sees exactly the batches an uninterrupted one would.

A checkpoint (`<dir>/stepNNNNNNNN/`) holds the trainable weights (safetensors), the optimizer
state and the RNG states (tensors and plain values only, loaded with `weights_only=True`: no
unpickling of arbitrary objects); `<dir>/latest` names the newest complete one and is written
last.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from components.atomic import atomic_path, write_text_atomic

log = logging.getLogger(__name__)


class LoopSettings(Protocol):
    """The keys of a params.yaml section (`dgr`, `biencoder`) the loop reads."""

    lr: float
    weight_decay: float
    warmup_ratio: float
    grad_clip: float  # 0 = off
    batch_size: int
    checkpoint_every: int
    keep_checkpoints: int


class Task(Protocol):
    def __len__(self) -> int: ...

    def loss(self, model: nn.Module, batch: list[int],
             epoch: int) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class StepMetrics:
    step: int  # optimizer steps done, 1-based
    total_steps: int
    epoch: int
    loss: float
    lr: float
    elapsed_s: float
    parts: dict[str, float] = field(default_factory=dict)  # e.g. distill / generation terms


@dataclass
class LoopResult:
    steps_done: int
    total_steps: int
    completed: bool
    losses: list[float]  # of the steps run by this call (not those before a resume)


def warmup_linear_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup to 1 over `warmup_steps` (first step > 0), then linear to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
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


def train_loop(model: nn.Module, task: Task, params: LoopSettings, checkpoint_dir: str | Path,
               on_step: Callable[[StepMetrics], None] | None = None,
               stop_after: int | None = None, *, seed: int, max_steps: int) -> LoopResult:
    """Train `model` in place for `max_steps` steps, resuming from `checkpoint_dir` when it
    holds a checkpoint; batches are seeded by `seed` and the epoch.

    `stop_after` ends the call after that many steps with a checkpoint (tests use it to
    simulate an interruption).
    """
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(task) / params.batch_size)
    total_steps = max_steps
    lr_factor = warmup_linear_decay(total_steps, int(params.warmup_ratio * total_steps))
    checkpoint_dir = Path(checkpoint_dir)
    step = load_checkpoint(checkpoint_dir, model, optimizer)
    if step:
        log.info("resumed from %s at step %d", checkpoint_dir, step)

    losses: list[float] = []
    started = time.perf_counter()
    batches_epoch, batches = -1, []
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != batches_epoch:
            batches_epoch = epoch
            batches = epoch_batches(len(task), epoch, seed, params.batch_size)
        lr = params.lr * lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, parts = task.loss(model, batches[position], epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip:
            nn.utils.clip_grad_norm_(trainable, params.grad_clip)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if on_step is not None:
            on_step(StepMetrics(step, total_steps, epoch, loss.item(), lr,
                                time.perf_counter() - started, parts))
        stopping = stop_after is not None and len(losses) >= stop_after and step < total_steps
        # The last step too: a stage killed after this training resumes past it, not before.
        if step % params.checkpoint_every == 0 or stopping or step == total_steps:
            save_checkpoint(checkpoint_dir, model, optimizer, step, params.keep_checkpoints)
        if stopping:
            break
    return LoopResult(step, total_steps, step >= total_steps, losses)


# ------------------------------------------------------------------------ checkpointing


def rng_state() -> dict:
    """RNG states as tensors and plain values only: `torch.load(weights_only=True)` reads them."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters() lists a tied weight once, which safetensors requires.
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def save_checkpoint(checkpoint_dir: Path, model, optimizer, step: int, keep: int) -> None:
    tag = f"step{step:08d}"
    with atomic_path(checkpoint_dir / tag) as tmp:
        tmp.mkdir(parents=True)
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
    # `latest` is written last: a checkpoint it names is always complete.
    write_text_atomic(checkpoint_dir / "latest", tag)
    for old in sorted(p for p in checkpoint_dir.glob("step*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(checkpoint_dir: Path, model, optimizer) -> int:
    """Restore the latest checkpoint into `model` and `optimizer`; the step it was taken at."""
    latest = checkpoint_dir / "latest"
    if not latest.is_file():
        return 0
    folder = checkpoint_dir / latest.read_text().strip()
    weights = load_file(str(folder / "trainable.safetensors"))
    expected = set(trainable_state(model))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise RuntimeError(
            f"checkpoint {folder} holds other parameters than the model trains "
            f"(missing {missing[:3]}, extra {extra[:3]}); was train_mode changed?"
        )
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return json.loads((folder / "state.json").read_text())["step"]
