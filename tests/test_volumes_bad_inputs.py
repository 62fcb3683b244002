"""Every broken input either is left out by discovery (logged) or raises ScanLoadError naming file and reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from bad_inputs import BadInput, build_bad_inputs

from visualad_med.io import ScanLoadError, ScanSource, find_scans, load_scan


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[BadInput]:
    return build_bad_inputs(tmp_path_factory.mktemp("bad"))


def _outcome(case: BadInput, caplog: pytest.LogCaptureFixture) -> str | None:
    """``None`` when ``case`` is reported as documented, else what happened instead."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="visualad_med.io"):
        scans = find_scans(case.path)
    if case.skipped:
        if scans or case.reason not in caplog.text:
            return f"expected a logged skip ({case.reason!r}), found {[s.name for s in scans]}"
        return None
    if len(scans) != 1:
        return f"expected one scan, found {[s.name for s in scans]}"
    try:
        load_scan(scans[0])
    except ScanLoadError as error:
        if error.path != case.culprit or case.reason not in error.reason:
            return f"ScanLoadError({error.path}, {error.reason!r}), expected ({case.culprit}, ...{case.reason!r}...)"
        return None
    return "loaded without error"


def test_every_bad_input_is_reported(bad_inputs: list[BadInput], caplog: pytest.LogCaptureFixture):
    assert len(bad_inputs) >= 15
    assert len({case.name for case in bad_inputs}) == len(bad_inputs)
    failures = {case.name: problem for case in bad_inputs if (problem := _outcome(case, caplog))}
    assert not failures, failures


def test_single_slice_loaded_directly_is_an_error(bad_inputs: list[BadInput]):
    (case,) = [c for c in bad_inputs if c.name == "dicom_single_slice"]
    (path,) = sorted(case.path.iterdir())
    with pytest.raises(ScanLoadError, match="a single 2D slice") as caught:
        load_scan(ScanSource("single", "dicom", (path,)))
    assert caught.value.path == path
