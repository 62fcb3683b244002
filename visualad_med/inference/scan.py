"""One scan through the model and out to disk: load, slice, infer, threshold, write in the scan's geometry.

Read top to bottom, this is the data path of every scan of ``visualad-med infer``, of the
bundle's inference workflow and of volume evaluation:

1. :func:`run_scan` = :func:`load_for_run` (:func:`~visualad_med.io.load_scan`: the volume, its
   DICOM series, its window resolved once) then :func:`infer_scan` (the scan's
   :func:`~visualad_med.inference.slices.slice_preprocessing`, the
   :class:`~visualad_med.inference.slices.SliceInferer`: slices in batches through the model, maps
   back on the voxel grid; the mask at the run's threshold); a folder run overlaps the two across
   scans (:mod:`visualad_med.inference.folder`);
2. :func:`~visualad_med.inference.outputs.write_scan_outputs` writes what
   :data:`~visualad_med.inference.outputs.SCAN_OUTPUTS` declares, the report (:func:`scan_report`) last.

Slices the model did not run (no body in any plane) hold 0 in the map in memory; the mask never
marks a voxel of such a slice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from visualad_med import __version__
from visualad_med.io import Scan, ScanSource, load_scan
from visualad_med.model.visualad import VisualAD

from .resume import REPORT_SCHEMA
from .settings import RunSettings
from .slices import ScanMaps, SliceInferer, SliceScores, scan_scores, slice_preprocessing

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

    ``inferer`` is ``settings.inferer(model)``, made here unless a folder run passes the one it built once.
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


def scan_report(model: VisualAD, result: ScanResult, settings: RunSettings, head_sha256: str | None,
                finished: float) -> dict:
    """What ``<name>_report.json`` says of a scan, its model and its timings (``finished``: perf_counter)."""
    scan, scores = result.scan, result.scores
    started, loaded, begun, inferred = result.times
    affine = scan.volume.affine.numpy()
    source = scan.source
    chosen = settings.map_settings(model)
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
        "threshold_source": settings.threshold_source,
        "map_dtype": settings.map_dtype,
        "scores": {**result.scan_scores, "slice_axis": scores.axis,
                   "slice_plane": scores.plane, "per_slice": scores.scores},
        "anomalous_voxels": int(result.mask.count_nonzero()),  # sum() would copy the mask as int64 first
        "model": {"backbone": model.config.backbone, "backbone_sha256": model.config.weights_sha256,
                  "image_size": model.config.image_size, "taps": list(model.config.taps),
                  "scoring": chosen.scoring, "map_reference": chosen.map_reference,
                  "head_sha256": head_sha256, "precision": scores.precision, "visualad_med": __version__},
        "seconds": {"load": round(loaded - started, 3), "inference": round(inferred - begun, 3),
                    "write": round(finished - inferred, 3), "total": round(finished - started, 3),
                    "model": round(scores.model_seconds, 3),
                    "per_slice": round((inferred - begun) / max(1, scores.slices_run), 4),
                    "slices_run": scores.slices_run},
    }
