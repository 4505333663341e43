"""Where and in what arithmetic a sweep trains: the device, TF32/bf16, running out of memory."""

from __future__ import annotations

import contextlib

import torch

from ..errors import LandscapeError


def effective_precision(precision: str, device: torch.device) -> str:
    """The arithmetic a run really trains in: TF32 and bf16 autocast act on CUDA only."""
    return precision if device.type == "cuda" else "fp32"


@contextlib.contextmanager
def training_precision(precision: str, device: torch.device):
    """TF32 on for ``tf32``/``bf16`` (restored after); yields the autocast context for steps.

    Probes switch TF32 and autocast off for themselves, so they always measure in float32.
    """
    precision = effective_precision(precision, device)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    fast = precision in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast
    try:
        if precision == "bf16" and device.type == "cuda":
            # No weight cache: CUDA graphs cannot hold it (and each weight is cast once a step).
            yield lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        else:
            yield contextlib.nullcontext
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LandscapeError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        return torch.device(name)
    raise LandscapeError(f"unknown --device {name!r}; choose auto, cpu or cuda")


def out_of_memory(error: BaseException) -> bool:
    """A device allocation failure (CUDA's OutOfMemoryError, or the CPU allocator's)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
