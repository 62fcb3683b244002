"""``SlicePipeline.inverse`` is MONAI's ``Compose.inverse`` of slicing and resizing: the same voxels as undoing each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import visualad_med.transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OBLIQUE_LPS = np.array([[-0.9, 0.0, 0.1], [0.0, -1.0, 0.0], [-0.1, 0.0, 0.9]])


def scan(shape: tuple[int, int, int], linear: np.ndarray, spacing: tuple[float, float, float]) -> MetaTensor:
    """A random HU volume ``(1, X, Y, Z)`` with the affine ``linear @ diag(spacing)``."""
    affine = np.eye(4)
    affine[:3, :3] = linear @ np.diag(spacing)
    data = np.random.default_rng(0).uniform(-100, 200, (1, *shape)).astype(np.float32)
    return MetaTensor(torch.from_numpy(data), affine=torch.from_numpy(affine))


def undo_each(pipe: T.SlicePipeline, maps: torch.Tensor, info: T.SliceInfo) -> torch.Tensor:
    """The inverse by hand: the resizing undone, then the slicing, from the trace ``forward`` recorded."""
    traced = MetaTensor(maps.unsqueeze(1), meta=dict(info.meta), applied_operations=list(info.operations))
    return pipe.slicer.inverse(pipe.resizer.inverse(traced))[0]


@pytest.mark.parametrize("linear, spacing", [(np.eye(3), (1.0, 1.0, 2.5)), (OBLIQUE_LPS, (0.45, 0.45, 0.62))])
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("image_size", [24, 56])  # smaller and larger than the slices: area and bilinear
def test_compose_inverse_gives_the_same_voxels_as_undoing_each_step(linear, spacing, plane, image_size):
    volume = scan((30, 34, 14), linear, spacing)
    pipe = T.slice_pipeline(image_size, MEAN, STD, (0.0, 80.0), plane=plane)
    slices, info = pipe.forward(volume)
    maps = torch.from_numpy(np.random.default_rng(1).normal(size=(slices.shape[0], image_size, image_size)))
    back = pipe.inverse(maps.float(), info)
    assert back.shape == volume.shape[1:] and torch.equal(back.affine, volume.affine)
    assert torch.equal(back.as_tensor(), undo_each(pipe, maps.float(), info).as_tensor())


def test_maps_for_another_number_of_slices_are_refused_with_a_value_error():
    pipe = T.slice_pipeline(16, MEAN, STD, (0.0, 80.0))
    slices, info = pipe.forward(scan((8, 8, 4), np.eye(3), (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"\(4, 16, 16\), got shape \(3, 16, 16\)"):
        pipe.inverse(slices[:-1, 0], info)
