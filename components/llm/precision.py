"""Whether bf16 math is native on a device: where it is not, autocast to bf16 is emulated and
slower than fp32, so every stage asks here before it turns bf16 on."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 math (AVX512-BF16 or AMX); otherwise autocast to bf16
    is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()
