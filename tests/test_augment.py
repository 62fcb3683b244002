"""Polarity and background augmentations of training samples."""

from __future__ import annotations

import pytest
import torch

from visualad_med.training.augment import AugmentedDataset, invert, parse_augmentations, shrink_pad

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def _sample(size: int = 32) -> dict:
    image = (torch.rand(3, size, size) - MEAN) / STD
    mask = torch.zeros(size, size)
    mask[8:16, 8:16] = 1
    return {"image": image, "mask": mask, "label": 1, "class_name": "x", "path": "p", "has_mask": True}


def test_invert_flips_intensity_and_twice_is_identity():
    image = _sample()["image"]
    raw = image * STD + MEAN
    torch.testing.assert_close(invert(image, MEAN, STD) * STD + MEAN, 1 - raw)
    torch.testing.assert_close(invert(invert(image, MEAN, STD), MEAN, STD), image)


def test_shrinkpad_puts_a_normal_black_border_around_the_shrunk_sample():
    sample = _sample()
    black = -MEAN / STD
    image, mask = shrink_pad(sample["image"], sample["mask"], 0.5, (0.0, 1.0), black)
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    torch.testing.assert_close(image[:, 16:, :], black.expand(3, 16, 32))
    assert mask[16:].sum() == 0 and mask[:, :16].sum() == 0
    assert mask[4:8, 20:24].all() and mask.sum() == 16


def test_augmented_dataset_is_seeded_per_item():
    base = [_sample() for _ in range(6)]
    first = AugmentedDataset(base, ("invert", "shrinkpad"), MEAN.flatten(), STD.flatten(), 0.5, seed=3)
    second = AugmentedDataset(base, ("invert", "shrinkpad"), MEAN.flatten(), STD.flatten(), 0.5, seed=3)
    other = AugmentedDataset(base, ("invert", "shrinkpad"), MEAN.flatten(), STD.flatten(), 0.5, seed=4)
    assert all(torch.equal(first[i]["image"], second[i]["image"]) for i in range(6))
    assert not all(torch.equal(first[i]["image"], other[i]["image"]) for i in range(6))
    changed = sum(not torch.equal(first[i]["image"], base[i]["image"]) for i in range(6))
    assert 0 < changed <= 6


def test_parse_augmentations():
    assert parse_augmentations("all") == ("invert", "shrinkpad")
    with pytest.raises(ValueError, match="valid: invert, shrinkpad"):
        parse_augmentations("rotate")
