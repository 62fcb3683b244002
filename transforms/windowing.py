"""Intensity windowing: CT presets in HU, percentile scaling for MR, and automatic choice by modality.

CT window presets follow Radiopaedia, "Windowing (CT)"
(https://radiopaedia.org/articles/windowing-ct): brain W:80 L:40, subdural W:130-300 L:50-100
(we use W:200 L:80, inside that range and a common subdural window in solutions of the RSNA 2019
intracranial haemorrhage detection challenge), liver W:150 L:30, lungs W:1500 L:-600, bone W:1800 L:400.
For the abdomen Radiopaedia lists W:400 L:50; we keep W:400 L:40 (the common -160..240 HU range).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import TransformBackends, convert_to_tensor

from .ct_window import looks_like_hu, region_window

__all__ = [
    "CT_WINDOWS",
    "MODALITY_KEYS",
    "ResolvedWindow",
    "WindowSpec",
    "WindowIntensity",
    "WindowIntensityd",
    "auto_window",
    "modality_from_meta",
    "resolve_intensity_window",
    "resolve_window",
    "window_range",
]

logger = logging.getLogger(__name__)

WindowSpec = Union[str, tuple[float, float]]
"""A window: a preset name from ``CT_WINDOWS``, ``"auto"``, ``"percentile"`` or ``(width, level)`` in HU."""

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (80.0, 40.0),
    "subdural": (200.0, 80.0),
    "abdomen": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
"""CT presets as ``(width, level)`` in HU; sources in the module docstring."""

MODALITY_KEYS: tuple[str, ...] = ("Modality", "0008|0060", "00080060")
"""Meta keys holding DICOM Modality (0008,0060): plain name, ITKReader's tag key, PydicomReader's JSON key."""


def window_range(window: str | Sequence[float]) -> tuple[float, float]:
    """Return the HU range ``(level - width / 2, level + width / 2)`` of a CT window.

    Args:
        window: a preset name from ``CT_WINDOWS`` or an explicit ``(width, level)`` in HU.

    Returns:
        ``(a_min, a_max)`` in HU.

    Raises:
        ValueError: for an unknown preset name, a pair of the wrong length or a width <= 0.
    """
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown CT window preset {window!r}, expected one of {sorted(CT_WINDOWS)}.")
        width, level = CT_WINDOWS[window]
    else:
        if len(window) != 2:
            raise ValueError(f"a CT window is (width, level) in HU, got {tuple(window)}.")
        width, level = float(window[0]), float(window[1])
    if not width > 0:
        raise ValueError(f"window width must be > 0 HU, got width={width}, level={level}.")
    return level - width / 2.0, level + width / 2.0


def modality_from_meta(meta: Mapping[Any, Any] | None) -> str | None:
    """Read the DICOM modality (e.g. ``"CT"``, ``"MR"``) from a MONAI meta dictionary.

    MONAI readers store it under different keys (see ``MODALITY_KEYS``): ``"0008|0060"`` as a
    string (ITKReader), ``"00080060"`` as ``{"vr": "CS", "Value": ["CT"]}`` (PydicomReader with
    ``prune_metadata=False``); NIfTI files carry no modality.

    Args:
        meta: the ``meta`` of a ``MetaTensor`` or a reader's meta dictionary; ``None`` for none.

    Returns:
        The upper-case modality, or ``None`` when no key holds one.
    """
    if not meta:
        return None
    for key in MODALITY_KEYS:
        value = meta.get(key)
        if isinstance(value, Mapping):
            value = value.get("Value")
        if isinstance(value, (list, tuple, np.ndarray)):
            value = value[0] if len(value) else None
        if isinstance(value, bytes):
            value = value.decode(errors="ignore")
        if isinstance(value, str) and value.strip():
            return value.strip().upper()
    return None


def resolve_window(window: str | Sequence[float]) -> WindowSpec:
    """Validate a window setting: ``"auto"`` (resolved per volume by :func:`auto_window`), ``"percentile"``, a
    ``CT_WINDOWS`` preset or ``(width, level)`` in HU; tuples come back as floats.

    Raises:
        ValueError: for an unknown name or an invalid ``(width, level)``.
    """
    if isinstance(window, str) and window in ("auto", "percentile"):
        return window
    return _ct_window(window)


def _ct_window(window: str | Sequence[float]) -> WindowSpec:
    """Validate a CT window (preset name or ``(width, level)``); tuples come back as floats."""
    window_range(window)
    return window if isinstance(window, str) else (float(window[0]), float(window[1]))


class WindowIntensity(Transform):
    """Map intensities to [0, 1]: a CT window in HU, percentile scaling, or chosen by modality.

    A CT window ``(width, level)`` maps ``level - width / 2`` HU to 0 and ``level + width / 2`` HU
    to 1 and clips outside (MONAI ``ScaleIntensityRange``). Percentile scaling maps the
    ``percentiles`` of the whole image (all channels together) to 0 and 1 and clips (MONAI
    ``ScaleIntensityRangePercentiles``), the usual choice for MR whose intensities have no unit.
    ``"auto"`` is :func:`auto_window`: CT (by Modality, or by Hounsfield units without one) gets
    ``ct_window``, or with ``None`` the window of its body region; anything else percentile scaling.

    Args:
        window: ``"auto"``, ``"percentile"``, a preset name from ``CT_WINDOWS`` or ``(width, level)`` in HU.
        ct_window: the CT window used by ``"auto"`` for CT images; a preset name or ``(width, level)``;
            ``None``: by body region (:func:`~visualad_med.transforms.ct_window.region_window`).
        percentiles: lower and upper percentiles (0..100) for percentile scaling.

    Raises:
        ValueError: for an unknown window name, a width <= 0, or percentiles not ``0 <= lower < upper <= 100``.

    Example:
        >>> import torch
        >>> WindowIntensity((80, 40))(torch.tensor([[0.0, 40.0, 80.0, 500.0]])).tolist()
        [[0.0, 0.5, 1.0, 1.0]]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        window: str | Sequence[float] = "auto",
        ct_window: str | Sequence[float] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> None:
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError(f"percentiles must be (lower, upper), 0 <= lower < upper <= 100, got {percentiles}.")
        lower, upper = float(percentiles[0]), float(percentiles[1])
        self.window = "auto" if isinstance(window, str) and window == "auto" else resolve_window(window)
        self.ct_window = None if ct_window is None else _ct_window(ct_window)
        self.percentiles = (lower, upper)
        self._percentile = ScaleIntensityRangePercentiles(lower, upper, b_min=0.0, b_max=1.0, clip=True)

    def resolve(self, img: NdarrayOrTensor) -> WindowSpec:
        """Return the window this transform applies to ``img`` (``"auto"``: :func:`auto_window`)."""
        if self.window == "auto":
            return auto_window(img, self.ct_window)[0]
        return self.window

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Window ``img``.

        Args:
            img: image of any shape, e.g. a volume ``(C, X, Y, Z)``; HU for CT windows.

        Returns:
            Float32 tensor of the same shape in [0, 1]; a ``MetaTensor`` keeps its meta.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        window = self.resolve(img)
        if window == "percentile":
            return self._percentile(img)
        a_min, a_max = window_range(window)
        return ScaleIntensityRange(a_min, a_max, b_min=0.0, b_max=1.0, clip=True)(img)


def auto_window(volume: NdarrayOrTensor, ct_window: str | Sequence[float] | None = None) -> tuple[WindowSpec, str]:
    """What ``"auto"`` means for ``volume``, and why.

    CT, by its Modality or, without one, by Hounsfield units
    (:func:`~visualad_med.transforms.ct_window.looks_like_hu`), gets ``ct_window``, or with ``None``
    the window of its body region (:func:`~visualad_med.transforms.ct_window.region_window`: the
    brain window for a head, soft tissue W400 L40 otherwise); any other modality, or none and no
    Hounsfield units, percentile scaling. A plain tensor is read as a volume with an identity affine.
    """
    meta = volume.meta if isinstance(volume, MetaTensor) else None
    voxels = convert_to_tensor(volume, track_meta=False)
    modality = modality_from_meta(meta)
    if modality not in (None, "CT"):
        return "percentile", f"Modality {modality}"
    if modality == "CT":
        why = "Modality CT"
    else:
        hounsfield, facts = looks_like_hu(voxels)
        if not hounsfield:
            return "percentile", f"no Modality, not Hounsfield units ({facts})"
        why = f"no Modality, Hounsfield units ({facts})"
    if ct_window is not None:
        return _ct_window(ct_window), f"{why}; the CT window asked for"
    if voxels.ndim != 4:
        return "abdomen", f"{why}; soft-tissue window (not a (C, X, Y, Z) volume: no region)"
    affine = meta.get("affine", torch.eye(4)) if meta else torch.eye(4)
    preset, region = region_window(voxels, affine, meta)
    return preset, f"{why}; {preset} window: {region}"


class ResolvedWindow(NamedTuple):
    """The window of one volume: what was chosen, why, and the input intensities it maps to 0 and 1.

    Attributes:
        spec: a ``CT_WINDOWS`` name, ``(width, level)`` in HU, or ``"percentile"``.
        low: input intensity (HU for CT) mapped to 0.
        high: input intensity mapped to 1; ``high <= low`` only for a constant volume.
        reason: why ``auto`` chose ``spec`` (empty when the window was given).
    """

    spec: WindowSpec
    low: float
    high: float
    reason: str = ""


def resolve_intensity_window(
    volume: NdarrayOrTensor,
    window: str | Sequence[float] = "auto",
    ct_window: str | Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> ResolvedWindow:
    """Resolve the window of a whole volume once: ``"auto"`` by :func:`auto_window`, percentiles over all its voxels.

    A CT window gives ``level -+ width / 2`` HU. Percentile scaling takes the percentiles of the
    whole volume (as MONAI's ``ScaleIntensityRangePercentiles`` does), after a filled background inside the
    tissue's range is moved to the minimum, in place (:func:`lift_background`); when they coincide (more
    than 99 % of the voxels share one value, e.g. a small object on a blank background) it falls
    back to the volume's minimum and maximum, with a warning, instead of leaving the intensities
    unscaled.

    Args:
        volume: e.g. ``(1, X, Y, Z)``; a ``MetaTensor``'s meta gives the modality for ``"auto"``.
        window: see :py:class:`WindowIntensity`.
        ct_window: the CT window ``"auto"`` uses for CT; ``None``: by body region.
        percentiles: lower and upper percentiles of percentile scaling.

    Raises:
        ValueError: for an unknown window name, a width <= 0 or invalid percentiles.
    """
    windowing = WindowIntensity(window, ct_window, percentiles)
    spec, reason = auto_window(volume, windowing.ct_window) if windowing.window == "auto" else (windowing.window, "")
    if spec != "percentile":
        low, high = window_range(spec)
        return ResolvedWindow(spec, low, high, reason)
    voxels = convert_to_tensor(volume, track_meta=False)
    background = lift_background(voxels)
    if background:
        reason = f"{reason}; {background}" if reason else background
    low, high = (float(v) for v in percentile(voxels, list(windowing.percentiles)))
    if high <= low:
        low, high = float(voxels.amin()), float(voxels.amax())  # max() is 40x slower on a transposed volume
        name = volume.meta.get("scan_name", "scan") if isinstance(volume, MetaTensor) else "scan"
        logger.warning("%s: percentiles %s of the intensities coincide; scaling min..max (%g..%g) instead", name,
                       windowing.percentiles, low, high)
    return ResolvedWindow(spec, low, high, reason)


BACKGROUND_SHARE = 0.2
"""A value held by at least this share of a volume's voxels, above its minimum, is a filled background (skull-
stripped, z-normalised MRI: 0 between brain values of either sign); real tissue never repeats one value so often."""
BACKGROUND_SAMPLE = 65536


def lift_background(volume: torch.Tensor) -> str:
    """Move a filled background that sits inside the tissue's range to the volume's minimum, in place.

    Percentile scaling of a z-normalised skull-stripped MRI would otherwise show its background (0, most of
    the voxels) as mid grey, brighter than half the brain, and the body (grey above 10 % of the brightest)
    would be the whole volume. The candidate value is the mode of an evenly strided sample of
    :data:`BACKGROUND_SAMPLE` voxels; it counts when it holds :data:`BACKGROUND_SHARE` of all voxels.

    Returns:
        what was done, for the window's reason (empty when nothing was).
    """
    step = max(1, math.ceil((volume.numel() / BACKGROUND_SAMPLE) ** (1 / 3)))
    sample = volume[(..., *([slice(None, None, step)] * min(3, volume.ndim)))]
    values, counts = torch.unique(sample, return_counts=True)
    candidate = values[counts.argmax()]
    lowest = volume.amin()
    if candidate <= lowest:
        return ""
    background = volume == candidate
    share = float(background.count_nonzero()) / volume.numel()
    if share < BACKGROUND_SHARE:
        return ""
    volume[background] = lowest
    return (f"background {float(candidate):g} ({100 * share:.0f} % of the voxels, above the minimum) shown as "
            f"the minimum {float(lowest):g}")


class WindowIntensityd(MapTransform):
    """Dictionary-based wrapper of :py:class:`WindowIntensity`.

    Args:
        keys: keys of the items to window. See also: ``monai.transforms.MapTransform``.
        window: see :py:class:`WindowIntensity`.
        ct_window: see :py:class:`WindowIntensity`.
        percentiles: see :py:class:`WindowIntensity`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = WindowIntensity.backend

    def __init__(
        self,
        keys: KeysCollection,
        window: str | Sequence[float] = "auto",
        ct_window: str | Sequence[float] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windowing = WindowIntensity(window, ct_window, percentiles)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windowing(d[key])
        return d
