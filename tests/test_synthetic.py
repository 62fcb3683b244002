"""Synthetic anomalies: exact masks, seeding, the sample contract, mixing and the CLI spec."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visualad_med.datasets import MVTecDataset, read_rgb
from scipy import ndimage

from visualad_med.training.anomaly_kinds import (
    INDUSTRIAL_KINDS,
    LESION_KINDS,
    SYNTHETIC_KINDS,
    VISIBLE_LEVELS,
    lesion_anomaly,
    make_anomaly,
    perlin_noise,
)
from visualad_med.training.synthetic import (
    SKIMAGE_PHOTOS,
    MixedAnomalyDataset,
    SyntheticAnomalyDataset,
    build_synthetic_training_set,
    load_skimage_photos,
    parse_synthetic_spec,
)

SIZE = 16
NORM = {"image_size": SIZE, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def _textured(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """Write a textured RGB image of ``size`` ``(W, H)`` (smooth ramps plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=2) % 200 + 20
    array = np.clip(base + rng.integers(-10, 11, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def normals(tmp_path: Path) -> list[Path]:
    return [_textured(tmp_path / f"normal/{i}.png", seed=i, size=(48 + 4 * i, 40)) for i in range(3)]


def _check_exact(source: np.ndarray, image: np.ndarray, mask: np.ndarray, min_area: float) -> None:
    assert image.shape == source.shape and image.dtype == np.uint8
    assert mask.shape == source.shape[:2] and mask.dtype == bool
    np.testing.assert_array_equal(image[~mask], source[~mask])  # byte-identical outside
    assert (image[mask] != source[mask]).any(axis=1).all()  # every masked pixel changed
    visible = np.abs(image.astype(int) - source).max(axis=2) >= VISIBLE_LEVELS
    assert visible.sum() >= min_area * mask.size


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_every_kind_changes_exactly_the_masked_pixels(normals: list[Path], kind: str) -> None:
    dataset = SyntheticAnomalyDataset(normals, kinds=[kind], seed=7, length=12, **NORM)
    for index in range(len(dataset)):
        image, mask, drawn, record = dataset.generate(index)
        assert drawn == kind
        _check_exact(read_rgb(record.path), image, mask, dataset.min_area)


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_flat_images_fall_back_to_a_visible_anomaly(kind: str) -> None:
    flat = np.full((30, 30, 3), 90, dtype=np.uint8)
    image, mask = make_anomaly(kind, flat, flat, np.random.default_rng(0), min_area=0.01)
    _check_exact(flat, image, mask, 0.01)


def test_make_anomaly_rejects_bad_input() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="valid: perlin, cutpaste, scar, patchswap, blob"):
        make_anomaly("smudge", image, image, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        make_anomaly("scar", image[..., 0], image, np.random.default_rng(0))


def test_same_seed_same_output_and_order_does_not_matter(normals: list[Path]) -> None:
    first = SyntheticAnomalyDataset(normals, seed=3, length=8, **NORM)
    second = SyntheticAnomalyDataset(normals, seed=3, length=8, **NORM)
    forward = [first.generate(i) for i in range(8)]
    backward = {i: second.generate(i) for i in reversed(range(8))}
    for index, (image, mask, kind, record) in enumerate(forward):
        np.testing.assert_array_equal(image, backward[index][0])
        np.testing.assert_array_equal(mask, backward[index][1])
        assert (kind, record) == backward[index][2:]
    torch.testing.assert_close(first[5]["image"], second[5]["image"])


def test_different_seed_or_epoch_gives_different_output(normals: list[Path]) -> None:
    a = SyntheticAnomalyDataset(normals, seed=1, length=4, **NORM)
    b = SyntheticAnomalyDataset(normals, seed=2, length=4, **NORM)
    assert any(not np.array_equal(a.generate(i)[1], b.generate(i)[1]) for i in range(4))
    before = [a.generate(i)[1] for i in range(4)]
    a.set_epoch(1)
    assert any(not np.array_equal(m, a.generate(i)[1]) for i, m in enumerate(before))


def test_samples_follow_the_contract(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    for i in range(2):
        _textured(root / f"widget/train/good/{i}.png", seed=i)
    base = MVTecDataset(root, split="train", **NORM)
    dataset = SyntheticAnomalyDataset(base, seed=0, length=6, **NORM)
    for index in range(6):
        sample = dataset[index]
        assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (SIZE, SIZE) and set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
        assert sample["mask"].sum() > 0
        assert sample["label"] == 1 and sample["has_mask"] is True and sample["class_name"] == "widget"
        assert "#synthetic-" in sample["path"] and sample["path"].split("#synthetic-")[1] in SYNTHETIC_KINDS


def test_mixing_probability_and_reproducibility(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    for i in range(20):
        _textured(root / f"widget/train/good/{i}.png", seed=i, size=(16, 16))
    base = MVTecDataset(root, split="train", **NORM)
    never = build_synthetic_training_set(base, parse_synthetic_spec("cutpaste", 0.0), seed=5)
    assert all(never[i]["label"] == 0 for i in range(len(never)))
    always = build_synthetic_training_set(base, parse_synthetic_spec("scar", 1.0), seed=5)
    assert all(always[i]["label"] == 1 for i in range(len(always)))
    mixed = build_synthetic_training_set(base, parse_synthetic_spec("all", 0.5), seed=5)
    labels = [mixed[i]["label"] for i in range(len(mixed))]
    assert 0 < sum(labels) < len(labels) and len(mixed) == len(base)
    again = MixedAnomalyDataset(base, mixed.synthetic, 0.5, seed=5)
    assert [again[i]["path"] for i in range(len(again))] == [mixed[i]["path"] for i in range(len(mixed))]
    with pytest.raises(ValueError, match="1.5"):
        MixedAnomalyDataset(base, mixed.synthetic, 1.5)


def test_unreadable_normal_image_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    dataset = SyntheticAnomalyDataset([broken], length=1, **NORM)
    with caplog.at_level(logging.WARNING):
        assert dataset[0] is None
    assert str(broken) in caplog.text and dataset.skipped == 1


def test_parse_synthetic_spec(tmp_path: Path) -> None:
    spec = parse_synthetic_spec(" perlin, cutpaste,perlin ", 0.3)
    assert spec.kinds == ("perlin", "cutpaste") and spec.probability == 0.3 and spec.sources == ()
    assert parse_synthetic_spec("all").kinds == SYNTHETIC_KINDS
    assert parse_synthetic_spec("industrial").kinds == INDUSTRIAL_KINDS
    assert parse_synthetic_spec("lesion,perlin,blob").kinds == LESION_KINDS + ("perlin",)
    with pytest.raises(ValueError, match="valid: perlin, cutpaste, scar, patchswap, blob, .*, industrial, lesion, all"):
        parse_synthetic_spec("perlin,smudge")
    with pytest.raises(ValueError, match="valid"):
        parse_synthetic_spec(" , ")
    with pytest.raises(ValueError, match="-0.1"):
        parse_synthetic_spec("scar", -0.1)
    with pytest.raises(ValueError, match="nowhere"):
        parse_synthetic_spec("perlin", 0.5, [str(tmp_path / "nowhere")])
    folder = tmp_path / "textures"
    _textured(folder / "t.jpg", seed=9)
    assert parse_synthetic_spec("perlin", 0.5, ["skimage", str(folder)]).sources == ("skimage", str(folder))


def test_texture_sources_folder_and_skimage(tmp_path: Path, normals: list[Path]) -> None:
    photos = load_skimage_photos()
    assert len(photos) == len(SKIMAGE_PHOTOS)
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    folder = tmp_path / "textures"
    _textured(folder / "t.png", seed=11, size=(64, 64))
    dataset = SyntheticAnomalyDataset(normals, kinds=["perlin"], sources=["skimage", str(folder)], length=4, **NORM)
    assert len(dataset.textures) == len(SKIMAGE_PHOTOS) + 1
    for index in range(4):
        image, mask, _, record = dataset.generate(index)
        _check_exact(read_rgb(record.path), image, mask, dataset.min_area)


def test_perlin_noise_shape_and_range() -> None:
    noise = perlin_noise((37, 53), (4, 8), np.random.default_rng(0))
    assert noise.shape == (37, 53) and noise.dtype == np.float64
    assert np.abs(noise).max() <= 1.0 + 1e-9 and noise.std() > 0.05


def test_bases_half_of_the_anomalies_are_drawn_on_crops_of_extra_images(tmp_path: Path, normals: list[Path]) -> None:
    folder = tmp_path / "bases"
    base_path = _textured(folder / "photo.png", seed=21, size=(64, 56))
    dataset = SyntheticAnomalyDataset(normals, kinds=["cutpaste"], bases=[str(folder)], length=40, **NORM)
    on_base = 0
    for index in range(len(dataset)):
        image, mask, _, record = dataset.generate(index)
        if record.path != base_path:
            assert record.path in normals
            continue
        on_base += 1
        source, side = read_rgb(base_path), image.shape[0]
        assert image.shape == (side, side, 3) and 28 <= side <= 56
        crops = [source[top:top + side, left:left + side] for top in range(57 - side) for left in range(65 - side)]
        assert any(np.array_equal(crop[~mask], image[~mask]) and (crop[mask] != image[mask]).any(axis=-1).all()
                   for crop in crops)
    assert 10 <= on_base <= 30
    with pytest.raises(ValueError, match="synthetic base"):
        parse_synthetic_spec("perlin", 0.5, bases=[str(tmp_path / "nowhere")])
    assert parse_synthetic_spec("perlin", 0.5, bases=["skimage"]).bases == ("skimage",)


def _photo(size: int = 96) -> np.ndarray:
    """A natural, textured photo (scikit-image's camera man) at ``size x size``, RGB."""
    return np.asarray(Image.fromarray(load_skimage_photos()[2]).resize((size, size)))


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_lesion_kinds_are_deterministic_under_a_seed_and_vary_with_it(kind: str) -> None:
    image, texture = _photo(), load_skimage_photos()[6]
    first = lesion_anomaly(kind, image, texture, np.random.default_rng(5))
    again = lesion_anomaly(kind, image, texture, np.random.default_rng(5))
    other = lesion_anomaly(kind, image, texture, np.random.default_rng(6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_lesion_kinds_change_one_compact_soft_edged_blob(kind: str) -> None:
    image, texture = _photo(), load_skimage_photos()[6]
    for seed in range(6):
        out, mask = lesion_anomaly(kind, image, texture, np.random.default_rng(seed))
        _check_exact(image, out, mask, 0.0)
        assert 0.002 < mask.mean() < 0.2
        change = np.abs(out.astype(float) - image).max(axis=2)
        edge = mask & ~ndimage.binary_erosion(mask)
        core = ndimage.binary_erosion(mask, iterations=3)
        if core.any() and kind == "blob":
            assert change[edge].mean() < change[core].mean()  # soft edge: the change fades out


def test_blob_is_brighter_or_darker_and_blur_and_contrast_change_local_variation() -> None:
    image = _photo()
    signs = set()
    for seed in range(8):
        out, mask = lesion_anomaly("blob", image, image, np.random.default_rng(seed))
        signs.add(np.sign(out[mask].astype(float).mean() - image[mask].astype(float).mean()))
        blurred, region = lesion_anomaly("blur", image, image, np.random.default_rng(seed))
        core = ndimage.binary_erosion(region, iterations=2)
        if core.sum() > 20:
            laplace = lambda a: np.abs(ndimage.laplace(a[..., 0].astype(float)))[core].mean()  # noqa: E731
            assert laplace(blurred) < laplace(image)
        scaled, region = lesion_anomaly("contrast", image, image, np.random.default_rng(seed))
        assert not np.isclose(scaled[region].astype(float).std(), image[region].astype(float).std(), rtol=0.02)
    assert signs == {-1.0, 1.0}
