"""One scan through the model and out to disk: load, slice, infer, threshold, write in the scan's geometry.

Read top to bottom, this is the data path of every scan of ``visualad-med infer``, of the
bundle's inference workflow and of volume evaluation:

1. :func:`run_scan` = :func:`load_for_run` (:func:`~visualad_med.io.load_scan`: the volume, its
   DICOM series, its window resolved once) then :func:`infer_scan` (the scan's
   :func:`~visualad_med.inference.slices.slice_preprocessing`, the
   :class:`~visualad_med.inference.slices.SliceInferer`: slices in batches through the model, maps
   back on the voxel grid; the mask at the run's threshold); a folder run overlaps the two across
   scans (:mod:`visualad_med.inference.folder`);
2. :func:`write_scan_outputs`: per scan ``<name>_anomaly.nii.gz`` (the map, int16 with a NIfTI
   scale by default, see :func:`stored_map`), ``<name>_mask.nii.gz`` (uint8 labelmap),
   ``<name>_mask.seg.nrrd`` (3D Slicer segmentation, segment "anomaly"), for DICOM input
   ``<name>_seg.dcm`` (DICOM SEG referencing the source series; left out, with the reason in the
   report, when the source slices lack what a SEG copies from them, e.g. StudyInstanceUID), with
   previews on ``<name>_preview.png`` (:mod:`~visualad_med.inference.preview`), and
   ``<name>_report.json``, written last: its presence marks a finished scan
   (:mod:`visualad_med.inference.resume`).

Slices the model did not run (no body in any plane) hold 0 in the map in memory. The mask and the
scores are computed from that float32 map, as they always were, except that the mask never marks
a voxel of a slice that was not run (with a threshold below 0 it used to). The map file holds the
map's minimum over the run voxels there instead of 0 (:func:`stored_map`): 0 lies above a
body-referenced map's background (about -9 on CQ500) and looked like tissue in a viewer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from visualad_med import __version__
from visualad_med.io import (Scan, ScanSource, dicom_seg_problem, load_scan, write_dicom_seg, write_json, write_nifti,
                             write_seg_nrrd)
from visualad_med.model.visualad import VisualAD

from .resume import REPORT_SCHEMA
from .preview import write_preview
from .settings import RunSettings
from .slices import ScanMaps, SliceInferer, SliceScores, scan_scores, slice_preprocessing

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "VisualAD zero-shot anomaly detection"
"""The algorithm a DICOM SEG names."""


def output_paths(out_dir: Path, name: str, dicom: bool, preview: bool = False) -> dict[str, Path]:
    """Output files of scan ``name`` (``preview``: with its quick-look PNG); the report comes last."""
    paths = {
        "anomaly": out_dir / f"{name}_anomaly.nii.gz",
        "mask": out_dir / f"{name}_mask.nii.gz",
        "segmentation": out_dir / f"{name}_mask.seg.nrrd",
    }
    if dicom:
        paths["dicom_seg"] = out_dir / f"{name}_seg.dcm"
    if preview:
        paths["preview"] = out_dir / f"{name}_preview.png"
    paths["report"] = out_dir / f"{name}_report.json"
    return paths


@dataclass
class ScanResult:
    """One scan through the model, before anything is written.

    Attributes:
        scan: the loaded scan (volume with affine and meta, DICOM series, window).
        anomaly: ``(X, Y, Z)`` float32 map, 0 in slices the model did not run.
        mask: ``(X, Y, Z)`` uint8 mask: map above ``threshold``, in slices the model ran.
        threshold: the threshold on the map that made ``mask``.
        scores: the inferer's per-slice scores and timings.
        times: ``time.perf_counter()`` at the start, after loading, when inference began (a folder run reads
            ahead, so a loaded scan may wait) and after inference.
        ran: ``(X, Y, Z)`` bool, voxels in a slice the model ran (:meth:`SliceScores.run_voxels`).
        scan_scores: the scan scores of ``anomaly`` (:func:`~visualad_med.inference.slices.scan_scores`).
    """

    scan: Scan
    anomaly: torch.Tensor
    mask: torch.Tensor
    threshold: float
    scores: SliceScores
    times: tuple[float, float, float, float]
    ran: torch.Tensor
    scan_scores: dict[str, float | None]


@dataclass
class LoadedScan:
    """A scan read for a run, with ``time.perf_counter()`` before and after reading it."""

    scan: Scan
    started: float
    loaded: float


def load_for_run(source: ScanSource, settings: RunSettings) -> LoadedScan:
    """Read one scan with the run's window; raises :class:`~visualad_med.io.ScanLoadError` on failure."""
    started = time.perf_counter()
    scan = load_scan(source, window=settings.window)
    return LoadedScan(scan, started, time.perf_counter())


def infer_scan(model: VisualAD, loaded: LoadedScan, settings: RunSettings,
               inferer: SliceInferer | None = None) -> ScanResult:
    """Run the model over a loaded scan's slices and threshold the map; raises on failure.

    ``inferer`` defaults to ``settings.inferer(model)``.
    """
    begun = time.perf_counter()
    scan = loaded.scan
    inferer = inferer or settings.inferer(model)
    window = (scan.window.low, scan.window.high)
    return finish_scan(model, loaded, settings, inferer(scan.volume, model, slice_preprocessing(model.config, window)),
                       begun)


def finish_scan(model: VisualAD, loaded: LoadedScan, settings: RunSettings, maps: ScanMaps,
                begun: float) -> ScanResult:
    """A scan's result from its map volume: the mask at the run's threshold and the scan scores.

    ``begun`` is ``time.perf_counter()`` when the scan's inference began.
    """
    inferred = time.perf_counter()
    anomaly = maps.anomaly[0]
    threshold = settings.mask_threshold(model)
    ran = maps.scores.run_voxels(tuple(anomaly.shape))
    mask = ((anomaly > threshold) & ran).to(torch.uint8)
    return ScanResult(loaded.scan, anomaly, mask, threshold, maps.scores,
                      (loaded.started, loaded.loaded, begun, inferred), ran, scan_scores(anomaly, maps.scores.scores))


def run_scan(model: VisualAD, source: ScanSource, settings: RunSettings,
             inferer: SliceInferer | None = None) -> ScanResult:
    """Load one scan and run the model over its slices (:func:`load_for_run`, :func:`infer_scan`)."""
    return infer_scan(model, load_for_run(source, settings), settings, inferer)


def stored_map(result: ScanResult) -> np.ndarray:
    """The ``(X, Y, Z)`` float32 map as its file holds it: voxels of slices not run set to the map's minimum.

    The minimum over the run voxels (0 when none ran) rather than NaN: it survives int16 storage
    (NaN has no int16 code), viewers' automatic window and histogram (3D Slicer's, ITK's
    statistics) and metrics (scikit-learn refuses NaN), and it shows as the bottom of the colour
    map, "nothing here", like the background of a run slice. The report's ``per_slice`` scores
    (``null`` for a slice not run) tell the two apart.
    """
    anomaly = result.anomaly.numpy()
    if bool(result.ran.all()) or not bool(result.ran.any()):
        return anomaly
    ran = result.ran.numpy()
    return np.where(ran, anomaly, np.min(anomaly, where=ran, initial=np.inf))  # no copy of the run voxels


def _write_series_seg(scan: Scan, mask: np.ndarray, path: Path) -> None:
    """The ``(X, Y, Z)`` mask as a DICOM SEG on the series' grid, referencing the series."""
    write_dicom_seg(mask, scan.series.affine, scan.series.datasets, path, ALGORITHM_NAME, __version__)


def write_scan_outputs(model: VisualAD, result: ScanResult, out_dir: Path, settings: RunSettings,
                       head_sha256: str | None, extra_report: dict | None = None) -> dict:
    """Write the outputs of one scan (report last) and return the report.

    A DICOM SEG that cannot reference its source slices (:func:`~visualad_med.io.dicom_seg_problem`)
    is not written (an older one of the same name is removed); the report says why under
    ``not_written`` and the other outputs are written as usual.

    Args:
        model: the model that made the map (its config and settings are recorded).
        result: the scan through the model (:func:`run_scan`).
        out_dir: output folder.
        settings: the run's settings (planes and the user's threshold are recorded).
        head_sha256: sha256 of the head file, ``None`` for an untrained head.
        extra_report: keys added to (or replacing those of) the report.
    """
    scan = result.scan
    affine = scan.volume.affine.numpy()
    paths = output_paths(out_dir, scan.source.name, scan.series is not None, settings.preview)
    not_written = _unwritable_outputs(scan, paths)
    mask = result.mask.numpy()
    writes = [(write_nifti, stored_map(result), affine, paths["anomaly"], settings.map_dtype),
              (write_nifti, mask, affine, paths["mask"]),
              (write_seg_nrrd, mask, affine, paths["segmentation"])]
    if "dicom_seg" in paths:
        writes.append((_write_series_seg, scan, mask, paths["dicom_seg"]))
    if settings.preview:
        writes.append((write_preview, result, paths["preview"]))
    for writer, *arguments in writes:  # one at a time: each holds a copy of the mask or map (up to 0.45 GB)
        writer(*arguments)
    report = {**scan_report(model, result, settings, head_sha256, time.perf_counter()),
              "outputs": {key: path.name for key, path in paths.items()}, "not_written": not_written,
              **(extra_report or {})}
    write_json(report, paths["report"])
    return report


def _unwritable_outputs(scan: Scan, paths: dict[str, Path]) -> dict[str, str]:
    """Take the outputs that cannot be written out of ``paths`` (older files removed); why, by output key."""
    problem = dicom_seg_problem(scan.series.datasets) if scan.series is not None else None
    if problem is None:
        return {}
    logger.warning("%s: %s not written: %s; the other outputs are written", scan.source.name,
                   paths["dicom_seg"].name, problem)
    paths.pop("dicom_seg").unlink(missing_ok=True)
    return {"dicom_seg": problem}


def scan_report(model: VisualAD, result: ScanResult, settings: RunSettings, head_sha256: str | None,
                finished: float) -> dict:
    """What ``<name>_report.json`` says of a scan, its model and its timings (``finished``: perf_counter)."""
    scan, scores = result.scan, result.scores
    started, loaded, begun, inferred = result.times
    affine = scan.volume.affine.numpy()
    source = scan.source
    return {
        "report_schema": REPORT_SCHEMA,
        "scan": source.name,
        "source": {"kind": source.kind, "files": len(source.files), "path": str(source.path),
                   "modality": source.modality, "series_uid": source.series_uid},
        "shape": list(result.anomaly.shape),
        "affine": affine.tolist(),
        "spacing_mm": np.linalg.norm(affine[:3, :3], axis=0).round(6).tolist(),
        "gantry_tilt_deg": scan.volume.meta.get("gantry_tilt_deg"),
        "interpolated_slices": scan.volume.meta.get("interpolated_slices"),
        "window": scan.window.spec,
        "window_reason": scan.window.reason,
        "window_range": (scan.window.low, scan.window.high),
        "planes": list(settings.planes),
        "threshold": result.threshold,
        "threshold_source": "head (F1-max on industrial training data)" if settings.threshold is None else "user",
        "map_dtype": settings.map_dtype,
        "scores": {**result.scan_scores, "slice_axis": scores.axis,
                   "slice_plane": scores.plane, "per_slice": scores.scores},
        "anomalous_voxels": int(result.mask.count_nonzero()),  # sum() would copy the mask as int64 first
        "model": {"backbone": model.config.backbone, "backbone_sha256": model.config.weights_sha256,
                  "image_size": model.config.image_size, "taps": list(model.config.taps),
                  "scoring": model.settings.scoring, "map_reference": model.settings.map_reference,
                  "head_sha256": head_sha256, "precision": scores.precision, "visualad_med": __version__},
        "seconds": {"load": round(loaded - started, 3), "inference": round(inferred - begun, 3),
                    "write": round(finished - inferred, 3), "total": round(finished - started, 3),
                    "model": round(scores.model_seconds, 3),
                    "per_slice": round((inferred - begun) / max(1, scores.slices_run), 4),
                    "slices_run": scores.slices_run},
    }
