"""Cohort scoring of a folder of scans: every slice against the slices of the other scans at its position.

Two passes over the scans, both through the ``infer`` path (:class:`~visualad_med.inference.slices.SliceInferer`):

1. :meth:`CohortMaps.build` runs the model on every slice with body and keeps,
   per slice, its patch features (half precision, in per-scan ``.npy`` files under
   a temporary folder, so the cohort's features live on disk, not in memory), the
   head's patch scores and its normalised position ``index / (slices - 1)``. It
   then scores every slice against the slices of the *other* scans within
   ``window`` of its position (:func:`~visualad_med.model.mutual.position_candidates`;
   a run of one scan falls back to the same scan's slices at least 0.2 away and
   says so in the reports) and fuses the result with the head's patch scores
   (:func:`~visualad_med.model.cohort.fuse_patch_scores`).
2. Writing: :meth:`CohortMaps.network_for` gives, for one scan, a stand-in for
   the model that returns those fused maps slice by slice; the usual inferer
   reassembles them into the volume and the usual writers write it, so outputs
   keep the scan's geometry, file names and report.

A scan that fails in the first pass is left out of the cohort and fails again,
with its reason, when its outputs are written. Cohort runs use one plane and
one process (no ``torchrun`` sharding: every scan needs every other).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visualad_med.model.cohort import COHORT_SCORINGS, COHORT_THRESHOLD, DEFAULT_VOLUME_SCORING, CohortSettings, fuse_patch_scores
from visualad_med.model.cohort import head_patch_scores
from visualad_med.model.cohort import patch_maps
from .slices import SliceInferer, slice_preprocessing
from visualad_med.model.torch_model import VisualAD, top_fraction_mean
from visualad_med.model.mutual import cohort_scores, position_candidates, stack_features
from visualad_med.model.reference_bank import ReferenceBank
from visualad_med.io import ScanLoadError, ScanSource, load_scan

logger = logging.getLogger(__name__)


class _FeatureCollector(nn.Module):
    """Stands in for the model in pass 1: runs it, keeps features and head patch scores of each batch."""

    def __init__(self, model: VisualAD, layers: tuple[int, ...]):
        super().__init__()
        self.model, self.layers, self.config = model, layers, model.config
        self.features: list[np.ndarray] = []
        self.head: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> dict:
        outputs = self.model(images, feature_layers=self.layers)
        self.features.append(stack_features(outputs["features"]).cpu().numpy())
        self.head.append(head_patch_scores(outputs).cpu())
        return outputs


class _FusedMaps(nn.Module):
    """Stands in for the model in pass 2: the fused maps of one scan's slices, in the order they are asked for."""

    def __init__(self, model: VisualAD, patch_scores: torch.Tensor, name: str):
        super().__init__()
        self.model, self.config, self.patch_scores, self.name, self.served = model, model.config, patch_scores, name, 0

    def forward(self, images: torch.Tensor) -> dict:
        count = images.shape[0]
        if self.served + count > self.patch_scores.shape[0]:
            raise RuntimeError(f"{self.name}: the scan changed between the two cohort passes")
        rows = self.patch_scores[self.served:self.served + count].to(images.device)
        self.served += count
        maps = patch_maps(self.model, rows, images.float())
        return {"map": maps, "score": top_fraction_mean(maps)}


class _ScanFeatures:
    """The features of every scan of the cohort, one memory-mapped file per scan, indexed as one ``(M, T, N, D)``."""

    def __init__(self, files: list[Path]):
        self.parts = [np.load(path, mmap_mode="r") for path in files]
        self.offsets = np.cumsum([0] + [part.shape[0] for part in self.parts])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])

    def __getitem__(self, index: int | list[int]) -> torch.Tensor:
        single = isinstance(index, int)
        rows = []
        for i in ([index] if single else index):
            part = int(np.searchsorted(self.offsets, i, side="right")) - 1
            rows.append(self.parts[part][i - self.offsets[part]])
        stacked = torch.from_numpy(np.stack(rows))
        return stacked[0] if single else stacked


@dataclass
class PassOne:
    """What the first pass keeps of each scan that worked: names, feature files, per-slice keys, head scores."""

    names: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    scan_of: list[int] = field(default_factory=list)
    position: list[float] = field(default_factory=list)
    head: list[torch.Tensor] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def collect_features(model: VisualAD, scans: list[ScanSource], inferer: SliceInferer, layers: tuple[int, ...],
                     folder: Path, window: str | tuple[float, float] = "auto") -> PassOne:
    """Run every scan's slices with body through the model (scans windowed by ``window``); features go to
    ``folder/<k>.npy``."""
    if len(inferer.planes) != 1:
        raise ValueError(f"cohort and reference scoring run on one plane, got {list(inferer.planes)}")
    kept = PassOne()
    for source in scans:
        collector = _FeatureCollector(model, layers)
        try:
            scan = load_scan(source, window=window)
            scores = inferer(scan.volume, collector,
                             slice_preprocessing(model.config, (scan.window.low, scan.window.high))).scores
        except (ScanLoadError, ValueError, OSError, RuntimeError) as error:
            kept.failed[source.name] = getattr(error, "reason", str(error))
            logger.warning("%s: left out of the cohort: %s", source.name, kept.failed[source.name])
            continue
        run = [k for k, score in enumerate(scores.scores) if score is not None]
        if not run:
            kept.failed[source.name] = "no slice with body"
            continue
        length = max(1, len(scores.scores) - 1)
        kept.files.append(folder / f"{len(kept.files)}.npy")
        np.save(kept.files[-1], np.concatenate(collector.features))
        kept.names.append(source.name)
        kept.scan_of += [len(kept.names) - 1] * len(run)
        kept.position += [k / length for k in run]
        kept.head.append(torch.cat(collector.head))
    return kept


def bank_from_scans(model: VisualAD, scans: list[ScanSource], inferer: SliceInferer, layers: tuple[int, ...],
                    work_dir: Path, window: str | tuple[float, float] = "auto") -> ReferenceBank:
    """A reference bank of every slice with body of a few normal scans, with their positions."""
    with tempfile.TemporaryDirectory(prefix=".reference_", dir=work_dir) as folder:
        kept = collect_features(model, scans, inferer, layers, Path(folder), window)
        if not kept.names:
            raise ValueError(f"no usable reference scan among {len(scans)}: {kept.failed}")
        features = torch.cat([torch.from_numpy(np.load(path)) for path in kept.files])
    return ReferenceBank(features, torch.tensor(kept.position, dtype=torch.float32), layers, model.image_size,
                         model.config.weights_sha256, [str(s.path) for s in scans if s.name in kept.names],
                         VOLUME_RESIZE)


class CohortMaps:
    """The fused patch scores of every slice of a cohort of scans, ready to be written scan by scan."""

    def __init__(self, model: VisualAD, settings: CohortSettings, fused: dict[str, torch.Tensor], fallback: bool,
                 failed: dict[str, str]):
        self.model, self.settings, self.fused, self.fallback, self.failed = model, settings, fused, fallback, failed

    @classmethod
    def build(cls, model: VisualAD, scans: list[ScanSource], inferer: SliceInferer, settings: CohortSettings,
              work_dir: Path, window: str | tuple[float, float] = "auto") -> CohortMaps:
        """Pass 1 over ``scans`` (windowed by ``window``) and the cohort (or reference-bank) scoring (see the
        module docstring)."""
        layers = settings.feature_layers(model)
        with tempfile.TemporaryDirectory(prefix=".cohort_", dir=work_dir) as folder:
            pass_one = collect_features(model, scans, inferer, layers, Path(folder), window)
            if not pass_one.names:
                return cls(model, settings, {}, False, pass_one.failed)
            features = _ScanFeatures(pass_one.files)
            fallback = False
            if settings.bank is not None:
                settings.bank.check_fits(model, layers, VOLUME_RESIZE)
                compared = settings.bank.scores(features, torch.tensor(pass_one.position), settings.window)
            else:
                candidates, fallback = position_candidates(pass_one.scan_of, pass_one.position, settings.window,
                                                           settings.per_scan)
                if fallback:
                    logger.warning("cohort of one scan (%s): each slice is compared with the same scan's slices "
                                   "at least 0.2 of its length away", pass_one.names[0])
                compared = cohort_scores(features, candidates, settings.fraction, progress=inferer.progress)
            del features
        fused = fuse_patch_scores(settings.scoring, torch.cat(pass_one.head), compared)
        counts = [len(h) for h in pass_one.head]
        return cls(model, settings, dict(zip(pass_one.names, fused.split(counts))), fallback, pass_one.failed)

    def network_for(self, source: ScanSource) -> nn.Module:
        """The stand-in model that serves ``source``'s fused maps; raises for a scan left out of the cohort."""
        if source.name not in self.fused:
            raise ScanLoadError(source.path, f"left out of the cohort: {self.failed.get(source.name, 'not found')}")
        return _FusedMaps(self.model, self.fused[source.name], source.name)

    def report(self) -> dict:
        """What every scan's report records about the cohort."""
        return {**self.settings.describe(self.model), "scans": len(self.fused), "fallback_same_scan": self.fallback,
                "threshold_rule": f"{COHORT_THRESHOLD:g} robust sd of the cohort's patch scores"}


BANK_FILE = "reference_bank.safetensors"
"""Name of the reference bank a run saves next to its outputs."""
VOLUME_RESIZE = "volume"
"""Resize policy recorded in a bank of scan slices (the slice pipeline's)."""


def cohort_from_options(model: VisualAD, scoring: str | None, reference: str | Path | None,
                        reference_bank: str | Path | None, out_dir: Path, run_settings=None, resize: str = "pad",
                        **options: float | int | None) -> CohortSettings | None:
    """The cohort settings of a run's options, or ``None`` when it scores every image alone.

    Args:
        model: the run's model.
        scoring: the run's scoring; ``mutual`` or ``visualad+mutual`` make it a cohort run; ``None`` (none
            asked for) makes a one-plane volume run of two or more scans a
            :data:`~visualad_med.model.cohort.DEFAULT_VOLUME_SCORING` cohort run.
        reference: a folder of normal references (2D images, or scans when ``run_settings`` is given):
            their bank is built, saved as ``out_dir/reference_bank.safetensors`` and compared with
            instead of the cohort (scoring ``visualad+mutual`` unless ``mutual``).
        reference_bank: a saved bank to use instead of ``reference``.
        out_dir: the run's output folder.
        run_settings: a volume run's :class:`~visualad_med.inference.settings.RunSettings` (for reading reference scans).
        resize: a 2D run's resize policy (reference images are read the same way).
        options: ``fraction``, ``neighbours``, ``window`` (``None``: the default).

    Raises:
        ValueError: a reference folder without usable images or scans, or a bank that does not fit.
    """
    given = {key: value for key, value in options.items() if value is not None}
    if scoring is None and run_settings is not None and not (reference or reference_bank):
        return CohortSettings(DEFAULT_VOLUME_SCORING, min_scans=2, **given) if len(run_settings.planes) == 1 else None
    if scoring not in COHORT_SCORINGS and not (reference or reference_bank):
        return None
    settings = CohortSettings(scoring if scoring in COHORT_SCORINGS else "visualad+mutual", **given)
    if not (reference or reference_bank):
        return settings
    layers = settings.feature_layers(model)
    policy = VOLUME_RESIZE if run_settings is not None else resize
    if reference_bank:
        bank = ReferenceBank.load(Path(reference_bank))
        bank.check_fits(model, layers, policy)
        return replace(settings, bank=bank, bank_file=str(reference_bank))
    bank = _bank_from_folder(model, Path(reference), layers, Path(out_dir), run_settings, policy)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    bank.save(Path(out_dir) / BANK_FILE)
    logger.info("reference bank of %d images from %s saved as %s", bank.features.shape[0], reference,
                Path(out_dir) / BANK_FILE)
    return replace(settings, bank=bank, bank_file=str(Path(out_dir) / BANK_FILE))


def _bank_from_folder(model: VisualAD, folder: Path, layers: tuple[int, ...], out_dir: Path,
                      run_settings, resize: str) -> ReferenceBank:
    """The bank of a folder of normal images (2D runs) or scans (volume runs, ``run_settings`` given)."""
    from visualad_med.io.images import is_image_file
    from visualad_med.model.reference_bank import bank_from_images
    from visualad_med.io import find_scans

    if not folder.is_dir():
        raise ValueError(f"reference {folder} is not a folder")
    if run_settings is None:
        images = sorted(p for p in folder.rglob("*") if is_image_file(p))
        if not images:
            raise ValueError(f"reference {folder}: no image files (PNG, JPEG, TIFF, BMP)")
        return bank_from_images(model, images, layers, resize)
    scans = find_scans(folder)
    if not scans:
        raise ValueError(f"reference {folder}: no scans (DICOM series, .nii/.nii.gz, .nrrd, .mha/.mhd)")
    out_dir.mkdir(parents=True, exist_ok=True)
    return bank_from_scans(model, scans, run_settings.inferer(model), layers, out_dir, run_settings.window)
