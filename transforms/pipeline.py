"""Volume to normalised model-size slices and per-slice maps back to the volume: the inference contract.

``SlicePipeline.forward`` composes, in this order: MONAI's ``ScaleIntensityRange`` on the whole
volume (the window resolved once per volume, :py:func:`resolve_intensity_window`), :py:class:`VolumeToSlices`, :py:func:`has_body`, :py:class:`ResizeLongestPad`,
:py:class:`GreyToRGB`, :py:class:`NormalizeChannels`. ``SlicePipeline.inverse`` undoes the two
spatial steps with MONAI's ``Compose.inverse`` of them, from their trace (``applied_operations``)
kept in :py:class:`SliceInfo`. The forward steps are called one by one, not through ``Compose``:
:py:func:`has_body` runs between slicing and resizing, and ``Compose`` would re-raise a step's
error as ``RuntimeError("applying transform ...")``, hiding its message.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from typing import Any, NamedTuple

import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Compose, ScaleIntensityRange
from monai.utils import TraceKeys, convert_to_tensor

from .channels import GreyToRGB, NormalizeChannels
from .foreground import has_body
from .slicing import VolumeToSlices
from .spatial import ResizeLongestPad

__all__ = ["SliceInfo", "SlicePipeline", "slice_pipeline"]


class SliceInfo(NamedTuple):
    """What :py:meth:`SlicePipeline.inverse` needs, and facts about one forward pass.

    Attributes:
        operations: MONAI trace (``applied_operations``) of the volume after slicing and resizing;
            ends with the entries of :py:class:`VolumeToSlices` and :py:class:`ResizeLongestPad`.
        meta: meta of the input volume (``"affine"`` and whatever the reader stored).
        axis: spatial axis (0..2) of the input array ``(1, X, Y, Z)`` that was sliced.
        indices: ``(S,)`` int64, the array index along ``axis`` of each slice.
        body: ``(S,)`` bool, False for slices without body (:py:func:`has_body` on windowed slices).
    """

    operations: list[dict[str, Any]]
    meta: dict[str, Any]
    axis: int
    indices: torch.Tensor
    body: torch.Tensor


class SlicePipeline:
    """Turn a volume into normalised model-size slices, and per-slice maps back into a volume.

    Forward: a channel-first volume ``(1, X, Y, Z)`` (``LoadImage(ensure_channel_first=True)``;
    HU for CT) becomes float32 slices ``(S, 3, image_size, image_size)``, normalised with
    ``mean`` and ``std``, ``S`` the number of voxels along the anatomical axis of ``plane``,
    plus a :py:class:`SliceInfo`. Inverse: maps ``(S, image_size, image_size)`` for those same
    slices, in the same order, become a float32 ``MetaTensor`` ``(X, Y, Z)`` voxel-aligned with
    the input array and carrying its meta (affine). Pass every slice, e.g. zeros for slices
    skipped because ``info.body`` is False. An ``info`` is only valid with the pipeline that
    produced it (MONAI checks the transform ids).

    Args:
        image_size: side of the square model input, e.g. 224 (pixels).
        mean: per-channel mean of the backbone, 3 values for inputs in [0, 1].
        std: per-channel std of the backbone, 3 values > 0.
        intensity_range: ``(low, high)`` input intensities (HU for CT) mapped to 0 and 1, clipped
            outside; the volume's resolved window (:py:func:`resolve_intensity_window`). ``high <= low``
            (a constant volume) leaves nothing to window: :py:attr:`blank` is then True.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        radiological: orient slices for radiological display; see :py:func:`slice_layout`.
        mode: interpolation mode for resizing, both ways; None: ``"area"`` to shrink, ``"bilinear"`` to enlarge.
        body_threshold: windowed intensity above which a pixel counts as body.
        body_min_fraction: fraction of body pixels for a slice to count as containing body.

    Raises:
        ValueError: for invalid arguments, e.g. ``mean`` or ``std`` without 3 values.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        intensity_range: tuple[float, float],
        plane: str = "axial",
        radiological: bool = True,
        mode: str | None = None,
        body_threshold: float = 0.05,
        body_min_fraction: float = 0.01,
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={tuple(mean)}, std={tuple(std)}.")
        self.image_size = image_size
        self.plane = plane
        self.body_threshold = body_threshold
        self.body_min_fraction = body_min_fraction
        self.intensity_range = (float(intensity_range[0]), float(intensity_range[1]))
        self.windowing = ScaleIntensityRange(*self.intensity_range, b_min=0.0, b_max=1.0, clip=True)
        self.slicer = VolumeToSlices(plane, radiological)
        self.resizer = ResizeLongestPad(image_size, mode)
        self.to_rgb = GreyToRGB(channel_dim=1)
        self.normalizer = NormalizeChannels(mean, std, channel_dim=1)
        self.spatial = Compose([self.slicer, self.resizer])

    @property
    def blank(self) -> bool:
        """True for a constant volume's range (``high <= low``): no body anywhere, nothing to run."""
        return self.intensity_range[1] <= self.intensity_range[0]

    def forward(self, volume: NdarrayOrTensor) -> tuple[torch.Tensor, SliceInfo]:
        """Window, slice, resize and normalise a volume.

        Args:
            volume: ``(1, X, Y, Z)``, a ``MetaTensor`` with its affine (RAS, or ``meta["space"]``
                ``"LPS"``); a plain tensor or array is taken as RAS with an identity affine.

        Returns:
            ``(slices, info)``: ``slices`` a plain float32 tensor ``(S, 3, image_size, image_size)``
            on the device of ``volume``, and the :py:class:`SliceInfo` for :py:meth:`inverse`.

        Raises:
            ValueError: if ``volume`` is not ``(1, X, Y, Z)``.
            RuntimeError: if MONAI's metadata tracking is off (``monai.data.set_track_meta(False)``);
                the inverse is recorded in the ``MetaTensor`` trace.
        """
        if not get_track_meta():
            raise RuntimeError("SlicePipeline needs MONAI metadata tracking; call monai.data.set_track_meta(True).")
        volume = convert_to_tensor(volume, track_meta=True)
        if volume.ndim != 4 or volume.shape[0] != 1:
            raise ValueError(f"expected a single-channel volume (1, X, Y, Z), got shape {tuple(volume.shape)}.")
        slices = self.slicer(self.windowing(volume))
        layout = self.slicer.get_most_recent_transform(slices)[TraceKeys.EXTRA_INFO]
        axis, reversed_ = layout["perm"][0], layout["flip"][0]
        count = slices.shape[0]
        indices = torch.arange(count - 1, -1, -1) if reversed_ else torch.arange(count)
        body = has_body(slices, self.body_threshold, self.body_min_fraction)
        slices = self.resizer(slices)
        info = SliceInfo(deepcopy(slices.applied_operations), dict(volume.meta), axis, indices, body)
        slices = self.normalizer(self.to_rgb(slices))
        return convert_to_tensor(slices, track_meta=False), info

    def inverse(self, maps: NdarrayOrTensor, info: SliceInfo) -> MetaTensor:
        """Put per-slice maps at model size back on the voxel grid of the input volume.

        Args:
            maps: ``(S, image_size, image_size)``, one map per slice of ``forward``, same order.
            info: the :py:class:`SliceInfo` that ``forward`` returned with those slices.

        Returns:
            Float32 ``MetaTensor`` ``(X, Y, Z)`` on the device of ``maps``: the padding cropped,
            each map resized to its slice's pixel grid and the slices put back in the array
            order of the input volume; it carries the input's meta (affine) and any trace
            entries the input already had.

        Raises:
            ValueError: if ``maps`` is not ``(S, image_size, image_size)`` for the ``S`` of ``info``.
        """
        maps = convert_to_tensor(maps, dtype=torch.float32, track_meta=False)
        expected = (len(info.indices), self.image_size, self.image_size)
        if tuple(maps.shape) != expected:
            raise ValueError(f"expected maps (S, {self.image_size}, {self.image_size}) = {expected}, "
                             f"got shape {tuple(maps.shape)}.")
        traced = MetaTensor(maps.unsqueeze(1), meta=dict(info.meta), applied_operations=deepcopy(info.operations))
        return self.spatial.inverse(traced)[0]


def slice_pipeline(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    intensity_range: tuple[float, float],
    plane: str = "axial",
    **kwargs: Any,
) -> SlicePipeline:
    """Build the :py:class:`SlicePipeline` the volume inference calls.

    Args:
        image_size: side of the square model input (pixels).
        mean: per-channel mean of the backbone (3 values).
        std: per-channel std of the backbone (3 values).
        intensity_range: ``(low, high)`` input intensities mapped to 0 and 1 (HU for CT).
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        kwargs: the other arguments of :py:class:`SlicePipeline` (``radiological``, ``mode``...).

    Returns:
        The pipeline; ``forward(volume) -> (slices, info)``, ``inverse(maps, info) -> volume``.

    Example:
        >>> import torch
        >>> from monai.data import MetaTensor
        >>> pipe = slice_pipeline(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (0.0, 80.0))
        >>> slices, info = pipe.forward(MetaTensor(torch.zeros(1, 40, 30, 20)))
        >>> tuple(slices.shape), info.axis
        ((20, 3, 32, 32), 2)
        >>> tuple(pipe.inverse(slices[:, 0], info).shape)
        (40, 30, 20)
    """
    return SlicePipeline(image_size, mean, std, intensity_range, plane=plane, **kwargs)
