"""Numeric precision by hardware: bf16 where the device computes it natively, fp32 elsewhere.

CPUs with AMX or AVX-512 bf16 units (``lscpu`` flags ``amx_bf16``, ``avx512_bf16``) run oneDNN's
bf16 convolutions 2-5x faster than fp32, as do GPUs with bf16 (Ampere and later). Training then uses
Lightning's ``bf16-mixed`` (autocast: convolutions in bf16, losses, softmax and metrics in fp32,
weights fp32) and inference bf16 autocast; ``precision=fp32`` (predict) or ``trainer.precision=32``
(training) forces fp32. Detected at run time, so one config serves every machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["cpu_has_bf16", "bf16_supported", "inference_dtype", "training_precision"]


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 compute units (AMX or AVX-512 bf16) that oneDNN uses."""
    try:
        if torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported():
            return torch.backends.mkldnn.is_available()
        return False
    except AttributeError:  # older torch: read the flags
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return torch.backends.mkldnn.is_available() and ("amx_bf16" in flags or "avx512_bf16" in flags)


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def inference_dtype(setting: str, device: torch.device | str) -> torch.dtype:
    """The autocast dtype of inference: ``"auto"`` is bf16 where supported, ``"bf16"`` / ``"fp32"`` force it.

    Raises:
        ValueError: an unknown setting, or bf16 forced on a device without it.
    """
    if setting not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {setting!r}")
    if setting == "fp32":
        return torch.float32
    if bf16_supported(device):
        return torch.bfloat16
    if setting == "bf16":
        raise ValueError(f"precision=bf16, but {torch.device(device)} has no bf16 units here (use auto or fp32)")
    return torch.float32


def training_precision() -> str:
    """Lightning's precision for CPU training: ``bf16-mixed`` on CPUs with bf16 units, else ``32``."""
    return "bf16-mixed" if cpu_has_bf16() else "32"
