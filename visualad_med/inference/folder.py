"""Folder runs: every scan of a folder to an anomaly map, a mask and a report in the scan's geometry.

Per scan ``<name>``: ``<name>_anomaly.nii.gz`` (float32 map), ``<name>_mask.nii.gz``
(uint8 labelmap), ``<name>_mask.seg.nrrd`` (3D Slicer segmentation, segment
"anomaly"), for DICOM input ``<name>_seg.dcm`` (DICOM SEG referencing the source
series), and ``<name>_report.json`` (written last: its presence marks a finished
scan, so an interrupted run resumes). A failing scan is logged with its path and
reason, its partial outputs are removed, and the run goes on; ``summary.csv``
lists every scan, sorted by scan score.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from tqdm import tqdm

from visualad_med import __version__
from visualad_med.model.cohort import COHORT_THRESHOLD, CohortSettings
from .cohort import CohortMaps
from .slices import SliceInferer, SliceScores, check_planes, scan_scores
from visualad_med.model.visualad import VisualAD
from visualad_med.io.hashing import file_sha256
from visualad_med.transforms import resolve_window
from visualad_med.io import (
    MAX_GAP_SLICES,
    ScanLoadError,
    ScanSource,
    find_scans,
    load_scan,
    read_series,
    write_dicom_seg,
    write_json,
    write_nifti,
    write_seg_nrrd,
    write_summary_csv,
)

logger = logging.getLogger(__name__)

SUMMARY_FIELDS = ("scan", "status", "score_max_slice", "score_top1pct", "anomalous_voxels", "kind", "modality",
                  "shape", "seconds", "error", "source")


@dataclass
class RunSettings:
    """Options of a folder run.

    Attributes:
        planes: anatomical planes; several average the maps (tri-planar fusion).
        window: intensity window (``auto`` picks from Modality; see :mod:`visualad_med.transforms`).
        batch_size: slices per model call.
        threshold: on the map; ``None`` uses the head's calibrated threshold.
        overwrite: redo scans whose report already exists.
        skip_empty: leave slices without body out of the model (map 0, score absent).
        progress: show progress bars.
    """

    planes: tuple[str, ...] = ("axial",)
    window: str | tuple[float, float] = "auto"
    batch_size: int = 8
    threshold: float | None = None
    overwrite: bool = False
    skip_empty: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        """Check the settings before any scan is read, so a typo fails the run once, not every scan."""
        check_planes(self.planes)
        if self.window != "auto":
            resolve_window(self.window)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def output_paths(out_dir: Path, name: str, dicom: bool) -> dict[str, Path]:
    """Output files of scan ``name``; the report comes last."""
    paths = {
        "anomaly": out_dir / f"{name}_anomaly.nii.gz",
        "mask": out_dir / f"{name}_mask.nii.gz",
        "segmentation": out_dir / f"{name}_mask.seg.nrrd",
    }
    if dicom:
        paths["dicom_seg"] = out_dir / f"{name}_seg.dcm"
    paths["report"] = out_dir / f"{name}_report.json"
    return paths


def make_inferer(model: VisualAD, settings: RunSettings) -> SliceInferer:
    """The :class:`SliceInferer` of a folder run, on the model's device."""
    device = next(model.parameters()).device
    return SliceInferer(settings.planes, settings.window, settings.batch_size, device=device,
                        skip_empty=settings.skip_empty, progress=settings.progress)


def mask_threshold(model: VisualAD, settings: RunSettings) -> float:
    """The threshold on the map: the user's, else the head's calibrated one."""
    return model.threshold if settings.threshold is None else settings.threshold


@dataclass
class ScanInference:
    """One scan through the model, before anything is written.

    Attributes:
        volume: the loaded ``(1, X, Y, Z)`` volume (affine and meta).
        anomaly: ``(X, Y, Z)`` float32 map.
        mask: ``(X, Y, Z)`` uint8 mask at the run's threshold.
        scores: the inferer's per-slice scores.
        times: ``time.perf_counter()`` at the start, after loading and after inference.
    """

    volume: MetaTensor
    anomaly: torch.Tensor
    mask: torch.Tensor
    scores: SliceScores
    times: tuple[float, float, float]


def infer_scan(model: VisualAD, source: ScanSource, settings: RunSettings,
               inferer: SliceInferer | None = None, network: torch.nn.Module | None = None) -> ScanInference:
    """Load one scan and run the model over its slices; raises on failure.

    ``inferer`` defaults to :func:`make_inferer` of ``settings``; ``network`` (default ``model``) is
    what the inferer calls, e.g. the cohort's fused maps (:mod:`visualad_med.inference.cohort`).
    """
    started = time.perf_counter()
    volume = load_scan(source)
    loaded = time.perf_counter()
    inferer = inferer or make_inferer(model, settings)
    anomaly = inferer(volume, network or model)[0]
    inferred = time.perf_counter()
    mask = (anomaly > mask_threshold(model, settings)).to(torch.uint8)
    return ScanInference(volume, anomaly, mask, inferer.last_scores, (started, loaded, inferred))


def process_scan(
    model: VisualAD,
    source: ScanSource,
    out_dir: Path,
    settings: RunSettings,
    head_sha256: str | None,
    inferer: SliceInferer | None = None,
    cohort: CohortMaps | None = None,
) -> dict:
    """Run one scan and write its outputs; returns its report. Raises on failure.

    With ``cohort``, the scan's maps are its fused cohort maps, and the report records the cohort.
    """
    network = cohort.network_for(source) if cohort is not None else None
    done = infer_scan(model, source, settings, inferer, network)
    return write_scan_outputs(model, source, done.volume, done.anomaly, done.mask, done.scores, out_dir, settings,
                              head_sha256, done.times, cohort_report(cohort, settings))


def cohort_report(cohort: CohortMaps | None, settings: RunSettings) -> dict | None:
    """The report keys of a cohort run (``None`` for a plain run)."""
    if cohort is None:
        return None
    rule = cohort.report()["threshold_rule"]
    return {"cohort": cohort.report(), "threshold_source": rule if settings.threshold == COHORT_THRESHOLD else "user"}


def _write_series_seg(source: ScanSource, mask: np.ndarray, path: Path) -> None:
    """The ``(X, Y, Z)`` mask as a DICOM SEG on the series' grid, referencing the series."""
    series = read_series(tuple(source.files), MAX_GAP_SLICES)
    write_dicom_seg(mask, series.affine, series.datasets, path, "VisualAD zero-shot anomaly detection", __version__)


def write_scan_outputs(
    model: VisualAD,
    source: ScanSource,
    volume: MetaTensor,
    anomaly: torch.Tensor,
    mask: torch.Tensor,
    scores: SliceScores,
    out_dir: Path,
    settings: RunSettings,
    head_sha256: str | None,
    times: tuple[float, float, float],
    extra_report: dict | None = None,
) -> dict:
    """Write the outputs of one scan (report last) and return the report.

    Args:
        model: the model that made the map (its config is recorded).
        source: the scan.
        volume: the loaded ``(1, X, Y, Z)`` volume (its affine and meta are used).
        anomaly: ``(X, Y, Z)`` float32 map.
        mask: ``(X, Y, Z)`` uint8 mask.
        scores: the inferer's :attr:`~visualad_med.inference.slices.SliceInferer.last_scores`.
        out_dir: output folder.
        settings: the run's planes and threshold (recorded).
        head_sha256: sha256 of the head file, ``None`` for an untrained head.
        times: ``time.perf_counter()`` at the start, after loading and after inference.
        extra_report: keys added to (or replacing those of) the report.
    """
    started, loaded, inferred = times
    threshold = mask_threshold(model, settings)
    affine = volume.affine.numpy()
    paths = output_paths(out_dir, source.name, source.kind == "dicom")
    writes = [(write_nifti, anomaly.numpy(), affine, paths["anomaly"]),
              (write_nifti, mask.numpy(), affine, paths["mask"]),
              (write_seg_nrrd, mask.numpy(), affine, paths["segmentation"])]
    if source.kind == "dicom":
        writes.append((_write_series_seg, source, mask.numpy(), paths["dicom_seg"]))
    with ThreadPoolExecutor(max_workers=len(writes)) as pool:  # gzip and DICOM encoding release the GIL
        for done in [pool.submit(*write) for write in writes]:
            done.result()
    summary = scan_scores(anomaly, scores.scores)
    finished = time.perf_counter()
    slices = max(1, scores.slices_run)
    report = {
        "scan": source.name,
        "source": {"kind": source.kind, "files": len(source.files), "path": str(source.path),
                   "modality": source.modality, "series_uid": source.series_uid},
        "shape": list(anomaly.shape),
        "affine": affine.tolist(),
        "spacing_mm": np.linalg.norm(affine[:3, :3], axis=0).round(6).tolist(),
        "gantry_tilt_deg": volume.meta.get("gantry_tilt_deg"),
        "interpolated_slices": volume.meta.get("interpolated_slices"),
        "window": scores.window,
        "window_range": scores.intensity_range,
        "planes": list(settings.planes),
        "threshold": threshold,
        "threshold_source": "head (F1-max on industrial training data)" if settings.threshold is None else "user",
        "scores": {**summary, "slice_axis": scores.axis, "slice_plane": scores.plane, "per_slice": scores.scores},
        "anomalous_voxels": int(mask.sum()),
        "model": {"backbone": model.config.backbone, "backbone_sha256": model.config.weights_sha256,
                  "image_size": model.config.image_size, "taps": list(model.config.taps),
                  "scoring": model.config.scoring, "map_reference": model.config.map_reference,
                  "head_sha256": head_sha256, "visualad_med": __version__},
        "seconds": {"load": round(loaded - started, 3), "inference": round(inferred - loaded, 3),
                    "write": round(finished - inferred, 3), "total": round(finished - started, 3),
                    "model": round(scores.model_seconds, 3), "per_slice": round((inferred - loaded) / slices, 4),
                    "slices_run": scores.slices_run},
        "outputs": {key: path.name for key, path in paths.items()},
        **(extra_report or {}),
    }
    write_json(report, paths["report"])
    return report


def _summary_row(source: ScanSource, report: dict) -> dict:
    """The ``summary.csv`` row of a finished scan."""
    return {
        "scan": source.name, "status": "ok", "score_max_slice": report["scores"]["max_slice_score"],
        "score_top1pct": report["scores"]["top1pct_mean"], "anomalous_voxels": report["anomalous_voxels"],
        "kind": source.kind, "modality": source.modality, "shape": "x".join(map(str, report["shape"])),
        "seconds": report["seconds"]["total"], "error": "", "source": str(source.path),
    }


def _remove_outputs(paths: dict[str, Path]) -> None:
    for path in paths.values():
        path.unlink(missing_ok=True)


def _finished_report(paths: dict[str, Path]) -> dict | None:
    """The report of a finished scan: it parses and every output it lists exists; else ``None``."""
    if not paths["report"].is_file():
        return None
    try:
        report = json.loads(paths["report"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not all(path.is_file() for path in paths.values()):
        return None
    return report


def _check_output_dir(input_path: Path, out_dir: Path, allow_inside_input: bool) -> None:
    """Refuse an output folder inside an input folder (its results would be found as scans next time)."""
    if not input_path.is_dir() or allow_inside_input:
        return
    root, out = input_path.resolve(), out_dir.resolve()
    if out == root or root in out.parents:
        raise ValueError(f"output folder {out_dir} is inside the input folder {input_path}; choose a folder "
                         "outside it (or pass --output-inside-input)")


def run_folder(
    model: VisualAD,
    input_path: Path,
    out_dir: Path,
    settings: RunSettings,
    head_path: Path | None = None,
    allow_inside_input: bool = False,
    cohort: CohortSettings | None = None,
) -> tuple[int, int]:
    """Process every scan under ``input_path``; returns ``(succeeded, failed)``.

    Scans already finished (their report exists) are skipped unless
    ``settings.overwrite``; under ``torchrun`` each process takes every
    ``WORLD_SIZE``-th scan and writes ``summary_rank<r>.csv``. With ``cohort``
    (:mod:`visualad_med.inference.cohort`) every scan is scored against the others: all
    are redone, in one process, at the cohort threshold unless ``settings.threshold``.
    """
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise FileNotFoundError(f"input {input_path} does not exist")
    _check_output_dir(input_path, out_dir, allow_inside_input)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"output folder {out_dir} is not writable")
    scans = find_scans(input_path, exclude=[out_dir])
    if not scans:
        raise ValueError(f"no scans found under {input_path} (DICOM series, .nii/.nii.gz, .nrrd, .mha/.mhd)")
    head_sha256 = file_sha256(head_path) if head_path else None
    model.eval()
    if cohort is None or not cohort.applies_to(len(scans)):
        return run_scans(scans, out_dir, lambda source: process_scan(model, source, out_dir, settings, head_sha256),
                         overwrite=settings.overwrite, progress=settings.progress, where=input_path)
    settings, inferer, maps = prepare_cohort(model, scans, settings, cohort, out_dir)
    return run_scans(scans, out_dir,
                     lambda source: process_scan(model, source, out_dir, settings, head_sha256, inferer, maps),
                     overwrite=True, progress=settings.progress, where=input_path)


def prepare_cohort(model: VisualAD, scans: list[ScanSource], settings: RunSettings, cohort: CohortSettings,
                   work_dir: Path) -> tuple[RunSettings, SliceInferer, CohortMaps]:
    """The settings (cohort threshold unless the user's), inferer and fused maps of a cohort run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("cohort scoring compares every scan with every other: run it in one process, not torchrun")
    if settings.threshold is None:
        settings = replace(settings, threshold=COHORT_THRESHOLD)
    inferer = make_inferer(model, settings)
    return settings, inferer, CohortMaps.build(model, scans, inferer, cohort, work_dir)


def run_scans(
    scans: list[ScanSource],
    out_dir: Path,
    process: Callable[[ScanSource], dict],
    *,
    overwrite: bool = False,
    progress: bool = True,
    where: Path | str = "",
) -> tuple[int, int]:
    """Run ``process`` (which writes a scan's outputs and returns its report) over ``scans``; write the summary.

    Scans whose report exists (readable, with every output it lists) are skipped unless
    ``overwrite``; a scan that raises is logged, its partial outputs removed, and the run goes on. Under ``torchrun`` each process takes every
    ``WORLD_SIZE``-th scan and writes ``summary_rank<r>.csv``. Returns ``(succeeded, failed)``.
    """
    if not scans:
        logger.error("no scans found under %s (DICOM series, .nii/.nii.gz, .nrrd, .mha/.mhd)", where)
        return 0, 1
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    total, scans = len(scans), scans[rank::world]
    if not scans:
        logger.info("rank %d of %d: no scan left for this process (%d scans in all)", rank, world, total)
    rows, failed = [], 0
    for source in tqdm(scans, desc="scans", unit="scan", disable=not progress):
        paths = output_paths(out_dir, source.name, source.kind == "dicom")
        report = None if overwrite else _finished_report(paths)
        if report is not None:
            logger.info("%s: already done (%s exists), skipped; --overwrite redoes it", source.name,
                        paths["report"].name)
            rows.append(_summary_row(source, report))
            continue
        if paths["report"].exists() and not overwrite:
            logger.warning("%s: %s exists but is unreadable or outputs are missing; redoing the scan",
                           source.name, paths["report"].name)
        try:
            rows.append(_summary_row(source, process(source)))
        except Exception as error:  # one scan's failure, whatever its kind, must not stop the run
            _remove_outputs(paths)
            failed += 1
            known = isinstance(error, (ScanLoadError, ValueError, OSError, RuntimeError))
            reason = error.reason if isinstance(error, ScanLoadError) else f"{type(error).__name__}: {error}"
            logger.error("%s: failed: %s", getattr(error, "path", source.path), reason, exc_info=not known)
            rows.append({"scan": source.name, "status": "failed", "kind": source.kind, "modality": source.modality,
                         "error": reason, "source": str(source.path)})
    rows.sort(key=lambda row: (row["status"] != "ok", -(row.get("score_top1pct") or 0.0)))
    name = "summary.csv" if world == 1 else f"summary_rank{rank}.csv"
    write_summary_csv(rows, out_dir / name, fieldnames=SUMMARY_FIELDS)
    succeeded = len(rows) - failed
    logger.info("%d scans succeeded, %d failed; summary in %s", succeeded, failed, out_dir / name)
    return succeeded, failed
