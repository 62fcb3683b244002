"""Folder runs: every scan of a folder read, through the model (:mod:`~visualad_med.inference.scan`) and written
(:mod:`~visualad_med.inference.outputs`).

One :func:`run_folder` serves ``visualad-med infer``, the bundle's inference workflow and volume
evaluation. It holds the output folder's lock (:mod:`visualad_med.io.folder_lock`: a second run on
the same folder is refused) and first removes the temporaries of dead writers. A scan whose report
says it is done with the same input and settings (:mod:`visualad_med.inference.resume`) is skipped,
so an interrupted run resumes; a failing scan is logged with its path and reason, its partial
outputs are removed (what cannot be removed is logged), and the run goes on; ``summary.csv`` lists
every scan, sorted by scan score, and with previews ``index.html`` shows them in that order with
their quick looks and links to their files. Work overlaps across scans: the next scan is read
while the model runs on the current one, and the previous scan's outputs are written meanwhile (at
most one scan reading, one in the model, one writing, so memory stays that of three scans). Under
``torchrun`` each process takes every ``WORLD_SIZE``-th scan. A cohort run
(:mod:`visualad_med.inference.cohort`) first makes sure every scan has its features in the store
(each rank its share, then a barrier), then scores and writes scan by scan like a plain run; a
finished scan is skipped when its cohort candidates did not change either.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from visualad_med.errors import SettingError
from visualad_med.io.atomic import remove_stale_temporaries
from visualad_med.io.folder_lock import lock_output_folder
from visualad_med.io import ScanLoadError, ScanSource, find_scans, write_summary_csv
from visualad_med.io.run_index import write_run_index
from visualad_med.model.cohort import CohortSettings
from visualad_med.model.visualad import VisualAD

from .cohort import CohortScoring
from .distributed import rank_world
from .feature_store import STORE_FOLDER, FeatureStore
from .outputs import INDEX_LINKS, output_paths, write_scan_outputs
from .scan import LoadedScan, ScanResult, infer_scan, load_for_run
from .resume import input_identity, settings_identity, why_not_done
from .settings import RunSettings

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
        best: the summary row (with its ``outputs``) of the best-scoring finished scan, ``None`` when none finished.
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
        scans: what :func:`run_scans` did and wrote (counts, summary, index, best-scoring scan).
        threshold: the threshold on the maps that made the masks.
        cohort: what the reports record of the cohort (:meth:`CohortScoring.report`), ``None`` for a plain run.
    """

    scans: ScansWritten
    threshold: float
    cohort: dict | None = None

    @property
    def succeeded(self) -> int:
        """Scans finished (computed now or found done)."""
        return self.scans.succeeded

    @property
    def failed(self) -> int:
        """Scans that failed (each logged and listed in the summary)."""
        return self.scans.failed


def run_folder(
    model: VisualAD,
    scans: Sequence[ScanSource],
    out_dir: Path,
    settings: RunSettings,
    *,
    head_sha256: str | None = None,
    cohort: CohortSettings | None = None,
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
        after_scan: called with each scan's result and report once its outputs are written; what it
            raises fails the scan (e.g. a label volume on another grid).
        where: the input, named in the log.

    Raises:
        SettingError: another run holds ``out_dir``'s lock.
    """
    started = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with lock_output_folder(out_dir, *rank_world()):
        remove_stale_temporaries(out_dir, older_than=started)
        return _run_folder_locked(model, scans, out_dir, settings, head_sha256, cohort, after_scan, where)


def _run_folder_locked(model: VisualAD, scans: Sequence[ScanSource], out_dir: Path, settings: RunSettings,
                       head_sha256: str | None, cohort: CohortSettings | None,
                       after_scan: Callable[[ScanResult, dict], None] | None, where: Path | str) -> FolderRun:
    """:func:`run_folder` once the output folder is locked."""
    model.eval()
    inferer = settings.inferer(model)
    scoring = None
    if cohort is not None and cohort.applies_to(len(scans)):
        store = FeatureStore(Path(settings.feature_store) if settings.feature_store else out_dir / STORE_FOLDER)
        if store.folder.is_dir():
            remove_stale_temporaries(store.folder, older_than=time.time())
        scoring = CohortScoring.prepare(model, list(scans), settings, cohort, inferer, store, head_sha256)
        if settings.threshold is None:
            settings = replace(settings, threshold=scoring.threshold, threshold_rule=scoring.report()["threshold_rule"])

    run_key = settings_identity(model, settings, head_sha256, inferer.precision)
    identities: dict[str, dict] = {}

    def identity(source: ScanSource) -> dict:
        """The scan's identity, hashed once: by the resume check, else before the scan is read."""
        if source.name not in identities:
            known = scoring.inputs.get(source.name) if scoring is not None else None
            identities[source.name] = {"input": known if known is not None else input_identity(source),
                                       "settings": run_key}
            if scoring is not None:
                identities[source.name]["cohort"] = scoring.identity(source.name)
        return identities[source.name]

    def load(source: ScanSource) -> LoadedScan:
        identity(source)
        if scoring is not None and source.name in scoring.failed:
            raise ScanLoadError(source.path, f"left out of the cohort: {scoring.failed[source.name]}")
        return load_for_run(source, settings)

    def infer(loaded: LoadedScan) -> ScanResult:
        if scoring is not None:
            return scoring.infer(loaded, settings, inferer, time.perf_counter())
        return infer_scan(model, loaded, settings, inferer)

    def write(result: ScanResult, paths: dict[str, Path]) -> dict:
        extra = {**({} if scoring is None else {"cohort": scoring.report()}),
                 "identity": identities.pop(result.scan.source.name)}
        report = write_scan_outputs(model, result, paths, settings, head_sha256, extra)
        if after_scan is not None:
            after_scan(result, report)
        return report

    written = run_scans(list(scans), out_dir, ScanSteps(load, infer, write), overwrite=settings.overwrite,
                        progress=settings.progress, where=where, identity=identity, preview=settings.preview)
    return FolderRun(written, settings.mask_threshold(model), None if scoring is None else scoring.report())


def _summary_row(source: ScanSource, report: dict) -> dict:
    """The ``summary.csv`` row of a finished scan (``outputs``: its files by key, for the index, not a column).

    ``error`` names the outputs not written and why.
    """
    not_written = report.get("not_written") or {}
    return {
        "scan": source.name, "status": "ok", "score_max_slice": report["scores"]["max_slice_score"],
        "score_top1pct": report["scores"]["top1pct_mean"], "anomalous_voxels": report["anomalous_voxels"],
        "kind": source.kind, "modality": source.modality, "shape": "x".join(map(str, report["shape"])),
        "seconds": report["seconds"]["total"], "preview": report["outputs"].get("preview", ""),
        "source": str(source.path),
        "error": "; ".join(f"{key} not written: {why}" for key, why in not_written.items()),
        "outputs": report["outputs"],
    }


def _failed_row(source: ScanSource, error: Exception) -> dict:
    """Log a scan's failure (the traceback too, for an error of an unexpected kind); its ``summary.csv`` row."""
    known = isinstance(error, (ScanLoadError, ValueError, OSError, RuntimeError))
    reason = error.reason if isinstance(error, ScanLoadError) else f"{type(error).__name__}: {error}"
    logger.error("%s: failed: %s", getattr(error, "path", source.path), reason, exc_info=not known)
    return {"scan": source.name, "status": "failed", "kind": source.kind, "modality": source.modality,
            "error": reason, "source": str(source.path)}


def _remove_outputs(paths: dict[str, Path]) -> None:
    """Remove a failed scan's outputs; what cannot be removed is logged, never raised (the run goes on)."""
    for path in paths.values():
        try:
            path.unlink(missing_ok=True)
        except (OSError, ValueError) as error:
            logger.warning("%s: output of a failed scan not removed (%s)", path, error)


def _done_row(source: ScanSource, paths: dict[str, Path], identity: dict | None) -> dict | None:
    """The ``summary.csv`` row of a scan found done (logged), ``None`` (the reason logged) to run it."""
    report, why = why_not_done(paths, identity)
    if report is not None:
        try:
            row = _summary_row(source, report)
        except (KeyError, TypeError, AttributeError) as error:
            why = f"does not hold what a summary needs ({type(error).__name__}: {error}); redoing the scan"
        else:
            logger.info("%s: already done (%s exists), skipped; --overwrite redoes it", source.name,
                        paths["report"].name)
            return row
    if why is not None:
        logger.warning("%s: %s %s", source.name, paths["report"].name, why)
    return None


class ScanSteps(NamedTuple):
    """The three steps of one scan, which :func:`run_scans` overlaps across scans.

    Attributes:
        load: source -> loaded scan; runs in a reader thread, one scan ahead of the model.
        infer: loaded scan -> result; runs in the calling thread (the model).
        write: (result, output paths by key) -> report; writes the scan's outputs (report last) in a writer
            thread while the model runs on the next scan.
    """

    load: Callable[[ScanSource], Any]
    infer: Callable[[Any], Any]
    write: Callable[[Any, dict[str, Path]], dict]


def run_scans(
    scans: list[ScanSource],
    out_dir: Path,
    steps: ScanSteps,
    *,
    overwrite: bool = False,
    progress: bool = True,
    where: Path | str = "",
    identity: Callable[[ScanSource], dict] | None = None,
    preview: bool = False,
) -> ScansWritten:
    """Run ``steps`` over ``scans``, overlapped (see :class:`ScanSteps`); write the summary.

    Scans found done (:func:`~visualad_med.inference.resume.why_not_done`: a report of this
    schema, its outputs present, the preview PNG too when ``preview``, the same ``identity(source)``
    when given) are skipped unless ``overwrite``; a scan whose step raises is logged, its partial
    outputs removed, and the run goes on. With ``preview`` the run's ``index.html`` is written
    beside the summary. Under ``torchrun`` each process takes every ``WORLD_SIZE``-th scan and
    writes ``summary_rank<r>.csv`` (and ``index_rank<r>.html``).
    """
    if not scans:
        logger.error("no scans found under %s (%s)", where, SCAN_KINDS)
        return ScansWritten(0, 1, out_dir / "summary.csv")
    rank, world = rank_world()
    total, scans = len(scans), scans[rank::world]
    if not scans:
        logger.info("rank %d of %d: no scan left for this process (%d scans in all)", rank, world, total)
    outputs = {source.name: output_paths(out_dir, source.name, source.kind == "dicom", preview) for source in scans}
    rows, todo = _resume(scans, outputs, overwrite, identity)
    rows += _run_overlapped(todo, outputs, steps, progress)
    rows.sort(key=lambda row: (row["status"] != "ok", -(row.get("score_top1pct") or 0.0)))
    suffix = "" if world == 1 else f"_rank{rank}"
    columns = [{key: value for key, value in row.items() if key in SUMMARY_FIELDS} for row in rows]
    summary = write_summary_csv(columns, out_dir / f"summary{suffix}.csv", fieldnames=SUMMARY_FIELDS)
    files = {row["scan"]: row["outputs"] for row in rows if row["status"] == "ok"}
    index = (write_run_index(columns, files, INDEX_LINKS, f"visualad-med infer: {where}",
                             out_dir / f"index{suffix}.html", summary.name) if preview else None)
    failed = sum(row["status"] != "ok" for row in rows)
    logger.info("%d scans succeeded, %d failed; summary in %s", len(rows) - failed, failed, summary)
    return ScansWritten(len(rows) - failed, failed, summary, index, rows[0] if failed < len(rows) else None)


def _resume(scans: list[ScanSource], outputs: dict[str, dict[str, Path]], overwrite: bool,
            identity: Callable[[ScanSource], dict] | None) -> tuple[list[dict], list[ScanSource]]:
    """The summary rows of scans already done (or failing their check), and the scans left to do."""
    rows, todo = [], []
    for source in scans:
        try:
            paths = outputs[source.name]
            reported = not overwrite and paths["report"].is_file()  # no report: the scan is hashed when it is read
            found = None if overwrite else _done_row(source, paths, identity(source) if identity and reported else None)
        except Exception as error:  # one scan's failure, whatever its kind, must not stop the run
            rows.append(_failed_row(source, error))
            continue
        if found is not None:
            rows.append(found)
        else:
            todo.append(source)
    return rows, todo


def _run_overlapped(todo: list[ScanSource], outputs: dict[str, dict[str, Path]], steps: ScanSteps,
                    progress: bool) -> list[dict]:
    """The summary rows of ``todo``, read one scan ahead and written one scan behind the model."""
    rows = []

    def failed(source: ScanSource, error: Exception) -> dict:
        _remove_outputs(outputs[source.name])
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
            written = (source, writer.submit(steps.write, result, outputs[source.name]))
        if written is not None:
            rows.append(finish(*written))
    return rows
