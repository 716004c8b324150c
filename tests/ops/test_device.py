"""`device`: one setting for every model stage, and no silent fall-back to the CPU."""

from __future__ import annotations

import os

import pytest
import torch

from components import device
from components.config import ParamsError, load_params
from components.device import DeviceUnavailable, current_device, resolve_device, use_device
from components.settings import REPO_ROOT


def test_auto_is_the_cpu_where_torch_sees_no_gpu_and_cpu_is_always_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:3"])
def test_asking_for_a_gpu_torch_cannot_see_stops_with_the_remedy(setting):
    with pytest.raises(DeviceUnavailable, match=rf"device: {setting}, but torch .* sees no CUDA"):
        resolve_device(setting)


def test_one_named_gpu_under_several_processes_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DeviceUnavailable, match="names one GPU, but 2 processes"):
        resolve_device("cuda:1")


def test_use_device_is_what_every_later_model_load_and_deepspeed_get(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "not yet chosen")  # restored afterwards
    monkeypatch.setattr(device, "_chosen", None)
    assert use_device("cpu") == current_device() == torch.device("cpu")
    assert os.environ["DS_ACCELERATOR"] == "cpu"


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "CPU", "cuda:"])
def test_params_refuse_a_device_that_is_not_auto_cpu_or_cuda(tmp_path, value):
    text = (REPO_ROOT / "params.yaml").read_text().replace("device: auto", f"device: {value}")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match="device"):
        load_params(path)
