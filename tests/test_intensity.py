"""The intensity term: its z-score, the vouching that sets its weight, and a bright blob found in a cohort run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from sklearn.metrics import average_precision_score
from conftest import tiny_vit

from visualad_med.inference.cohort import null_threshold
from visualad_med.inference.folder import run_folder
from visualad_med.inference.settings import RunSettings
from visualad_med.io import find_scans
from visualad_med.model.cohort import CohortSettings
from visualad_med.model.intensity import MAX_WEIGHT, IntensityFusion, intensity_z, vouch
from visualad_med.model.visualad import build_model


def test_intensity_z_is_robust_over_the_body_only():
    volume = torch.zeros(10, 10, 10)
    volume[2:8, 2:8, 2:8] = torch.linspace(100.0, 200.0, 216).reshape(6, 6, 6)
    body = volume > 0
    z = intensity_z(volume, (0.0, 400.0), body)
    inside = z[body]
    assert abs(float(inside.median())) < 1e-6
    assert abs(float((inside - inside.median()).abs().median()) * 1.4826 - 1.0) < 1e-3
    assert float(z[0, 0, 0]) < -3  # the dark background lies far below the body


def test_weight_follows_the_vouching_of_the_other_term():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=100_000)
    lesion = np.zeros(100_000, bool)
    lesion[:500] = True
    bright_lesion = normal + 8.0 * lesion  # intensity: the lesion is its tail
    found_by_map = rng.normal(size=100_000) + 2.0 * lesion  # the map finds the lesion, weakly
    fusion = IntensityFusion.of(torch.from_numpy(found_by_map), torch.from_numpy(bright_lesion), tail_sd=3.0)
    assert fusion.vouches[0] > 0.5 and 0 < fusion.weight <= MAX_WEIGHT
    scalp = np.zeros(100_000, bool)
    scalp[-2000:] = True
    bright_anatomy = normal + 8.0 * scalp  # the intensity's tail is anatomy the map finds normal
    fusion = IntensityFusion.of(torch.from_numpy(found_by_map), torch.from_numpy(bright_anatomy), tail_sd=3.0)
    assert fusion.weight == 0.0
    anomaly = torch.randn(4, 4, 4)
    assert fusion.apply(anomaly, torch.randn(4, 4, 4)) is anomaly  # weight 0: the map as it was
    assert vouch(found_by_map, np.zeros(10), 3.0) == 0.0  # no tail, no vouching


def test_a_bright_blob_is_found_by_the_intensity_term_and_the_fusion(tmp_path):
    """Cohort of four noisy scans, one with a bright blob. The run vouches for the intensity (the report's weight
    is positive; 0 with the term off), the fused map ranks the blob better than the map alone, and the fused
    map minus the map's share is the intensity term on the scan's own grid: the blob is its tail."""
    shape = (24, 24, 8)
    for k in range(4):
        rng = np.random.default_rng(k)
        data = rng.normal(300.0, 20.0, shape).astype(np.float32)
        data[:3] = 0.0  # some background
        if k == 2:
            data[10:15, 10:15, 3:6] = 420.0
        (tmp_path / "scans").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), tmp_path / "scans" / f"scan{k}.nii.gz")
    torch.manual_seed(0)
    model = build_model(tiny_vit(), image_size=32)
    blob = np.zeros(shape, bool)
    blob[10:15, 10:15, 3:6] = True
    fusion, anomaly = {}, {}
    for term in ("vouched", "none"):
        out = tmp_path / term
        run_folder(model, find_scans(tmp_path / "scans"), out, RunSettings(progress=False, map_dtype="float32"),
                   cohort=CohortSettings("mutual", candidates=3, intensity=term))
        fusion[term] = json.loads((out / "scan2_report.json").read_text())["cohort"]["intensity"]
        anomaly[term] = np.asarray(nib.load(out / "scan2_anomaly.nii.gz").dataobj)
    assert fusion["none"]["intensity_weight"] == 0
    used = fusion["vouched"]
    weight = used["intensity_weight"]
    assert 0 < weight <= MAX_WEIGHT
    precision = {term: average_precision_score(blob.ravel(), values.ravel()) for term, values in anomaly.items()}
    assert precision["vouched"] > precision["none"], precision
    z_map = (anomaly["none"] - used["map_median"]) / used["map_scale"]
    intensity = (anomaly["vouched"] - (1 - weight) * z_map) / weight
    assert average_precision_score(blob.ravel(), intensity.ravel()) > 0.95
    assert intensity[blob].min() > 3 > abs(np.median(intensity[3:][~blob[3:]]))


def test_the_null_threshold_gives_its_stated_false_positive_rate():
    """Median + 3 robust sd of a normal null: 0.13 % of fresh null values above it (one-sided), whatever the
    null's location and scale."""
    generator = torch.Generator().manual_seed(0)
    null = 2.0 + 0.5 * torch.randn(1_000_000, generator=generator)
    threshold = null_threshold(null)
    assert abs(threshold - (2.0 + 3 * 0.5)) <= 0.5 / 8
    fresh = 2.0 + 0.5 * torch.randn(2_000_000, generator=generator)
    assert 0.0008 < float((fresh > threshold).float().mean()) < 0.002
