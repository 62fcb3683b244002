"""2D data set layouts: MVTec, VisA, meta.json, MVFA/BMAD, image conversion and error reporting."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from visualad_med.datasets import (
    LAYOUTS,
    MetaJsonDataset,
    MVFADataset,
    MVTecDataset,
    VisADataset,
    build_dataset,
    collate_skip_invalid,
    image_to_tensor,
    mask_to_tensor,
    read_mask,
    read_rgb,
    write_meta_json,
)

from builders import VISA_HEADER, make_mvfa, make_mvtec, make_visa
from builders import write_defect as _defect
from builders import write_normal as _normal
from builders import write_visa_csv as _write_csv

SIZE = 16
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
NORM = {"image_size": SIZE, "mean": MEAN, "std": STD}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- image conversion ---------------------------------------------------------------------------


def test_read_rgb_converts_16bit_grey_by_its_own_max(tmp_path: Path) -> None:
    values = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[..., 0], [[0, 64], [128, 255]])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_read_rgb_drops_alpha_and_expands_grey_palette_and_bilevel(tmp_path: Path) -> None:
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png")[0, 0], [200, 100, 50])
    Image.fromarray(np.full((3, 4), 77, np.uint8)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "grey.png")[1, 1], [77, 77, 77])
    palette = Image.new("P", (4, 3), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "pal.png")[0, 0], [10, 20, 30])
    Image.new("1", (4, 3), 1).save(tmp_path / "bit.png")
    assert read_rgb(tmp_path / "bit.png").min() == 255


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.array([[0, 1], [1, 0]], np.uint8), None),
        (np.array([[0, 255], [255, 0]], np.uint8), None),
        (np.array([[3, 250], [251, 2]], np.uint8), None),  # compression noise
        (np.array([[0, 65535], [65535, 0]], np.uint16), None),
        (np.array([[0, 1], [1, 0]], np.uint8), "P"),
    ],
)
def test_read_mask_binarises_at_half_its_maximum(tmp_path: Path, array: np.ndarray, mode: str | None) -> None:
    image = Image.fromarray(array)
    if mode == "P":
        image = image.convert("L").convert("P")
        image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    image.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[False, True], [True, False]])
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "empty.png")
    assert not read_mask(tmp_path / "empty.png").any()


def test_image_to_tensor_normalises_and_accepts_pil() -> None:
    array = np.full((10, 7, 3), (255, 0, 51), dtype=np.uint8)
    tensor = image_to_tensor(array, SIZE, MEAN, STD)
    assert tensor.shape == (3, SIZE, SIZE) and tensor.dtype == torch.float32
    expected = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(tensor[:, 3, 4], expected)
    torch.testing.assert_close(image_to_tensor(Image.fromarray(array), SIZE, MEAN, STD), tensor)
    with pytest.raises(ValueError, match="uint8"):
        image_to_tensor(array.astype(np.float32), SIZE, MEAN, STD)
    with pytest.raises(ValueError, match="image_size"):
        image_to_tensor(array, 0, MEAN, STD)
    with pytest.raises(ValueError, match="std"):
        image_to_tensor(array, SIZE, MEAN, (0.2, 0.0, 0.1))


def test_mask_to_tensor_is_binary_and_resized() -> None:
    mask = np.zeros((30, 20), bool)
    mask[5:25, 5:15] = True
    tensor = mask_to_tensor(mask, SIZE)
    assert tensor.shape == (SIZE, SIZE) and tensor.dtype == torch.float32
    assert set(tensor.unique().tolist()) == {0.0, 1.0}


# --- MVTec ----------------------------------------------------------------------------------------


def _check_contract(sample: dict) -> None:
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (SIZE, SIZE) and sample["mask"].dtype == torch.float32
    assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
    assert isinstance(sample["label"], int) and isinstance(sample["has_mask"], bool)
    assert isinstance(sample["class_name"], str) and isinstance(sample["path"], str)
    if sample["label"] == 0:
        assert sample["mask"].sum() == 0


def test_mvtec_reads_test_and_train_splits(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    test = MVTecDataset(root, split="test", **NORM)
    assert len(test) == 4 and test.classes == ["widget"] and test.has_pixel_masks
    samples = [test[i] for i in range(len(test))]
    for sample in samples:
        _check_contract(sample)
        assert sample["has_mask"] and sample["class_name"] == "widget"
    assert sorted(s["label"] for s in samples) == [0, 0, 1, 1]
    assert all(s["mask"].sum() > 10 for s in samples if s["label"] == 1)
    assert test.counts() == {"widget": {"normal": 2, "anomalous": 2, "anomalous_with_mask": 2}}
    assert "2 anomalous" in test.summary()
    train = MVTecDataset(root, split="train", **NORM)
    assert [r.label for r in train.records] == [0, 0]


def test_mvtec_root_may_be_one_class_and_classes_subset(tmp_path: Path) -> None:
    make_mvtec(tmp_path, "widget")
    make_mvtec(tmp_path, "bolt")
    assert MVTecDataset(tmp_path, split="test", **NORM).classes == ["bolt", "widget"]
    assert MVTecDataset(tmp_path, split="test", classes=["widget"], **NORM).classes == ["widget"]
    assert len(MVTecDataset(tmp_path / "bolt", split="test", **NORM)) == 4
    with pytest.raises(ValueError, match="available: bolt, widget"):
        MVTecDataset(tmp_path, split="test", classes=["nut"], **NORM)


def test_empty_folders_name_the_folder_and_layout(tmp_path: Path) -> None:
    (tmp_path / "widget/test/good").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"widget/test.*ground_truth"):
        MVTecDataset(tmp_path, split="test", **NORM)
    with pytest.raises(ValueError, match="no class folder"):
        MVTecDataset(tmp_path / "widget/test", split="test", **NORM)
    with pytest.raises(ValueError, match="not a folder"):
        MVTecDataset(tmp_path / "missing", split="test", **NORM)
    with pytest.raises(ValueError, match="valid: train, test"):
        MVTecDataset(tmp_path, split="valid", **NORM)
    with pytest.raises(ValueError, match="Ungood"):
        MVFADataset(tmp_path, **NORM)
    with pytest.raises(ValueError, match="1cls.csv"):
        VisADataset(tmp_path, **NORM)


def test_build_dataset_by_layout_name(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    assert len(build_dataset("mvtec", root, split="train", **NORM)) == 2
    with pytest.raises(ValueError, match=", ".join(LAYOUTS)):
        build_dataset("mvtech", root, **NORM)


def test_missing_mask_is_an_error_or_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_mvtec(tmp_path)
    missing = root / "widget/ground_truth/scratch/001_mask.png"
    missing.unlink()
    with pytest.raises(ValueError, match="001_mask.png"):
        MVTecDataset(root, split="test", **NORM)
    with caplog.at_level(logging.WARNING):
        dataset = MVTecDataset(root, split="test", missing_mask="skip", **NORM)
    assert "001_mask.png" in caplog.text
    flags = {Path(r.path).name: (r.label, r.has_mask) for r in dataset.records}
    assert flags["001.jpg"] == (1, False) and flags["000.png"] == (1, True)
    sample = next(dataset[i] for i in range(len(dataset)) if dataset.records[i].path.name == "001.jpg")
    assert sample["label"] == 1 and not sample["has_mask"] and sample["mask"].sum() == 0
    with pytest.raises(ValueError, match="valid: error, skip"):
        MVTecDataset(root, split="test", missing_mask="ignore", **NORM)


def test_mask_of_other_size_is_an_error_or_skipped(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    bad = root / "widget/ground_truth/scratch/000_mask.png"
    Image.new("L", (20, 20), 255).save(bad)
    with pytest.raises(ValueError, match=r"000_mask.png is 20x20.*32x40"):
        MVTecDataset(root, split="test", **NORM)
    dataset = MVTecDataset(root, split="test", missing_mask="skip", **NORM)
    assert sum(not r.has_mask for r in dataset.records) == 1


def test_unreadable_image_is_logged_counted_and_collated_away(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_mvtec(tmp_path)
    broken = root / "widget/test/good/002.png"
    broken.write_bytes(b"not an image")
    dataset = MVTecDataset(root, split="test", **NORM)
    assert len(dataset) == 5
    index = next(i for i, r in enumerate(dataset.records) if r.path == broken)
    with caplog.at_level(logging.WARNING):
        assert dataset[index] is None
    assert str(broken) in caplog.text and dataset.skipped == 1
    batches = list(DataLoader(dataset, batch_size=5, collate_fn=collate_skip_invalid, num_workers=1))
    assert len(batches) == 1 and batches[0]["image"].shape == (4, 3, SIZE, SIZE)
    assert batches[0]["mask"].shape == (4, SIZE, SIZE) and batches[0]["label"].tolist().count(1) == 2
    assert dataset.skipped == 2  # counted in the worker process too
    assert collate_skip_invalid([None, None]) is None


# --- VisA -----------------------------------------------------------------------------------------


def test_visa_reads_csv_splits(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    test = VisADataset(root, split="test", **NORM)
    assert len(test) == 3 and test.classes == ["candle"]
    samples = [test[i] for i in range(3)]
    for sample in samples:
        _check_contract(sample)
    assert [s["label"] for s in samples] == [0, 1, 1]
    assert all(s["mask"].sum() > 10 for s in samples[1:])
    assert len(VisADataset(root, split="train", **NORM)) == 2


def test_visa_csv_errors(tmp_path: Path) -> None:
    make_visa(tmp_path)
    _write_csv(tmp_path, [["candle", "test", "broken", "x.JPG", ""]])
    with pytest.raises(ValueError, match="label 'broken'"):
        VisADataset(tmp_path, **NORM)
    _write_csv(tmp_path, [["candle", "test", "normal", "x.JPG"]], header=("object", "split", "label", "image"))
    with pytest.raises(ValueError, match=r"lacks columns \['mask'\]"):
        VisADataset(tmp_path, **NORM)
    _write_csv(tmp_path, [["candle", "test", "normal", "../outside.JPG", ""]])
    with pytest.raises(ValueError, match=r"'\.\./outside\.JPG'.*leaves the data root"):
        VisADataset(tmp_path, **NORM)
    _write_csv(tmp_path, [["candle", "test", "anomaly", "candle/Data/Images/Anomaly/a0.JPG", ""]])
    with pytest.raises(ValueError, match="no mask for anomalous image .*a0.JPG"):
        VisADataset(tmp_path, **NORM)


# --- meta.json ------------------------------------------------------------------------------------


def _summary(dataset) -> list[tuple[str, int, bool, str]]:
    return sorted((str(Path(r.path).resolve()), r.label, r.has_mask, r.class_name) for r in dataset.records)


def test_write_meta_json_round_trip_mvtec(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    meta_path = write_meta_json(root, "mvtec")
    assert meta_path == root / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert set(meta) == {"train", "test"}
    entry = next(e for e in meta["test"]["widget"] if e["anomaly"] == 1)
    assert entry["mask_path"].startswith("widget/ground_truth/scratch/") and entry["specie_name"] == "scratch"
    for split in ("train", "test"):
        from_meta = MetaJsonDataset(root, split=split, **NORM)
        assert _summary(from_meta) == _summary(MVTecDataset(root, split=split, **NORM))
    sample = MetaJsonDataset(root, split="test", **NORM)[0]
    _check_contract(sample)
    with pytest.raises(ValueError, match="valid: train, test"):
        MetaJsonDataset(root, split="valid", **NORM)


def test_write_meta_json_round_trip_visa_and_mvfa(tmp_path: Path) -> None:
    visa = make_visa(tmp_path / "visa")
    write_meta_json(visa, "visa")
    for split in ("train", "test"):
        assert _summary(MetaJsonDataset(visa, split=split, **NORM)) == _summary(VisADataset(visa, split=split, **NORM))
    mvfa = make_mvfa(tmp_path / "mvfa", "Brain")
    make_mvfa(tmp_path / "mvfa", "Liver", masks=False)
    write_meta_json(mvfa, "mvfa")
    from_meta = MetaJsonDataset(mvfa, split="test", **NORM)
    assert _summary(from_meta) == _summary(MVFADataset(mvfa, **NORM))
    assert from_meta.counts()["Liver"] == {"normal": 3, "anomalous": 2, "anomalous_with_mask": 0}
    with pytest.raises(ValueError, match="valid: mvtec, visa, mvfa"):
        write_meta_json(mvfa, "bmad")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../elsewhere/x.png", "widget/../../x.png", "C:\\data\\x.png"])
@pytest.mark.parametrize("field", ["img_path", "mask_path"])
def test_meta_json_paths_escaping_the_root_are_refused(tmp_path: Path, bad: str, field: str) -> None:
    root = make_mvtec(tmp_path / "data")
    entry = {
        "img_path": "widget/test/scratch/000.png",
        "mask_path": "widget/ground_truth/scratch/000_mask.png",
        "cls_name": "widget",
        "specie_name": "scratch",
        "anomaly": 1,
    }
    entry[field] = bad
    (root / "meta.json").write_text(json.dumps({"test": {"widget": [entry]}}))
    with pytest.raises(ValueError, match="widget") as info:
        MetaJsonDataset(root, split="test", **NORM)
    assert repr(bad) in str(info.value)
    if field == "mask_path":
        assert "'widget/test/scratch/000.png'" in str(info.value)


def test_meta_json_malformed_entries(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MetaJsonDataset(tmp_path, **NORM)
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"widget": [{"img_path": "a.png", "anomaly": 2}]}}))
    with pytest.raises(ValueError, match="'a.png' has anomaly=2"):
        MetaJsonDataset(tmp_path, **NORM)
    with pytest.raises(ValueError, match="meta.json not found"):
        MetaJsonDataset(tmp_path / "nowhere", **NORM)


# --- MVFA / BMAD ----------------------------------------------------------------------------------


def test_mvfa_with_masks(tmp_path: Path) -> None:
    root = make_mvfa(tmp_path, "Brain")
    for where in (root, root / "Brain_AD"):
        dataset = MVFADataset(where, **NORM)
        assert dataset.classes == ["Brain"] and len(dataset) == 5 and dataset.has_pixel_masks
    samples = [dataset[i] for i in range(5)]
    for sample in samples:
        _check_contract(sample)
        assert sample["has_mask"]
    assert [s["label"] for s in samples] == [0, 0, 0, 1, 1]
    assert all(s["mask"].sum() > 10 for s in samples[3:])


def test_mvfa_without_masks_has_image_labels_only(tmp_path: Path) -> None:
    root = make_mvfa(tmp_path, "Liver", masks=False)
    dataset = MVFADataset(root, **NORM)
    assert not dataset.has_pixel_masks
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s["label"] for s in samples] == [0, 0, 0, 1, 1]
    assert not any(s["has_mask"] for s in samples)
    make_mvfa(tmp_path, "Brain")
    both = MVFADataset(tmp_path, **NORM)
    assert both.classes == ["Brain", "Liver"] and both.has_pixel_masks
    assert {r.class_name for r in both.records if not r.has_mask} == {"Liver"}


def test_mvfa_missing_mask_file_and_missing_split(tmp_path: Path) -> None:
    root = make_mvfa(tmp_path, "Brain")
    (root / "Brain_AD/test/Ungood/anomaly_mask/a1.png").unlink()
    with pytest.raises(ValueError, match="a1.png"):
        MVFADataset(root, **NORM)
    dataset = MVFADataset(root, missing_mask="skip", **NORM)
    assert dataset.has_pixel_masks and dataset.counts()["Brain"]["anomalous_with_mask"] == 1
    make_mvfa(tmp_path, "Colon", split="valid")
    assert MVFADataset(root, split="valid", classes=["Colon"], **NORM).classes == ["Colon"]
    with pytest.raises(ValueError, match="Brain_AD/valid"):
        MVFADataset(root, split="valid", **NORM)


# --- real data (skipped when ../shared/data is absent) ---------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared real data not present")
def test_real_data_counts_match_the_data_readme() -> None:
    mtd = SHARED_DATA / "mtd_mvtec"
    assert MVTecDataset(mtd, split="train", **NORM).counts() == {
        "magnetic_tile": {"normal": 100, "anomalous": 0, "anomalous_with_mask": 0}
    }
    test = MVTecDataset(mtd, split="test", **NORM)
    assert test.counts()["magnetic_tile"] == {"normal": 852, "anomalous": 392, "anomalous_with_mask": 392}
    defects = {d: sum(r.defect == d for r in test.records) for d in ("blowhole", "break", "crack", "fray", "uneven")}
    assert defects == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    lgg = MVFADataset(SHARED_DATA / "lgg_mvfa", **NORM)
    assert lgg.counts() == {"LGG": {"normal": 194, "anomalous": 64, "anomalous_with_mask": 64}}
    polyp = MVFADataset(SHARED_DATA / "polyp_skin_mvfa", **NORM)
    assert {k: v["anomalous_with_mask"] for k, v in polyp.counts().items()} == {"ColonDB": 19, "ISIC": 4, "Kvasir": 22}
    lgg_224 = MVFADataset(SHARED_DATA / "lgg_mvfa", image_size=224, mean=MEAN, std=STD)
    sample = lgg_224[len(lgg_224) - 1]
    assert sample["image"].shape == (3, 224, 224) and sample["label"] == 1 and sample["has_mask"]
    assert sample["mask"].sum() > 0 and set(sample["mask"].unique().tolist()) == {0.0, 1.0}
