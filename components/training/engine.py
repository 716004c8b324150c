"""The DeepSpeed engine under every trainer: process group, config, initialisation.

One process works without a launcher (the distributed env vars are filled in); under
`torchrun` / `deepspeed` every rank calls the same functions. CPU -> gloo and fp32 weights;
CUDA -> NCCL, and DeepSpeed bf16 where the caller asks for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from components.device import current_device
from components.settings import REPO_ROOT

if TYPE_CHECKING:
    from components.training.loop import LoopSettings


def isolate_extension_cache() -> None:
    """Give this Python environment its own DeepSpeed JIT-op cache.

    On CPU DeepSpeed JIT-builds a comm op into TORCH_EXTENSIONS_DIR, by default one folder per
    Python version shared by every virtualenv on the machine. A build from another venv (a CI
    copy of the repo) points the shared build at other torch headers, and the next load here
    rebuilds it (70-130 s). One folder per interpreter prefix stops that ping-pong.
    """
    digest = hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]
    default = Path.home() / ".cache" / "torch_extensions" / f"{Path(sys.prefix).name}-{digest}"
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default))


def ensure_distributed_env() -> None:
    """Fill in the env vars a launcher would set, so one process works without one."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:  # ask the OS for a free port
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }.items():
        os.environ.setdefault(key, value)


def init_distributed() -> tuple[int, int, torch.device]:
    """Join (or start) the process group; this process's rank, the world size, its device."""
    isolate_extension_cache()
    os.environ.setdefault("DS_ACCELERATOR", current_device().type)  # before deepspeed decides
    import deepspeed  # heavy import (~5 s); keep it out of module import time

    ensure_distributed_env()
    device = current_device()  # the stage's `use_device`; DeepSpeed follows DS_ACCELERATOR
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def read_config(path: str | Path) -> dict:
    """A DeepSpeed JSON (relative paths are from the code's checkout, like any other code: a
    workspace elsewhere, `RERANK_DISTILL_ROOT`, has no configs/), without its `_` notes."""
    path = Path(path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def deepspeed_config(settings: LoopSettings, world_size: int, grad_accum: int,
                     base: dict | None = None) -> dict:
    """`base` (a DeepSpeed config, e.g. the teacher's JSON) with the run's values filled in.

    The optimizer and the schedule are client objects (`components.training.loop`), so `base`
    must not name its own: DeepSpeed's WarmupDecayLR spends the first step at lr=0 and forces
    >= 2 warm-up steps.
    """
    config = dict(base or {})
    clashing = sorted({"optimizer", "scheduler"} & config.keys())
    if clashing:
        raise ValueError(f"the DeepSpeed config must not set {clashing}: the training loop "
                         "supplies AdamW and the warm-up/decay schedule")
    micro = settings.micro_batch_size or settings.batch_size // world_size
    config["train_micro_batch_size_per_gpu"] = micro
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = micro * grad_accum * world_size
    if settings.grad_clip is not None:
        config["gradient_clipping"] = settings.grad_clip
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = settings.zero_stage
    config["bf16"] = {"enabled": settings.bf16}
    config.setdefault("steps_per_print", 10**9)  # the loop reports its own steps
    config.setdefault("wall_clock_breakdown", False)
    return config


def build_engine(model: nn.Module, settings: LoopSettings, config: dict, lr_lambda):
    """`deepspeed.initialize` with a client AdamW over the trainable parameters and a client
    LambdaLR; the betas and eps are torch's defaults (DeepSpeed's AdamW uses the same)."""
    import deepspeed

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
    )
    return engine
