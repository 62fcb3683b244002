"""Tiny 2D data sets in the layouts the product reads, written by tests into temporary folders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_normal(path: Path, size: tuple[int, int] = (40, 32), shade: int = 120) -> Path:
    """Write a smooth normal image of ``size`` ``(W, H)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(shade - 20, shade + 20, size[0], dtype=np.float64)
    array = np.broadcast_to(ramp[None, :, None], (size[1], size[0], 3)).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def write_defect(path: Path, mask_path: Path | None, size: tuple[int, int] = (40, 32)) -> Path:
    """Write an image with a dark drawn defect and (optionally) its 0/255 mask."""
    write_normal(path, size)
    box = (10, 8, 26, 22)
    image = Image.open(path).convert("RGB")
    ImageDraw.Draw(image).ellipse(box, fill=(10, 10, 10))
    image.save(path)
    if mask_path is not None:
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        mask.save(mask_path)
    return path


def make_mvtec(root: Path, class_name: str = "widget") -> Path:
    """Tiny MVTec layout: 2 train/good, 2 test/good, 2 test/scratch (png, jpg, bmp) with masks."""
    folder = root / class_name
    write_normal(folder / "train/good/000.png")
    write_normal(folder / "train/good/001.jpg", shade=130)
    write_normal(folder / "test/good/000.bmp")
    write_normal(folder / "test/good/001.png", shade=110)
    for stem, ext in (("000", ".png"), ("001", ".jpg")):
        write_defect(folder / f"test/scratch/{stem}{ext}", folder / f"ground_truth/scratch/{stem}_mask.png")
    return root


def make_visa(root: Path) -> Path:
    """Tiny VisA layout: class ``candle`` with 2 train normal, 1 test normal and 2 test anomalous."""
    rows = []
    for split, name in (("train", "n0"), ("train", "n1"), ("test", "n2")):
        write_normal(root / f"candle/Data/Images/Normal/{name}.JPG")
        rows.append(["candle", split, "normal", f"candle/Data/Images/Normal/{name}.JPG", ""])
    for name in ("a0", "a1"):
        image, mask = f"candle/Data/Images/Anomaly/{name}.JPG", f"candle/Data/Masks/Anomaly/{name}.png"
        write_defect(root / image, root / mask)
        rows.append(["candle", "test", "anomaly", image, mask])
    write_visa_csv(root, rows)
    return root


VISA_HEADER = ("object", "split", "label", "image", "mask")


def write_visa_csv(root: Path, rows: list[list[str]], header: tuple[str, ...] = VISA_HEADER) -> None:
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv/1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_mvfa(root: Path, name: str = "Brain", masks: bool = True, split: str = "test") -> Path:
    """Tiny MVFA set ``<name>_AD``: 3 normal and 2 anomalous images, masks optional."""
    folder = root / f"{name}_AD" / split
    for i in range(3):
        write_normal(folder / f"good/img/n{i}.png")
    for i in range(2):
        mask = folder / f"Ungood/anomaly_mask/a{i}.png" if masks else None
        write_defect(folder / f"Ungood/img/a{i}.png", mask)
    return root
