"""When a scan's outputs count as done: the report's schema, its outputs, its input and its settings.

A folder run skips a scan whose ``<name>_report.json`` is of this version's schema, lists outputs
that all exist, and records the same input and the same settings as the scan has now; anything
else is redone, with the reason logged.

The input's identity is, per file, its path under the scan's folder, its size and the sha256 of
its first 64 KiB (the whole header of a DICOM slice or a NIfTI/NRRD/MetaImage file, the start of
a gzip stream). Its modification time is recorded but not compared: a file only touched, or copied
without keeping times, is not redone; a file replaced by other content is, as soon as its size or
its first 64 KiB differ. The settings are those that change the outputs: the head's sha256, the
backbone and its weights, image size, taps, scoring, map reference, planes, window, threshold,
the map's storage type and the precision the model runs at. A scan of a cohort run also records
its cohort settings and its candidates (per slice, each candidate's scan key and slice index):
it is redone when they change, e.g. when an added scan's slices become its candidates, or a
candidate scan is removed or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from visualad_med.io import ScanSource
from visualad_med.model.visualad import VisualAD

from .settings import RunSettings

REPORT_SCHEMA = "visualad_med.scan_report/3"
"""The ``report_schema`` of the reports this version writes; a report of another is not trusted."""

HEADER_BYTES = 64 * 1024
"""Bytes at the start of each file whose sha256 identifies it."""


def input_identity(source: ScanSource) -> list[dict]:
    """Per file of ``source``: its path under the scan's folder, size, modification time (ns), header sha256."""
    root = source.path if source.kind == "dicom" else source.path.parent
    identity = []
    for path in source.files:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            digest = hashlib.sha256(handle.read(HEADER_BYTES)).hexdigest()
        identity.append({"file": os.path.relpath(path, root), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                         "header_sha256": digest})
    return identity


def settings_identity(model: VisualAD, settings: RunSettings, head_sha256: str | None, precision: str) -> dict:
    """The settings of a run that change a scan's outputs, as JSON would give them back.

    ``precision`` is the autocast ``settings.precision`` resolved to on the model's device
    (``SliceInferer.precision`` of :meth:`RunSettings.inferer`): ``auto`` runs bf16 or fp32 by device.
    """
    config, chosen = model.config, settings.map_settings(model)
    key = {"head_sha256": head_sha256, "backbone": config.backbone, "backbone_sha256": config.weights_sha256,
           "image_size": config.image_size, "taps": list(config.taps), "scoring": chosen.scoring,
           "selfsim_weight": chosen.selfsim_weight, "map_reference": chosen.map_reference,
           "planes": list(settings.planes), "window": settings.window, "threshold": settings.mask_threshold(model),
           "skip_empty": settings.skip_empty, "map_dtype": settings.map_dtype,
           "precision": precision}
    return json.loads(json.dumps(key))


def why_not_done(paths: dict[str, Path], identity: dict | None) -> tuple[dict | None, str | None]:
    """``(report, None)`` for a scan done with this ``identity``, else ``(None, why)`` (``why`` ``None``: no report).

    Args:
        paths: the scan's outputs (:func:`~visualad_med.inference.outputs.output_paths`), the report last.
        identity: ``{"input": ..., "settings": ...}`` the scan has now; ``None`` compares neither.
    """
    report_path = paths["report"]
    if not report_path.is_file():
        return None, None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, f"exists but is unreadable or outputs are missing; redoing the scan ({error})"
    if not isinstance(report, dict) or report.get("report_schema") != REPORT_SCHEMA:
        found = report.get("report_schema") if isinstance(report, dict) else type(report).__name__
        return None, f"is of another schema ({found!r}, this version reads {REPORT_SCHEMA!r}); redoing the scan"
    not_written = report.get("not_written") or {}
    missing = [path.name for key, path in paths.items() if key not in not_written and not path.is_file()]
    if missing:
        return None, f"exists but is unreadable or outputs are missing; redoing the scan ({', '.join(missing)} missing)"
    if identity is not None:
        recorded = report.get("identity") or {}
        change = _input_change(recorded.get("input"), identity["input"]) or _settings_change(
            recorded.get("settings"), identity["settings"]) or _cohort_change(recorded.get("cohort"),
                                                                              identity.get("cohort"))
        if change:
            return None, f"no longer matches: {change}; redoing the scan"
    return report, None


def _cohort_change(recorded: object, now: dict | None) -> str | None:
    """How a cohort scan's settings or candidates changed (scans added, gone or changed), ``None`` if not."""
    if now is None:
        return None if recorded is None else "it was scored in a cohort, this run scores it alone"
    if not isinstance(recorded, dict):
        return "it was not scored in a cohort"
    change = _settings_change(recorded.get("settings"), now["settings"])
    if change:
        return f"cohort {change}"
    if recorded.get("candidates_sha256") != now["candidates_sha256"]:
        then, scans = set(recorded.get("candidate_scans") or []), set(now["candidate_scans"])
        added, gone = sorted(scans - then), sorted(then - scans)
        parts = [f"{label} {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                 for label, names in (("now also from", added), ("no longer from", gone)) if names]
        return f"its cohort candidates changed ({'; '.join(parts) or 'other slices of the same scans, or a scan changed'})"
    if recorded.get("scale") != now["scale"]:
        return f"the cohort's robust scale moved ({recorded.get('scale')} then, {now['scale']} now)"
    return None


def _input_change(recorded: object, now: list[dict]) -> str | None:
    """How the input's files differ from those recorded (size or header sha256), ``None`` if they do not."""
    if not isinstance(recorded, list) or not all(isinstance(item, dict) for item in recorded):
        return "the input it was made from is not recorded"
    then = {item.get("file"): item for item in recorded}
    files = {item["file"]: item for item in now}
    if set(then) != set(files):
        added, gone = sorted(set(files) - set(then)), sorted(set(then) - set(files))
        return f"the input's files changed ({len(added)} added, {len(gone)} gone: {', '.join((added + gone)[:3])})"
    for name, item in files.items():
        for field in ("size", "header_sha256"):
            if then[name].get(field) != item[field]:
                return f"{name} has another {field.replace('_', ' ')} ({then[name].get(field)} then, {item[field]} now)"
    return None


def _settings_change(recorded: object, now: dict) -> str | None:
    """The first setting that differs from the one recorded, ``None`` if none does."""
    if not isinstance(recorded, dict):
        return "the settings it was made with are not recorded"
    for key, value in now.items():
        if recorded.get(key) != value:
            return f"setting {key} was {recorded.get(key)!r}, is {value!r} now"
    return None
