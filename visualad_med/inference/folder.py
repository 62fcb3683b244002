"""Folder runs: every scan of a folder through :func:`~visualad_med.inference.scan.run_scan` and its writers.

One :func:`run_folder` serves ``visualad-med infer``, the bundle's inference workflow and volume
evaluation. A scan whose report exists is done and skipped (so an interrupted run resumes); a
failing scan is logged with its path and reason, its partial outputs are removed, and the run
goes on; ``summary.csv`` lists every scan, sorted by scan score, and with previews on ``index.html``
shows them in that order with their quick looks and links to their files. Under ``torchrun`` each process
takes every ``WORLD_SIZE``-th scan. A cohort run (:mod:`visualad_med.inference.cohort`) scores
every scan against the others and redoes them all, in one process.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from visualad_med.errors import SettingError
from visualad_med.io import ScanLoadError, ScanSource, find_scans, write_summary_csv
from visualad_med.io.run_index import write_run_index
from visualad_med.model.cohort import COHORT_THRESHOLD, CohortSettings
from visualad_med.model.visualad import VisualAD

from .cohort import CohortMaps
from .scan import ScanResult, output_paths, run_scan, write_scan_outputs
from .settings import RunSettings
from .slices import SliceInferer

logger = logging.getLogger(__name__)

SCAN_KINDS = "DICOM series, .nii/.nii.gz, .nrrd, .mha/.mhd"
SUMMARY_FIELDS = ("scan", "status", "score_max_slice", "score_top1pct", "anomalous_voxels", "kind", "modality",
                  "shape", "seconds", "preview", "error", "source")
"""The columns of ``summary.csv``; ``preview`` is the scan's quick-look PNG, relative to the output folder."""


def find_folder_scans(input_path: Path, out_dir: Path, allow_inside_input: bool = False) -> list[ScanSource]:
    """The scans under ``input_path``, once ``out_dir`` is known to be a writable folder outside it.

    Creates ``out_dir``. An output folder inside the input folder is refused unless
    ``allow_inside_input`` (its results would be found as scans next time).

    Raises:
        SettingError: a missing input, no scans, an output folder inside the input or not writable.
    """
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.exists():
        raise SettingError("input", f"{input_path} does not exist")
    root, out = input_path.resolve(), out_dir.resolve()
    if input_path.is_dir() and not allow_inside_input and (out == root or root in out.parents):
        raise SettingError("output", f"output folder {out_dir} is inside the input folder {input_path}; choose a "
                            "folder outside it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SettingError("output", f"cannot create output folder {out_dir} ({error.strerror})") from None
    if not os.access(out_dir, os.W_OK):
        raise SettingError("output", f"output folder {out_dir} is not writable")
    scans = find_scans(input_path, exclude=[out_dir])
    if not scans:
        raise SettingError("input", f"no scans found under {input_path} ({SCAN_KINDS})")
    return scans


@dataclass
class ScansWritten:
    """What :func:`run_scans` did and wrote.

    Attributes:
        succeeded: scans finished (computed now or found done).
        failed: scans that failed.
        summary: the ``summary.csv`` written.
        index: the ``index.html`` written, ``None`` without previews.
        best: the ``summary.csv`` row of the best-scoring finished scan, ``None`` when none finished.
    """

    succeeded: int
    failed: int
    summary: Path
    index: Path | None = None
    best: dict | None = None


@dataclass
class FolderRun:
    """What a folder run did.

    Attributes:
        succeeded: scans finished (computed now or found done).
        failed: scans that failed (each logged and listed in the summary).
        threshold: the threshold on the maps that made the masks.
        cohort: what the reports record of the cohort (:meth:`CohortMaps.report`), ``None`` for a plain run.
        scans: what :func:`run_scans` wrote (summary, index, best-scoring scan).
    """

    succeeded: int
    failed: int
    threshold: float
    cohort: dict | None = None
    scans: ScansWritten | None = None


def run_folder(
    model: VisualAD,
    scans: Sequence[ScanSource],
    out_dir: Path,
    settings: RunSettings,
    *,
    head_sha256: str | None = None,
    cohort: CohortSettings | None = None,
    inferer: SliceInferer | None = None,
    after_scan: Callable[[ScanResult, dict], None] | None = None,
    where: Path | str = "",
) -> FolderRun:
    """Run every scan of ``scans`` and write its outputs into ``out_dir``.

    Args:
        model: the model, on its device.
        scans: the scans (:func:`find_folder_scans`).
        out_dir: output folder.
        settings: the run's settings.
        head_sha256: sha256 of the head file (recorded), ``None`` for an untrained head.
        cohort: score every scan against the others (when it applies to this many scans).
        inferer: the slice inferer (default ``settings.inferer(model)``).
        after_scan: called with each scan's result and report once its outputs are written; what it
            raises fails the scan (e.g. a label volume on another grid).
        where: the input, named in the log.
    """
    model.eval()
    inferer = inferer or settings.inferer(model)
    maps = None
    if cohort is not None and cohort.applies_to(len(scans)):
        settings, maps = _prepare_cohort(model, list(scans), settings, cohort, inferer, out_dir)

    def process(source: ScanSource) -> dict:
        network = maps.network_for(source) if maps is not None else None
        result = run_scan(model, source, settings, inferer, network)
        report = write_scan_outputs(model, result, out_dir, settings, head_sha256, cohort_report(maps, settings))
        if after_scan is not None:
            after_scan(result, report)
        return report

    written = run_scans(list(scans), out_dir, process, overwrite=settings.overwrite or maps is not None,
                        progress=settings.progress, where=where, preview=settings.preview)
    return FolderRun(written.succeeded, written.failed, settings.mask_threshold(model),
                     None if maps is None else maps.report(), written)


def _prepare_cohort(model: VisualAD, scans: list[ScanSource], settings: RunSettings, cohort: CohortSettings,
                    inferer: SliceInferer, work_dir: Path) -> tuple[RunSettings, CohortMaps]:
    """The settings (cohort threshold unless the user's) and fused maps of a cohort run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("cohort scoring compares every scan with every other: run it in one process, not torchrun")
    if settings.threshold is None:
        settings = replace(settings, threshold=COHORT_THRESHOLD)
    return settings, CohortMaps.build(model, scans, inferer, cohort, work_dir, settings.window)


def cohort_report(cohort: CohortMaps | None, settings: RunSettings) -> dict | None:
    """The report keys of a cohort run (``None`` for a plain run)."""
    if cohort is None:
        return None
    rule = cohort.report()["threshold_rule"]
    return {"cohort": cohort.report(), "threshold_source": rule if settings.threshold == COHORT_THRESHOLD else "user"}


def _summary_row(source: ScanSource, report: dict) -> dict:
    """The ``summary.csv`` row of a finished scan."""
    return {
        "scan": source.name, "status": "ok", "score_max_slice": report["scores"]["max_slice_score"],
        "score_top1pct": report["scores"]["top1pct_mean"], "anomalous_voxels": report["anomalous_voxels"],
        "kind": source.kind, "modality": source.modality, "shape": "x".join(map(str, report["shape"])),
        "seconds": report["seconds"]["total"], "preview": report["outputs"].get("preview", ""), "error": "",
        "source": str(source.path),
    }


def _failed_row(source: ScanSource, error: Exception) -> dict:
    """Log a scan's failure (the traceback too, for an error of an unexpected kind); its ``summary.csv`` row."""
    known = isinstance(error, (ScanLoadError, ValueError, OSError, RuntimeError))
    reason = error.reason if isinstance(error, ScanLoadError) else f"{type(error).__name__}: {error}"
    logger.error("%s: failed: %s", getattr(error, "path", source.path), reason, exc_info=not known)
    return {"scan": source.name, "status": "failed", "kind": source.kind, "modality": source.modality,
            "error": reason, "source": str(source.path)}


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


def run_scans(
    scans: list[ScanSource],
    out_dir: Path,
    process: Callable[[ScanSource], dict],
    *,
    overwrite: bool = False,
    progress: bool = True,
    where: Path | str = "",
    preview: bool = False,
) -> ScansWritten:
    """Run ``process`` (which writes a scan's outputs and returns its report) over ``scans``; write the summary.

    Scans whose report exists (readable, with every output it lists, the preview PNG too when
    ``preview``) are skipped unless ``overwrite``; a scan that raises is logged, its partial
    outputs removed, and the run goes on. With ``preview`` the run's ``index.html`` is written
    beside the summary. Under ``torchrun`` each process takes every ``WORLD_SIZE``-th scan and
    writes ``summary_rank<r>.csv`` (and ``index_rank<r>.html``).
    """
    if not scans:
        logger.error("no scans found under %s (%s)", where, SCAN_KINDS)
        return ScansWritten(0, 1, out_dir / "summary.csv")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    total, scans = len(scans), scans[rank::world]
    if not scans:
        logger.info("rank %d of %d: no scan left for this process (%d scans in all)", rank, world, total)
    rows, outputs, failed = [], {}, 0
    for source in tqdm(scans, desc="scans", unit="scan", disable=not progress):
        paths = output_paths(out_dir, source.name, source.kind == "dicom", preview)
        outputs[source.name] = {key: path.name for key, path in paths.items()}
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
            rows.append(_failed_row(source, error))
    rows.sort(key=lambda row: (row["status"] != "ok", -(row.get("score_top1pct") or 0.0)))
    suffix = "" if world == 1 else f"_rank{rank}"
    summary = write_summary_csv(rows, out_dir / f"summary{suffix}.csv", fieldnames=SUMMARY_FIELDS)
    index = (write_run_index(rows, outputs, f"visualad-med infer: {where}", out_dir / f"index{suffix}.html",
                             summary.name) if preview else None)
    succeeded = len(rows) - failed
    logger.info("%d scans succeeded, %d failed; summary in %s", succeeded, failed, summary)
    return ScansWritten(succeeded, failed, summary, index, rows[0] if succeeded else None)
