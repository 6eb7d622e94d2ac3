"""Where commands run: the one reading of ``--device auto|cpu|cuda`` (and ``--dtype``) every command shares."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def use_cpu(device: str) -> bool:
    """True for ``cpu``, and for ``auto`` on a machine without CUDA."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; explicit choices pass through."""
    return "cpu" if use_cpu(device) else "cuda"


def resolve_precision(mixed_precision: str, device: str) -> str:
    """``--mixed-precision auto`` -> ``bf16`` on a CUDA GPU that has it (Ampere and later: the fp32 exponent
    range, so no loss scaling and no overflow to skip), ``fp16`` on older GPUs, ``no`` on the CPU. Explicit
    choices pass through."""
    if mixed_precision != "auto":
        return mixed_precision
    if use_cpu(device):
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_accelerator(mixed_precision: str, device: str):
    """The ``accelerate.Accelerator`` of a training run (``mixed_precision`` may be ``auto``).

    accelerate keeps its state per process and refuses a second Accelerator with another precision; the demo
    (and a notebook) run several trainers in one process, so a precision change resets that state (not the
    distributed part, which stays valid)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    precision = resolve_precision(mixed_precision, device)
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=use_cpu(device))


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 natively: a CUDA GPU that supports it, or a CPU whose flags list
    avx512_bf16 or amx_bf16 (Linux; elsewhere False, so fp32 is kept)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
