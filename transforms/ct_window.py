"""``auto`` windowing of CT: recognising Hounsfield units without tags, and choosing the window by body region.

A volume is taken for CT when its DICOM Modality says so, or, without a Modality (NIfTI, NRRD,
MetaImage), when its voxels look like Hounsfield units (:func:`looks_like_hu`): integer-valued,
air or lung (-500 HU or below) on at least 1 % of the voxels (pydicom's ``CT_small``, a crop
without outside air, has 21 %), a range of at least 1000 HU, and at least 10 % of the voxels in
the soft-tissue range -200..300 HU (uniform noise over +-4096 has 6 %). MR intensities fail the
air test (they are not negative) and z-scored MR fails the integer test.

The window then follows the body region (:func:`region_window`): ``BodyPartExamined``, then the
series and study descriptions, when one names a region (:data:`HEAD_WORDS`: the brain window;
:data:`BODY_WORDS`: the soft-tissue window W400 L40), else the scan itself: a head is at most
:data:`HEAD_WIDTH_MM` wide (the body, above -500 HU, measured along the in-plane axes of the axial
slices) with at least :data:`HEAD_BONE_SHARE` of its body voxels bone (above 300 HU, the skull).
Anything else, or too little to tell, gets the soft-tissue window, which shows every region's soft
tissue; the brain window (W80 L40) is right only inside the skull.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .slicing import anatomical_axis

HEAD_WIDTH_MM = 250.0
"""Widest body (95th percentile over axial slices) of a head, in mm."""
HEAD_BONE_SHARE = 0.05
"""Smallest share of bone (> 300 HU) among body (> -500 HU) voxels of a head."""
HEAD_WORDS = ("HEAD", "BRAIN", "SKULL", "CRAN", "CEREB", "NEURO")
"""Words of a DICOM region or description that mean the head (unless ``NECK`` is there too)."""
BODY_WORDS = ("NECK", "CHEST", "THORAX", "LUNG", "HEART", "CARDIAC", "BREAST", "ABD", "LIVER", "PANCREAS",
              "KIDNEY", "SPLEEN", "PELVIS", "COLON", "SPINE", "WHOLEBODY", "WHOLE BODY", "TRUNK", "EXTREMIT",
              "KNEE", "HIP", "SHOULDER", "LEG", "ARM")
"""Words of other body regions (the soft-tissue window); text with neither kind of word is not read as a region."""
REGION_KEYS = ("BodyPartExamined", "SeriesDescription", "StudyDescription")
"""Meta keys read for the body region, in order."""
_SAMPLE = 2_000_000


def _sample(volume: torch.Tensor) -> np.ndarray:
    """At most :data:`_SAMPLE` voxels of ``volume``, evenly strided, as float64."""
    flat = volume.reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    return flat[::step].double().numpy()


def looks_like_hu(volume: torch.Tensor) -> tuple[bool, str]:
    """Whether ``volume``'s voxels look like Hounsfield units (see the module docstring), and why."""
    values = _sample(volume)
    if values.size == 0:
        return False, "empty volume"
    fractional = float(np.mean(np.abs(values - np.round(values)) > 1e-3))
    air, soft = float(np.mean(values <= -500)), float(np.mean((values >= -200) & (values <= 300)))
    spread = float(np.percentile(values, 99.5) - np.percentile(values, 0.5))
    facts = (f"{100 * fractional:.1f} % non-integer, {100 * air:.1f} % at or below -500, {100 * soft:.1f} % "
             f"in -200..300, 0.5-99.5 percentile range {spread:.0f}")
    return fractional < 0.01 and air >= 0.01 and spread >= 1000 and soft >= 0.10, facts


def _header_region(meta: Mapping[Any, Any] | None) -> tuple[str | None, str]:
    """``brain`` or ``abdomen`` (soft tissue) from the first region key the meta holds, else ``None``."""
    for key in REGION_KEYS:
        value = str((meta or {}).get(key) or "").upper().strip()
        if any(word in value for word in HEAD_WORDS) and "NECK" not in value:
            return "brain", f"{key} {value!r}"
        if any(word in value for word in BODY_WORDS):
            return "abdomen", f"{key} {value!r}"
    return None, "no region in the headers"


def _head_like(volume: torch.Tensor, affine: torch.Tensor | np.ndarray) -> tuple[bool, str]:
    """Whether a ``(1, X, Y, Z)`` CT in HU is a head by its width and skull (module docstring), and why."""
    axis = anatomical_axis(affine, "axial")
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    body = volume[0] > -500
    if not bool(body.any()):
        return False, "no body above -500 HU"
    widths = []
    for in_plane in (a for a in range(3) if a != axis):
        others = tuple(a for a in range(3) if a not in (axis, in_plane))
        present = body.any(dim=others)  # (2D): slice index and in-plane index, ordered by array axis
        present = present if axis < in_plane else present.T
        first = present.int().argmax(dim=1)
        last = present.shape[1] - 1 - present.flip(1).int().argmax(dim=1)
        extent = torch.where(present.any(dim=1), last - first + 1, torch.zeros_like(first))
        widths.append(extent.double().numpy() * spacing[in_plane])
    width = float(np.percentile(np.maximum(*widths), 95))
    bone = float((volume[0] > 300).sum()) / float(body.sum())
    head = width <= HEAD_WIDTH_MM and bone >= HEAD_BONE_SHARE
    return head, f"body {width:.0f} mm wide, {100 * bone:.1f} % bone"


def region_window(volume: torch.Tensor, affine: torch.Tensor | np.ndarray,
                  meta: Mapping[Any, Any] | None = None) -> tuple[str, str]:
    """The CT preset for ``volume``'s body region (``brain`` or the soft-tissue ``abdomen``) and why."""
    preset, why = _header_region(meta)
    if preset is not None:
        return preset, why
    head, facts = _head_like(volume, affine)
    return ("brain", f"a head by its size ({facts})") if head else ("abdomen", f"not a head ({facts})")
