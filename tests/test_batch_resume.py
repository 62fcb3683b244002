"""One bad scan never stops a batch, and resume trusts only what still matches (issue items 3 and 5).

Each test writes its own small scans, runs ``visualad_med.apps.cli.main(["infer", ...])`` with the
tiny random model the way a user runs the command, and checks the exit code, that the log names
the file and the reason, that the other scans succeed and that every input is byte-identical
afterwards. Other processes (a lock holder, a writer killed by ``kill -9``) are real subprocesses.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bad_inputs import write_dicom_series
from test_hostile_inputs import MODEL, cli, good_nifti, slices, snapshot

from visualad_med.inference.resume import REPORT_SCHEMA

REPO = Path(__file__).resolve().parents[1]
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def infer(source: Path, out: Path, *options: str) -> int:
    return cli("infer", source, out, *options, *MODEL)


def summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        return {row["scan"]: row for row in csv.DictReader(handle)}


def report(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}_report.json").read_text(encoding="utf-8"))


def python(code: str, *args: str | Path) -> subprocess.Popen:
    """``python -c CODE ARGS`` with this checkout first on the path, its stdout piped."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True, env=env)


# --- item 3: one series never stops the batch -----------------------------------------------------------------


def test_hostile_series_headers_and_a_failed_cleanup_do_not_stop_the_batch(tmp_path, caplog):
    scans = tmp_path / "scans"
    write_dicom_series(scans / "nul", slices(), series_uid="1.2.3.4\x0056.7", description="nul")
    write_dicom_series(scans / "slash", slices(), series_uid="1.2.3.4/56/78.9", description="../../" + "é" * 200)
    write_dicom_series(scans / "dotted", slices(), series_uid="1.2.3.4.56.78.9", description="../../" + "é" * 200)
    no_study = write_dicom_series(scans / "nostudy", slices(), description="nostudy")
    for path in no_study:
        ds = pydicom.dcmread(path)
        del ds.StudyInstanceUID
        ds.save_as(path, enforce_file_format=True)
    good_nifti(scans / "good.nii.gz")
    blocked = good_nifti(scans / "blocked.nii.gz", seed=1)
    out = tmp_path / "out"
    (out / "blocked_anomaly.nii.gz").mkdir(parents=True)  # an output path taken by a folder: write and clean-up fail
    (out / "blocked_anomaly.nii.gz" / "keep").write_text("not ours")
    before = snapshot(scans)

    assert infer(scans, out) == 1
    rows = summary(out)
    assert rows["blocked"]["status"] == "failed" and "IsADirectoryError" in rows["blocked"]["error"]
    assert f"{blocked}: failed: IsADirectoryError: [Errno 21] Is a directory" in caplog.text
    assert (f"{out / 'blocked_anomaly.nii.gz'}: output of a failed scan not removed ([Errno 21] Is a directory"
            in caplog.text)
    names = {name for name, row in rows.items() if row["status"] == "ok"}
    assert names >= {"good", "nul_1234567"} and len(names) == 5
    twins = sorted(name for name in names if name.startswith("scan_23456789_"))  # nothing safe left of "../../éé"
    assert len(twins) == 2 and twins[0] != twins[1]
    assert all(SAFE_NAME.match(name) and len(name) <= 64 + 9 + 7 for name in names)
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["blocked_anomaly.nii.gz"]
    assert all(SAFE_NAME.match(p.name) for p in out.iterdir())

    study = next(name for name in names if name.startswith("nostudy"))
    reason = (f"{no_study[0]} has no StudyInstanceUID, which a DICOM SEG copies from its source series")
    assert f"{study}: {study}_seg.dcm not written: {reason}; the other outputs are written" in caplog.text
    assert report(out, study)["not_written"] == {"dicom_seg": reason}
    assert rows[study]["error"] == f"dicom_seg not written: {reason}"
    assert all((out / f"{study}_{kind}").is_file() for kind in ("anomaly.nii.gz", "mask.nii.gz", "mask.seg.nrrd"))
    assert not (out / f"{study}_seg.dcm").exists()
    assert snapshot(scans) == before

    caplog.clear()  # the scan without a SEG is done: resume skips it instead of redoing it every time
    with caplog.at_level(logging.INFO):
        assert infer(scans, out) == 1
    assert f"{study}: already done ({study}_report.json exists), skipped" in caplog.text
    assert snapshot(scans) == before


# --- item 5: resume trusts only what still matches --------------------------------------------------------------


def nii(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """An uncompressed int16 NIfTI (its size depends on the shape only)."""
    data = np.random.default_rng(seed).integers(0, 400, size=shape, dtype=np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.8, 1.5, 1.0])), path)
    return path


def test_resume_redoes_a_replaced_scan_and_keeps_a_touched_one(tmp_path, caplog):
    scans = tmp_path / "scans"
    scans.mkdir()
    a, b = nii(scans / "a.nii", (20, 24, 6), 0), nii(scans / "b.nii", (20, 24, 6), 1)
    out = tmp_path / "out"
    assert infer(scans, out) == 0
    assert report(out, "a")["report_schema"] == REPORT_SCHEMA
    assert report(out, "a")["identity"]["input"][0]["file"] == "a.nii"

    size = a.stat().st_size
    nii(a, (16, 20, 5), 2)  # replaced: same name, other shape
    before = snapshot(scans)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(scans, out) == 0
    assert f"a: a_report.json no longer matches: a.nii has another size ({size} then, {a.stat().st_size} now)" in (
        caplog.text)
    assert "b: already done (b_report.json exists), skipped" in caplog.text
    assert report(out, "a")["shape"] == [16, 20, 5] and summary(out)["a"]["shape"] == "16x20x5"
    assert snapshot(scans) == before

    stamp = (out / "b_report.json").stat().st_mtime_ns
    os.utime(b, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched only: same bytes, newer mtime
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(scans, out) == 0
    assert "b: already done (b_report.json exists), skipped" in caplog.text
    assert (out / "b_report.json").stat().st_mtime_ns == stamp

    old = report(out, "b")["identity"]["input"][0]["header_sha256"]
    nii(b, (20, 24, 6), 3)  # same size, other pixels in the first 64 KiB
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(scans, out) == 0
    new = report(out, "b")["identity"]["input"][0]["header_sha256"]
    assert f"b: b_report.json no longer matches: b.nii has another header sha256 ({old} then, {new} now)" in (
        caplog.text)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(scans, out, "--threshold", "0.25") == 0
    assert "a: a_report.json no longer matches: setting threshold was 0.0, is 0.25 now; redoing" in caplog.text
    assert report(out, "a")["threshold"] == 0.25


def test_a_report_of_another_schema_is_redone_not_a_traceback(tmp_path, caplog):
    scans = tmp_path / "scans"
    good_nifti(scans / "a.nii.gz")
    good_nifti(scans / "b.nii.gz", seed=1)
    out = tmp_path / "out"
    assert infer(scans, out) == 0
    (out / "a_report.json").write_text(json.dumps({"name": "a", "score": 0.3}))  # another tool's report
    broken = {**report(out, "b")}
    del broken["scores"]
    (out / "b_report.json").write_text(json.dumps(broken))
    before = snapshot(scans)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert infer(scans, out) == 0
    assert (f"a: a_report.json is of another schema (None, this version reads {REPORT_SCHEMA!r}); redoing the scan"
            in caplog.text)
    assert "b: b_report.json does not hold what a summary needs (KeyError: 'scores'); redoing the scan" in caplog.text
    assert "Traceback" not in caplog.text
    assert report(out, "a")["report_schema"] == REPORT_SCHEMA and "scores" in report(out, "b")
    assert [row["status"] for row in summary(out).values()] == ["ok", "ok"]
    assert snapshot(scans) == before


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from visualad_med.io.atomic import atomic_path
with atomic_path(Path(sys.argv[1])) as temporary:
    temporary.write_bytes(b"half a volume")
    print(os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporaries_of_writers_killed_by_sigkill_are_removed(tmp_path, caplog):
    scans = tmp_path / "scans"
    good_nifti(scans / "a.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    killed = python(_KILLED_WRITER, out / "a_anomaly.nii.gz")
    pid = int(killed.stdout.readline())
    assert killed.wait() == -signal.SIGKILL
    [stale] = list(out.glob(".a_anomaly.nii.gz.*.tmp.nii.gz"))
    alive = python("import time; time.sleep(120)")
    living = out / f".b_mask.nii.gz.{alive.pid}.abcd1234.tmp.nii.gz"  # a writer that is still running
    living.write_bytes(b"being written")
    past = time.time() - 60
    for path in (stale, living):
        os.utime(path, (past, past))
    before = snapshot(scans)
    try:
        with caplog.at_level(logging.INFO):
            assert infer(scans, out) == 0
    finally:
        alive.kill()
        alive.wait()
    assert f"{stale}: removed, a temporary of writer process {pid}, which is gone" in caplog.text
    assert not stale.exists() and living.exists()
    assert (out / "a_report.json").is_file()
    assert snapshot(scans) == before


_HOLDER = """
import sys, time
from pathlib import Path
from visualad_med.io.folder_lock import lock_output_folder
with lock_output_folder(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_locked_output_folder_is_refused(tmp_path, caplog):
    scans = tmp_path / "scans"
    good_nifti(scans / "a.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    holder = python(_HOLDER, out)
    before = snapshot(scans)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert infer(scans, out) == 2
    finally:
        holder.kill()
        holder.wait()
    assert (f"output folder {out} is in use by another run (pid {holder.pid}: -c {out}); wait for it to end or "
            "choose another output folder") in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [".visualad_med.lock"]
    assert snapshot(scans) == before
    assert infer(scans, out) == 0  # the holder is gone: its lock went with it
    assert (out / "a_report.json").is_file()


def test_infer_help_says_one_run_per_output_folder(capsys):
    with pytest.raises(SystemExit):
        cli("infer", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "a run locks OUTPUT/.visualad_med.lock; a second run on the same OUTPUT is refused (exit code 2)" in text
