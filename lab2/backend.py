"""Which engine trains (Unsloth or transformers + peft), in which dtype, and importing it first.

Unsloth patches transformers, peft and TRL when it is imported, and swaps `trl.SFTTrainer` for its
own `UnslothSFTTrainer`. Anything that imported those three before it keeps the unpatched code, so
`import_backend` runs before any lab2 module that touches them (train.ipynb, evaluate.ipynb,
lab2.ipynb and `python -m lab2 train` call it first). This module itself imports only torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import torch

# What Unsloth patches at import: each must still be unimported when it comes in.
PATCHED_BY_UNSLOTH = ("transformers", "trl", "peft")


class ImportOrderError(RuntimeError):
    """Unsloth was asked for after transformers/trl/peft were already imported."""


def resolve_backend(model) -> str:
    """`model.backend`, with 'auto' = Unsloth when CUDA and the unsloth package are both there, else hf."""
    if model.backend != "auto":
        return model.backend
    return "unsloth" if torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None else "hf"


def import_backend(model) -> str:
    """Resolve the backend and, for Unsloth, import it now, before transformers/trl/peft."""
    backend = resolve_backend(model)
    if backend == "unsloth" and "unsloth" not in sys.modules:
        early = [name for name in PATCHED_BY_UNSLOTH if name in sys.modules]
        if early:
            raise ImportOrderError(
                f"unsloth must be imported before {', '.join(early)}: restart the kernel and run from the top "
                "(call lab2.backend.import_backend before importing lab2.train, lab2.evaluate or transformers)"
            )
        importlib.import_module("unsloth")
    return backend


def bf16_is_native() -> bool:
    """bf16 tensor cores exist from compute capability 8.0 (Ampere). `torch.cuda.is_bf16_supported()`
    also says True on a T4 (7.5), where bf16 is only emulated and much slower than fp16."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def resolve_dtype(name: str) -> torch.dtype:
    """'auto': bf16 on Ampere or newer, fp16 on older GPUs (a T4), fp32 on CPU."""
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if bf16_is_native() else torch.float16
    return torch.float32
