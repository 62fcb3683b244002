"""Folder runs: every scan of a folder through :func:`~visualad_med.inference.scan.run_scan` and its writers.

One :func:`run_folder` serves ``visualad-med infer``, the bundle's inference workflow and volume
evaluation. A scan whose report exists is done and skipped (so an interrupted run resumes); a
failing scan is logged with its path and reason, its partial outputs are removed, and the run
goes on; ``summary.csv`` lists every scan, sorted by scan score. Work overlaps across scans: the
next scan is read while the model runs on the current one, and the previous scan's outputs are
written meanwhile (at most one scan reading, one in the model, one writing, so memory stays that
of three scans). Under ``torchrun`` each process takes every ``WORLD_SIZE``-th scan. A cohort run
(:mod:`visualad_med.inference.cohort`) scores every scan against the others and redoes them all,
in one process.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from visualad_med.errors import SettingError
from visualad_med.io import ScanLoadError, ScanSource, find_scans, write_summary_csv
from visualad_med.model.cohort import COHORT_THRESHOLD, CohortSettings
from visualad_med.model.visualad import VisualAD

from .cohort import CohortMaps
from .scan import LoadedScan, ScanResult, infer_scan, load_for_run, output_paths, write_scan_outputs
from .settings import RunSettings
from .slices import SliceInferer

logger = logging.getLogger(__name__)

SCAN_KINDS = "DICOM series, .nii/.nii.gz, .nrrd, .mha/.mhd"
SUMMARY_FIELDS = ("scan", "status", "score_max_slice", "score_top1pct", "anomalous_voxels", "kind", "modality",
                  "shape", "seconds", "error", "source")


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
class FolderRun:
    """What a folder run did.

    Attributes:
        succeeded: scans finished (computed now or found done).
        failed: scans that failed (each logged and listed in the summary).
        threshold: the threshold on the maps that made the masks.
        cohort: what the reports record of the cohort (:meth:`CohortMaps.report`), ``None`` for a plain run.
    """

    succeeded: int
    failed: int
    threshold: float
    cohort: dict | None = None


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

    def infer(loaded: LoadedScan) -> ScanResult:
        network = maps.network_for(loaded.scan.source) if maps is not None else None
        return infer_scan(model, loaded, settings, inferer, network)

    def write(result: ScanResult) -> dict:
        report = write_scan_outputs(model, result, out_dir, settings, head_sha256, cohort_report(maps, settings))
        if after_scan is not None:
            after_scan(result, report)
        return report

    steps = ScanSteps(lambda source: load_for_run(source, settings), infer, write)
    succeeded, failed = run_scans(list(scans), out_dir, steps, overwrite=settings.overwrite or maps is not None,
                                  progress=settings.progress, where=where)
    return FolderRun(succeeded, failed, settings.mask_threshold(model), None if maps is None else maps.report())


def _prepare_cohort(model: VisualAD, scans: list[ScanSource], settings: RunSettings, cohort: CohortSettings,
                    inferer: SliceInferer, work_dir: Path) -> tuple[RunSettings, CohortMaps]:
    """The settings (cohort threshold unless the user's) and fused maps of a cohort run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SettingError("scoring", "cohort scoring compares every scan with every other and runs in one process, "
                           "not under torchrun")
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
        "seconds": report["seconds"]["total"], "error": "", "source": str(source.path),
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


class ScanSteps(NamedTuple):
    """The three steps of one scan, which :func:`run_scans` overlaps across scans.

    Attributes:
        load: source -> loaded scan; runs in a reader thread, one scan ahead of the model.
        infer: loaded scan -> result; runs in the calling thread (the model).
        write: result -> report; writes the scan's outputs (report last) in a writer thread while the
            model runs on the next scan.
    """

    load: Callable[[ScanSource], Any]
    infer: Callable[[Any], Any]
    write: Callable[[Any], dict]


def run_scans(
    scans: list[ScanSource],
    out_dir: Path,
    steps: ScanSteps,
    *,
    overwrite: bool = False,
    progress: bool = True,
    where: Path | str = "",
) -> tuple[int, int]:
    """Run ``steps`` over ``scans``, overlapped (see :class:`ScanSteps`); write the summary.

    Scans whose report exists (readable, with every output it lists) are skipped unless
    ``overwrite``; a scan whose step raises is logged, its partial outputs removed, and the run goes
    on. Under ``torchrun`` each process takes every ``WORLD_SIZE``-th scan and writes
    ``summary_rank<r>.csv``. Returns ``(succeeded, failed)``.
    """
    if not scans:
        logger.error("no scans found under %s (%s)", where, SCAN_KINDS)
        return 0, 1
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    total, scans = len(scans), scans[rank::world]
    if not scans:
        logger.info("rank %d of %d: no scan left for this process (%d scans in all)", rank, world, total)
    rows, todo = _resume(scans, out_dir, overwrite)
    rows += _run_overlapped(todo, out_dir, steps, progress)
    rows.sort(key=lambda row: (row["status"] != "ok", -(row.get("score_top1pct") or 0.0)))
    name = "summary.csv" if world == 1 else f"summary_rank{rank}.csv"
    write_summary_csv(rows, out_dir / name, fieldnames=SUMMARY_FIELDS)
    failed = sum(row["status"] != "ok" for row in rows)
    logger.info("%d scans succeeded, %d failed; summary in %s", len(rows) - failed, failed, out_dir / name)
    return len(rows) - failed, failed


def _resume(scans: list[ScanSource], out_dir: Path, overwrite: bool) -> tuple[list[dict], list[ScanSource]]:
    """The summary rows of scans already done, and the scans left to do."""
    rows, todo = [], []
    for source in scans:
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
        todo.append(source)
    return rows, todo


def _run_overlapped(todo: list[ScanSource], out_dir: Path, steps: ScanSteps, progress: bool) -> list[dict]:
    """The summary rows of ``todo``, read one scan ahead and written one scan behind the model."""
    rows = []

    def failed(source: ScanSource, error: Exception) -> dict:
        _remove_outputs(output_paths(out_dir, source.name, source.kind == "dicom"))
        return _failed_row(source, error)

    def finish(source: ScanSource, writing: Future) -> dict:
        try:
            return _summary_row(source, writing.result())
        except Exception as error:  # one scan's failure, whatever its kind, must not stop the run
            return failed(source, error)

    with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="writer") as writer:
        loading = reader.submit(steps.load, todo[0]) if todo else None
        written: tuple[ScanSource, Future] | None = None
        for k, source in enumerate(tqdm(todo, desc="scans", unit="scan", disable=not progress)):
            current, loading = loading, reader.submit(steps.load, todo[k + 1]) if k + 1 < len(todo) else None
            try:
                result = steps.infer(current.result())
            except Exception as error:  # as above
                rows.append(failed(source, error))
                continue
            if written is not None:
                rows.append(finish(*written))
            written = (source, writer.submit(steps.write, result))
        if written is not None:
            rows.append(finish(*written))
    return rows
