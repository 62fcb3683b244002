"""Cut a volume into 2D slices along an anatomical plane found from its affine, and put them back.

The slice axis is the voxel axis whose direction (a column of the affine) is closest to the
plane's normal in world space: S-I for axial, A-P for coronal, L-R for sagittal. MONAI affines
are RAS (``LoadImage`` converts DICOM's LPS); a ``MetaTensor`` whose ``meta["space"]`` is
``"LPS"`` is converted first. The choice of axis does not depend on RAS vs LPS, only the
display flips do.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.data.utils import orientation_ras_lps
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import MetaKeys, SpaceKeys, TraceKeys, TransformBackends, convert_to_tensor
from nibabel.affines import from_matvec
from nibabel.orientations import io_orientation

__all__ = ["PLANES", "SliceLayout", "VolumeToSlices", "VolumeToSlicesd", "anatomical_axis", "slice_layout"]

PLANES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""World (RAS) axis normal to each plane: L-R (0), A-P (1), S-I (2)."""

# World axis and direction of (rows, columns) in radiological display, RAS world:
# axial: top anterior, patient's right on the viewer's left; coronal: top superior, right on the
# left; sagittal: top superior, anterior on the left. -1 = index grows towards lower RAS values.
_DISPLAY: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "axial": ((1, -1), (0, -1)),
    "coronal": ((2, -1), (0, -1)),
    "sagittal": ((2, -1), (1, -1)),
}


class SliceLayout(NamedTuple):
    """How the spatial axes ``(X, Y, Z)`` of a volume become ``(S, H, W)`` of its slices.

    Attributes:
        perm: volume spatial axis (0..2) placed at slice dims ``(S, H, W)``; ``perm[0]`` is the slice axis.
        flip: whether each of ``(S, H, W)`` runs opposite to its volume axis.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]


def _orientation(affine: NdarrayOrTensor) -> np.ndarray:
    """nibabel's ``io_orientation`` of the 3x3 linear part: row j = (world axis, +-1) of voxel axis j."""
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if matrix.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"expected a 3D affine of shape (4, 4) or (3, 3), got shape {matrix.shape}.")
    linear = matrix[:3, :3]
    ornt = io_orientation(from_matvec(linear))
    if np.isnan(ornt).any():
        raise ValueError(f"affine has a degenerate (zero-length) voxel axis: {linear.tolist()}.")
    return ornt


def _plane_normal(plane: str) -> int:
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}, expected one of {sorted(PLANES)}.")
    return PLANES[plane]


def anatomical_axis(affine: NdarrayOrTensor, plane: str = "axial") -> int:
    """Return the spatial array axis (0..2) that is normal to ``plane``.

    Uses nibabel's ``io_orientation``: it removes voxel sizes, takes the nearest rotation of the
    affine and assigns each voxel axis to a distinct world axis, largest cosine first, so the
    three planes always get three distinct axes, also for oblique scans (ties at exactly 45
    degrees are broken arbitrarily).

    Args:
        affine: voxel-to-world affine, ``(4, 4)`` or its ``(3, 3)`` linear part; RAS or LPS.
        plane: ``"axial"`` (normal S-I), ``"coronal"`` (A-P) or ``"sagittal"`` (L-R).

    Returns:
        Spatial axis index: 0, 1 or 2 for ``(X, Y, Z)`` of a ``(C, X, Y, Z)`` volume.

    Raises:
        ValueError: for an unknown plane, a wrongly shaped affine or a zero-length voxel axis.

    Example:
        >>> import numpy as np
        >>> swapped = np.array([[0.0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
        >>> anatomical_axis(np.eye(4), "axial"), anatomical_axis(swapped, "axial")
        (2, 0)
    """
    normal = _plane_normal(plane)
    return int(np.flatnonzero(_orientation(affine)[:, 0] == normal)[0])


def slice_layout(affine: NdarrayOrTensor, plane: str = "axial", radiological: bool = True) -> SliceLayout:
    """Return how a volume with this RAS affine is laid out as slices of ``plane``.

    Args:
        affine: voxel-to-world RAS affine, ``(4, 4)`` or ``(3, 3)``.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        radiological: if True, slices are ordered by increasing RAS coordinate (inferior to
            superior, posterior to anterior, left to right) and shown as a radiologist sees them:
            axial rows run anterior to posterior and columns from the patient's right to left;
            coronal rows superior to inferior, columns right to left; sagittal rows superior to
            inferior, columns anterior to posterior. If False, the other two axes keep their
            array order and nothing is flipped.

    Returns:
        The :py:class:`SliceLayout`.
    """
    ornt = _orientation(affine)
    slice_axis = anatomical_axis(affine, plane)
    if not radiological:
        rows, cols = (axis for axis in range(3) if axis != slice_axis)
        return SliceLayout((slice_axis, rows, cols), (False, False, False))
    perm, flip = [slice_axis], [bool(ornt[slice_axis, 1] < 0)]
    for world, direction in _DISPLAY[plane]:
        axis = int(np.flatnonzero(ornt[:, 0] == world)[0])
        perm.append(axis)
        flip.append(bool(ornt[axis, 1] != direction))
    return SliceLayout((perm[0], perm[1], perm[2]), (flip[0], flip[1], flip[2]))


def _ras_affine(img: torch.Tensor) -> torch.Tensor:
    """The RAS affine of ``img``: its own for a MetaTensor (converted if LPS), identity otherwise."""
    if not isinstance(img, MetaTensor):
        return torch.eye(4, dtype=torch.float64)
    affine = img.affine
    if img.meta.get(MetaKeys.SPACE, SpaceKeys.RAS) == SpaceKeys.LPS:
        affine = orientation_ras_lps(affine)
    return affine


class VolumeToSlices(InvertibleTransform):
    """Cut a channel-first volume ``(C, X, Y, Z)`` into a batch of slices ``(S, C, H, W)``.

    The slice axis is found from the affine (:py:func:`anatomical_axis`), not assumed to be the
    last array axis, and the slices are oriented by :py:func:`slice_layout`. The layout is a
    permutation and flips, so :py:meth:`inverse` is exact. The output keeps the volume's meta
    (its affine describes the source volume, not the slices); the layout is recorded in
    ``applied_operations``. A plain tensor is treated as having an identity (RAS) affine.
    Written by hand: MONAI's ``SliceInferer`` slices a fixed array axis inside the inferer and
    no MONAI transform moves a spatial axis to the batch position.

    Args:
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        radiological: orient slices for radiological display; see :py:func:`slice_layout`.

    Raises:
        ValueError: for an unknown plane.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, plane: str = "axial", radiological: bool = True) -> None:
        _plane_normal(plane)
        self.plane = plane
        self.radiological = radiological

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Cut ``img`` into slices.

        Args:
            img: channel-first volume ``(C, X, Y, Z)``, ideally a ``MetaTensor`` with its affine.

        Returns:
            Slices ``(S, C, H, W)``: ``S`` runs along the slice axis, ``(H, W)`` the other two.

        Raises:
            ValueError: if ``img`` is not 4D.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.ndim != 4:
            raise ValueError(f"expected a channel-first volume (C, X, Y, Z), got shape {tuple(img.shape)}.")
        layout = slice_layout(_ras_affine(img), self.plane, self.radiological)
        flips = [1 + axis for axis, flipped in zip(layout.perm, layout.flip) if flipped]
        out = img.flip(flips) if flips else img
        out = out.permute(1 + layout.perm[0], 0, 1 + layout.perm[1], 1 + layout.perm[2]).contiguous()
        extra_info = {"perm": layout.perm, "flip": layout.flip}
        return self.push_transform(out, orig_size=tuple(img.shape[1:]), extra_info=extra_info)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Put slices ``(S, C', H, W)`` traced by this transform back into a volume ``(C', X, Y, Z)``."""
        transform = self.pop_transform(data)
        return self.inverse_transform(data, transform)

    def inverse_transform(self, data: torch.Tensor, transform: Mapping[str, Any]) -> torch.Tensor:
        """Undo the layout recorded in ``transform`` (an entry of ``applied_operations``).

        Args:
            data: slices ``(S, C', H, W)``; any channel count, e.g. one anomaly map per slice.
            transform: the trace entry pushed by :py:meth:`__call__`.

        Returns:
            Volume ``(C', X, Y, Z)`` in the array order of the source volume; its memory stays in
            slice order (a view of ``data``, or of one copy where an axis is flipped), so adding it
            into a volume that is laid out the same way streams, and into any other costs one pass.

        Raises:
            ValueError: if ``(S, H, W)`` does not match the slices the transform produced.
        """
        perm, flip = transform[TraceKeys.EXTRA_INFO]["perm"], transform[TraceKeys.EXTRA_INFO]["flip"]
        spatial = tuple(int(s) for s in transform[TraceKeys.ORIG_SIZE])
        expected = tuple(spatial[axis] for axis in perm)
        if data.ndim != 4 or (data.shape[0], *data.shape[2:]) != expected:
            raise ValueError(
                f"expected slices (S, C, H, W) with (S, H, W) = {expected} for a volume of spatial shape "
                f"{spatial}, got shape {tuple(data.shape)}."
            )
        position = {axis: dim for axis, dim in zip(perm, (0, 2, 3))}
        out = data.permute(1, position[0], position[1], position[2])
        flips = [1 + axis for axis, flipped in zip(perm, flip) if flipped]
        return out.flip(flips) if flips else out


class VolumeToSlicesd(MapTransform, InvertibleTransform):
    """Dictionary-based wrapper of :py:class:`VolumeToSlices`.

    Args:
        keys: keys of the volumes to cut. See also: ``monai.transforms.MapTransform``.
        plane: see :py:class:`VolumeToSlices`.
        radiological: see :py:class:`VolumeToSlices`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = VolumeToSlices.backend

    def __init__(
        self, keys: KeysCollection, plane: str = "axial", radiological: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slicer = VolumeToSlices(plane, radiological)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.slicer(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.slicer.inverse(d[key])
        return d
