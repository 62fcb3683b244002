"""Tests for ``visualad_med.transforms``: windowing, slicing by anatomy, resize with padding, pipeline."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, set_track_meta
from monai.transforms import Compose

import visualad_med.transforms as T
from visualad_med.transforms import channels, foreground, pipeline, slicing, spatial, windowing

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about world axis ``axis``."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def affine(linear: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 affine with columns ``linear[:, j] * spacing[j]``."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(linear, dtype=float) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


IDENTITY = np.eye(3)
LPS_LIKE = np.diag([-1.0, -1.0, 1.0])  # DICOM-converted NIfTI: x to the left, y to the back
SLICE_FIRST = np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])  # voxel axis 0 runs S-I, 1 L-R, 2 A-P
FLIPPED_PERM = np.array([[0.0, 0, -1], [-1, 0, 0], [0, 1, 0]])  # 0: A-P (to P), 1: S-I, 2: L-R (to L)
OBLIQUE = rotation(0, 20) @ rotation(2, 20) @ SLICE_FIRST

AXES = [  # (linear part, spacing, expected axis for sagittal, coronal, axial)
    (IDENTITY, (1.0, 1.0, 1.0), (0, 1, 2)),
    (LPS_LIKE, (0.5, 0.5, 5.0), (0, 1, 2)),
    (SLICE_FIRST, (3.0, 0.8, 0.8), (1, 2, 0)),
    (FLIPPED_PERM, (1.0, 2.0, 1.0), (2, 0, 1)),
    (OBLIQUE, (5.0, 0.7, 0.7), (1, 2, 0)),
    (rotation(1, -20) @ LPS_LIKE, (1.0, 1.0, 1.0), (0, 1, 2)),
]


def volume(shape=(20, 16, 12), linear=IDENTITY, spacing=(1.0, 1.0, 1.0), seed=0, **meta) -> MetaTensor:
    """Random HU volume ``(1, X, Y, Z)`` with the given affine."""
    data = torch.from_numpy(np.random.default_rng(seed).uniform(-100, 200, (1, *shape)).astype(np.float32))
    return MetaTensor(data, affine=torch.from_numpy(affine(linear, spacing)), meta=dict(meta) or None)


# ----------------------------------------------------------------------------- windowing


def test_ct_window_values_in_hu():
    hu = torch.tensor([[0.0, 40.0, 80.0, 20.0, -1000.0, 3000.0]])
    out = T.WindowIntensity((80, 40))(hu)
    assert torch.allclose(out, torch.tensor([[0.0, 0.5, 1.0, 0.25, 0.0, 1.0]]))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(T.CT_WINDOWS))
def test_presets_map_window_edges_to_0_and_1(name):
    width, level = T.CT_WINDOWS[name]
    hu = torch.tensor([[level - width / 2, level, level + width / 2, level - width, level + width]])
    assert torch.allclose(T.WindowIntensity(name)(hu), torch.tensor([[0.0, 0.5, 1.0, 0.0, 1.0]]))


def test_preset_values():
    assert T.CT_WINDOWS == {
        "brain": (80.0, 40.0),
        "subdural": (200.0, 80.0),
        "abdomen": (400.0, 40.0),
        "liver": (150.0, 30.0),
        "lung": (1500.0, -600.0),
        "bone": (1800.0, 400.0),
    }
    assert T.window_range("lung") == (-1350.0, 150.0)
    assert T.window_range((2000, 300)) == (-700.0, 1300.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": "brian"}, "brian"),
        ({"window": (0, 40)}, "width=0"),
        ({"window": (80, 40, 1)}, "(80, 40, 1)"),
        ({"ct_window": "nope"}, "nope"),
        ({"ct_window": "auto"}, "'auto'"),
        ({"percentiles": (1, 50, 99)}, "(1, 50, 99)"),
        ({"percentiles": (99, 1)}, "(99, 1)"),
    ],
)
def test_window_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        T.WindowIntensity(**kwargs)


def test_percentile_scaling_uses_the_whole_volume_and_clips():
    img = torch.arange(1000, dtype=torch.float32).reshape(1, 10, 10, 10)
    img[0, 0, 0, 0] = 1e6  # outlier
    out = T.WindowIntensity("percentile", percentiles=(1, 99))(img)
    lo, hi = np.percentile(img.numpy(), [1, 99])
    expected = np.clip((img.numpy() - lo) / (hi - lo), 0, 1)
    assert np.allclose(out.numpy(), expected, atol=1e-6)
    assert out.min() == 0 and out.max() == 1


@pytest.mark.parametrize(
    "meta, expected",
    [
        ({"Modality": "CT", "BodyPartExamined": "HEAD"}, "brain"),
        ({"0008|0060": "CT ", "SeriesDescription": "Brain w/o"}, "brain"),  # ITKReader, DICOM padding kept
        ({"00080060": {"vr": "CS", "Value": ["CT"]}, "BodyPartExamined": "ABDOMEN"}, "abdomen"),  # PydicomReader
        ({"Modality": "CT", "BodyPartExamined": "HEAD NECK"}, "abdomen"),  # soft tissue for the neck
        ({"Modality": "MR"}, "percentile"),
        ({"0008|0060": "PT"}, "percentile"),
        ({}, "percentile"),  # NIfTI: no modality
    ],
)
def test_auto_window_from_meta(meta, expected):
    img = volume(**meta)
    windowing = T.WindowIntensity("auto")
    assert windowing.resolve(img) == expected
    reference = T.WindowIntensity(expected)(img.as_tensor())
    assert torch.equal(windowing(img).as_tensor(), reference.as_tensor())


def test_auto_ct_window_is_overridable_and_plain_tensors_get_percentiles():
    assert T.WindowIntensity("auto", ct_window="bone").resolve(volume(Modality="CT")) == "bone"
    assert T.WindowIntensity("auto", ct_window=(350, 50)).resolve(volume(Modality="CT")) == (350.0, 50.0)
    assert T.WindowIntensity("auto").resolve(torch.zeros(1, 2, 2, 2)) == "percentile"
    assert T.modality_from_meta({"Modality": ["mr"]}) == "MR"


def test_window_dict_twin_agrees_and_keeps_the_affine():
    img = volume(linear=OBLIQUE, spacing=(2.0, 1.0, 1.0), Modality="CT")
    out = T.WindowIntensityd(["image", "missing"], allow_missing_keys=True)({"image": img, "other": 1})
    assert torch.equal(out["image"].as_tensor(), T.WindowIntensity()(img).as_tensor())
    assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, img.affine)
    assert out["other"] == 1
    assert T.WindowIntensityd.backend == T.WindowIntensity.backend


# ----------------------------------------------------------------------------- axis finding


@pytest.mark.parametrize("linear, spacing, expected", AXES)
def test_anatomical_axis(linear, spacing, expected):
    a = affine(linear, spacing, origin=(-100.0, 20.0, 35.0))
    found = tuple(T.anatomical_axis(a, plane) for plane in ("sagittal", "coronal", "axial"))
    assert found == expected
    assert T.anatomical_axis(torch.from_numpy(a), "axial") == expected[2]
    assert T.anatomical_axis(a[:3, :3], "axial") == expected[2]


def test_anatomical_axis_rejects_bad_input():
    with pytest.raises(ValueError, match="transverse"):
        T.anatomical_axis(np.eye(4), "transverse")
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        T.anatomical_axis(np.eye(2), "axial")
    with pytest.raises(ValueError, match="degenerate"):
        T.anatomical_axis(np.diag([1.0, 0.0, 1.0, 1.0]), "axial")


# ----------------------------------------------------------------------------- slicing


def test_radiological_axial_layout_ras_identity():
    img = volume()  # (1, X=20, Y=16, Z=12), x to the right, y to the front
    slices = T.VolumeToSlices("axial")(img)
    assert slices.shape == (12, 1, 16, 20)
    x, y = torch.arange(20), torch.arange(16)
    for k in (0, 5, 11):  # rows anterior -> posterior, columns patient right -> left
        expected = img[0, :, :, k][x.flip(0)][:, y.flip(0)].T
        assert torch.equal(slices[k, 0].as_tensor(), expected.as_tensor())


def test_radiological_axial_layout_of_lps_storage_is_the_plain_transpose():
    img = volume(linear=LPS_LIKE)
    slices = T.VolumeToSlices("axial")(img)
    assert torch.equal(slices[:, 0].as_tensor(), img[0].permute(2, 1, 0).as_tensor())
    lps = MetaTensor(img.as_tensor(), affine=torch.eye(4, dtype=torch.float64), meta={"space": "LPS"})
    assert torch.equal(T.VolumeToSlices("axial")(lps).as_tensor(), slices.as_tensor())


def test_non_radiological_layout_keeps_array_order():
    img = volume(linear=SLICE_FIRST)
    slices = T.VolumeToSlices("axial", radiological=False)(img)
    assert torch.equal(slices.as_tensor(), img.permute(1, 0, 2, 3).as_tensor())
    sagittal = T.VolumeToSlices("sagittal", radiological=False)(img)
    assert torch.equal(sagittal.as_tensor(), img.permute(2, 0, 1, 3).as_tensor())


@pytest.mark.parametrize("linear, spacing, expected", AXES)
@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
@pytest.mark.parametrize("radiological", [True, False])
def test_slices_round_trip_exactly(linear, spacing, expected, plane, radiological):
    img = volume((9, 8, 7), linear, spacing)
    slicer = T.VolumeToSlices(plane, radiological)
    slices = slicer(img)
    axis = expected[T.PLANES[plane]]
    assert slices.shape[0] == img.shape[1 + axis] and slices.shape[1] == 1
    back = slicer.inverse(slices)
    assert torch.equal(back.as_tensor(), img.as_tensor())
    assert torch.equal(back.affine, img.affine) and back.applied_operations == []


def test_slice_axis_first_array_axis():
    img = volume((12, 16, 20), SLICE_FIRST)
    slices = T.VolumeToSlices("axial")(img)
    assert slices.shape[0] == 12 and T.anatomical_axis(img.affine, "axial") == 0
    maps = slices[:, 0:1] * 2.0  # a per-slice map with one channel
    assert torch.equal(T.VolumeToSlices("axial").inverse_transform(maps, slices.applied_operations[-1]), img * 2.0)


def test_slices_inverse_rejects_wrong_shape():
    slicer = T.VolumeToSlices("axial")
    slices = slicer(volume())
    with pytest.raises(ValueError, match=r"\(12, 16, 20\)"):
        slicer.inverse(slices[:-1])
    with pytest.raises(ValueError, match=r"\(1, 5, 5\)"):
        slicer(torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="oblique"):
        T.VolumeToSlices("oblique")


def test_slices_dict_twin_agrees_and_inverts():
    img = volume(linear=FLIPPED_PERM)
    twin = T.VolumeToSlicesd("image", plane="coronal")
    d = twin({"image": img})
    assert torch.equal(d["image"].as_tensor(), T.VolumeToSlices("coronal")(img).as_tensor())
    assert torch.equal(d["image"].affine, img.affine)
    assert torch.equal(twin.inverse(d)["image"].as_tensor(), img.as_tensor())
    assert T.VolumeToSlicesd.backend == T.VolumeToSlices.backend


# ----------------------------------------------------------------------------- resize with padding


def smooth_slices(s: int, h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([torch.sin(3 * xx + k) * torch.cos(2 * yy) for k in range(s)])[:, None].float()


@pytest.mark.parametrize("h, w, resized, pad", [(512, 400, (224, 175), (0, 24)), (400, 512, (175, 224), (24, 0))])
def test_resize_pad_non_square_and_inverse(h, w, resized, pad):
    img = smooth_slices(2, h, w)
    resizer = T.ResizeLongestPad(224, pad_value=-1.0)
    out = resizer(MetaTensor(img))
    assert out.shape == (2, 1, 224, 224) and out.dtype == torch.float32
    info = out.applied_operations[-1]["extra_info"]
    assert info["resized"] == resized and info["pad"] == pad
    top, left = pad
    inside = out[:, :, top : top + resized[0], left : left + resized[1]]
    assert (inside > -1.0).all() and (out == -1.0).sum() == 2 * (224 * 224 - resized[0] * resized[1])
    ones = MetaTensor(torch.ones(2, 3, 224, 224), applied_operations=list(out.applied_operations))
    assert torch.allclose(resizer.inverse(ones), torch.ones(2, 3, h, w))  # padding cropped: no -1 leaks back
    back = resizer.inverse(out)
    assert back.shape == (2, 1, h, w)
    assert (back - img).abs().mean() < 0.01 and (back - img).abs().max() < 0.1


def test_resize_pad_without_resizing_is_exact():
    img = smooth_slices(3, 224, 180)
    resizer = T.ResizeLongestPad(224)
    out = resizer(MetaTensor(img))
    assert out.applied_operations[-1]["extra_info"]["pad"] == (0, 22)
    assert torch.equal(out[:, :, :, 22:202].as_tensor(), img)
    assert torch.equal(resizer.inverse(out).as_tensor(), img)


def test_resize_pad_is_one_interpolate_call_for_the_batch(monkeypatch):
    calls = []
    interpolate = torch.nn.functional.interpolate

    def counting(input, *args, **kwargs):
        calls.append(tuple(input.shape))
        return interpolate(input, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", counting)
    out = T.ResizeLongestPad(32)(MetaTensor(torch.rand(7, 3, 50, 40)))
    assert out.shape == (7, 3, 32, 32) and calls == [(1, 21, 50, 40)]


def test_resize_pad_rejects_bad_input():
    with pytest.raises(ValueError, match="0"):
        T.ResizeLongestPad(0)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        T.ResizeLongestPad(4)(torch.zeros(3, 8, 8))
    resizer = T.ResizeLongestPad(8)
    out = resizer(MetaTensor(torch.zeros(2, 1, 10, 6)))
    with pytest.raises(ValueError, match=r"\(2, 1, 9, 9\)"):
        resizer.inverse_transform(torch.zeros(2, 1, 9, 9), out.applied_operations[-1])


def test_resize_pad_dict_twin_agrees_and_keeps_the_affine():
    img = MetaTensor(torch.rand(4, 1, 30, 20), affine=torch.from_numpy(affine(OBLIQUE)))
    twin = T.ResizeLongestPadd("image", 16)
    d = twin({"image": img})
    assert torch.equal(d["image"].as_tensor(), T.ResizeLongestPad(16)(img).as_tensor())
    assert torch.equal(d["image"].affine, img.affine)
    assert twin.inverse(d)["image"].shape == (4, 1, 30, 20)
    assert T.ResizeLongestPadd.backend == T.ResizeLongestPad.backend


# ----------------------------------------------------------------------------- channels and body mask


def test_grey_to_rgb():
    img = torch.rand(4, 1, 5, 6)
    out = T.GreyToRGB(channel_dim=1)(img)
    assert out.shape == (4, 3, 5, 6) and all(torch.equal(out[:, c], img[:, 0]) for c in range(3))
    assert T.GreyToRGB()(torch.rand(1, 5, 6)).shape == (3, 5, 6)
    assert torch.equal(T.GreyToRGBd("x", channel_dim=1)({"x": img})["x"], out)
    with pytest.raises(ValueError, match=r"\(4, 3, 5, 6\)"):
        T.GreyToRGB(channel_dim=1)(out)
    with pytest.raises(ValueError, match="channel_dim=4"):
        T.GreyToRGB(channel_dim=4)(img)


def test_normalize_channels():
    img = torch.rand(4, 3, 5, 6)
    kept = img.clone()
    out = T.NormalizeChannels(MEAN, STD, channel_dim=1)(img)
    expected = (img - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(out, expected, atol=1e-6) and torch.equal(img, kept)  # input untouched
    assert torch.allclose(T.NormalizeChannels(MEAN, STD)(img[0]), expected[0], atol=1e-6)
    assert torch.equal(T.NormalizeChannelsd("x", MEAN, STD, channel_dim=1)({"x": img})["x"], out)
    with pytest.raises(ValueError, match="std=.*0.0"):
        T.NormalizeChannels(MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="mean=.*std="):
        T.NormalizeChannels(MEAN, STD[:2])
    with pytest.raises(ValueError, match=r"\(4, 1, 5, 6\)"):
        T.NormalizeChannels(MEAN, STD, channel_dim=1)(img[:, :1])


def test_has_body():
    slices = torch.zeros(4, 1, 20, 20)
    slices[1, 0, 0, :2] = 1.0  # 0.5 % of the pixels
    slices[2, 0, 0, :8] = 1.0  # 2 %
    slices[3] = 0.04  # everywhere, but below the threshold
    assert T.has_body(slices).tolist() == [False, False, True, False]
    assert T.has_body(slices[:, 0], min_fraction=0.004).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="1.5"):
        T.has_body(slices, min_fraction=1.5)


# ----------------------------------------------------------------------------- pipeline


def blob_volume(shape, linear, spacing, centre, **meta) -> MetaTensor:
    """Air (-1000 HU), a 3-voxel cube of 40 HU around ``centre``, 80 HU at ``centre``, a little noise."""
    data = np.full((1, *shape), -1000.0, dtype=np.float32)
    data[(0, *[slice(c - 1, c + 2) for c in centre])] = 40.0
    data[(0, *centre)] = 80.0
    data += np.random.default_rng(1).normal(0, 1, data.shape).astype(np.float32)
    return MetaTensor(torch.from_numpy(data), affine=torch.from_numpy(affine(linear, spacing)), meta=meta or None)


@pytest.mark.parametrize(
    "linear, spacing", [(IDENTITY, (1.0, 1.0, 2.0)), (SLICE_FIRST, (3.0, 0.8, 0.8)), (OBLIQUE, (2.0, 1.0, 1.0))]
)
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_pipeline_blob_lands_back_at_its_voxel(linear, spacing, plane):
    centre = (30, 8, 5)
    vol = blob_volume((40, 32, 24), linear, spacing, centre, Modality="CT")
    window = T.resolve_intensity_window(vol, "brain")
    assert window == ("brain", 0.0, 80.0, "")
    pipe = T.slice_pipeline(48, MEAN, STD, (window.low, window.high), plane=plane, body_min_fraction=0.001)
    slices, info = pipe.forward(vol)
    assert slices.shape == (vol.shape[1 + info.axis], 3, 48, 48) and not isinstance(slices, MetaTensor)
    assert info.axis == T.anatomical_axis(vol.affine, plane)
    c = centre[info.axis]
    assert sorted(info.indices[info.body].tolist()) == [c - 1, c, c + 1]
    back = pipe.inverse(slices[:, 0], info)  # a "model" that returns its input
    assert back.shape == vol.shape[1:] and back.dtype == torch.float32
    assert np.unravel_index(int(back.argmax()), back.shape) == centre
    assert torch.equal(back.affine, vol.affine)


def test_pipeline_without_resizing_is_exact():
    vol = volume((20, 16, 12), SLICE_FIRST, Modality="CT")  # axial slices (20, 1, 12, 16) after layout
    pipe = T.slice_pipeline(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), T.window_range("brain"))
    slices, info = pipe.forward(vol)
    assert slices.shape == (20, 3, 16, 16)
    back = pipe.inverse(slices[:, 1], info)
    assert torch.equal(back.as_tensor(), T.WindowIntensity("brain")(vol)[0].as_tensor())


def test_pipeline_with_resizing_matches_within_tolerance():
    grid = [torch.linspace(0, 1, n) for n in (30, 24, 10)]
    x, y, z = torch.meshgrid(*grid, indexing="ij")
    smooth = (torch.sin(3 * x) * torch.cos(2 * y) + z)[None] * 300.0
    vol = MetaTensor(smooth, affine=torch.from_numpy(affine(FLIPPED_PERM)), meta={"Modality": "MR"})
    window = T.resolve_intensity_window(vol)
    assert window.spec == "percentile"
    pipe = T.slice_pipeline(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (window.low, window.high), plane="coronal")
    slices, info = pipe.forward(vol)
    back = pipe.inverse(slices[:, 0], info)
    expected = T.WindowIntensity("percentile")(vol)[0]
    assert (back - expected).abs().mean() < 0.01 and (back - expected).abs().max() < 0.05


def test_pipeline_normalises_and_flags_empty_slices():
    vol = blob_volume((20, 20, 10), IDENTITY, (1.0, 1.0, 1.0), (10, 10, 5), Modality="CT")
    pipe = T.slice_pipeline(32, MEAN, STD, T.resolve_intensity_window(vol)[1:3])
    slices, info = pipe.forward(vol)
    assert info.body.tolist() == [False] * 4 + [True] * 3 + [False] * 3
    air = (torch.zeros(3) - torch.tensor(MEAN)) / torch.tensor(STD)  # air and padding are 0 before normalising
    assert torch.allclose(slices[0, :, 0, 0], air, atol=1e-6)
    assert T.resolve_intensity_window(vol, (200, 80)) == ((200.0, 80.0), -20.0, 180.0, "")


def test_pipeline_contract_errors():
    pipe = T.slice_pipeline(16, MEAN, STD, (0.0, 1.0))
    slices, info = pipe.forward(volume((8, 8, 4)))
    with pytest.raises(ValueError, match=r"\(4, 16\)"):
        pipe.inverse(slices[:, 0, 0], info)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        pipe.forward(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="mean="):
        T.slice_pipeline(16, (0.5,), (0.5,), (0.0, 1.0))
    set_track_meta(False)
    try:
        with pytest.raises(RuntimeError, match="set_track_meta"):
            pipe.forward(volume((8, 8, 4)))
    finally:
        set_track_meta(True)


def test_dict_chain_keeps_the_affine_and_inverts():
    vol = volume((12, 10, 6), OBLIQUE, (2.0, 1.0, 1.0), Modality="CT")
    chain = Compose(
        [
            T.WindowIntensityd("image"),
            T.VolumeToSlicesd("image", plane="axial"),
            T.ResizeLongestPadd("image", 24),
            T.GreyToRGBd("image", channel_dim=1),
            T.NormalizeChannelsd("image", MEAN, STD, channel_dim=1),
        ]
    )
    d = chain({"image": vol})
    assert d["image"].shape == (12, 3, 24, 24) and torch.equal(d["image"].affine, vol.affine)
    back = chain.inverse(d)["image"]
    assert back.shape == (3, 12, 10, 6) and torch.equal(back.affine, vol.affine)


def test_docstring_examples_run():
    for module in (windowing, slicing, spatial, channels, foreground, pipeline):
        assert doctest.testmod(module, raise_on_error=False).failed == 0, module.__name__
