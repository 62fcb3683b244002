"""The files one scan leaves in the output folder, each declared once in :data:`SCAN_OUTPUTS`.

A declaration holds the output's key, its file suffix, its link text on the run's ``index.html``,
when it applies (every scan, DICOM input only, previews only) and its writer. Path building
(:func:`output_paths`), writing (:func:`write_scan_outputs`), the resume check
(:func:`~visualad_med.inference.resume.why_not_done`), the summary, the HTML index and the command
line's last line all read it, so a new output is one more entry here.

Per scan ``<name>``: ``<name>_anomaly.nii.gz`` (the map; int16 with a NIfTI scale by default, see
:func:`stored_map`), ``<name>_mask.nii.gz`` (uint8 labelmap), ``<name>_mask.seg.nrrd`` (3D Slicer
segmentation, segment "anomaly"), for DICOM input ``<name>_seg.dcm`` (DICOM SEG referencing the
source series), with previews ``<name>_preview.png``, and ``<name>_report.json``, declared and
written last: its presence marks a finished scan. An output whose ``unwritable`` names a reason
(a DICOM SEG whose source slices lack what a SEG copies from them, e.g. StudyInstanceUID) is not
written, an older file of its name is removed, and the report says why under ``not_written``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visualad_med import __version__
from visualad_med.io import Scan, dicom_seg_problem, write_dicom_seg, write_json, write_nifti, write_seg_nrrd
from visualad_med.model.visualad import VisualAD

from .preview import write_preview
from .scan import ScanResult, scan_report
from .settings import RunSettings

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "VisualAD zero-shot anomaly detection"
"""The algorithm a DICOM SEG names."""

Writer = Callable[[ScanResult, Path, RunSettings], None]


@dataclass(frozen=True)
class ScanOutput:
    """One file a scan leaves in the output folder.

    Attributes:
        key: the output's name in reports (``outputs``, ``not_written``) and in code.
        suffix: appended to the scan's name to make the file name.
        label: link text on the run's ``index.html``; empty: not linked (the preview is shown instead).
        write: writes the file from the scan's result and the run's settings; ``None`` for the report,
            which :func:`write_scan_outputs` writes last.
        dicom_only: only for scans read from a DICOM series.
        preview_only: only when the run writes previews.
        unwritable: why this output cannot be written for a scan, ``None`` when it can.
    """

    key: str
    suffix: str
    label: str
    write: Writer | None
    dicom_only: bool = False
    preview_only: bool = False
    unwritable: Callable[[Scan], str | None] | None = None

    def applies(self, dicom: bool, preview: bool) -> bool:
        """Whether a scan (``dicom``: read from a DICOM series) in a run (``preview``: with previews) has it."""
        return (dicom or not self.dicom_only) and (preview or not self.preview_only)


def stored_map(result: ScanResult) -> np.ndarray:
    """The ``(X, Y, Z)`` float32 map as its file holds it: voxels of slices not run set to the map's minimum.

    The minimum over the run voxels (0 when none ran) rather than NaN or 0: it survives int16 storage
    (NaN has no int16 code), viewers' automatic window and histogram (3D Slicer's, ITK's statistics)
    and metrics (scikit-learn refuses NaN), and it shows as the bottom of the colour map, "nothing
    here", like the background of a run slice (0 lies above a body-referenced map's background and
    would look like tissue). The report's ``per_slice`` scores (``null`` for a slice not run) tell
    the two apart.
    """
    anomaly = result.anomaly.numpy()
    if bool(result.ran.all()) or not bool(result.ran.any()):
        return anomaly
    ran = result.ran.numpy()
    return np.where(ran, anomaly, np.min(anomaly, where=ran, initial=np.inf))  # no copy of the run voxels


def _affine(result: ScanResult) -> np.ndarray:
    return result.scan.volume.affine.numpy()


def _write_map(result: ScanResult, path: Path, settings: RunSettings) -> None:
    write_nifti(stored_map(result), _affine(result), path, settings.map_dtype)


def _write_mask(result: ScanResult, path: Path, settings: RunSettings) -> None:
    write_nifti(result.mask.numpy(), _affine(result), path)


def _write_segmentation(result: ScanResult, path: Path, settings: RunSettings) -> None:
    write_seg_nrrd(result.mask.numpy(), _affine(result), path)


def _write_series_seg(result: ScanResult, path: Path, settings: RunSettings) -> None:
    """The mask as a DICOM SEG on the series' grid, referencing the series."""
    series = result.scan.series
    write_dicom_seg(result.mask.numpy(), series.affine, series.datasets, path, ALGORITHM_NAME, __version__)


def _series_seg_problem(scan: Scan) -> str | None:
    return dicom_seg_problem(scan.series.datasets)


def _write_preview(result: ScanResult, path: Path, settings: RunSettings) -> None:
    write_preview(result, path)


SCAN_OUTPUTS: tuple[ScanOutput, ...] = (
    ScanOutput("anomaly", "_anomaly.nii.gz", "map", _write_map),
    ScanOutput("mask", "_mask.nii.gz", "mask", _write_mask),
    ScanOutput("segmentation", "_mask.seg.nrrd", "Slicer segmentation", _write_segmentation),
    ScanOutput("dicom_seg", "_seg.dcm", "DICOM SEG", _write_series_seg, dicom_only=True,
               unwritable=_series_seg_problem),
    ScanOutput("preview", "_preview.png", "", _write_preview, preview_only=True),
    ScanOutput("report", "_report.json", "report", None),
)
"""Every output of a scan, in the order they are written; the report last."""

INDEX_LINKS: tuple[tuple[str, str], ...] = tuple((output.key, output.label) for output in SCAN_OUTPUTS if output.label)
"""``(key, link text)`` of the outputs a row of ``index.html`` links to, in this order."""
_BY_KEY = {output.key: output for output in SCAN_OUTPUTS}


def output_paths(out_dir: Path, name: str, dicom: bool, preview: bool = False) -> dict[str, Path]:
    """The output files of scan ``name`` by key, in writing order, the report last.

    Args:
        out_dir: the output folder.
        name: the scan's name.
        dicom: the scan is read from a DICOM series.
        preview: the run writes previews.
    """
    return {output.key: Path(out_dir) / f"{name}{output.suffix}" for output in SCAN_OUTPUTS
            if output.applies(dicom, preview)}


def write_scan_outputs(model: VisualAD, result: ScanResult, paths: dict[str, Path], settings: RunSettings,
                       head_sha256: str | None, extra_report: dict | None = None) -> dict:
    """Write the outputs of one scan to ``paths`` (:func:`output_paths`), the report last; return the report.

    Outputs are written one at a time: each writer holds a copy of the mask or the map (up to 0.45 GB).

    Args:
        model: the model that made the map (its config and settings are recorded).
        result: the scan through the model (:func:`~visualad_med.inference.scan.run_scan`).
        paths: the scan's output files by key.
        settings: the run's settings (planes, the user's threshold and the map's storage are recorded).
        head_sha256: sha256 of the head file, ``None`` for an untrained head.
        extra_report: keys added to (or replacing those of) the report.
    """
    scan = result.scan
    not_written = {}
    for key, path in paths.items():
        unwritable = _BY_KEY[key].unwritable
        problem = unwritable(scan) if unwritable is not None else None
        if problem is not None:
            logger.warning("%s: %s not written: %s; the other outputs are written", scan.source.name, path.name, problem)
            path.unlink(missing_ok=True)
            not_written[key] = problem
    written = {key: path for key, path in paths.items() if key not in not_written}
    for key, path in written.items():
        if _BY_KEY[key].write is not None:
            _BY_KEY[key].write(result, path, settings)
    report = {**scan_report(model, result, settings, head_sha256, time.perf_counter()),
              "outputs": {key: path.name for key, path in written.items()}, "not_written": not_written,
              **(extra_report or {})}
    write_json(report, paths["report"])
    return report
