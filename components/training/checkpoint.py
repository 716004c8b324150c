"""The one checkpoint format of every trainer: a DeepSpeed engine checkpoint plus loop state.

    <dir>/latest                       the newest complete tag (DeepSpeed writes it last)
    <dir>/stepNNNNNNNN/                one tag per checkpointed optimizer step
        mp_rank_00_model_states.pt     trainable weights (frozen ones are the base model's),
                                       optimizer (rank 0's share under ZeRO), LR schedule, step
        zero_pp_rank_*_optim_states.pt ZeRO >= 1: each rank's optimizer partition
        loop_state.json                step, epoch, position in the epoch, the epoch's batches,
                                       the run identity, the task's own state
        rng_rank<R>.pt                 each rank's RNG states (tensors and plain values only,
                                       read back with weights_only=True)

A checkpoint written with another run identity (other training params, seed, data) is refused
with the keys that differ, rather than silently continued.
"""

from __future__ import annotations

import json
import random
import shutil
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOOP_STATE = "loop_state.json"


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


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


def latest_state(checkpoint_dir: Path) -> dict | None:
    """The loop state of the checkpoint `latest` names, or None where there is none."""
    latest = checkpoint_dir / "latest"
    if not latest.is_file():
        return None
    path = checkpoint_dir / latest.read_text().strip() / LOOP_STATE
    if not path.is_file():
        raise ValueError(f"checkpoint in {checkpoint_dir} has no {LOOP_STATE} (written by an "
                         "older trainer); delete it to start afresh")
    return json.loads(path.read_text())


def check_same_run(saved: dict, current: dict, checkpoint_dir: Path) -> None:
    """Refuse to resume a checkpoint written with a different run identity."""
    changed = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
    if changed:
        raise ValueError(
            f"checkpoint in {checkpoint_dir} was written with different params ({changed}); "
            "delete it or restore those values"
        )


def _trainable_state_dict(engine, *args, exclude_frozen_parameters=False, **kwargs):
    # DeepSpeed drops a frozen weight under the first of its names only, so a tied frozen
    # weight (the 49k-row embeddings, shared with the LM head) was still saved under the other.
    state = engine.module.state_dict(*args, **kwargs)
    if exclude_frozen_parameters:
        for name, p in engine.module.named_parameters(remove_duplicate=False):
            if not p.requires_grad:
                state.pop(name, None)
    return state


def save(engine, checkpoint_dir: Path, state: dict, keep: int, rank: int) -> None:
    """Checkpoint the engine and `state` (JSON) as tag `step<global step>`; keep the newest
    `keep` tags. Every rank must call it."""
    tag = f"step{engine.global_steps:08d}"
    tag_dir = checkpoint_dir / tag
    tag_dir.mkdir(parents=True, exist_ok=True)
    # Ours first: DeepSpeed writes `latest` last, so a checkpoint `latest` names is complete.
    torch.save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        (tag_dir / LOOP_STATE).write_text(json.dumps(state))
    engine.module_state_dict = types.MethodType(_trainable_state_dict, engine)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, exclude_frozen_parameters=True)
    if rank == 0:
        tags = sorted(p for p in checkpoint_dir.glob("step*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()


def load(engine, checkpoint_dir: Path, identity: dict, rank: int) -> dict | None:
    """Restore the latest checkpoint into the engine and this rank's RNGs; its loop state
    (None: no checkpoint, a fresh start)."""
    state = latest_state(checkpoint_dir)
    if state is None:
        return None
    check_same_run(state["identity"], identity, checkpoint_dir)
    # Not strict: frozen weights are not in the checkpoint; they are the base model's.
    load_path, _ = engine.load_checkpoint(str(checkpoint_dir), load_module_strict=False)
    if load_path is None:
        raise RuntimeError(f"could not load the checkpoint in {checkpoint_dir}")
    set_rng_state(torch.load(Path(load_path).parent / f"rng_rank{rank}.pt", weights_only=True))
    return state
