"""Choosing the device and the mixed precision of the model's forward pass."""

from __future__ import annotations

import contextlib

import torch

from visualad_med.errors import SettingError

from .scorings import PRECISIONS


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device




def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``fp32``, ``bf16`` or ``fp16``: ``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on the CPU.

    Raises:
        SettingError: for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise SettingError("precision", f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())  # no public API yet


def inference_precision(device: torch.device, precision: str = "auto") -> str:
    """The precision of volume inference: ``auto`` is bf16 where ``device`` computes it natively, else
    :func:`resolve_precision`'s choice (fp16 on older GPUs, fp32 on other CPUs). Why bf16: README,
    "Speed, precision and many machines".
    """
    if precision == "auto" and native_bf16(device):
        return "bf16"
    return resolve_precision(device, precision)


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """Mixed precision for the model's forward pass (:func:`resolve_precision`; fp32 is no autocast).

    bf16 on a CPU with AVX512-BF16 runs training about 1.5x faster.
    """
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
