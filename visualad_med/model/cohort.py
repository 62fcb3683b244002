"""Cohort scorings of a run: ``mutual`` (training-free, :mod:`visualad_med.model.mutual`) and ``visualad+mutual``.

These are run settings, not head settings: a head scores one image, a cohort
scoring needs the other images of the run. Both scorings are formed on the
patch grid and then turned into maps exactly as the head's map is (upsampled,
smoothed, referenced to the body when the head's ``map_reference`` is ``body``):

* ``mutual``: the cohort patch scores;
* ``visualad+mutual``: the two patch-score grids put on one scale before they
  are added: the head's (the method's sum over taps of ``cos(SAF(p), a') -
  cos(SAF(p), n')``) and the cohort's are each robust-standardised over every
  patch of the cohort (minus the cohort's median, over 1.4826 x its median
  absolute deviation, :func:`~visualad_med.model.mutual.robust_statistics`,
  :class:`CohortScale`), and the fused grid is their mean, standardised again.

``mutual`` alone is standardised the same way, so for both 1 unit is one robust
standard deviation of the cohort's patch scores.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch

from .torch_model import VisualAD, upsample_scores
from .candidates import DEFAULT_CANDIDATES
from .mutual import DEFAULT_FRACTION, DEFAULT_NEIGHBOURS, aggregate_neighbourhood, cohort_scores, default_layers
from .mutual import nearest_candidates
from .mutual import robust_statistics
from .body_reference import body_mask, reference_to_body
from .reference_bank import ReferenceBank
from visualad_med.errors import SettingError
from .scorings import COHORT_SCORINGS, DEFAULT_IMAGE_SCORING, DEFAULT_VOLUME_SCORING  # noqa: F401 (re-exported)
from .scorings import DEPTHS, INTENSITY_TERMS, MATCHES

logger = logging.getLogger(__name__)

COHORT_THRESHOLD = 4.0
"""Mask threshold of cohort maps, in robust standard deviations of the patch scores above the cohort's median,
where no voxel null is made (volume cohorts make one: :meth:`~visualad_med.inference.cohort.CohortScoring.voxel_null`)."""


@dataclass(frozen=True)
class CohortSettings:
    """How a run scores its images against each other.

    Attributes:
        scoring: ``mutual`` or ``visualad+mutual``.
        fraction: interval-average share of the closest candidates.
        neighbours: 2D: candidate images per image (most similar by global descriptor).
        candidates: volumes, ``match="anatomy"``: ``K``, the candidate slices of each slice (its nearest
            slices of other scans by global descriptor, :mod:`~visualad_med.model.candidates`).
        match: volumes: ``anatomy`` (by descriptor) or ``position`` (the slices of every other scan
            within ``window`` of its position, ``per_scan`` of each: cost grows with the cohort).
        position_prior: volumes, ``anatomy``: keep only candidates within this normalised position
            difference (``None``: any position).
        window: volumes, ``position``: largest normalised slice-position difference of a candidate slice;
            also the position window of a reference bank's slices.
        per_scan: volumes, ``position``: candidate slices taken from each other scan.
        depth: volumes: patch scores smoothed across neighbouring slices (:data:`DEPTHS`).
        intensity: volumes: the intensity term (:data:`INTENSITY_TERMS`).
        rescore: 2D: windows of image re-scoring over the most similar images
            (:func:`~visualad_med.model.mutual.rescore_neighbourhood`, MuSc's RsCIN); empty: none.
        degrees: neighbourhood degrees of patch aggregation (:func:`~visualad_med.model.mutual.aggregate_neighbourhood`);
            the scores of each degree are averaged, as MuSc does with 1, 3, 5 (cost: one comparison per degree).
        layers: backbone blocks whose patch tokens are compared; ``None``: ``L/2, 3L/4, L``.
        bank: few-shot references compared with instead of the cohort.
        bank_file: where the bank was saved or read.
        min_scans: a volume run with fewer scans is scored by the head alone (the default
            cohort of a volume run asks for 2).
    """

    scoring: str = "mutual"
    fraction: float = DEFAULT_FRACTION
    neighbours: int = DEFAULT_NEIGHBOURS
    candidates: int = DEFAULT_CANDIDATES
    match: str = "anatomy"
    position_prior: float | None = None
    window: float = 0.05
    per_scan: int = 3
    depth: str = "patch"
    intensity: str = "vouched"
    degrees: tuple[int, ...] = (1,)
    rescore: tuple[int, ...] = ()
    layers: tuple[int, ...] | None = None
    bank: ReferenceBank | None = None
    bank_file: str | None = None
    min_scans: int = 1

    def __post_init__(self) -> None:
        if self.scoring not in COHORT_SCORINGS:
            raise SettingError("scoring", f"unknown cohort scoring {self.scoring!r}; valid: {', '.join(COHORT_SCORINGS)}")
        if self.depth not in DEPTHS:
            raise SettingError("cohort_depth", f"unknown depth smoothing {self.depth!r}; valid: {', '.join(DEPTHS)}")
        if self.intensity not in INTENSITY_TERMS:
            raise SettingError("cohort_intensity", f"unknown intensity term {self.intensity!r}; valid: "
                               f"{', '.join(INTENSITY_TERMS)}")
        if self.match not in MATCHES:
            raise SettingError("cohort_match", f"unknown candidate rule {self.match!r}; valid: {', '.join(MATCHES)}")
        if (not 0.0 < self.fraction <= 1.0 or self.neighbours < 1 or self.per_scan < 1 or self.window < 0
                or self.candidates < 1 or not self.degrees or any(d < 1 or d % 2 == 0 for d in self.degrees)
                or any(k < 1 for k in self.rescore)
                or (self.position_prior is not None and self.position_prior <= 0)):
            raise ValueError(f"cohort settings out of range: fraction {self.fraction} (0..1], neighbours "
                             f"{self.neighbours} >= 1, candidates {self.candidates} >= 1, degrees {self.degrees} odd, per_scan {self.per_scan} "
                             f">= 1, window {self.window} >= 0, position prior {self.position_prior} > 0")

    def applies_to(self, scans: int, log: bool = True) -> bool:
        """Whether a volume run of ``scans`` scans is scored this way (else by the head alone, logged)."""
        if scans >= self.min_scans or self.bank is not None:
            return True
        if log:
            logger.info("%d scan(s): fewer than %d for the default cohort scoring; scored by the head alone",
                        scans, self.min_scans)
        return False

    def feature_layers(self, model: VisualAD) -> tuple[int, ...]:
        """The blocks compared, for ``model``'s backbone (1-based, sorted).

        Raises:
            SettingError: for a block outside ``1..depth``.
        """
        depth = model.backbone.depth
        if self.layers and any(not 1 <= layer <= depth for layer in self.layers):
            raise SettingError("cohort_layers", f"blocks {list(self.layers)} outside 1..{depth} of the backbone")
        return tuple(sorted(set(self.layers))) if self.layers else default_layers(depth)

    def describe(self, model: VisualAD) -> dict:
        """The settings as recorded in results and reports (the bank by its file and size)."""
        compared = "the cohort" if self.bank is None else f"{self.bank.features.shape[0]} reference images"
        return {"scoring": self.scoring, "compared_with": compared, "reference_bank": self.bank_file,
                "fraction": self.fraction, "neighbours": self.neighbours, "candidates": self.candidates,
                "match": self.match, "position_prior": self.position_prior, "depth": self.depth, "intensity": self.intensity,
                "degrees": list(self.degrees), "rescore": list(self.rescore),
                "window": self.window,
                "per_scan": self.per_scan, "layers": list(self.feature_layers(model))}


def image_cohort_scores(features: torch.Tensor, cohort: CohortSettings, model: VisualAD, resize: str) -> torch.Tensor:
    """``(M, N)`` patch scores of ``(M, T, N, D)`` features of 2D images of one kind: against the reference bank,
    or each against the other images (its ``cohort.neighbours`` most similar); the mean over ``cohort.degrees``."""
    grid = model.backbone.grid_for(model.config.image_size, model.config.image_size)
    if cohort.bank is not None:
        cohort.bank.check_fits(model, cohort.feature_layers(model), resize)
        return torch.stack([cohort.bank.scores(features, grid=grid, degree=degree)
                            for degree in cohort.degrees]).mean(dim=0)
    candidates = nearest_candidates(features, cohort.neighbours)
    return torch.stack([cohort_scores(aggregate_neighbourhood(features, grid, degree), candidates, cohort.fraction)
                        for degree in cohort.degrees]).mean(dim=0)


def fuse_patch_scores(scoring: str, head: torch.Tensor, cohort: torch.Tensor) -> torch.Tensor:
    """``(M, N)`` patch scores of a 2D run: standardised ``mutual``, or the mean of both standardised grids,
    standardised again (so the threshold means the same number of robust sd for both scorings)."""
    return CohortScale.of(scoring, head, cohort).apply(head, cohort)


SCALE_STEP = 1.05
"""Robust scales of a volume cohort are rounded to powers of this (2.5 % at most), medians to an eighth of
the scale, so that adding a few scans to a large cohort seldom moves them (see :class:`CohortScale`)."""


def rounded_statistics(location: float, scale: float, quantise: bool = True) -> tuple[float, float]:
    """``(median, scale)`` rounded as :data:`SCALE_STEP` says when ``quantise``, else as they are."""
    if not quantise:
        return location, scale
    scale = SCALE_STEP ** round(math.log(scale, SCALE_STEP))
    return round(location / scale * 8) / 8 * scale, scale


@dataclass(frozen=True)
class CohortScale:
    """The robust location and scale (median, 1.4826 x MAD) of a cohort's patch scores, for each stream.

    ``mutual``: ``(mutual - m_mutual) / s_mutual``; ``visualad+mutual``: the mean of the head's and the
    cohort's standardised grids, standardised again with ``(m_fused, s_fused)``. All statistics are
    over every patch of the cohort, so a map keeps its rank among the maps of other scans. With
    ``quantise`` (volume cohorts) they are rounded (:data:`SCALE_STEP`): each scan's report records
    them, and a finished scan is redone only when they change.
    """

    scoring: str
    mutual: tuple[float, float]
    head: tuple[float, float] = (0.0, 1.0)
    fused: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def of(cls, scoring: str, head: torch.Tensor, cohort: torch.Tensor, quantise: bool = False) -> CohortScale:
        """The scale of ``(M, N)`` head and cohort patch scores of a whole cohort."""
        mutual = rounded_statistics(*robust_statistics(cohort), quantise)
        if scoring == "mutual":
            return cls(scoring, mutual)
        head_scale = rounded_statistics(*robust_statistics(head), quantise)
        unfused = cls(scoring, mutual, head_scale)
        return replace(unfused, fused=rounded_statistics(*robust_statistics(unfused._mean(head, cohort)), quantise))

    def _mean(self, head: torch.Tensor, cohort: torch.Tensor) -> torch.Tensor:
        return ((head - self.head[0]) / self.head[1] + (cohort - self.mutual[0]) / self.mutual[1]) / 2.0

    def apply(self, head: torch.Tensor, cohort: torch.Tensor) -> torch.Tensor:
        """``(S, N)`` patch scores of some of the cohort's images on the cohort's scale."""
        if self.scoring == "mutual":
            return (cohort - self.mutual[0]) / self.mutual[1]
        return (self._mean(head, cohort) - self.fused[0]) / self.fused[1]

    def describe(self) -> dict:
        """The statistics, as a report records them."""
        return {"mutual": list(self.mutual), "head": list(self.head), "fused": list(self.fused)}


def smooth_across_slices(scores: torch.Tensor, indices: torch.Tensor, sigma_slices: float) -> torch.Tensor:
    """``(S, N)`` patch scores of slices at array ``indices`` averaged with Gaussian weights over their
    neighbours (``sigma_slices`` in slices; slices absent from ``indices`` count as absent, not as 0)."""
    if sigma_slices <= 0 or scores.shape[0] < 2:
        return scores
    gaps = (indices[:, None] - indices[None, :]).double()
    weights = torch.exp(-0.5 * (gaps / sigma_slices) ** 2)
    weights = weights * (gaps.abs() <= 3 * sigma_slices)
    return ((weights / weights.sum(dim=1, keepdim=True)).float() @ scores.float())


def patch_maps(model: VisualAD, patch_scores: torch.Tensor, images: torch.Tensor, map_reference: str) -> torch.Tensor:
    """``(B, N)`` patch scores of ``(B, 3, S, S)`` normalised images -> ``(B, S, S)`` maps, made like the head's
    (``map_reference``: the run's, ``none`` or ``body``)."""
    side = images.shape[-1]
    grid = model.backbone.grid_for(images.shape[-2], side)
    maps = model.smoothing(upsample_scores(patch_scores.reshape(-1, *grid).float(), (images.shape[-2], side)))
    if map_reference == "body":
        maps = reference_to_body(maps, body_mask(images, model.config.mean, model.config.std))
    return maps


def head_patch_scores(outputs: dict) -> torch.Tensor:
    """``(B, N)``: the method's patch scores summed over taps, from the model's outputs."""
    return torch.stack(list(outputs["patch_scores"].values())).sum(0).flatten(1).float()
