"""Where the model stages compute: `params.yaml`'s `device`, one setting for every stage.

    auto     the process's GPU when torch sees one (under a launcher: GPU LOCAL_RANK), else CPU
    cpu      the CPU, even on a GPU machine (DeepSpeed included)
    cuda     a GPU (under a launcher: GPU LOCAL_RANK); an error where torch sees none
    cuda:N   GPU N; one process only

Nothing falls back silently: asking for a GPU that torch cannot see (a CPU build of torch, no
driver, an index past the count) stops the stage with a message. A stage calls `use_device`
once, inside its MLflow run, which records the device, its name and whether bf16 is native
there; every model the stage loads goes to `current_device()`. One process runs one stage, so
the choice is process-wide, which is what DeepSpeed's own accelerator choice is too.
"""

from __future__ import annotations

import os
import platform
import re

import torch

from components.config import DEVICE_SETTING, ParamsError
from components.llm.precision import bf16_available

_chosen: torch.device | None = None


class DeviceUnavailable(ParamsError):
    """The params ask for a device this process cannot use (a stage reports it as a message)."""


def resolve_device(setting: str) -> torch.device:
    """The torch device a setting names on this machine, in this process."""
    if not re.fullmatch(DEVICE_SETTING, setting):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {setting!r}")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device: {setting}, but torch {torch.__version__} sees no CUDA device (a CPU build "
            "of torch, or no driver): install the CUDA lock (`make setup TORCH=cu130`) or set "
            "device: cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    index = torch.device(setting).index
    if index is not None and world > 1:
        raise DeviceUnavailable(f"device: {setting} names one GPU, but {world} processes run; "
                                "use device: cuda (each process takes GPU LOCAL_RANK)")
    if index is None:
        index = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(f"device: {setting} wants GPU {index}, but torch sees {count}")
    return torch.device("cuda", index)


def use_device(setting: str) -> torch.device:
    """Choose this process's device: later `current_device()` calls, DeepSpeed (whose own
    accelerator would take any visible GPU) and the active MLflow run all learn it."""
    global _chosen
    _chosen = resolve_device(setting)
    os.environ["DS_ACCELERATOR"] = _chosen.type
    if _chosen.type == "cuda":
        torch.cuda.set_device(_chosen)
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_param("device", str(_chosen))
        mlflow.set_tags(describe(_chosen))
    return _chosen


def current_device() -> torch.device:
    """The device `use_device` chose; where no stage chose one, `auto`'s answer."""
    return _chosen if _chosen is not None else resolve_device("auto")


def describe(device: torch.device) -> dict[str, str]:
    """MLflow tags for a device: its hardware name and whether bf16 is native on it."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    return {"device_name": name, "bf16_native": str(bf16_available(device)).lower()}
