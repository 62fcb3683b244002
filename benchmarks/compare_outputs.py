"""Are two output folders of ``visualad-med infer`` (or the bundle) the same, apart from UIDs and timestamps?

    python benchmarks/compare_outputs.py BEFORE/ AFTER/

Compares every file the two folders hold, by kind:

- ``.nii.gz``: the decompressed bytes (header and voxels; gzip's own timestamp left out);
- ``.seg.nrrd`` and other files: the bytes;
- ``.dcm``: every DICOM element except UIDs, dates, times and the content creator's clock;
- ``_report.json``: every key except the timings (``seconds``), the output folder's path read as ``OUTPUT``;
- ``summary.csv``: every column except ``seconds``.

Prints one line per file (``same`` or what differs) and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from pathlib import Path

import pydicom

VOLATILE_VRS = {"UI", "DA", "TM", "DT"}


def _dicom_elements(path: Path) -> dict:
    """Every element of a DICOM file except UIDs, dates and times, as comparable values (recursively)."""

    def flatten(dataset, prefix=""):
        values = {}
        for element in dataset:
            if element.VR in VOLATILE_VRS:
                continue
            key = f"{prefix}{element.tag}"
            if element.VR == "SQ":
                for index, item in enumerate(element.value):
                    values.update(flatten(item, f"{key}[{index}]."))
            else:
                values[key] = element.value
        return values

    return flatten(pydicom.dcmread(path))


def _report(path: Path, folder: Path) -> dict:
    """The report without its timings, its output folder's path (a cohort's feature store) written ``OUTPUT``."""
    report = json.loads(path.read_text(encoding="utf-8").replace(json.dumps(str(folder))[1:-1], "OUTPUT"))
    report.pop("seconds", None)
    return report


def _summary(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: value for key, value in row.items() if key != "seconds"} for row in csv.DictReader(handle)]


def difference(before: Path, after: Path, folders: tuple[Path, Path]) -> str | None:
    """``None`` when the two files hold the same outputs, else what differs (``folders``: the two output folders)."""
    name = before.name
    if name.endswith(".nii.gz"):
        same = gzip.decompress(before.read_bytes()) == gzip.decompress(after.read_bytes())
    elif name.endswith(".dcm"):
        old, new = _dicom_elements(before), _dicom_elements(after)
        changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
        return f"DICOM elements differ: {changed[:8]}" if changed else None
    elif name.endswith("_report.json"):
        old, new = _report(before, folders[0]), _report(after, folders[1])
        changed = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
        return f"report keys differ: {changed}" if changed else None
    elif name == "summary.csv":
        same = _summary(before) == _summary(after)
    else:
        same = before.read_bytes() == after.read_bytes()
    return None if same else "bytes differ"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    old = {p.relative_to(args.before) for p in args.before.rglob("*") if p.is_file()}
    new = {p.relative_to(args.after) for p in args.after.rglob("*") if p.is_file()}
    failures = 0
    for relative in sorted(old | new):
        if relative not in old or relative not in new:
            print(f"{relative}: only in {'after' if relative in new else 'before'}")
            failures += 1
            continue
        problem = difference(args.before / relative, args.after / relative, (args.before, args.after))
        print(f"{relative}: {problem or 'same'}")
        failures += problem is not None
    print(f"{len(old | new) - failures} of {len(old | new)} files the same")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
