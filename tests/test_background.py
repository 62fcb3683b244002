"""A filled background inside the tissue's range (skull-stripped, z-normalised MRI) is shown as the minimum."""

import torch
from monai.data import MetaTensor

from visualad_med.model.body_reference import volume_body_mask
from visualad_med.transforms import resolve_intensity_window
from visualad_med.transforms.windowing import lift_background


def _z_normalised_brain() -> torch.Tensor:
    """A 'brain' of z-scores (either sign) in a background of exact zeros (75 % of the voxels)."""
    generator = torch.Generator().manual_seed(0)
    volume = torch.zeros(1, 48, 48, 16)
    volume[0, 12:36, 12:36, 4:12] = torch.randn(24, 24, 8, generator=generator)
    return volume


def test_background_inside_the_range_becomes_the_minimum_and_leaves_the_body():
    volume = MetaTensor(_z_normalised_brain())
    brain = volume.as_tensor() != 0
    window = resolve_intensity_window(volume, "auto")
    assert "background 0" in window.reason
    assert torch.all(volume.as_tensor()[~brain] == volume.min())
    assert window.low == float(volume.min())
    body = volume_body_mask(volume.as_tensor(), (window.low, window.high))
    assert not body[~brain].any()
    assert body[brain].float().mean() > 0.5


def test_background_at_the_minimum_or_rare_values_are_left_alone():
    at_minimum = _z_normalised_brain().abs()  # background 0 is already the darkest value
    before = at_minimum.clone()
    assert lift_background(at_minimum) == ""
    assert torch.equal(at_minimum, before)
    tissue = torch.randn(1, 32, 32, 8, generator=torch.Generator().manual_seed(1))
    tissue[0, :4] = 0.0  # a value repeated by 12.5 % of the voxels, under the background share
    before = tissue.clone()
    assert lift_background(tissue) == ""
    assert torch.equal(tissue, before)
