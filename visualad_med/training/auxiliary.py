"""The auxiliary training set: industrial samples, synthetic anomalies mixed in, then polarity/background augmentation.

One recipe for ``visualad-med train`` and the bundle's ``train.json``, so that
the shipped head can be reproduced through either.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from .augment import AugmentedDataset, parse_augmentations
from .synthetic import build_synthetic_training_set, parse_synthetic_spec


def build_auxiliary_set(
    base: Dataset,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    synthetic: str | None = None,
    synthetic_probability: float = 0.5,
    synthetic_sources: Sequence[str] = (),
    synthetic_bases: Sequence[str] = (),
    augment: str | None = None,
    augment_probability: float = 0.5,
    seed: int = 111,
) -> Dataset:
    """``base`` with synthetic anomalies (``perlin,cutpaste,scar,patchswap`` or ``all``) and augmentations.

    Args:
        base: industrial samples under the common sample contract, normalised with ``mean``/``std``.
        mean: normalisation mean of ``base``'s images (3 values).
        std: normalisation std (3 values).
        synthetic: synthetic anomaly kinds, or ``None`` for none.
        synthetic_probability: chance that an item is replaced by a synthetic anomaly.
        synthetic_sources: texture sources of perlin anomalies (folders, or ``skimage``).
        synthetic_bases: extra normal images to draw anomalies on (folders, or ``skimage``).
        augment: ``invert,shrinkpad`` or ``all``, or ``None`` for none.
        augment_probability: chance of each augmentation per item.
        seed: seeds every per-item draw.

    Raises:
        ValueError: an unknown kind, a probability outside ``[0, 1]`` or a missing source folder.
    """
    dataset = base
    if synthetic:
        spec = parse_synthetic_spec(synthetic, synthetic_probability, synthetic_sources, synthetic_bases)
        dataset = build_synthetic_training_set(base, spec, seed=seed)
    if augment:
        dataset = AugmentedDataset(dataset, parse_augmentations(augment), mean, std, augment_probability, seed=seed)
    return dataset
