"""The feature store of a cohort run: each scan's slice features on disk, reused by every later run.

Per scan ``<name>``, in the store folder (default ``OUTPUT/.features``):

- ``<name>.features.npy``: ``(S, T, N, D)`` float16 L2-normalised patch tokens of the ``S`` slices
  the model ran (``T`` layers, ``N`` patches of width ``D``), read row by row when needed;
- ``<name>.slices.npz``: the head's patch scores ``(S, N)`` float32, the global descriptors
  ``(S, D)`` float32, the array index of each slice along the sliced axis and the axis' length;
- ``<name>.cohort.npy``: the scan's cohort patch scores ``(S, N)`` float32, with ``<name>.cohort.json``
  naming the candidates they were made against (reused while those do not change);
- ``<name>.json``, written last: the entry's key (the scan's input identity and the settings that
  change its features, :func:`feature_key`) and its sizes. An entry is used only when its key is
  the one the scan has now; a scan the model could not run leaves ``<name>.failed.json`` with the
  reason, under the same key.

Every file is written to a temporary name and renamed, so a killed run leaves either a whole entry
or none. Entries of scans no longer in a run are left in place and not used.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visualad_med.io.atomic import atomic_path

STORE_SCHEMA = "visualad_med.feature_store/1"
NULL_FILE = "cohort_null.json"
"""The cohort's mask threshold, made by ``torchrun`` rank 0 for the others."""
STORE_FOLDER = ".features"
"""The store's folder under the output folder, unless a run names another."""


def feature_key(input_identity: list[dict], settings: dict) -> dict:
    """What a scan's stored features depend on: its input files (size, header sha256) and ``settings``."""
    files = [{key: item[key] for key in ("file", "size", "header_sha256")} for item in input_identity]
    return json.loads(json.dumps({"input": files, "settings": settings}))


def key_digest(key: dict) -> str:
    """A short, stable name of a feature key (sha256 of its canonical JSON, 16 hex digits)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class StoredRows:
    """The rows of an ``.npy`` array on disk, read on demand with ``os.pread``.

    Not memory-mapped: pages of a mapped file count in the process's resident memory once touched,
    so scoring a cohort against its own store through maps grew the peak RSS with the cohort (1.5 GB
    at 10 synthetic scans, 2.9 GB at 160, the store's size); read rows stay in the page cache only.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, self.dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran or not shape:
            raise ValueError(f"{self.path}: not a C-ordered array of rows")
        self.shape = tuple(shape)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array."""
        return self.shape[0] * self.row_bytes

    def rows(self, indices) -> np.ndarray:
        """``(len(indices), ...)`` rows, in the order given."""
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            for k, row in enumerate(indices):
                data = os.pread(descriptor, self.row_bytes, self.offset + int(row) * self.row_bytes)
                if len(data) != self.row_bytes:
                    raise OSError(f"{self.path}: truncated at row {row}")
                out[k] = np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])
        finally:
            os.close(descriptor)
        return out

    def read(self) -> np.ndarray:
        """The whole array."""
        return self.rows(range(self.shape[0]))


@dataclass
class ScanFeatures:
    """One scan's entry of the store.

    Attributes:
        name: the scan's name.
        digest: :func:`key_digest` of the key it was made under.
        features: ``(S, T, N, D)`` float16; rows read on demand (:class:`StoredRows`) when from the store.
        head: ``(S, N)`` float32 patch scores of the head (sum over taps).
        descriptors: ``(S, D)`` float32 normalised global descriptors.
        indices: ``(S,)`` int64 array index along the sliced axis of each slice, ascending.
        length: slices along that axis (run or not).
    """

    name: str
    digest: str
    features: np.ndarray | StoredRows
    head: np.ndarray
    descriptors: np.ndarray
    indices: np.ndarray
    length: int

    @property
    def positions(self) -> np.ndarray:
        """``(S,)`` normalised slice positions ``index / (length - 1)``."""
        return self.indices / max(1, self.length - 1)

    @property
    def nbytes(self) -> int:
        """Bytes of the entry's arrays."""
        return sum(a.nbytes for a in (self.features, self.head, self.descriptors, self.indices))


class FeatureStore:
    """The folder of scan entries (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _paths(self, name: str) -> dict[str, Path]:
        return {"features": self.folder / f"{name}.features.npy", "slices": self.folder / f"{name}.slices.npz",
                "entry": self.folder / f"{name}.json", "failed": self.folder / f"{name}.failed.json",
                "scores": self.folder / f"{name}.cohort.npy", "scores_entry": self.folder / f"{name}.cohort.json"}

    def save(self, entry: ScanFeatures, key: dict) -> None:
        """Write ``entry`` under ``key`` (a failure recorded earlier for the scan is removed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = self._paths(entry.name)
        paths["failed"].unlink(missing_ok=True)
        with atomic_path(paths["features"]) as temporary, open(temporary, "wb") as handle:
            np.save(handle, np.ascontiguousarray(entry.features, dtype=np.float16))
        with atomic_path(paths["slices"]) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, head=entry.head.astype(np.float32), descriptors=entry.descriptors.astype(np.float32),
                     indices=entry.indices.astype(np.int64), length=np.int64(entry.length))
        self._write_json(paths["entry"], {"schema": STORE_SCHEMA, "key": key, "digest": key_digest(key),
                                          "slices": int(entry.features.shape[0])})

    def save_failure(self, name: str, key: dict, reason: str) -> None:
        """Record that scan ``name`` could not be run under ``key``, and why (an entry of the scan is removed)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._paths(name)["entry"].unlink(missing_ok=True)
        self._write_json(self._paths(name)["failed"], {"schema": STORE_SCHEMA, "key": key, "reason": reason})

    def load(self, name: str, key: dict | None) -> ScanFeatures | None:
        """The entry of scan ``name`` made under ``key`` (features read on demand), ``None`` if there is none.

        ``key`` ``None`` takes the entry whatever its key (one that another ``torchrun`` rank checked).
        """
        paths = self._paths(name)
        record = self._read_json(paths["entry"])
        if record is None or (key is not None and record.get("key") != key):
            return None
        try:
            with np.load(paths["slices"]) as slices:
                arrays = {field: slices[field] for field in ("head", "descriptors", "indices", "length")}
            features = StoredRows(paths["features"])
        except (OSError, ValueError, KeyError):
            return None
        if features.shape[0] != record.get("slices") or arrays["head"].shape[0] != features.shape[0]:
            return None
        return ScanFeatures(name, record["digest"], features, arrays["head"], arrays["descriptors"],
                            arrays["indices"], int(arrays["length"]))

    def failure(self, name: str, key: dict | None) -> str | None:
        """Why scan ``name`` could not be run under ``key`` (``None``: any), ``None`` if no failure is recorded."""
        record = self._read_json(self._paths(name)["failed"])
        return record.get("reason") if record is not None and key in (None, record.get("key")) else None

    def save_scores(self, name: str, candidates_sha256: str, scores: np.ndarray) -> None:
        """Keep scan ``name``'s ``(S, N)`` cohort patch scores, made against the candidates of that digest."""
        paths = self._paths(name)
        with atomic_path(paths["scores"]) as temporary, open(temporary, "wb") as handle:
            np.save(handle, scores.astype(np.float32))
        self._write_json(paths["scores_entry"], {"schema": STORE_SCHEMA, "candidates_sha256": candidates_sha256})

    def load_scores(self, name: str, candidates_sha256: str | None) -> np.ndarray | None:
        """Scan ``name``'s cohort patch scores made against those candidates (``None``: any), or ``None``."""
        paths = self._paths(name)
        record = self._read_json(paths["scores_entry"])
        if record is None or candidates_sha256 not in (None, record.get("candidates_sha256")):
            return None
        try:
            return np.load(paths["scores"])
        except (OSError, ValueError):
            return None

    def save_null(self, key: dict, null: dict) -> None:
        """Keep the cohort's voxel null (intensity fusion and mask threshold) made under ``key`` (for the other
        ``torchrun`` ranks)."""
        self._write_json(self.folder / NULL_FILE, {"schema": STORE_SCHEMA, "key": json.loads(json.dumps(key)),
                                                   "null": null})

    def load_null(self, key: dict) -> dict | None:
        """The null kept under ``key``, ``None`` if there is none."""
        record = self._read_json(self.folder / NULL_FILE)
        matches = record is not None and record.get("key") == json.loads(json.dumps(key))
        return record["null"] if matches else None

    def size_bytes(self) -> int:
        """Bytes of every file in the store."""
        return sum(path.stat().st_size for path in self.folder.glob("*") if path.is_file())

    @staticmethod
    def _write_json(path: Path, record: dict) -> None:
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(record), encoding="utf-8")

    @staticmethod
    def _read_json(path: Path) -> dict | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("schema") == STORE_SCHEMA else None
