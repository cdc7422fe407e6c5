"""Fast, numerically guarded forward passes: autocast (bf16/fp16) and channels_last, switchable off."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from bundle.engine.configs import as_flag


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16; read from ``/proc/cpuinfo``).

    Without it oneDNN emulates bf16, which is slower than fp32 (the measured slowdown, with its CPU, is in
    docs/performance.md).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """Reduced precision to autocast to on ``device``, or ``None`` for plain fp32.

    bfloat16 on CUDA GPUs that support it and on CPUs that compute it in hardware (bf16 needs no loss scaling);
    ``None`` elsewhere (older GPUs use MONAI's fp16 ``amp`` with a GradScaler instead, see ``train.yaml``).
    """
    if not as_flag(enabled, "amp"):
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


class FastInferer(Inferer):
    """Run ``network(inputs)`` under autocast and in channels_last memory format; return fp32 logits.

    Inputs of shape (B, C, H, W) are passed as plain tensors (MONAI ``MetaTensor`` metadata is not needed inside
    the network, and dropping it avoids per-operation overhead).

    Args:
        dtype: autocast dtype (``torch.bfloat16``/``torch.float16``) or ``None`` for fp32.
        channels_last: convert 4-D inputs to channels_last (the network should be converted too).
    """

    def __init__(self, dtype: torch.dtype | None = None, channels_last: bool = True) -> None:
        super().__init__()
        self.dtype = dtype
        self.channels_last = as_flag(channels_last, "channels_last")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(inputs.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            outputs = network(inputs, *args, **kwargs)
        return outputs.float()


def prepare_network(network: torch.nn.Module, device: torch.device | str, channels_last: bool = True):
    """Move ``network`` to ``device`` (in channels_last memory format when asked) and return it."""
    network = network.to(device)
    return network.to(memory_format=torch.channels_last) if as_flag(channels_last, "channels_last") else network
