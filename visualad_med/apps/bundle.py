"""Glue for the MONAI bundle ``bundles/visualad_zsad``: what its configs need that the library lacks.

The configs (``configs/inference.json``, ``train.json``, ``evaluate.json``) build everything from
flat keys with these pieces:

- :func:`build_network`: the model from ``backbone``, ``backbone_weights``, ``head``,
  ``image_size`` and ``scoring``, wrapped in :class:`VisualADMapNet` (``(B, 3, H, W)`` in,
  ``(B, 1, H, W)`` anomaly map out, which ``verify_net_in_out`` checks);
- :func:`scan_datalist`: the scans of ``dataset_dir``, or the example scan when it is unset
  (:func:`example_scan`);
- :class:`LoadScand` (preprocessing) and :class:`WriteScanOutputsd` (postprocessing) around
  :mod:`visualad_med.inference.folder`, and :class:`ScanFolderEvaluator`, the workflow ``run`` calls;
- :func:`run_training` and :func:`run_evaluation` for the other two configs.

A config value that cannot work ends the run with :class:`BundleConfigError`: one line naming
the key to fix (``dataset_dir: /x does not exist; set --dataset_dir``), no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import nn

from visualad_med.model.checkpoint import HeadCheckpointError
from visualad_med.model.cohort import COHORT_THRESHOLD, CohortSettings
from visualad_med.inference.cohort import CohortMaps
from visualad_med.model.img_focus import cache_dir
from visualad_med.inference.slices import SliceInferer, check_planes
from visualad_med.model.visualad import VisualAD, build_model, load_model
from visualad_med.io.hashing import file_sha256
from visualad_med.model.checkpoint import SHIPPED_HEAD, shipped_head
from visualad_med.model.devices import resolve_device as _resolve_device
from visualad_med.inference.folder import RunSettings, mask_threshold as _mask_threshold
from visualad_med.inference.folder import cohort_report, run_scans, write_scan_outputs
from visualad_med.transforms import resolve_window
from visualad_med.io import ScanSource, find_scans, load_scan, write_nifti
from visualad_med.model.weights import BackboneWeightsError

logger = logging.getLogger(__name__)

BUNDLE_ROOT = str(Path(__file__).resolve().parents[2] / "bundles" / "visualad_zsad")
"""The bundle folder of this checkout (``bundles/visualad_zsad``); the configs' default ``bundle_root``."""
HEAD_FILE = "models/" + SHIPPED_HEAD
DEFAULT_BACKBONE = "dinov2-s14"
UNTRAINED = "untrained"
EXAMPLE_NAME = "mni152_t1_1mm.nii.gz"
SCAN_KINDS = "DICOM series, .nii/.nii.gz, .nrrd, .mha/.mhd"


class BundleConfigError(SystemExit):
    """A config value that cannot work: ends ``monai.bundle run`` with one line naming the key.

    A ``SystemExit`` so that MONAI's config parser lets it through unwrapped and Python prints
    the message alone (exit status 1). ``key`` and ``message`` are kept as attributes.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message.replace(".; ", "; ")  # library messages end in a full stop
        super().__init__(f"{key}: {self.message}")


class BundleRunError(SystemExit):
    """The run finished but some scans failed (each is logged and listed in ``summary.csv``)."""


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``; a missing GPU names the ``device`` key."""
    if isinstance(device, torch.device):
        return device
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BundleConfigError("device", f"{device} was asked for but no CUDA device is available; set --device cpu "
                                "(or auto)")
    try:
        return _resolve_device(str(device))
    except (ValueError, RuntimeError) as error:
        raise BundleConfigError("device", f"{error}; set --device auto, cpu, cuda or cuda:N") from None


def as_planes(planes: str | Sequence[str]) -> tuple[str, ...]:
    """``"axial"``, ``"axial,coronal,sagittal"`` or a list of planes, as a tuple; checked."""
    names = tuple(str(plane).strip() for plane in (planes.split(",") if isinstance(planes, str) else planes))
    try:
        check_planes(names)
    except ValueError as error:
        raise BundleConfigError("planes", f"{error}; set --planes, e.g. axial,coronal,sagittal") from None
    return names


def as_window(window: str | Sequence[float]) -> str | tuple[float, float]:
    """``auto``, a preset name, ``"WIDTH,LEVEL"`` in HU or ``[width, level]``; checked."""
    try:
        if isinstance(window, str) and "," not in window:
            return window if window == "auto" else resolve_window(window)
        width, level = window.split(",") if isinstance(window, str) else window
        return resolve_window((float(width), float(level)))
    except (ValueError, TypeError) as error:
        raise BundleConfigError("window", f"{error}; set --window auto, a preset or WIDTH,LEVEL in HU") from None


def as_taps(taps: str | int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``None``, ``"3,6,9,12"`` or a list of 1-based tap layers."""
    if taps is None:
        return None
    if isinstance(taps, int):
        return (taps,)
    values = taps.split(",") if isinstance(taps, str) else taps
    return tuple(int(v) for v in values)


class VisualADMapNet(nn.Module):
    """VisualAD as a plain map network: ``(B, 3, H, W)`` normalised images to ``(B, 1, H, W)`` maps.

    The map is the model's smoothed ``map`` (sum over tap layers of ``cos(SAF(p), a') -
    cos(SAF(p), n')``); :attr:`model` is the :class:`~visualad_med.model.visualad.VisualAD` inside, which
    the slice inferer runs. ``head_path`` is the head file it was loaded from (``None``: untrained).
    """

    def __init__(self, model: VisualAD, head_path: Path | None = None):
        super().__init__()
        self.model = model
        self.head_path = head_path
        self.head_sha256 = file_sha256(head_path) if head_path else None

    @property
    def config(self):
        return self.model.config

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1, H, W)`` float anomaly map."""
        return self.model(images)["map"].unsqueeze(1)


def unwrap(network: nn.Module) -> VisualAD:
    """The :class:`VisualAD` inside a :class:`VisualADMapNet` (or the model itself)."""
    return network.model if isinstance(network, VisualADMapNet) else network


def head_file(head: str | Path | None, bundle_root: str | Path = BUNDLE_ROOT) -> Path | None:
    """The head file ``head`` names; ``None`` for ``untrained``.

    The bundle's own head (``<bundle_root>/models/visualad_head.safetensors``) falls back to the head
    installed with the package while it is absent (a bundle folder fetched without its large files),
    and to an untrained head with a warning when neither exists; any other missing file is an error
    naming ``head``.
    """
    if head is None or str(head) == UNTRAINED:
        return None
    path = Path(head)
    if path.is_file():
        return path
    if path.resolve() == (Path(bundle_root) / HEAD_FILE).resolve():
        installed = shipped_head()
        if installed is not None:
            logger.info("the bundle's head %s is absent: using the head installed with visualad-med, %s", path,
                        installed)
            return installed
        logger.warning("the bundle's trained head %s is absent: running an UNTRAINED head, whose maps mean "
                       "nothing; set --head FILE (or --head untrained to silence this)", path)
        return None
    raise BundleConfigError("head", f"{path} does not exist; set --head to a head file or --head {UNTRAINED}")


def _model_error(error: Exception) -> BundleConfigError:
    """The config key behind a model-building error."""
    text = str(error)
    if isinstance(error, HeadCheckpointError):
        return BundleConfigError("head", f"{text}; set --head to a head trained on this backbone, --backbone to "
                                 f"the head's, or --head {UNTRAINED}")
    if isinstance(error, BackboneWeightsError):
        return BundleConfigError("backbone_weights", f"{text}; set --backbone_weights FILE (or random for smoke "
                                 "tests)")
    if "image size" in text:
        return BundleConfigError("image_size", f"{text}; set --image_size to a multiple of the patch size")
    if "tap layers" in text:
        return BundleConfigError("taps", f"{text}; set --taps to 1-based block numbers of the backbone")
    return BundleConfigError("backbone", f"{text}; set --backbone")


def build_network(
    backbone: str | None = None,
    backbone_weights: str | None = None,
    head: str | Path | None = None,
    image_size: int | None = None,
    scoring: str | None = None,
    map_reference: str | None = None,
    bundle_root: str | Path = BUNDLE_ROOT,
) -> VisualADMapNet:
    """The model the inference and evaluation configs run, on the CPU in eval mode.

    Args:
        backbone: preset or timm ViT name; default the head's, else ``dinov2-s14`` (offline, img-focus).
        backbone_weights: local weight file; ``random`` for smoke tests; default the preset's.
        head: head file, or ``untrained``; see :func:`head_file`.
        image_size: input side in pixels for an untrained head (a head brings its own).
        scoring: ``visualad``, ``selfsim`` or ``combined``; default the head's.
        map_reference: ``none`` or ``body`` (:mod:`visualad_med.model.body_reference`); default the head's.
        bundle_root: the bundle folder (to recognise its own head).

    Raises:
        BundleConfigError: naming the key to fix.
    """
    path = head_file(head, bundle_root)
    try:
        if path is None:
            model = build_model(backbone or DEFAULT_BACKBONE, backbone_weights=backbone_weights,
                                image_size=image_size)
        else:
            model = load_model(path, backbone=backbone, backbone_weights=backbone_weights)
    except (ValueError, TypeError, BackboneWeightsError) as error:
        raise _model_error(error) from None
    for key, value, choose in (("scoring", scoring, model.set_scoring),
                               ("map_reference", map_reference, model.set_map_reference)):
        try:
            if value:
                choose(value)
        except ValueError as error:
            raise BundleConfigError(key, f"{error}; set --{key}") from None
    logger.info("model: backbone %s, image size %d, taps %s, scoring %s, map reference %s, head %s",
                model.config.backbone, model.config.image_size, list(model.config.taps), model.settings.scoring,
                model.settings.map_reference, path or UNTRAINED)
    return VisualADMapNet(model.eval(), path)


def mask_threshold(network: nn.Module, threshold: float | None, cohort: CohortSettings | None = None,
                   datalist: Sequence[ScanSource] = ()) -> float:
    """The mask threshold on the map: ``threshold``, else the cohort rule (when the cohort applies to
    ``datalist``) or the head's calibrated one."""
    if threshold is None and cohort is not None and cohort.applies_to(len(datalist), log=False):
        return COHORT_THRESHOLD
    return _mask_threshold(unwrap(network), RunSettings(threshold=threshold))


def cohort_settings(network: nn.Module, scoring: str | None, reference_dir: str | None,
                    reference_bank: str | None, output_dir: str | Path, window: str | Sequence[float] = "auto",
                    planes: str | Sequence[str] = "axial") -> CohortSettings | None:
    """The inference config's cohort (``scoring`` ``mutual``/``visualad+mutual``; ``None``: the default cohort of a
    run of two or more scans; ``"none"``: the head alone) or few-shot references, or None."""
    from visualad_med.inference.cohort import cohort_from_options

    if scoring == NO_COHORT:
        return None
    try:
        return cohort_from_options(unwrap(network), scoring, reference_dir, reference_bank, Path(output_dir),
                                   RunSettings(planes=as_planes(planes), window=as_window(window)))
    except ValueError as error:
        key = "scoring" if "scoring" in str(error) else "reference_dir"
        raise BundleConfigError(key, f"{error}; set --{key}") from None


def example_scan(folder: Path | None = None) -> Path:
    """Write the example scan once and return its folder.

    The MNI152 T1 template at 1 mm (ICBM 2009a nonlinear symmetric, 197 x 233 x 189, intensities
    scaled to [0, 1]) that ships inside the ``nilearn`` wheel (``pip install 'visualad-med[examples]'``);
    nothing is downloaded. Written as float32 NIfTI into ``folder`` (default
    ``<cache>/examples/mni152``, the cache being ``$VISUALAD_MED_CACHE`` or ``~/.cache/visualad_med``).
    """
    import numpy as np

    folder = Path(folder) if folder is not None else cache_dir() / "examples" / "mni152"
    target = folder / EXAMPLE_NAME
    if not target.is_file():
        try:
            from nilearn.datasets import load_mni152_template
        except ModuleNotFoundError:
            raise BundleConfigError("dataset_dir", "not set, and the example scan needs nilearn: pip install "
                                    "'visualad-med[examples]', or set --dataset_dir to a folder of scans") from None
        template = load_mni152_template(resolution=1)
        write_nifti(np.asarray(template.dataobj, dtype=np.float32), template.affine, target)
    return folder


def scan_datalist(dataset_dir: str | Path | None, output_dir: str | Path) -> list[ScanSource]:
    """The scans under ``dataset_dir`` (the example scan when it is unset); creates ``output_dir``.

    Raises:
        BundleConfigError: a ``dataset_dir`` that does not exist or holds no scan, an unset or
            unwritable ``output_dir``, or one inside the input folder.
    """
    if not dataset_dir:
        folder = example_scan()
        logger.warning("dataset_dir is not set: running on the example scan %s (MNI152 T1 template, 1 mm, from "
                       "nilearn's bundled data); set --dataset_dir to run on your scans", folder / EXAMPLE_NAME)
    else:
        folder = Path(dataset_dir)
        if not folder.exists():
            raise BundleConfigError("dataset_dir", f"{folder} does not exist; set --dataset_dir")
    if not output_dir:
        raise BundleConfigError("output_dir", "not set; set --output_dir")
    out = Path(output_dir)
    if folder.is_dir() and (out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents):
        raise BundleConfigError("output_dir", f"{out} is inside the input folder {folder}; set --output_dir to "
                                "another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BundleConfigError("output_dir", f"cannot create {out} ({error.strerror}); set --output_dir") from None
    if not os.access(out, os.W_OK):
        raise BundleConfigError("output_dir", f"{out} is not writable; set --output_dir")
    scans = find_scans(folder, exclude=[out])
    if not scans:
        raise BundleConfigError("dataset_dir", f"{folder} holds no scans ({SCAN_KINDS}); set --dataset_dir")
    logger.info("%d scan(s) under %s: %s", len(scans), folder, ", ".join(s.name for s in scans[:10]))
    return scans


class LoadScand(MapTransform):
    """Load ``data[key]`` (a :class:`~visualad_med.io.ScanSource` or path) with :func:`load_scan`.

    The volume is a ``(1, X, Y, Z)`` float32 ``MetaTensor`` with its RAS affine, read through
    MONAI's ``LoadImage`` with the library's readers; the source goes to ``data["source"]``.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], ScanSource):
                d.setdefault("source", d[key])
            d[key] = load_scan(d[key])
        return d


class WriteScanOutputsd(MapTransform):
    """Write a scan's outputs as ``visualad-med infer`` does; the report goes to ``data["report"]``.

    Reads ``source``, ``image`` (the volume), ``pred`` (``(X, Y, Z)`` map), ``mask``,
    ``slice_scores`` and ``times`` from the data; see :func:`visualad_med.inference.folder.write_scan_outputs`.

    Args:
        output_dir: output folder.
        network: the model (its config and head are recorded).
        planes: the inferer's planes (recorded).
        threshold: the user's mask threshold, ``None`` for the head's (recorded).
    """

    def __init__(self, output_dir: str | Path, network: nn.Module, planes: str | Sequence[str] = ("axial",),
                 threshold: float | None = None, keys: KeysCollection = "pred"):
        super().__init__(keys)
        self.output_dir = Path(output_dir)
        self.network = network
        self.settings = RunSettings(planes=as_planes(planes), threshold=threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d["report"] = write_scan_outputs(
                unwrap(self.network), d["source"], d["image"], d[key], d["mask"], d["slice_scores"],
                self.output_dir, self.settings, getattr(self.network, "head_sha256", None), d["times"],
                d.get("extra_report"),
            )
        return d


def _transform(transforms: Callable, data: dict) -> dict:
    """Apply a MONAI ``Compose``, re-raising the original error rather than MONAI's wrapper."""
    try:
        return transforms(data)
    except RuntimeError as error:
        cause = error
        while isinstance(cause, RuntimeError) and str(cause).startswith("applying transform") and cause.__cause__:
            cause = cause.__cause__
        raise cause from None


class ScanFolderEvaluator:
    """The inference workflow: every scan of ``datalist`` through preprocessing, inferer and postprocessing.

    Writes the same files as ``visualad-med infer`` (per scan ``_anomaly.nii.gz``, ``_mask.nii.gz``,
    ``_mask.seg.nrrd``, ``_seg.dcm`` for DICOM, ``_report.json``; ``summary.csv``), skips finished
    scans unless ``overwrite``, logs a failing scan and goes on.

    Args:
        datalist: the scans (:func:`scan_datalist`).
        output_dir: output folder.
        network: :class:`VisualADMapNet` (or :class:`VisualAD`) on its device.
        preprocessing: ``{"image": ScanSource}`` -> ``{"image": volume, "source": ...}``.
        inferer: a :class:`~visualad_med.inference.slices.SliceInferer`.
        postprocessing: thresholding and writers; must leave the report in ``data["report"]``.
        overwrite: redo scans that already have a report.
        progress: show progress bars.
        cohort: score the scans against each other or against references (every scan is redone).
        threshold: the user's mask threshold, recorded in cohort runs' reports (default the cohort rule's).
    """

    def __init__(self, datalist: list[ScanSource], output_dir: str | Path, network: nn.Module,
                 preprocessing: Callable, inferer: SliceInferer, postprocessing: Callable,
                 overwrite: bool = False, progress: bool = True, cohort: CohortSettings | None = None,
                 threshold: float | None = None):
        self.datalist = list(datalist)
        self.output_dir = Path(output_dir)
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.overwrite = overwrite
        self.progress = progress
        self.cohort = cohort
        self.cohort_threshold = COHORT_THRESHOLD if threshold is None else float(threshold)
        self.cohort_maps: CohortMaps | None = None

    def process(self, source: ScanSource) -> dict:
        """One scan: load, infer slice by slice, threshold and write; returns the report."""
        model = unwrap(self.network)
        started = time.perf_counter()
        data = _transform(self.preprocessing, {"image": source})
        loaded = time.perf_counter()
        if self.cohort_maps is not None:
            threshold = self.cohort_threshold
            data["extra_report"] = {**cohort_report(self.cohort_maps, RunSettings(threshold=threshold)),
                                    "threshold": threshold}
        network = self.cohort_maps.network_for(source) if self.cohort_maps is not None else model
        data["pred"] = self.inferer(data["image"], network)[0]
        data["slice_scores"] = self.inferer.last_scores
        data["times"] = (started, loaded, time.perf_counter())
        return _transform(self.postprocessing, data)["report"]

    def run(self) -> tuple[int, int]:
        """Process every scan; returns ``(succeeded, failed)``; raises :class:`BundleRunError` if any failed."""
        unwrap(self.network).eval()
        if self.cohort is not None and self.cohort.applies_to(len(self.datalist)):
            self.cohort_maps = CohortMaps.build(unwrap(self.network), self.datalist, self.inferer, self.cohort,
                                                self.output_dir)
        succeeded, failed = run_scans(self.datalist, self.output_dir, self.process,
                                      overwrite=self.overwrite or self.cohort_maps is not None, progress=self.progress,
                                      where=self.output_dir)
        if failed:
            raise BundleRunError(f"{failed} of {succeeded + failed} scans failed (reasons above and in "
                                 f"{self.output_dir / 'summary.csv'})")
        return succeeded, failed


def require_dir(path: str | Path | Sequence[str | Path] | None, key: str = "dataset_dir") -> Path | list[Path]:
    """``path`` as an existing folder (or each of a list of folders), else :class:`BundleConfigError` naming ``key``."""
    if isinstance(path, (list, tuple)):
        if not path:
            raise BundleConfigError(key, f"empty list; set --{key}")
        return [require_dir(each, key) for each in path]
    if not path:
        raise BundleConfigError(key, f"not set; set --{key}")
    if not Path(path).is_dir():
        raise BundleConfigError(key, f"{path} does not exist; set --{key}" if not Path(path).exists()
                                else f"{path} is not a folder; set --{key}")
    return Path(path)


def as_roots(dataset_dir: str | Sequence[str]) -> list[str]:
    """The training data roots of ``dataset_dir`` (one folder or a list), as recorded in the head."""
    return [str(root) for root in dataset_dir] if isinstance(dataset_dir, (list, tuple)) else [str(dataset_dir)]


NO_COHORT = "none"
"""``cohort_scoring`` value that scores every scan by the head alone."""
VOLUME_LAYOUT = "msd"
"""The bundle's layout name for a Medical Segmentation Decathlon folder (volumes with label volumes)."""


def require_layout(layout: str) -> str:
    """``layout`` if it is a known data set layout (2D ones and ``msd``), else :class:`BundleConfigError`."""
    from visualad_med.datasets import LAYOUTS

    if layout not in (*LAYOUTS, VOLUME_LAYOUT):
        raise BundleConfigError("layout", f"unknown data set layout {layout!r}; set --layout to one of "
                                f"{', '.join((*LAYOUTS, VOLUME_LAYOUT))}")
    return layout


def _dataset(model: VisualAD, dataset_dir, layout, split, classes=None, missing_mask="error"):
    from visualad_med.datasets import build_dataset

    try:
        config = model.config
        return build_dataset(require_layout(layout), require_dir(dataset_dir), config.image_size, config.mean,
                             config.std, split=split, classes=classes, missing_mask=missing_mask)
    except ValueError as error:
        raise BundleConfigError("dataset_dir", f"{error}; set --dataset_dir (and --layout, --split)") from None


def command_line() -> str:
    """The command that is running, as recorded in results and heads."""
    program = "python -m monai.bundle" if sys.argv and sys.argv[0].endswith("__main__.py") else sys.argv[0]
    return " ".join([program, *sys.argv[1:]])


def build_training_network(backbone: str = DEFAULT_BACKBONE, backbone_weights: str | None = None,
                           image_size: int | None = None, taps: str | Sequence[int] | None = None,
                           seed: int = 0, map_reference: str = "none") -> VisualAD:
    """A fresh VisualAD to train (the train config's ``network_def``); errors name the key."""
    try:
        model = build_model(backbone, backbone_weights=backbone_weights, image_size=image_size, taps=as_taps(taps),
                            seed=seed)
    except (ValueError, TypeError, BackboneWeightsError) as error:
        raise _model_error(error) from None
    try:
        return model.set_map_reference(map_reference)
    except ValueError as error:
        raise BundleConfigError("map_reference", f"{error}; set --map_reference") from None


def training_dataset(network: VisualAD, dataset_dir, layout: str = "mvtec", split: str = "test"):
    """The industrial training set (MVTec, VisA or meta.json folder) at the model's input size."""
    return _dataset(network, dataset_dir, layout, split)


def auxiliary_set(network: VisualAD, dataset, synthetic: str | None = None, synthetic_probability: float = 0.5,
                  synthetic_source: Sequence[str] | str | None = None,
                  synthetic_base: Sequence[str] | str | None = None, augment: str | None = None,
                  augment_probability: float = 0.5, seed: int = 111):
    """``dataset`` with synthetic anomalies and augmentations mixed in, as ``visualad-med train`` does."""
    from visualad_med.training.auxiliary import build_auxiliary_set

    if isinstance(synthetic, (list, tuple)):
        synthetic = ",".join(synthetic)
    if isinstance(augment, (list, tuple)):
        augment = ",".join(augment)
    synthetic_source, synthetic_base = ([value] if isinstance(value, str) else value
                                        for value in (synthetic_source, synthetic_base))
    try:
        return build_auxiliary_set(dataset, network.config.mean, network.config.std, synthetic=synthetic,
                                   synthetic_probability=synthetic_probability,
                                   synthetic_sources=synthetic_source or (), synthetic_bases=synthetic_base or (),
                                   augment=augment,
                                   augment_probability=augment_probability, seed=seed)
    except ValueError as error:
        key = "augment" if "augment" in str(error) else "synthetic"
        raise BundleConfigError(key, f"{error}; set --{key}, --{key}_probability"
                                + (", --synthetic_source, --synthetic_base" if key == "synthetic" else "")) from None


def run_training(network: VisualAD, dataset, output_dir, config, device, calibration_set=None, resume: bool = False,
                 provenance: dict | None = None, balance_classes: bool | None = None) -> Path:
    """:func:`visualad_med.training.loop.train` with the bundle's command recorded; returns the final head's path.

    ``balance_classes`` draws every class of ``calibration_set`` (the industrial set) equally often;
    ``None``: when it holds more than one class.
    """
    from visualad_med.datasets import class_balanced_weights
    from visualad_med.training.loop import train

    if not output_dir:
        raise BundleConfigError("output_dir", "not set; set --output_dir")
    base = calibration_set if calibration_set is not None else dataset
    balance = len(base.classes) > 1 if balance_classes is None else bool(balance_classes)
    try:
        return train(network, dataset, Path(output_dir), config, resolve_device(device),
                     calibration_set=calibration_set, resume=resume,
                     provenance={**(provenance or {}), "classes": base.classes, "balance_classes": balance,
                                 "command": command_line()},
                     sample_weights=class_balanced_weights(base) if balance else None)
    except FileNotFoundError as error:
        if resume:
            raise BundleConfigError("resume", f"{error}") from None
        raise


def run_evaluation(network: nn.Module, dataset_dir, layout: str, output_dir, split: str = "test",
                   classes: Sequence[str] | None = None, batch_size: int = 8, overlays: int = 8,
                   device: str | torch.device = "auto", workers: int = 0, labels_dir: str | None = None,
                   window: str | Sequence[float] = "auto", planes: str | Sequence[str] = "axial",
                   threshold: float | None = None, cohort_scoring: str | None = None) -> dict:
    """:func:`visualad_med.evaluation.images.evaluate` on a labelled 2D set (MVFA, meta.json, MVTec, VisA), or, for
    ``layout`` ``msd`` or a ``labels_dir``, :func:`visualad_med.evaluation.volumes.evaluate_volumes`."""
    from visualad_med.evaluation.images import evaluate
    from visualad_med.evaluation.report import markdown_table

    if not output_dir:
        raise BundleConfigError("output_dir", "not set; set --output_dir")
    if labels_dir or layout == VOLUME_LAYOUT:
        return _run_volume_evaluation(network, dataset_dir, labels_dir, output_dir, split, batch_size, window,
                                      planes, threshold, cohort_scoring)
    model = unwrap(network)
    if isinstance(classes, str):
        classes = [classes]
    _dataset(model, dataset_dir, layout, split, classes, missing_mask="skip")  # checks the folder, names the key
    started = time.perf_counter()
    try:
        results = evaluate(model, Path(dataset_dir), layout, Path(output_dir), split=split, classes=classes,
                           batch_size=batch_size, overlays=overlays, device=resolve_device(device),
                           num_workers=workers, head=getattr(network, "head_path", None),
                           command=command_line().split(" "))
    except ValueError as error:
        key = "batch_size" if "batch_size" in str(error) else "dataset_dir"
        raise BundleConfigError(key, f"{error}; set --{key}") from None
    logger.info("results (%.1f s):\n%s", time.perf_counter() - started, markdown_table(results))
    return results


def _run_volume_evaluation(network: nn.Module, dataset_dir, labels_dir, output_dir, split: str, batch_size: int,
                           window, planes, threshold: float | None, cohort_scoring: str | None) -> dict:
    """Volumes against label volumes: a Decathlon folder, or ``dataset_dir`` scans matched with ``labels_dir``."""
    from visualad_med.datasets.volume_pairs import labelled_volumes
    from visualad_med.evaluation.volumes import evaluate_volumes

    require_dir(dataset_dir)
    try:
        pairs = labelled_volumes(dataset_dir, labels_dir and require_dir(labels_dir, "labels_dir"),
                                 "training" if split == "test" else split)  # the config's 2D default split
        settings = RunSettings(planes=as_planes(planes), window=as_window(window), batch_size=batch_size,
                               threshold=threshold, overwrite=True)
    except ValueError as error:
        raise BundleConfigError("dataset_dir", f"{error}; set --dataset_dir (and --labels_dir, --split)") from None
    cohort = cohort_settings(network, cohort_scoring, None, None, output_dir, window, planes)
    results = evaluate_volumes(unwrap(network), pairs, Path(output_dir), settings, data=str(dataset_dir),
                               head=getattr(network, "head_path", None), command=command_line().split(" "),
                               cohort=cohort)
    if results["counts"]["failed"]:
        raise BundleRunError(f"{results['counts']['failed']} of {results['counts']['listed']} scans failed "
                             f"(reasons above and in {Path(output_dir) / 'results.json'})")
    return results
