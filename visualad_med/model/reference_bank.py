"""Few-shot normal references: a memory bank of patch features of a few healthy images or scans.

Each patch of an evaluated image is scored by its distance to the nearest patch
of the bank (``1 - max cos`` of the frozen backbone tokens, averaged over the
layers of :func:`~visualad_med.model.mutual.default_layers`), and that score takes the
place of the cohort's in :mod:`visualad_med.model.cohort` (fused with the head's map
on one robust scale for ``visualad+mutual``). For volumes the bank keeps each
slice's normalised position and a slice is compared with the bank slices within
the run's window of it (the nearest one at least), as cohort scoring does.

A bank is saved as safetensors (``features`` ``(K, T, N, D)`` float16 and
``positions`` ``(K,)``, with the layers, image size, backbone weights hash and
source files in its metadata) next to a run's outputs, and reused with
``--reference-bank FILE``; loading checks that it fits the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from visualad_med.io.atomic import atomic_path
from .torch_model import VisualAD
from .mutual import aggregate_neighbourhood, patch_distances, stack_features

logger = logging.getLogger(__name__)

BANK_FORMAT = "visualad_med.reference_bank/1"


@dataclass
class ReferenceBank:
    """Patch features of normal references.

    Attributes:
        features: ``(K, T, N, D)`` normalised float16 features of K reference images or slices.
        positions: ``(K,)`` normalised slice positions (volumes), or ``None`` (2D images).
        layers: backbone blocks of the ``T`` feature layers.
        image_size: model input side the features were taken at.
        backbone_sha256: identity of the backbone's weights.
        sources: the reference files.
        resize: how the references reached the model's input (``pad`` or ``squash`` for 2D images,
            ``volume`` for scan slices); a run must read its images the same way.
    """

    features: torch.Tensor
    positions: torch.Tensor | None
    layers: tuple[int, ...]
    image_size: int
    backbone_sha256: str | None
    sources: list[str]
    resize: str

    def check_fits(self, model: VisualAD, layers: tuple[int, ...], resize: str) -> None:
        """Raise ``ValueError`` unless the bank was taken with this model's size, weights, ``layers`` and resize."""
        problems = []
        if self.resize != resize:
            problems.append(f"references read with resize policy {self.resize!r} (this run: {resize!r})")
        if self.image_size != model.image_size:
            problems.append(f"image size {self.image_size} (model {model.image_size})")
        if tuple(self.layers) != tuple(layers):
            problems.append(f"layers {list(self.layers)} (run {list(layers)})")
        if self.backbone_sha256 and model.config.weights_sha256 and self.backbone_sha256 != model.config.weights_sha256:
            problems.append("backbone weights differ")
        if problems:
            raise ValueError(f"reference bank does not fit this model: {'; '.join(problems)}; rebuild it with "
                             "--reference")

    def scores(self, query: torch.Tensor, positions: torch.Tensor | None = None, window: float = 0.05,
               chunk: int = 32, grid: tuple[int, int] | None = None, degree: int = 1) -> torch.Tensor:
        """``(M, T, N, D)`` query features -> ``(M, N)``: distance of each patch to its nearest bank patch.

        With ``positions`` (volumes) and a bank with positions, only bank slices within ``window``
        of a query slice's position (the nearest at least) are searched. With ``degree`` above 1 the
        query and the bank are both aggregated over that neighbourhood of the patch ``grid``
        (:func:`~visualad_med.model.mutual.aggregate_neighbourhood`).
        """
        if degree != 1:
            query = aggregate_neighbourhood(query, grid, degree)
        out = torch.empty(query.shape[0], query.shape[2])
        for index in range(query.shape[0]):
            rows = torch.arange(self.features.shape[0])
            if positions is not None and self.positions is not None:
                gap = (self.positions - positions[index]).abs()
                rows = torch.nonzero(gap <= window).flatten() if (gap <= window).any() else gap.argmin().view(1)
            out[index] = patch_distances(query[index], aggregate_neighbourhood(self.features[rows], grid, degree),
                                         chunk).amin(dim=0)
        return out

    def save(self, path: Path) -> Path:
        """Write the bank as safetensors (atomically); returns ``path``."""
        metadata = {"format": BANK_FORMAT, "layers": json.dumps(list(self.layers)),
                    "image_size": str(self.image_size), "backbone_sha256": self.backbone_sha256 or "",
                    "sources": json.dumps(self.sources), "resize": self.resize}
        tensors = {"features": self.features.contiguous()}
        if self.positions is not None:
            tensors["positions"] = self.positions.contiguous()
        with atomic_path(Path(path)) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ReferenceBank:
        """Read a bank written by :meth:`save`; raises ``ValueError`` for another file."""
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: not a reference bank ({error})") from None
        if metadata.get("format") != BANK_FORMAT or "features" not in tensors:
            raise ValueError(f"{path}: not a reference bank (format {metadata.get('format')!r})")
        return cls(tensors["features"], tensors.get("positions"), tuple(json.loads(metadata["layers"])),
                   int(metadata["image_size"]), metadata.get("backbone_sha256") or None,
                   json.loads(metadata["sources"]), metadata.get("resize", ""))


def bank_from_images(model: VisualAD, paths: list[Path], layers: tuple[int, ...], resize: str,
                     batch_size: int = 8) -> ReferenceBank:
    """A bank from 2D normal images, read as ``evaluate`` reads images with ``resize`` (``pad`` or ``squash``)."""
    from visualad_med.io.images import read_rgb, to_model_input
    from visualad_med.datasets.samples import READ_ERRORS

    config = model.config
    images, used = [], []
    for path in paths:
        try:
            rgb = read_rgb(path)
        except READ_ERRORS as error:
            logger.warning("%s: reference image left out: %s", path, error)
            continue
        images.append(to_model_input(rgb, model.image_size, config.mean, config.std, resize)[0])
        used.append(str(path))
    if not images:
        raise ValueError(f"no usable reference image among {len(paths)} files")
    device = next(model.parameters()).device
    features = []
    with torch.inference_mode():
        for batch in torch.stack(images).split(batch_size):
            features.append(stack_features(model(batch.to(device), feature_layers=layers)["features"]).cpu())
    return ReferenceBank(torch.cat(features), None, layers, model.image_size, config.weights_sha256, used, resize)
