"""Glue for the MONAI bundle ``bundles/visualad_zsad``: the pieces every config shares, and inference.

The configs build everything from flat keys with thin calls into the library. This module holds

- the run's settings from the config's keys (:func:`run_settings`) and the checks of config values
  (:func:`resolve_device`, :func:`as_planes`, :func:`as_window`,
  :func:`require_dir`, :func:`require_layout`, :func:`labelled_dataset`), which end a run with
  :class:`BundleConfigError`;
- :func:`build_network`: :func:`~visualad_med.model.for_run.model_for_run` wrapped in
  :class:`VisualADMapNet` (``(B, 3, H, W)`` in, ``(B, 1, H, W)`` anomaly map out: the zoo's
  tensor-to-tensor network contract, which ``verify_net_in_out`` checks);
- the inference workflow (``configs/inference.json``): :func:`scan_datalist` (the scans of
  ``dataset_dir``, the example scan when it is unset) and :class:`ScanFolderEvaluator`, which runs
  :func:`~visualad_med.inference.folder.run_folder`, the same as ``visualad-med infer``.

Training (``configs/train.json``) is in :mod:`visualad_med.apps.bundle_training`, evaluation
(``configs/evaluate.json``) in :mod:`visualad_med.apps.bundle_evaluation`.

A config value that cannot work ends the run with :class:`BundleConfigError`: one line naming
the key to fix (``dataset_dir: /x does not exist; set --dataset_dir``), no traceback. The key
comes from the library's :class:`~visualad_med.errors.SettingError` (or the error's type), never
from the words of a message.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from visualad_med.errors import BackboneWeightsError, SettingError
from visualad_med.inference.folder import find_folder_scans, run_folder
from visualad_med.inference.settings import RunSettings
from visualad_med.inference.slices import check_planes
from visualad_med.io import ScanSource, write_nifti
from visualad_med.io.hashing import file_sha256
from visualad_med.model.checkpoint import SHIPPED_HEAD, shipped_head
from visualad_med.model.cohort import CohortSettings
from visualad_med.model.devices import resolve_device as _resolve_device
from visualad_med.model.for_run import model_for_run
from visualad_med.model.img_focus import cache_dir
from visualad_med.model.map_settings import MapSettings
from visualad_med.model.scorings import UNTRAINED
from visualad_med.model.visualad import VisualAD
from visualad_med.transforms import resolve_window

logger = logging.getLogger(__name__)

BUNDLE_ROOT = str(Path(__file__).resolve().parents[2] / "bundles" / "visualad_zsad")
"""The bundle folder of this checkout (``bundles/visualad_zsad``); the configs' default ``bundle_root``."""
HEAD_FILE = "models/" + SHIPPED_HEAD
EXAMPLE_NAME = "mni152_t1_1mm.nii.gz"
CONFIG_KEYS = {"input": "dataset_dir", "output": "output_dir"}
"""The config key of a :class:`~visualad_med.errors.SettingError`'s setting, where the names differ."""
NO_COHORT = "none"
"""``cohort_scoring`` value that scores every scan by the head alone."""


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


def run_settings(planes: str | Sequence[str] | None = None, window: str | Sequence[float] | None = None,
                 batch_size: int | None = None, precision: str | None = None, threshold: float | None = None,
                 overwrite: bool = False, progress: bool = True,
                 map_settings: MapSettings | None = None) -> RunSettings:
    """The run's :class:`~visualad_med.inference.settings.RunSettings` from the config's keys; ``None``: the default.

    ``map_settings`` are the network's (:attr:`VisualADMapNet.map_settings`: the ``scoring`` and
    ``map_reference`` keys over the head's).

    Raises:
        BundleConfigError: naming the key of a value that cannot work.
    """
    given = {"planes": None if planes is None else as_planes(planes),
             "window": None if window is None else as_window(window),
             "batch_size": batch_size, "precision": precision}
    try:
        return RunSettings(threshold=threshold, overwrite=overwrite, progress=progress, map=map_settings,
                           **{key: value for key, value in given.items() if value is not None})
    except SettingError as error:
        raise config_error(error, "batch_size") from None


def as_window(window: str | Sequence[float]) -> str | tuple[float, float]:
    """``auto``, a preset name, ``"WIDTH,LEVEL"`` in HU or ``[width, level]``; checked."""
    try:
        if isinstance(window, str) and "," not in window:
            return window if window == "auto" else resolve_window(window)
        width, level = window.split(",") if isinstance(window, str) else window
        return resolve_window((float(width), float(level)))
    except (ValueError, TypeError) as error:
        raise BundleConfigError("window", f"{error}; set --window auto, a preset or WIDTH,LEVEL in HU") from None


class VisualADMapNet(nn.Module):
    """VisualAD as a plain map network: ``(B, 3, H, W)`` normalised images to ``(B, 1, H, W)`` maps.

    The map is the model's smoothed ``map`` (sum over tap layers of ``cos(SAF(p), a') -
    cos(SAF(p), n')``); :attr:`model` is the :class:`~visualad_med.model.visualad.VisualAD` inside, which
    the slice inferer runs. ``head_path`` is the head file it was loaded from (``None``: untrained);
    ``map_settings`` the run's scoring and map reference (default the head's), passed with every call.
    """

    def __init__(self, model: VisualAD, head_path: Path | None = None, map_settings: MapSettings | None = None):
        super().__init__()
        self.model = model
        self.head_path = head_path
        self.head_sha256 = file_sha256(head_path) if head_path else None
        self.map_settings = model.settings if map_settings is None else map_settings

    @property
    def config(self):
        return self.model.config

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1, H, W)`` float anomaly map."""
        return self.model(images, settings=self.map_settings)["map"].unsqueeze(1)


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


def config_error(error: Exception, fallback: str, advice: str = "") -> BundleConfigError:
    """The :class:`BundleConfigError` of a library error: the key of its setting (else ``fallback``)."""
    key = CONFIG_KEYS.get(getattr(error, "setting", None), getattr(error, "setting", None)) or fallback
    return BundleConfigError(key, f"{error}; set --{key}{advice}")


MODEL_ADVICE = {"head": f" to a head trained on this backbone, --backbone to the head's, or --head {UNTRAINED}",
                "backbone_weights": " FILE (or random for smoke tests)"}
"""What to add after ``set --KEY`` for an error of the model's settings, by setting."""


def model_error(error: Exception) -> BundleConfigError:
    """The config key behind a model-building error (its ``setting``; ``backbone`` when it names none)."""
    return config_error(error, "backbone", MODEL_ADVICE.get(getattr(error, "setting", None), ""))


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
        model = model_for_run(path, backbone=backbone, backbone_weights=backbone_weights, image_size=image_size)
        chosen = model.settings.for_run(scoring, map_reference)
    except (ValueError, TypeError, BackboneWeightsError) as error:
        raise model_error(error) from None
    return VisualADMapNet(model.eval(), path, chosen)


def cohort_settings(network: nn.Module, scoring: str | None, reference_dir: str | None,
                    reference_bank: str | None, output_dir: str | Path, settings: RunSettings,
                    intensity: str | None = None) -> CohortSettings | None:
    """The inference config's cohort (``scoring`` ``mutual``/``visualad+mutual``; ``None``: the default cohort of a
    run of two or more scans; ``"none"``: the head alone) or few-shot references, or None; ``settings`` are the
    run's (:func:`run_settings`: reference scans are read with them); ``intensity`` is the cohort's intensity term
    (``vouched``, ``none``; ``None``: the default)."""
    from visualad_med.inference.cohort import cohort_from_options

    if scoring == NO_COHORT:
        return None
    try:
        return cohort_from_options(unwrap(network), scoring, reference_dir, reference_bank, Path(output_dir),
                                   settings, intensity=intensity)
    except SettingError as error:
        raise config_error(error, "cohort_intensity") from None
    except ValueError as error:
        raise config_error(error, "reference_dir") from None


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
    if not output_dir:
        raise BundleConfigError("output_dir", "not set; set --output_dir")
    try:
        scans = find_folder_scans(folder, Path(output_dir))
    except SettingError as error:
        raise config_error(error, "dataset_dir") from None
    logger.info("%d scan(s) under %s: %s", len(scans), folder, ", ".join(s.name for s in scans[:10]))
    return scans


class ScanFolderEvaluator:
    """The inference workflow: :func:`~visualad_med.inference.folder.run_folder` over the config's dataset.

    Writes the same files as ``visualad-med infer`` (per scan ``_anomaly.nii.gz``, ``_mask.nii.gz``,
    ``_mask.seg.nrrd``, ``_seg.dcm`` for DICOM, ``_report.json``; ``summary.csv``), skips finished
    scans unless ``overwrite``, logs a failing scan and goes on.

    Args:
        dataset: the scans (a MONAI ``Dataset`` over :func:`scan_datalist`, or the list itself).
        output_dir: output folder.
        network: :class:`VisualADMapNet` (or :class:`VisualAD`) on its device.
        settings: the run's settings (:func:`run_settings`); its slice inferer is ``settings.inferer``.
        cohort: score the scans against each other or against references (every scan is redone).
    """

    def __init__(self, dataset: Sequence[ScanSource], output_dir: str | Path, network: nn.Module,
                 settings: RunSettings, cohort: CohortSettings | None = None):
        self.scans = list(getattr(dataset, "data", dataset))
        self.output_dir = Path(output_dir)
        self.network = network
        self.settings = settings
        self.cohort = cohort

    def run(self) -> tuple[int, int]:
        """Process every scan; returns ``(succeeded, failed)``; raises :class:`BundleRunError` if any failed."""
        run = run_folder(unwrap(self.network), self.scans, self.output_dir, self.settings,
                         head_sha256=getattr(self.network, "head_sha256", None), cohort=self.cohort,
                         where=self.output_dir)
        if run.failed:
            raise BundleRunError(f"{run.failed} of {run.succeeded + run.failed} scans failed (reasons above and in "
                                 f"{run.scans.summary})")
        return run.succeeded, run.failed


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


VOLUME_LAYOUT = "msd"
"""The bundle's layout name for a Medical Segmentation Decathlon folder (volumes with label volumes)."""


def require_layout(layout: str) -> str:
    """``layout`` if it is a known data set layout (2D ones and ``msd``), else :class:`BundleConfigError`."""
    from visualad_med.datasets import LAYOUTS

    if layout not in (*LAYOUTS, VOLUME_LAYOUT):
        raise BundleConfigError("layout", f"unknown data set layout {layout!r}; set --layout to one of "
                                f"{', '.join((*LAYOUTS, VOLUME_LAYOUT))}")
    return layout


def labelled_dataset(model: VisualAD, dataset_dir, layout: str, split: str, classes: Sequence[str] | None = None,
                     missing_mask: str = "error", resize: str = "squash"):
    """The labelled 2D set under ``dataset_dir`` (one folder or a list) at the model's input size; errors name
    ``layout`` or ``dataset_dir``."""
    from visualad_med.datasets import build_dataset

    try:
        config = model.config
        return build_dataset(require_layout(layout), require_dir(dataset_dir), config.image_size, config.mean,
                             config.std, split=split, classes=classes, missing_mask=missing_mask, resize=resize)
    except ValueError as error:
        raise BundleConfigError("dataset_dir", f"{error}; set --dataset_dir (and --layout, --split)") from None


def command_line() -> str:
    """The command that is running, as recorded in results and heads."""
    program = "python -m monai.bundle" if sys.argv and sys.argv[0].endswith("__main__.py") else sys.argv[0]
    return " ".join([program, *sys.argv[1:]])
