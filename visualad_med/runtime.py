"""Choosing the device, mixed precision, and the model a command runs with."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BUNDLED_HEAD = Path(__file__).resolve().parents[1] / "bundles" / "visualad_zsad" / "models" / "visualad_head.safetensors"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); a no-op on the CPU."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (heads are identified by their file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_head() -> Path | None:
    """The head shipped in the bundle, when this is a checkout that has it."""
    return BUNDLED_HEAD if BUNDLED_HEAD.is_file() else None
