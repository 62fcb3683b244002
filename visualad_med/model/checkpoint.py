"""Head checkpoints: our safetensors format and the reference implementation's format.

Our format is one ``.safetensors`` file holding only the trained tensors, with
a JSON :class:`HeadConfig` in its metadata (and the same JSON beside it as
``<name>.json`` for people). The reference implementation's training script
saves a ``torch.save`` dict (``anomaly_token``, ``ln_post_weight``,
``layer_transforms``, ``cross_attn``, ``features_list``, ...); the published
CLIP ViT-L/14@336 checkpoints use it too. Neither loader executes code.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jsonschema import Draft202012Validator, TypeChecker, ValidationError, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from visualad_med.io.atomic import atomic_path
from visualad_med.errors import HeadCheckpointError

logger = logging.getLogger(__name__)

FORMAT = "visualad_med.head/1"
SHIPPED_HEAD = "visualad_head.safetensors"
"""File name of the head shipped as package data (``visualad_med/model/heads/``), also the bundle's
``models/visualad_head.safetensors``."""
CONFIG_KEY = "visualad_config"


MODEL_FIELDS = ("backbone", "weights_sha256", "embed_dim", "depth", "patch_size", "image_size", "taps", "mean",
                "std", "num_anchors", "dropout", "res_scale_init", "format")
"""Fields of a :class:`HeadConfig` that describe the model as built (backbone, input size, module sizes): a
loaded head takes them from the model it is loaded onto (checked to fit), everything else from the head file."""


@dataclass(frozen=True)
class HeadConfig:
    """Everything needed to rebuild the model a head was trained with.

    Attributes:
        backbone: preset or timm name the head was trained on.
        weights_sha256: content hash of the backbone weights (``None`` if unknown).
        embed_dim: backbone width ``D``.
        depth: number of backbone blocks.
        patch_size: in pixels.
        image_size: square model input side in pixels.
        taps: 1-based tap layers.
        mean: per-channel normalisation mean (RGB, for images in ``[0, 1]``).
        std: per-channel normalisation std.
        threshold: decision threshold on the smoothed map ``map`` (sum over taps
            of ``cos(f, a) - cos(f, n)``), calibrated by F1-max on the training set.
        num_anchors, dropout, res_scale_init: SCA hyper-parameters.
        scoring: how ``map`` is made: ``visualad`` (the method), ``selfsim``
            (training-free self-similarity) or ``combined`` (their weighted sum);
            the threshold refers to this map.
        selfsim_layers: blocks whose patch features feed self-similarity
            (default ``L/2, 3L/4``).
        selfsim_weight: weight of the self-similarity sum in ``combined``.
        selfsim_neighbours: ``k`` nearest patches averaged by self-similarity.
        map_reference: ``none`` (the method's map) or ``body``: ``map`` minus its
            median over the image's body (:mod:`visualad_med.model.body_reference`); the
            threshold refers to this map.
        training: free-form provenance (data, epochs, seed, time).
    """

    backbone: str
    weights_sha256: str | None
    embed_dim: int
    depth: int
    patch_size: int
    image_size: int
    taps: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float | None = None
    num_anchors: int = 4
    dropout: float = 0.1
    res_scale_init: float = 0.01
    scoring: str = "visualad"
    selfsim_layers: tuple[int, ...] | None = None
    selfsim_weight: float = 1.0
    selfsim_neighbours: int = 5
    map_reference: str = "none"
    training: dict = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HeadConfig:
        """Parse a config written by :meth:`to_json` and validate it against :data:`HEAD_CONFIG_SCHEMA`.

        Raises:
            HeadCheckpointError: invalid JSON, an unknown or missing key, or a field of the wrong
                type or out of range (a string or NaN threshold, an absurd size, ...), naming the field.
        """
        try:
            values = json.loads(text)
        except (json.JSONDecodeError, TypeError) as error:
            raise HeadCheckpointError(f"head config is not valid JSON: {error}") from error
        error = best_match(_config_validator().iter_errors(values))
        if error is not None:
            raise HeadCheckpointError(_config_problem(error, values))
        for name in ("taps", "selfsim_layers"):
            layers = values.get(name) or ()
            if any(layer > values["depth"] for layer in layers):
                raise HeadCheckpointError(f"head config field {name!r}: layers beyond depth {values['depth']}, "
                                          f"got {layers!r}")
        for name in ("taps", "mean", "std", "selfsim_layers"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


HEAD_CONFIG_SCHEMA = "head_config.schema.json"
"""JSON Schema (Draft 2020-12) of a :class:`HeadConfig`'s JSON, package data beside this module."""


def _strict_integer(_checker: TypeChecker, value: Any) -> bool:
    """JSON Schema ``integer``, narrowed to Python ints: no bool, no float such as ``3.0``."""
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_number(_checker: TypeChecker, value: Any) -> bool:
    """JSON Schema ``number``, narrowed to finite values: no bool, NaN or infinity."""
    return _strict_integer(_checker, value) or (isinstance(value, float) and math.isfinite(value))


@functools.cache
def _config_validator() -> Validator:
    """Validator of :data:`HEAD_CONFIG_SCHEMA` whose ``integer`` and ``number`` types are strict (see above)."""
    schema = json.loads((importlib.resources.files("visualad_med.model") / HEAD_CONFIG_SCHEMA).read_text())
    types = Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _strict_integer, "number": _finite_number})
    return validators.extend(Draft202012Validator, type_checker=types)(schema)


_KINDS = {"integer": "an integer", "number": "a finite number", "array": "a list", "string": "a string",
          "object": "a JSON object"}
"""How a message names each JSON Schema type."""


def _requirement(schema: dict[str, Any]) -> str:
    """What a value must be to pass ``schema``, one property (or list item) of the head config schema.

    Returns:
        A phrase such as ``must be an integer in [1, 8192]``; ``null``, where allowed, goes unmentioned.
    """
    if "enum" in schema:
        return f"must be one of {schema['enum']}"
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    kind = next(name for name in kinds if name != "null")
    if kind == "array":
        return f"must be a list of {schema['minItems']} to {schema['maxItems']} items"
    if kind == "string" and schema.get("minLength"):
        return "must be a non-empty string"
    bounds = f" in [{schema['minimum']:g}, {schema['maximum']:g}]" if "minimum" in schema else ""
    return f"must be {_KINDS[kind]}{bounds}"


def _config_problem(error: ValidationError, values: Any) -> str:
    """One sentence naming what is wrong with the head config ``values`` (JSON-decoded) and where."""
    if error.validator == "additionalProperties":
        return f"unknown head config keys {sorted(set(values) - set(error.schema['properties']))}"
    if error.validator == "required":
        return f"head config lacks keys {sorted(set(error.validator_value) - set(values))}"
    if not error.absolute_path:
        return f"head config must be a JSON object, got {type(values).__name__}"
    name, *item = error.absolute_path
    where = f"item {item[0]} " if item else ""
    return f"head config field {name!r}: {where}{_requirement(error.schema)}, got {values[name]!r}"


def save(path: Path, tensors: dict[str, torch.Tensor], config: HeadConfig) -> Path:
    """Write ``tensors`` and ``config`` to ``path`` (``.safetensors``) and ``path.json``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(contiguous, str(temporary), metadata={CONFIG_KEY: config.to_json(), "format": FORMAT})
    with atomic_path(path.with_suffix(".json")) as temporary:
        temporary.write_text(config.to_json() + "\n")
    return path


def _load_ours(path: Path) -> tuple[dict[str, torch.Tensor], HeadConfig]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise HeadCheckpointError(f"{path} is not a readable safetensors head: {error}") from error
    if CONFIG_KEY not in metadata:
        raise HeadCheckpointError(f"{path} is a safetensors file but not a visualad_med head (no config)")
    return tensors, HeadConfig.from_json(metadata[CONFIG_KEY])


def _load_reference(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise HeadCheckpointError(
            f"{path} is neither a safetensors head nor a plain-tensor reference checkpoint "
            f"(refused without executing it): {error}"
        ) from error
    required = {"anomaly_token", "normal_token", "layer_transforms", "cross_attn", "features_list"}
    if not isinstance(raw, dict) or not required <= set(raw):
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise HeadCheckpointError(f"{path} is not a VisualAD head: expected keys {sorted(required)}, found {found}")
    return raw, {"taps": tuple(int(t) for t in raw["features_list"]), "image_size": raw.get("image_size")}


def reference_to_ours(raw: dict, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Rename a reference checkpoint's tensors to ours.

    The reference's SCA position table has a fixed number of rows (1536 in the
    published checkpoints) of which it uses the first ``h * w``; we keep exactly
    those rows, so the imported head computes what the reference computed.
    """
    tensors = {
        "backbone.anomaly_token": raw["anomaly_token"],
        "backbone.normal_token": raw["normal_token"],
        "backbone.norm.weight": raw["ln_post_weight"],
        "backbone.norm.bias": raw["ln_post_bias"],
    }
    for layer, params in raw["layer_transforms"].items():
        tap = layer.removeprefix("layer_")
        for name, value in params.items():
            tensors[f"saf.{tap}.{name}"] = value
    pattern = re.compile(r"layer_attentions\.layer_(\d+)\.(.+)")
    rows = grid[0] * grid[1]
    for key, value in raw["cross_attn"].items():
        match = pattern.fullmatch(key)
        if match is None:
            raise HeadCheckpointError(f"unexpected cross-attention key {key!r}")
        tap, name = match.groups()
        if name == "pos_encoding":
            if value.shape[1] < rows:
                raise HeadCheckpointError(
                    f"reference position table has {value.shape[1]} rows, fewer than the {rows} patches of a "
                    f"{grid[0]} x {grid[1]} grid"
                )
            value = value[:, :rows]
        tensors[f"sca.{tap}.{name}"] = value
    return tensors


def read(path: Path) -> tuple[dict[str, torch.Tensor], HeadConfig | None, dict]:
    """Read a head in either format.

    Returns:
        ``(tensors, config, reference)``: for our format ``config`` is set and
        ``reference`` empty; for the reference format ``config`` is ``None`` and
        ``reference`` holds ``raw``, ``taps`` and ``image_size``; ``tensors`` are
        then renamed by the caller, which knows the grid.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadCheckpointError(f"head checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or not head.startswith(b"PK"):
        tensors, config = _load_ours(path)
        return tensors, config, {}
    raw, info = _load_reference(path)
    return {}, None, {"raw": raw, **info}


def shipped_head() -> Path | None:
    """The head shipped with the package (package data, so it is found from a wheel too), if installed."""
    found = importlib.resources.files("visualad_med.model") / "heads" / SHIPPED_HEAD
    return Path(str(found)) if found.is_file() else None
