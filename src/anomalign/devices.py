"""Where commands run: the one reading of ``--device auto|cpu|cuda`` (and ``--dtype``) every command shares."""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def use_cpu(device: str) -> bool:
    """True for ``cpu``, and for ``auto`` on a machine without CUDA."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; explicit choices pass through."""
    return "cpu" if use_cpu(device) else "cuda"
