"""Volume inference: the 2D model over every slice of a scan, maps reassembled in the scan's geometry.

The model is 2D and never sees a 3D tensor: :class:`SliceInferer` windows the
volume once, cuts it into slabs of slices along the chosen anatomical plane
(memory stays bounded whatever the scan's length), runs the slices that
contain body through the model in batches, and puts the smoothed maps back on
the voxel grid with the exact inverse of the slice transforms. With several
planes (tri-planar fusion) the volumes are averaged.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from tqdm import tqdm

from .model import VisualAD
from .runtime import autocast
from .transforms import WindowIntensity, anatomical_axis, slice_pipeline

logger = logging.getLogger(__name__)

IDENTITY_WINDOW = (1.0, 0.5)
"""``(width, level)`` that keeps an already windowed ``[0, 1]`` volume as it is."""


@dataclass
class SliceScores:
    """Per-slice results along the first plane.

    Attributes:
        plane: anatomical plane of the slices.
        axis: array axis of the volume that was sliced.
        scores: one entry per array index along ``axis``: the slice's image
            score (top-1 % mean of its map), ``None`` for slices without body.
        window: the intensity window that was applied.
        seconds: model time for the first plane.
        slices_run: slices that went through the model, over all planes.
    """

    plane: str
    axis: int
    scores: list[float | None]
    window: object = None
    seconds: float = 0.0
    slices_run: int = 0
    per_plane_seconds: dict[str, float] = field(default_factory=dict)


class SliceInferer(Inferer):
    """Slice-wise inferer of a 2D anomaly model over a ``(1, X, Y, Z)`` volume.

    Args:
        planes: ``axial``, ``coronal``, ``sagittal``; more than one averages the volumes.
        window: ``auto``, ``percentile``, a CT preset or ``(width, level)`` in HU
            (see :mod:`visualad_med.transforms`).
        batch_size: slices per model call.
        slab_slices: slices prepared at a time (bounds memory).
        device: where the model runs (inputs are moved there batch by batch).
        skip_empty: leave out slices without body (their map is 0, score ``None``).
        progress: show a progress bar per plane.

    Calling it returns a float32 ``MetaTensor`` ``(1, X, Y, Z)`` with the input's
    meta; :attr:`last_scores` holds the :class:`SliceScores` of that call.
    """

    def __init__(
        self,
        planes: tuple[str, ...] = ("axial",),
        window: str | tuple[float, float] = "auto",
        batch_size: int = 8,
        slab_slices: int = 64,
        device: torch.device | str = "cpu",
        skip_empty: bool = True,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if not planes:
            raise ValueError("at least one plane is needed, e.g. ('axial',)")
        if batch_size < 1 or slab_slices < 1:
            raise ValueError(f"batch_size and slab_slices must be >= 1, got {batch_size} and {slab_slices}")
        self.planes = tuple(planes)
        self.window = window
        self.batch_size = batch_size
        self.slab_slices = slab_slices
        self.device = torch.device(device)
        self.skip_empty = skip_empty
        self.progress = progress
        self.last_scores: SliceScores | None = None

    def __call__(self, inputs: MetaTensor, network: VisualAD, *args, **kwargs) -> MetaTensor:
        """Anomaly map volume of ``inputs`` (``(1, X, Y, Z)``, HU for CT)."""
        if inputs.ndim != 4 or inputs.shape[0] != 1:
            raise ValueError(f"expected a single-channel volume (1, X, Y, Z), got shape {tuple(inputs.shape)}")
        windowing = WindowIntensity(self.window)
        applied = windowing.resolve(inputs)
        windowed = MetaTensor(windowing(inputs).as_tensor(), meta=dict(inputs.meta))
        total = torch.zeros(inputs.shape[1:], dtype=torch.float32)
        for plane in self.planes:
            started = time.perf_counter()
            plane_map, scores, run = self._plane(windowed, network, plane)
            total += plane_map
            if self.last_scores is None or plane == self.planes[0]:
                self.last_scores = SliceScores(plane, anatomical_axis(inputs.affine, plane), scores, applied)
            self.last_scores.slices_run += run
            self.last_scores.per_plane_seconds[plane] = time.perf_counter() - started
        self.last_scores.seconds = sum(self.last_scores.per_plane_seconds.values())
        return MetaTensor((total / len(self.planes)).unsqueeze(0), meta=dict(inputs.meta))

    def _plane(self, windowed: MetaTensor, network: VisualAD, plane: str) -> tuple[torch.Tensor, list, int]:
        """Map of one plane ``(X, Y, Z)``, per-slice scores along its axis, and slices run."""
        config = network.config
        pipeline = slice_pipeline(config.image_size, config.mean, config.std, window=IDENTITY_WINDOW, plane=plane)
        axis = anatomical_axis(windowed.affine, plane)
        length = windowed.shape[axis + 1]
        result = torch.zeros(windowed.shape[1:], dtype=torch.float32)
        scores: list[float | None] = [None] * length
        run = 0
        slabs = range(0, length, self.slab_slices)
        bar = tqdm(total=length, desc=f"{windowed.meta.get('scan_name', 'scan')} {plane}", unit="slice",
                   leave=False, disable=not self.progress)
        for start in slabs:
            count = min(self.slab_slices, length - start)
            slab = MetaTensor(windowed.as_tensor().narrow(axis + 1, start, count), meta=dict(windowed.meta))
            slices, info = pipeline.forward(slab)
            keep = info.body if self.skip_empty else torch.ones_like(info.body)
            maps = torch.zeros(slices.shape[0], config.image_size, config.image_size)
            wanted = torch.nonzero(keep).flatten()
            for batch in wanted.split(self.batch_size):
                with torch.inference_mode(), autocast(self.device):
                    outputs = network(slices[batch].to(self.device))
                maps[batch] = outputs["map"].float().cpu()
                for position, score in zip(batch.tolist(), outputs["score"].float().cpu().tolist()):
                    scores[start + int(info.indices[position])] = score
            run += len(wanted)
            result.narrow(axis, start, count).copy_(pipeline.inverse(maps, info).as_tensor())
            bar.update(count)
        bar.close()
        return result, scores, run


def scan_scores(volume_map: torch.Tensor, slice_scores: list[float | None]) -> dict[str, float | None]:
    """The two scan scores: max over slices of the slice score, and the top-1 % mean over the volume."""
    known = [s for s in slice_scores if s is not None]
    flat = volume_map.flatten()
    count = max(1, math.ceil(0.01 * flat.numel()))
    return {
        "max_slice_score": max(known) if known else None,
        "top1pct_mean": float(flat.topk(count).values.mean()),
    }
