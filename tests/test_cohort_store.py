"""Cohort runs over the feature store: resume, incremental scans, changed inputs, torchrun, FAISS candidates."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import timm
import torch
from conftest import tiny_vit
from safetensors.torch import save_file

from visualad_med.inference.cohort import CohortScoring
from visualad_med.inference.folder import run_folder
from visualad_med.inference.settings import RunSettings
from visualad_med.io import find_scans
from visualad_med.model.candidates import nearest_slices
from visualad_med.model.cohort import CohortScale, CohortSettings
from visualad_med.model.intensity import IntensityFusion
from visualad_med.model.visualad import build_model

SHAPE = (20, 18, 8)


def write_scan(folder: Path, k: int, seed: int | None = None) -> None:
    rng = np.random.default_rng(k if seed is None else seed)
    data = rng.normal(300.0, 30.0, SHAPE).astype(np.float32)
    if k == 1:
        data[6:12, 6:12, 3:5] = 900.0  # a lesion only this scan has
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), folder / f"scan{k}.nii.gz")


def model():
    torch.manual_seed(0)
    return build_model(tiny_vit(), image_size=32)


def cohort_run(scans: Path, out: Path, after_scan=None, candidates: int = 3, **cohort):
    return run_folder(model(), find_scans(scans), out, RunSettings(progress=False, map_dtype="float32"),
                      cohort=CohortSettings("visualad+mutual", candidates=candidates, **cohort), after_scan=after_scan)


def maps(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_anomaly.nii.gz"))}


def entry_times(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / ".features").glob("*.features.npy"))}


def hold_scale_and_threshold(monkeypatch) -> None:
    """Fix the cohort's scale, intensity fusion and mask threshold, as a large cohort's, which one scan more or less does not move."""
    fixed = CohortScale("visualad+mutual", (0.4, 0.2), (0.1, 0.1), (0.0, 1.0))
    monkeypatch.setattr(CohortScale, "of", classmethod(lambda cls, *args, **kwargs: fixed))
    monkeypatch.setattr(CohortScoring, "voxel_null", lambda self, *args: (IntensityFusion(), 2.0))


def test_a_killed_cohort_run_resumes_skipping_finished_scans_with_the_same_maps(tmp_path, caplog):
    for k in range(4):
        write_scan(tmp_path / "scans", k)
    cohort_run(tmp_path / "scans", tmp_path / "whole")

    def kill_after_first(result, report):
        raise KeyboardInterrupt  # the run dies once the first scan's outputs are written

    with pytest.raises(KeyboardInterrupt):
        cohort_run(tmp_path / "scans", tmp_path / "killed", after_scan=kill_after_first)
    assert len(list((tmp_path / "killed").glob("*_report.json"))) == 1
    stored = entry_times(tmp_path / "killed")
    assert len(stored) == 4
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run = cohort_run(tmp_path / "scans", tmp_path / "killed")
    assert run.succeeded == 4 and "scan0: already done" in caplog.text
    assert "4 scan(s) reused, 0 to extract" in caplog.text
    assert entry_times(tmp_path / "killed") == stored  # no feature recomputed
    whole, resumed = maps(tmp_path / "whole"), maps(tmp_path / "killed")
    assert whole.keys() == resumed.keys() and len(whole) == 4
    for name in whole:
        np.testing.assert_array_equal(whole[name], resumed[name])


def test_an_added_scan_extracts_only_its_features_and_rescores_the_scans_it_is_a_candidate_of(tmp_path, caplog,
                                                                                             monkeypatch):
    hold_scale_and_threshold(monkeypatch)
    for k in range(3):
        write_scan(tmp_path / "scans", k)
    cohort_run(tmp_path / "scans", tmp_path / "out", candidates=2)
    before = entry_times(tmp_path / "out")
    reports = {p.name: p.read_text() for p in (tmp_path / "out").glob("*_report.json")}
    write_scan(tmp_path / "scans", 3)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run = cohort_run(tmp_path / "scans", tmp_path / "out", candidates=2)
    assert run.succeeded == 4
    after = entry_times(tmp_path / "out")
    assert {name: after[name] for name in before} == before and "scan3.features.npy" in after
    assert "3 scan(s) reused, 1 to extract" in caplog.text
    rescored = [name for name in reports if (tmp_path / "out" / name).read_text() != reports[name]]
    for name in rescored:  # each rescored scan says why: the added scan now gives it candidates
        assert f"{name}" in caplog.text and "now also from scan3" in caplog.text
    kept = set(reports) - set(rescored)
    for name in kept:
        identity = json.loads((tmp_path / "out" / name).read_text())["identity"]["cohort"]
        assert "scan3" not in identity["candidate_scans"]
    assert rescored, "with K=2 of 3 scans' slices, the added scan's slices must be a candidate of some scan"


def test_a_scan_added_to_a_small_cohort_moves_its_scale_and_every_scan_is_redone(tmp_path, caplog):
    for k in range(3):
        write_scan(tmp_path / "scans", k)
    cohort_run(tmp_path / "scans", tmp_path / "out", candidates=8)
    scales = {json.dumps(json.loads(p.read_text())["cohort"]["scale"]) for p in (tmp_path / "out").glob("*_report.json")}
    write_scan(tmp_path / "scans", 3)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cohort_run(tmp_path / "scans", tmp_path / "out", candidates=8)
    now = {json.dumps(json.loads(p.read_text())["cohort"]["scale"]) for p in (tmp_path / "out").glob("*_report.json")}
    assert len(scales) == len(now) == 1 and scales != now  # one scale per run, and it moved
    for k in range(3):
        assert f"scan{k}: scan{k}_report.json no longer matches: " in caplog.text
    moved = ("the cohort's robust scale moved", "candidates changed", "setting threshold was")
    assert sum(caplog.text.count(reason) for reason in moved) >= 3


def test_a_changed_scan_recomputes_its_features_and_redoes_the_scans_that_used_it(tmp_path, caplog, monkeypatch):
    hold_scale_and_threshold(monkeypatch)
    for k in range(3):
        write_scan(tmp_path / "scans", k)
    cohort_run(tmp_path / "scans", tmp_path / "out")
    before = entry_times(tmp_path / "out")
    write_scan(tmp_path / "scans", 2, seed=99)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cohort_run(tmp_path / "scans", tmp_path / "out")
    after = entry_times(tmp_path / "out")
    assert after["scan2.features.npy"] != before["scan2.features.npy"]
    assert after["scan0.features.npy"] == before["scan0.features.npy"]
    assert "scan2: scan2_report.json no longer matches: scan2.nii.gz has another" in caplog.text
    assert "scan0: scan0_report.json no longer matches: its cohort candidates changed" in caplog.text


def test_two_torchrun_processes_give_the_maps_of_one(tmp_path):
    for k in range(4):
        write_scan(tmp_path / "scans", k)
    torch.manual_seed(0)
    weights = tmp_path / "vit.safetensors"
    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    options = ["infer", str(tmp_path / "scans"), "--head", "untrained", "--backbone", "vit_tiny_patch16_224",
               "--backbone-weights", str(weights), "--image-size", "32", "--device", "cpu", "--scoring", "mutual",
               "--cohort-candidates", "3", "--map-dtype", "float32", "--no-preview"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "visualad_med", *options[:2], str(tmp_path / "one"), *options[2:]],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "visualad_med",
                          *options[:2], str(tmp_path / "two"), *options[2:]],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert {p.name for p in (tmp_path / "two").glob("summary_rank*.csv")} == {"summary_rank0.csv", "summary_rank1.csv"}
    assert (tmp_path / "two" / ".features" / "cohort_null.json").is_file()  # made once, by rank 0
    single, distributed = maps(tmp_path / "one"), maps(tmp_path / "two")
    assert single.keys() == distributed.keys() and len(single) == 4
    for name in single:
        np.testing.assert_array_equal(single[name], distributed[name])


def test_faiss_candidates_agree_with_exact_search_and_never_come_from_the_same_scan():
    rng = np.random.default_rng(5)
    descriptors = rng.normal(size=(60, 16)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    scan_of = np.repeat(np.arange(6), 10)
    position = np.tile(np.linspace(0, 1, 10), 6)
    for exact_limit in (1000, 10):  # flat index, then HNSW
        found = nearest_slices(descriptors, scan_of, position, count=5, exact_limit=exact_limit)
        similarity = descriptors @ descriptors.T
        for i in range(60):
            allowed = np.flatnonzero(scan_of != scan_of[i])
            expected = allowed[np.argsort(-similarity[i, allowed], kind="stable")[:5]]
            assert set(found.of(i)) == set(expected)
            assert not np.any(scan_of[found.of(i)] == scan_of[i])
    prior = nearest_slices(descriptors, scan_of, position, count=5, position_prior=0.25)
    assert all(np.all(np.abs(position[prior.of(i)] - position[i]) <= 0.25) for i in range(60))
    alone = nearest_slices(descriptors[:10], np.zeros(10, int), position[:10], count=3)
    assert alone.fallback_same_scan
    assert all(np.all(np.abs(position[alone.of(i)] - position[i]) >= 0.2) for i in range(10))


def test_stored_cohort_scores_are_reused_only_for_the_same_interval_share(tmp_path):
    for k in range(3):
        write_scan(tmp_path / "scans", k)
    cohort_run(tmp_path / "scans", tmp_path / "out", candidates=12)
    first = maps(tmp_path / "out")
    cohort_run(tmp_path / "scans", tmp_path / "out", candidates=12, fraction=1.0)
    widest = maps(tmp_path / "out")
    assert any(not np.array_equal(first[name], widest[name]) for name in first)
    cohort_run(tmp_path / "scans", tmp_path / "out", candidates=12)
    again = maps(tmp_path / "out")
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
