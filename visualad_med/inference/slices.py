"""Volume inference: the 2D model over every slice of a scan, maps reassembled in the scan's geometry.

The model is 2D and never sees a 3D tensor: :class:`SliceInferer` takes the scan's
preprocessing (a :class:`~visualad_med.transforms.SlicePipeline` per plane, which windows with
the range the scan was loaded with, slices, resizes and normalises), cuts the volume into slabs
of slices along each plane (memory stays bounded whatever the scan's length), runs the slices
that contain body through the model in batches, and adds the smoothed maps back on the voxel
grid with the exact inverse of the slice transforms. With several planes (tri-planar fusion) the
volumes are averaged.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from tqdm import tqdm

from visualad_med.errors import SettingError
from visualad_med.io.layout import flat_in_memory_order
from visualad_med.model.checkpoint import HeadConfig
from visualad_med.model.cohort import head_patch_scores
from visualad_med.model.mutual import stack_features
from visualad_med.model.devices import autocast, inference_precision
from visualad_med.model.visualad import VisualAD
from visualad_med.model.torch_model import TOP_FRACTION
from visualad_med.transforms import PLANES, SlicePipeline, anatomical_axis, slice_pipeline
from .settings import RunSettings

logger = logging.getLogger(__name__)


SlicePreprocessing = Callable[[str], SlicePipeline]
"""The preprocessing of one scan: a plane name to the :class:`~visualad_med.transforms.SlicePipeline` of it."""


def slice_preprocessing(config: HeadConfig, intensity_range: tuple[float, float]) -> SlicePreprocessing:
    """The preprocessing a model's slices need: its input size and normalisation, the scan's window range."""
    return functools.partial(slice_pipeline, config.image_size, config.mean, config.std, intensity_range)


@dataclass
class SliceScores:
    """Per-slice results along the first plane, and timings over all planes.

    Attributes:
        plane: anatomical plane of the slices.
        axis: array axis of the volume that was sliced.
        scores: one entry per array index along ``axis``: the slice's image
            score (top-1 % mean of its map), ``None`` for slices without body.
        seconds: wall time of all planes (slicing, model, reassembly).
        model_seconds: time spent in model calls (inputs to the device, maps back), all planes.
        slices_run: slices that went through the model, over all planes.
        per_plane_seconds: wall time of each plane.
        precision: the autocast the model ran under (``fp32``, ``bf16`` or ``fp16``).
        run_slices: for each sliced array axis (one per plane), one flag per index along it:
            ``True`` where that slice went through the model.
    """

    plane: str
    axis: int
    scores: list[float | None]
    precision: str = "fp32"
    seconds: float = 0.0
    model_seconds: float = 0.0
    slices_run: int = 0
    per_plane_seconds: dict[str, float] = field(default_factory=dict)
    run_slices: dict[int, list[bool]] = field(default_factory=dict)

    def run_voxels(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Bool ``(X, Y, Z)``: voxels that lie in a slice the model ran, in any plane.

        The others (slices without body in every plane) hold 0 in the map, whatever the run's
        background level. A broadcast view (``expand``: no memory per voxel, read-only), so it
        combines with a volume of any memory layout at the volume's speed.
        """
        covered = torch.zeros((1, 1, 1), dtype=torch.bool)
        for axis, flags in self.run_slices.items():
            view = [1, 1, 1]
            view[axis] = len(flags)
            covered = covered | torch.tensor(flags, dtype=torch.bool).view(view)
        return covered.expand(shape)


SliceStep = Callable[[torch.Tensor, torch.Tensor], dict]
"""``step(images, indices)``: ``(B, 3, S, S)`` normalised slices and ``(B,)`` their array indices along the
plane's axis -> ``{"map": (B, S, S), "score": (B,)}``."""


class SliceFeatures(NamedTuple):
    """What :meth:`SliceInferer.extract` keeps of one volume, slices in array order.

    Attributes:
        indices: ``(S,)`` int64 array index along the sliced axis of each slice run.
        length: slices along that axis.
        features: ``(S, T, N, D)`` float16 normalised patch tokens (:func:`~visualad_med.model.mutual.stack_features`).
        head: ``(S, N)`` float32 patch scores of the head, summed over taps.
        precision: the autocast the model ran under.
        seconds: wall time of the extraction.
        model_seconds: time in model calls.
    """

    indices: np.ndarray
    length: int
    features: np.ndarray
    head: np.ndarray
    precision: str
    seconds: float
    model_seconds: float


class ScanMaps(NamedTuple):
    """What :class:`SliceInferer` returns for one volume.

    Attributes:
        anomaly: float32 ``MetaTensor`` ``(1, X, Y, Z)`` on the CPU with the input's meta (affine) and
            memory layout (strides).
        scores: per-slice scores and timings.
    """

    anomaly: MetaTensor
    scores: SliceScores


class SliceInferer(Inferer):
    """Slice-wise inferer of a 2D anomaly model over a ``(1, X, Y, Z)`` volume.

    Args:
        settings: the run's settings (:class:`~visualad_med.inference.settings.RunSettings`): its planes (more
            than one averages the volumes), batch size (slices per model call), ``skip_empty`` (leave out
            slices without body: their map is 0, score ``None``), ``progress`` (a bar per plane) and
            ``precision`` (autocast of the forward pass, :func:`~visualad_med.model.devices.inference_precision`).
            Default: ``RunSettings()``.
        device: where the model runs (inputs are moved there batch by batch).
        slab_slices: slices prepared at a time (bounds memory).

    A run builds it with :meth:`RunSettings.inferer <visualad_med.inference.settings.RunSettings.inferer>`;
    ``precision`` is the autocast that runs (``settings.precision`` resolved on ``device``).

    Call it with the volume, the network (anything with ``config`` that maps ``(B, 3, S, S)``
    images to ``{"map", "score"}``) and the scan's :data:`SlicePreprocessing`
    (:func:`slice_preprocessing`); it returns :class:`ScanMaps`.

    Raises:
        SettingError: ``slab_slices`` below 1 (the settings check their own fields).
    """

    def __init__(self, settings: RunSettings | None = None, device: torch.device | str = "cpu",
                 slab_slices: int = 64) -> None:
        super().__init__()
        if slab_slices < 1:
            raise SettingError("slab_slices", f"slab_slices must be >= 1, got {slab_slices}")
        self.settings = RunSettings() if settings is None else settings
        self.slab_slices = slab_slices
        self.device = torch.device(device)
        self.precision = inference_precision(self.device, self.settings.precision)

    @property
    def planes(self) -> tuple[str, ...]:
        return self.settings.planes

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    @property
    def skip_empty(self) -> bool:
        return self.settings.skip_empty

    @property
    def progress(self) -> bool:
        return self.settings.progress

    def __call__(self, inputs: MetaTensor, network: VisualAD, preprocessing: SlicePreprocessing, *args,
                 **kwargs) -> ScanMaps:
        """Anomaly map volume of ``inputs`` (``(1, X, Y, Z)`` ``MetaTensor``, HU for CT)."""
        _check_volume(inputs)

        def step(images: torch.Tensor, indices: torch.Tensor) -> dict:
            with torch.inference_mode(), autocast(self.device, self.precision):
                return network(images.to(self.device), settings=self.settings.map)
        return self.assemble(inputs, step, network.config.image_size, preprocessing)

    def assemble(self, inputs: MetaTensor, step: SliceStep, image_size: int,
                 preprocessing: SlicePreprocessing) -> ScanMaps:
        """The map volume of ``inputs`` made by ``step`` from each slice with body (see :data:`SliceStep`).

        ``step`` gets the normalised slices and their array indices along the plane's axis, so maps
        computed elsewhere (e.g. the cohort's, :mod:`~visualad_med.inference.cohort`) are placed by
        index. Its time counts as model time.
        """
        started = time.perf_counter()
        total = torch.zeros_like(inputs.as_tensor()[0], dtype=torch.float32)  # the volume's memory layout
        axis = anatomical_axis(inputs.affine, self.planes[0])
        scores = SliceScores(self.planes[0], axis, [None] * inputs.shape[axis + 1], self.precision)
        for plane in self.planes:
            plane_started = time.perf_counter()
            plane_scores = self._plane(inputs, step, image_size, preprocessing(plane), total, scores)
            if plane == self.planes[0]:
                scores.scores = plane_scores
            scores.run_slices[anatomical_axis(inputs.affine, plane)] = [s is not None for s in plane_scores]
            scores.per_plane_seconds[plane] = time.perf_counter() - plane_started
        total /= len(self.planes)
        scores.seconds = time.perf_counter() - started
        return ScanMaps(MetaTensor(total.unsqueeze(0), meta=dict(inputs.meta)), scores)

    def extract(self, inputs: MetaTensor, model: VisualAD, preprocessing: SlicePreprocessing,
                layers: tuple[int, ...]) -> SliceFeatures:
        """The patch features (blocks ``layers``) and head patch scores of every slice with body, first plane.

        Each slice is windowed, resized and run through the model once; nothing is placed back on
        the voxel grid (:meth:`assemble` does that with maps made from these).
        """
        _check_volume(inputs)
        started = time.perf_counter()
        pipeline = preprocessing(self.planes[0])
        features, head, indices = [], [], []
        length = inputs.shape[anatomical_axis(inputs.affine, pipeline.plane) + 1]
        model_seconds = 0.0
        for start, slices, info, wanted in self._slabs(inputs, pipeline):
            for batch in wanted.split(self.batch_size) if wanted.numel() else ():
                called = time.perf_counter()
                with torch.inference_mode(), autocast(self.device, self.precision):
                    outputs = model(slices[batch].to(self.device), feature_layers=layers, settings=self.settings.map)
                features.append(stack_features(outputs["features"]).cpu().numpy())
                head.append(head_patch_scores(outputs).cpu().numpy())
                indices.append((start + info.indices[batch]).numpy())
                model_seconds += time.perf_counter() - called
        if not indices:
            return SliceFeatures(np.zeros(0, np.int64), length, np.zeros((0, len(layers), 0, 0), np.float16),
                                 np.zeros((0, 0), np.float32), self.precision, time.perf_counter() - started,
                                 model_seconds)
        order = np.argsort(np.concatenate(indices), kind="stable")
        return SliceFeatures(np.concatenate(indices)[order], length, np.concatenate(features)[order],
                             np.concatenate(head)[order], self.precision, time.perf_counter() - started,
                             model_seconds)

    def _slabs(self, inputs: MetaTensor, pipeline: SlicePipeline):
        """Yield ``(start, slices, info, wanted)`` per slab of the plane's axis: the slab's first index, its
        normalised slices, their :class:`~visualad_med.transforms.SliceInfo` and the positions to run."""
        if pipeline.blank:  # a constant volume: no body anywhere
            return
        axis = anatomical_axis(inputs.affine, pipeline.plane)
        length = inputs.shape[axis + 1]
        bar = tqdm(total=length, desc=f"{inputs.meta.get('scan_name', 'scan')} {pipeline.plane}",
                   unit="slice", leave=False, disable=not self.progress)
        for start in range(0, length, self.slab_slices):
            count = min(self.slab_slices, length - start)
            slab = MetaTensor(inputs.as_tensor().narrow(axis + 1, start, count), meta=dict(inputs.meta))
            slices, info = pipeline.forward(slab)
            keep = info.body if self.skip_empty else torch.ones_like(info.body)
            yield start, slices, info, torch.nonzero(keep).flatten()
            bar.update(count)
        bar.close()

    def _plane(
        self,
        inputs: MetaTensor,
        step: SliceStep,
        size: int,
        pipeline: SlicePipeline,
        total: torch.Tensor,
        scores: SliceScores,
    ) -> list[float | None]:
        """Add the map of one plane to ``total`` ``(X, Y, Z)``; returns per-slice scores along its axis.

        ``scores.slices_run`` and ``scores.model_seconds`` are updated in place.
        """
        axis = anatomical_axis(inputs.affine, pipeline.plane)
        plane_scores: list[float | None] = [None] * inputs.shape[axis + 1]
        for start, slices, info, wanted in self._slabs(inputs, pipeline):
            maps = torch.zeros(slices.shape[0], size, size)
            for batch in wanted.split(self.batch_size) if wanted.numel() else ():  # split() of nothing is (empty,)
                called = time.perf_counter()
                outputs = step(slices[batch], start + info.indices[batch])
                maps[batch] = outputs["map"].float().cpu()
                batch_scores = outputs["score"].float().cpu().tolist()
                scores.model_seconds += time.perf_counter() - called
                scores.slices_run += len(batch)
                for position, score in zip(batch.tolist(), batch_scores):
                    plane_scores[start + int(info.indices[position])] = score
            total.narrow(axis, start, slices.shape[0]).add_(pipeline.inverse(maps, info).as_tensor())
        return plane_scores


def _check_volume(inputs: object) -> None:
    """Raise ``ValueError`` unless ``inputs`` is a ``(1, X, Y, Z)`` ``MetaTensor``."""
    if not isinstance(inputs, MetaTensor) or inputs.ndim != 4 or inputs.shape[0] != 1:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"expected a single-channel MetaTensor volume (1, X, Y, Z), got {shape}")


def check_planes(planes: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``planes`` is a non-empty list of distinct known planes."""
    unknown = [plane for plane in planes if plane not in PLANES]
    if not planes or unknown or len(set(planes)) != len(planes):
        raise SettingError("planes", f"planes must be distinct names among {sorted(PLANES)}, got {list(planes)}")


def scan_scores(volume_map: torch.Tensor, slice_scores: list[float | None]) -> dict[str, float | None]:
    """The two scan scores: max over slices of the slice score, and the mean of the top 1 % of voxels.

    The top 1 % (``k = ceil(0.01 * N)`` voxels, at least one) is summed from the ``k``-th largest
    value ``v`` as ``sum(x > v) + (k - #(x > v)) * v``, exact with ties (:func:`top_sum`).
    """
    known = [s for s in slice_scores if s is not None]
    plain = volume_map.as_tensor() if isinstance(volume_map, MetaTensor) else volume_map
    flat = flat_in_memory_order(plain.detach().float().cpu())
    count = max(1, math.ceil(TOP_FRACTION * flat.numel()))
    return {
        "max_slice_score": max(known) if known else None,
        "top1pct_mean": float(top_sum(flat, count) / count),
    }


def top_sum(flat: torch.Tensor, count: int, sample_step: int = 64) -> torch.Tensor:
    """Float64 sum of the ``count`` largest values of 1D ``flat``, exact with ties.

    The ``count``-th largest ``v`` is found by ``torch.kthvalue`` (linear time) among the values
    at or above a bound read from every ``sample_step``-th value (set so that, with rare exceptions,
    a few times ``count`` values reach it; when fewer do, among all values): ``torch.topk`` takes
    seconds on a 512 x 512 x 600 volume, ``np.partition`` tens of seconds on maps with large runs
    of equal values (zeros outside the body), and ``kthvalue`` over the whole volume 0.7 s on CQ500.
    """
    candidates = flat
    sample = flat[::sample_step]
    rank = 2 * math.ceil(count / sample_step) + 8  # from the top of the sample
    if rank < sample.numel():
        bound = torch.kthvalue(sample, sample.numel() - rank + 1).values
        reaching = flat[flat >= bound]
        if reaching.numel() >= count:
            candidates = reaching
    kth = torch.kthvalue(candidates, candidates.numel() - count + 1).values
    above = candidates[candidates > kth]
    return above.double().sum() + (count - above.numel()) * kth.double()
