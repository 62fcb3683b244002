"""The outputs of a scan, declared once (``inference/outputs.py``): what each run writes follows from it."""

from __future__ import annotations

from pathlib import Path

from visualad_med.inference.outputs import INDEX_LINKS, SCAN_OUTPUTS, output_paths


def test_report_is_declared_last_and_every_key_and_suffix_once():
    keys, suffixes = [o.key for o in SCAN_OUTPUTS], [o.suffix for o in SCAN_OUTPUTS]
    assert keys[-1] == "report" and SCAN_OUTPUTS[-1].write is None
    assert len(set(keys)) == len(keys) and len(set(suffixes)) == len(suffixes)
    assert all(o.write is not None for o in SCAN_OUTPUTS[:-1])


def test_paths_follow_the_kind_of_scan_and_the_run():
    plain = output_paths(Path("out"), "s", dicom=False)
    assert list(plain) == ["anomaly", "mask", "segmentation", "report"]
    assert plain["anomaly"] == Path("out/s_anomaly.nii.gz") and plain["report"] == Path("out/s_report.json")
    everything = output_paths(Path("out"), "s", dicom=True, preview=True)
    assert list(everything) == ["anomaly", "mask", "segmentation", "dicom_seg", "preview", "report"]
    assert everything["dicom_seg"].name == "s_seg.dcm" and everything["preview"].name == "s_preview.png"


def test_the_index_links_every_file_but_the_picture_it_shows():
    assert [key for key, _ in INDEX_LINKS] == ["anomaly", "mask", "segmentation", "dicom_seg", "report"]
