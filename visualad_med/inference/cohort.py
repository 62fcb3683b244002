"""Cohort scoring of a folder of scans: a stage between the slice inferer and the writers.

:meth:`CohortScoring.prepare` makes sure every scan of the run has its entry in the feature store
(:mod:`visualad_med.inference.feature_store`): a scan without one is read, sliced and run through
the model once (:meth:`~visualad_med.inference.slices.SliceInferer.extract`: its patch features and
the head's patch scores), an entry made earlier under the same key (the scan's input and the
settings that change features) is reused. Under ``torchrun`` each rank extracts its share of the
scans, then every rank waits at a ``torch.distributed`` barrier. The candidates of every slice are
then chosen over the whole store: its ``K`` nearest slices of other scans by global descriptor
(:func:`~visualad_med.model.candidates.nearest_slices`, FAISS), or the slices near its position
(``match="position"``, the earlier rule), or a reference bank.

Each rank then scores its share: every slice against its candidates' features (rows read from
the store), candidates of one scan counting as one image
(:func:`~visualad_med.model.mutual.grouped_scores`); the scores are kept in the store under the
digest of the candidates they were made against. After a second barrier every rank reads all of
them and takes the cohort's robust statistics (:class:`~visualad_med.model.cohort.CohortScale`,
rounded so that a few added scans seldom move them). :meth:`CohortScoring.infer` puts one scan's
scores on that scale (fused with the head's for ``visualad+mutual``) and places the patch maps on
the scan's grid by slice index (:meth:`~visualad_med.inference.slices.SliceInferer.assemble`).
The map volumes of :data:`NULL_SCANS` scans then give the run's voxel null: the weight of the
intensity term (:class:`~visualad_med.model.intensity.IntensityFusion`, 0 unless the maps vouch for the
intensity's bright tail) and the mask threshold, a tail point of the fused maps' body voxels.
A finished scan is redone only when its candidates, the cohort's scale or the fusion change (the resume
rule, :func:`candidate_identity`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from visualad_med.io import ScanLoadError, ScanSource, load_scan
from visualad_med.model.candidates import SliceCandidates, nearest_slices
from visualad_med.model.cohort import COHORT_SCORINGS, COHORT_THRESHOLD, DEFAULT_VOLUME_SCORING, CohortSettings
from visualad_med.model.cohort import CohortScale, patch_maps, smooth_across_slices
from visualad_med.model.intensity import IntensityFusion, intensity_z
from visualad_med.transforms import anatomical_axis
from visualad_med.model.body_reference import volume_body_mask
from visualad_med.model.mutual import aggregate_neighbourhood, global_descriptors, grouped_scores, position_candidates
from visualad_med.model.mutual import robust_statistics
from visualad_med.model.reference_bank import ReferenceBank
from visualad_med.model.torch_model import VisualAD, top_fraction_mean

from .distributed import barrier, rank_world
from .feature_store import FeatureStore, ScanFeatures, feature_key
from .resume import input_identity
from .scan import LoadedScan, ScanResult, finish_scan
from .settings import RunSettings
from .slices import ScanMaps, SliceInferer, slice_preprocessing

logger = logging.getLogger(__name__)

LOAD_ERRORS = (ScanLoadError, ValueError, OSError, RuntimeError)
NULL_SCANS = 8
"""Scans whose maps make the cohort's voxel null, of which the mask threshold is a tail point."""
NULL_VOXELS = 200_000
"""Body voxels taken (at random, seeded) from each of those scans."""
NULL_SD = 3.0
"""The mask threshold in robust sd of the voxel null above its median (0.13 % one-sided for a normal null)."""


EXTRACTION_VERSION = 2
"""Raised whenever reading or preprocessing changes the features of the same input with the same settings
(2: a filled background inside the tissue's range is shown as the minimum), so stored features are remade."""


def feature_settings(model: VisualAD, settings: RunSettings, inferer: SliceInferer, head_sha256: str | None,
                     layers: tuple[int, ...]) -> dict:
    """The settings that change a scan's stored features (its store key, with the scan's input)."""
    config = model.config
    return {"extraction": EXTRACTION_VERSION, "head_sha256": head_sha256, "backbone": config.backbone,
            "backbone_sha256": config.weights_sha256, "image_size": config.image_size, "taps": list(config.taps), "layers": list(layers),
            "plane": inferer.planes[0], "window": settings.window, "skip_empty": inferer.skip_empty,
            "precision": inferer.precision}


def extract_scan(model: VisualAD, scan, inferer: SliceInferer, layers: tuple[int, ...]) -> ScanFeatures:
    """A loaded scan's store entry (its slices run through the model once); raises when no slice has body."""
    if len(inferer.planes) != 1:
        raise ValueError(f"cohort and reference scoring run on one plane, got {list(inferer.planes)}")
    window = (scan.window.low, scan.window.high)
    extracted = inferer.extract(scan.volume, model, slice_preprocessing(model.config, window), layers)
    if not extracted.indices.size:
        raise ValueError("no slice with body")
    features = torch.from_numpy(extracted.features)
    descriptors = global_descriptors(features).numpy()
    return ScanFeatures(scan.source.name, "", extracted.features, extracted.head, descriptors, extracted.indices,
                        extracted.length)


@dataclass
class CohortScoring:
    """The cohort of a run, once every scan has its store entry (see the module docstring).

    Attributes:
        model: the run's model.
        settings: the cohort's settings.
        entries: store entries of the scans that could be run, in the run's scan order.
        failed: why each other scan could not be run.
        inputs: the input identity (:func:`~visualad_med.inference.resume.input_identity`) of each scan of
            this rank's share.
        candidates: every slice's candidates (``None`` with a reference bank).
        store: the feature store.
        scale: the cohort's robust statistics (:class:`~visualad_med.model.cohort.CohortScale`).
        fusion: the intensity term's weight and the maps' statistics (:meth:`voxel_null`).
        threshold: the mask threshold on the fused maps (:meth:`voxel_null`).
        compare_dtype: of the patch comparisons: bfloat16 when the run's model runs in bf16 (where the
            device computes it natively), else float32.
    """

    model: VisualAD
    settings: CohortSettings
    entries: dict[str, ScanFeatures]
    failed: dict[str, str]
    inputs: dict[str, list[dict]]
    candidates: SliceCandidates | None
    store: FeatureStore
    scale: CohortScale | None = None
    fusion: IntensityFusion = IntensityFusion()
    threshold: float = COHORT_THRESHOLD
    compare_dtype: torch.dtype = torch.float32
    _rows: dict[str, tuple[object, list[str]]] = field(default_factory=dict, repr=False)

    @classmethod
    def prepare(cls, model: VisualAD, scans: list[ScanSource], settings: RunSettings, cohort: CohortSettings,
                inferer: SliceInferer, store: FeatureStore, head_sha256: str | None) -> CohortScoring:
        """Extract what the store lacks (this rank's share), wait for the other ranks, choose candidates."""
        layers = cohort.feature_layers(model)
        if cohort.bank is not None:
            cohort.bank.check_fits(model, layers, VOLUME_RESIZE)
        fixed = feature_settings(model, settings, inferer, head_sha256, layers)
        rank, world = rank_world()
        share = scans[rank::world]
        inputs, keys = {}, {}
        for source in share:  # the other ranks check theirs: after the barrier their entries are current
            try:
                inputs[source.name] = input_identity(source)
            except OSError as error:
                inputs[source.name] = []
                logger.warning("%s: cannot be read (%s)", source.path, error)
            keys[source.name] = feature_key(inputs[source.name], fixed)
        missing = [s for s in share if store.load(s.name, keys[s.name]) is None]  # failed ones are tried again
        if len(share) > len(missing):
            logger.info("feature store %s: %d scan(s) reused, %d to extract", store.folder,
                        len(share) - len(missing), len(missing))
        _extract_missing(model, missing, settings, inferer, layers, store, keys)
        barrier()
        entries, failed = {}, {}
        for source in scans:
            entry = store.load(source.name, keys.get(source.name))
            if entry is not None:
                entries[source.name] = entry
            else:
                failed[source.name] = store.failure(source.name, keys.get(source.name)) or "no features in the store"
        candidates = None
        if cohort.bank is None and entries:
            candidates = _choose_candidates(list(entries.values()), cohort)
            if candidates.fallback_same_scan:
                logger.warning("cohort of one scan (%s): each slice is compared with the same scan's slices at "
                               "least 0.2 of its length away", next(iter(entries)))
        prepared = cls(model, cohort, entries, failed, inputs, candidates, store,
                       compare_dtype=torch.bfloat16 if inferer.precision == "bf16" else torch.float32)
        for name in tqdm([s.name for s in share if s.name in entries], desc="cohort scoring", unit="scan",
                         disable=not settings.progress):
            prepared.compared(name)  # stored for the scale below and for writing
        barrier()
        prepared.scale = prepared.cohort_scale()
        prepared.fusion, prepared.threshold = prepared.shared_null({s.name: s for s in scans}, settings, inferer)
        return prepared

    def shared_null(self, sources: dict[str, ScanSource], settings: RunSettings,
                    inferer: SliceInferer) -> tuple[IntensityFusion, float]:
        """:meth:`voxel_null`, made by rank 0 and read from the store by the other ``torchrun`` ranks."""
        rank, world = rank_world()
        if world == 1:
            return self.voxel_null(sources, settings, inferer)
        key = {"scale": self.scale.describe(), "scans": sorted(e.digest for e in self.entries.values()),
               "cohort": self.settings.describe(self.model), "window": settings.window}
        if rank == 0:
            fusion, threshold = self.voxel_null(sources, settings, inferer)
            self.store.save_null(key, {"fusion": fusion.describe(), "threshold": threshold})
        barrier()
        shared = self.store.load_null(key)
        if shared is None:
            return self.voxel_null(sources, settings, inferer)
        return IntensityFusion.from_description(shared["fusion"]), float(shared["threshold"])

    def cohort_scale(self) -> CohortScale:
        """The rounded robust statistics of every scan's head and cohort patch scores."""
        heads = torch.cat([torch.from_numpy(entry.head) for entry in self.entries.values()])
        compared = torch.cat([self.compared(name) for name in self.entries])
        return CohortScale.of(self.settings.scoring, heads, compared, quantise=True)

    @functools.cached_property
    def _slice_table(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Scan names, and for every cohort slice its scan number and array index (cohort order)."""
        names = list(self.entries)
        scan_of = np.concatenate([np.full(len(e.indices), k) for k, e in enumerate(self.entries.values())])
        index = np.concatenate([e.indices for e in self.entries.values()])
        return names, scan_of, index

    @functools.cached_property
    def _offsets(self) -> dict[str, int]:
        """The cohort index of each scan's first slice."""
        counts = [len(entry.indices) for entry in self.entries.values()]
        return dict(zip(self.entries, np.cumsum([0] + counts[:-1]).tolist()))

    def candidate_rows(self, name: str) -> tuple[object, list[str]]:
        """Scan ``name``'s candidates, per slice ``(scan key, slice index)`` pairs, and the scans they come from
        (made once per scan: the resume check, the stored scores' key and the report all read them)."""
        if name not in self._rows:
            self._rows[name] = self._candidate_rows(name)
        return self._rows[name]

    def _candidate_rows(self, name: str) -> tuple[object, list[str]]:
        """:meth:`candidate_rows`, made."""
        if self.candidates is None:
            return {"bank": self.settings.bank_file}, []
        names, scan_of, index = self._slice_table
        start = self._offsets[name]
        digests = [self.entries[n].digest for n in names]
        rows, used = [], set()
        for k in range(len(self.entries[name].indices)):
            chosen = self.candidates.of(start + k)
            rows.append([(digests[scan_of[j]], int(index[j])) for j in chosen])
            used.update(names[scan_of[j]] for j in chosen)
        return rows, sorted(used)

    def identity(self, name: str) -> dict:
        """What a scan's outputs depend on in the cohort: the settings, its candidates and the cohort's scale,
        as its report records them (:func:`candidate_identity`)."""
        if name not in self.entries:
            return {}
        rows, used = self.candidate_rows(name)
        scale = {**self.scale.describe(), **self.fusion.describe()} if self.scale is not None else None
        return candidate_identity(self.settings.describe(self.model), rows, used, scale)

    def infer(self, loaded: LoadedScan, settings: RunSettings, inferer: SliceInferer, begun: float) -> ScanResult:
        """Score one scan against its candidates and place its maps on its grid (see the module docstring)."""
        return finish_scan(self.model, loaded, settings, self.maps(loaded, inferer), begun)

    def maps(self, loaded: LoadedScan, inferer: SliceInferer, with_intensity: bool = True) -> ScanMaps:
        """One scan's map volume from its cohort scores on the cohort's scale, fused with its intensity term
        as :attr:`fusion` says (unless not ``with_intensity``)."""
        name = loaded.scan.source.name
        if name not in self.entries:
            raise ScanLoadError(loaded.scan.source.path, f"left out of the cohort: {self.failed.get(name)}")
        entry = self.entries[name]
        fused = self.scale.apply(torch.from_numpy(entry.head), self.compared(name))
        if self.settings.depth == "patch":
            fused = smooth_across_slices(fused, torch.from_numpy(entry.indices), self._depth_sigma(loaded, inferer))
        row_of = {int(index): row for row, index in enumerate(entry.indices)}
        model = self.model
        map_reference = inferer.settings.map_settings(model).map_reference

        def step(images: torch.Tensor, indices: torch.Tensor) -> dict:
            missing = [int(i) for i in indices if int(i) not in row_of]
            if missing:
                raise RuntimeError(f"{name}: slices {missing[:5]} have body now but no stored features; the scan "
                                   "changed since its features were stored")
            rows = fused[[row_of[int(i)] for i in indices]]
            with torch.inference_mode():
                maps = patch_maps(model, rows, images, map_reference)
            return {"map": maps, "score": top_fraction_mean(maps)}

        scan = loaded.scan
        window = (scan.window.low, scan.window.high)
        maps = inferer.assemble(scan.volume, step, model.config.image_size, slice_preprocessing(model.config, window))
        if not with_intensity or self.fusion.weight == 0:
            return maps
        volume = scan.volume[0].as_tensor()
        intensity = intensity_z(volume, window, volume_body_mask(volume, window))
        maps.anomaly[0] = self.fusion.apply(maps.anomaly[0].as_tensor(), intensity)
        return ScanMaps(maps.anomaly, replace(maps.scores, scores=slice_scores(maps.anomaly[0], maps.scores)))

    def _depth_sigma(self, loaded: LoadedScan, inferer: SliceInferer) -> float:
        """Half the in-plane footprint of a patch (mm: the slice's longest side over the patches along it),
        in slices of this scan."""
        affine = loaded.scan.volume.affine.numpy()
        axis = anatomical_axis(affine, inferer.planes[0])
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        shape = loaded.scan.volume.shape[1:]
        extent = max(shape[a] * spacing[a] for a in range(3) if a != axis)
        footprint = extent * self.model.backbone.patch_size / self.model.config.image_size
        return footprint / 2 / spacing[axis]

    def voxel_null(self, sources: dict[str, ScanSource], settings: RunSettings,
                   inferer: SliceInferer) -> tuple[IntensityFusion, float]:
        """The intensity fusion and the mask threshold, from the body voxels of the maps of :data:`NULL_SCANS`
        scans (those with the smallest sha256 of their feature key: a few added scans seldom change the
        choice): the fusion of the maps with their intensity z-scores, then :data:`NULL_SD` robust sd above
        the median of the fused values, rounded to an eighth of that sd."""
        chosen = sorted(self.entries, key=lambda n: hashlib.sha256(self.entries[n].digest.encode()).hexdigest())
        maps_sample, intensity_sample = [], []
        for name in chosen[:NULL_SCANS]:
            try:
                scan = load_scan(sources[name], window=settings.window)
            except LOAD_ERRORS as error:
                logger.warning("%s: left out of the voxel null: %s", name, getattr(error, "reason", error))
                continue
            maps = self.maps(LoadedScan(scan, 0.0, 0.0), inferer, with_intensity=False)
            anomaly = maps.anomaly[0].as_tensor()
            volume, window = scan.volume[0].as_tensor(), (scan.window.low, scan.window.high)
            body = volume_body_mask(volume, window)
            inside = (body & maps.scores.run_voxels(tuple(anomaly.shape))).nonzero(as_tuple=True)
            pick = torch.randperm(inside[0].numel(), generator=torch.Generator().manual_seed(0))[:NULL_VOXELS]
            voxels = tuple(index[pick] for index in inside)
            maps_sample.append(anomaly[voxels])
            intensity_sample.append(intensity_z(volume, window, body)[voxels])
        if not maps_sample:
            return IntensityFusion(), COHORT_THRESHOLD
        maps_values, intensities = torch.cat(maps_sample), torch.cat(intensity_sample)
        vouched = self.settings.intensity == "vouched"
        fusion = IntensityFusion.of(maps_values, intensities, NULL_SD) if vouched else IntensityFusion()
        return fusion, null_threshold(fusion.apply(maps_values, intensities))

    def compared(self, name: str) -> torch.Tensor:
        """``(S, N)`` mutual (or reference-bank) patch scores of scan ``name``'s slices, from the store when they
        were made against the same candidates with the same interval share (or bank), else computed and stored."""
        made_with = [self.settings.fraction, self.settings.bank_file, str(self.compare_dtype),
                     self.candidate_rows(name)[0]]
        if self.settings.degrees != (1,):
            made_with.append(list(self.settings.degrees))
        digest = candidate_identity({}, made_with, [])["candidates_sha256"]
        stored = self.store.load_scores(name, digest)
        if stored is not None:
            return torch.from_numpy(stored)
        scores = self._compare(name)
        self.store.save_scores(name, digest, scores.numpy())
        return scores

    def _compare(self, name: str) -> torch.Tensor:
        """:meth:`compared`, computed: the mean over the neighbourhood degrees of the scores against the candidates
        (or the bank), features aggregated per degree (:func:`~visualad_med.model.mutual.aggregate_neighbourhood`)."""
        entry = self.entries[name]
        query = torch.from_numpy(entry.features.read())
        side = self.model.config.image_size
        grid = self.model.backbone.grid_for(side, side)
        degrees = self.settings.degrees
        if self.candidates is None:
            positions = torch.from_numpy(entry.positions).float()
            return torch.stack([self.settings.bank.scores(query, positions, self.settings.window, grid=grid,
                                                          degree=degree) for degree in degrees]).mean(dim=0)
        names, scan_of, index = self._slice_table
        offsets = self._offsets
        start = offsets[name]
        aggregated = {degree: aggregate_neighbourhood(query, grid, degree) for degree in degrees}
        scores = torch.zeros(query.shape[0], query.shape[2])
        for k in range(query.shape[0]):
            chosen = self.candidates.of(start + k)
            if not chosen.size:
                continue
            groups = [chosen[scan_of[chosen] == scan] for scan in np.unique(scan_of[chosen])]
            references = torch.from_numpy(np.concatenate([
                self.entries[names[scan_of[group[0]]]].features.rows(group - offsets[names[scan_of[group[0]]]])
                for group in groups]))
            labels = np.concatenate([scan_of[group] for group in groups]).tolist()
            scores[k] = torch.stack([
                grouped_scores(aggregated[degree][k], aggregate_neighbourhood(references, grid, degree), labels,
                               self.settings.fraction, dtype=self.compare_dtype)
                for degree in degrees]).mean(dim=0)
        return scores

    def report(self) -> dict:
        """What every scan's report records about the cohort."""
        return {**self.settings.describe(self.model), "scans": len(self.entries),
                "fallback_same_scan": bool(self.candidates is not None and self.candidates.fallback_same_scan),
                "feature_store": str(self.store.folder), "scale": self.scale.describe(),
                "intensity": self.fusion.describe(),
                "threshold_rule": f"median + {NULL_SD:g} robust sd of the body voxels of {NULL_SCANS} scans' maps "
                                  "(with the intensity term) "
                                  f"(at most {NULL_VOXELS} voxels each)"}


def null_threshold(values: torch.Tensor) -> float:
    """:data:`NULL_SD` robust sd (1.4826 x MAD) above the median of ``values``, rounded to an eighth of that sd:
    for a normal null, 0.13 % of its values lie above it."""
    median, spread = robust_statistics(values)
    step = spread / 8
    return round((median + NULL_SD * spread) / step) * step


def slice_scores(anomaly: torch.Tensor, scores) -> list[float | None]:
    """Per slice of ``scores``' axis with a score: the mean of the top 1 % of its voxels of ``anomaly`` ``(X, Y, Z)``
    (:func:`~visualad_med.model.torch_model.top_fraction_mean`, as the slice maps are scored)."""
    slices = anomaly.movedim(scores.axis, 0)
    return [None if value is None else float(top_fraction_mean(slices[k:k + 1]))
            for k, value in enumerate(scores.scores)]


def candidate_identity(settings: dict, rows: object, scans: list[str], scale: dict | None = None) -> dict:
    """A scan's cohort identity: the cohort settings, the sha256 of its candidates (per slice, each
    candidate's scan key and slice index), the names of the scans they come from and the cohort's scale."""
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return json.loads(json.dumps({"settings": settings, "candidates_sha256": digest, "candidate_scans": scans,
                                  "scale": scale}))


def _choose_candidates(entries: list[ScanFeatures], cohort: CohortSettings) -> SliceCandidates:
    """Every slice's candidates in cohort order, by descriptor (``anatomy``) or by position."""
    scan_of = np.concatenate([np.full(len(e.indices), k) for k, e in enumerate(entries)])
    position = np.concatenate([e.positions for e in entries])
    if cohort.match == "position":
        groups, fallback = position_candidates(scan_of.tolist(), position.tolist(), cohort.window, cohort.per_scan)
        rows = [[j for group in groups(i) for j in group] for i in range(len(scan_of))]
        width = max(1, max(len(row) for row in rows))
        table = np.full((len(rows), width), -1, dtype=np.int64)
        for i, row in enumerate(rows):
            table[i, :len(row)] = row
        return SliceCandidates(table, fallback)
    descriptors = np.concatenate([e.descriptors for e in entries])
    return nearest_slices(descriptors, scan_of, position, cohort.candidates, cohort.position_prior)


def _extract_missing(model: VisualAD, sources: list[ScanSource], settings: RunSettings, inferer: SliceInferer,
                     layers: tuple[int, ...], store: FeatureStore, keys: dict[str, dict]) -> None:
    """Read (one scan ahead, in a reader thread) and extract every scan of ``sources`` into ``store``."""
    def load(source: ScanSource):
        return load_scan(source, window=settings.window)

    with ThreadPoolExecutor(1, thread_name_prefix="reader") as reader:
        loading = reader.submit(load, sources[0]) if sources else None
        for k, source in enumerate(tqdm(sources, desc="features", unit="scan", disable=not settings.progress)):
            current, loading = loading, reader.submit(load, sources[k + 1]) if k + 1 < len(sources) else None
            try:
                entry = extract_scan(model, current.result(), inferer, layers)
            except LOAD_ERRORS as error:
                reason = getattr(error, "reason", str(error))
                logger.warning("%s: left out of the cohort: %s", source.name, reason)
                store.save_failure(source.name, keys[source.name], reason)
                continue
            store.save(entry, keys[source.name])


def bank_from_scans(model: VisualAD, scans: list[ScanSource], inferer: SliceInferer, layers: tuple[int, ...],
                    window: str | tuple[float, float] = "auto") -> ReferenceBank:
    """A reference bank of every slice with body of a few normal scans, with their positions."""
    features, positions, used = [], [], []
    for source in scans:
        try:
            entry = extract_scan(model, load_scan(source, window=window), inferer, layers)
        except LOAD_ERRORS as error:
            logger.warning("%s: reference scan left out: %s", source.name, getattr(error, "reason", str(error)))
            continue
        features.append(torch.from_numpy(entry.features))
        positions.append(torch.from_numpy(entry.positions).float())
        used.append(str(source.path))
    if not features:
        raise ValueError(f"no usable reference scan among {len(scans)}")
    return ReferenceBank(torch.cat(features), torch.cat(positions), layers, model.image_size,
                         model.config.weights_sha256, used, VOLUME_RESIZE)


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
    return bank_from_scans(model, scans, run_settings.inferer(model), layers, run_settings.window)
