"""Glue for the bundle's training workflow (``configs/train.json``): the head trained as ``visualad-med train`` does.

The config follows the zoo's training layout, so that ``ConfigWorkflow(..., workflow_type="train")``
finds what MONAI's ``TrainProperties`` ask for, and each of them is what the run uses:

- ``network_def``: :func:`build_training_network`, a fresh :class:`~visualad_med.model.visualad.VisualAD`;
- ``industrial_dataset``: :func:`training_dataset`, the industrial set with pixel masks (also the
  calibration set and the class-balancing reference);
- ``train#dataset``: :func:`auxiliary_set`, that set with synthetic anomalies and augmentations mixed in;
- ``train#inferer``: a MONAI ``SimpleInferer``, the forward pass of every training step;
- ``train#trainer``: :class:`HeadTrainer`, whose ``max_epochs`` is the run's number of epochs and
  whose :meth:`HeadTrainer.run` is :func:`visualad_med.training.loop.train`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from visualad_med.apps.bundle import (BundleConfigError, command_line, labelled_dataset, model_error,
                                      resolve_device)
from visualad_med.errors import BackboneWeightsError
from visualad_med.model.for_run import DEFAULT_BACKBONE
from visualad_med.model.visualad import VisualAD, build_model
from visualad_med.training import TrainConfig


def as_taps(taps: str | int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``None``, ``"3,6,9,12"`` or a list of 1-based tap layers."""
    if taps is None:
        return None
    if isinstance(taps, int):
        return (taps,)
    values = taps.split(",") if isinstance(taps, str) else taps
    return tuple(int(v) for v in values)


def as_roots(dataset_dir: str | Sequence[str]) -> list[str]:
    """The training data roots of ``dataset_dir`` (one folder or a list), as recorded in the head."""
    return [str(root) for root in dataset_dir] if isinstance(dataset_dir, (list, tuple)) else [str(dataset_dir)]


def build_training_network(backbone: str = DEFAULT_BACKBONE, backbone_weights: str | None = None,
                           image_size: int | None = None, taps: str | Sequence[int] | None = None,
                           seed: int = 0, map_reference: str = "none") -> VisualAD:
    """A fresh VisualAD to train (the train config's ``network_def``); errors name the key."""
    try:
        model = build_model(backbone, backbone_weights=backbone_weights, image_size=image_size, taps=as_taps(taps),
                            seed=seed)
    except (ValueError, TypeError, BackboneWeightsError) as error:
        raise model_error(error) from None
    try:
        return model.set_map_reference(map_reference)
    except ValueError as error:
        raise BundleConfigError("map_reference", f"{error}; set --map_reference") from None


def training_dataset(network: VisualAD, dataset_dir, layout: str = "mvtec", split: str = "test"):
    """The industrial training set (MVTec, VisA or meta.json folder) at the model's input size."""
    return labelled_dataset(network, dataset_dir, layout, split)


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
                                   augment=augment, augment_probability=augment_probability, seed=seed)
    except ValueError as error:
        key = "augment" if getattr(error, "setting", None) == "augment" else "synthetic"
        raise BundleConfigError(key, f"{error}; set --{key}, --{key}_probability"
                                + (", --synthetic_source, --synthetic_base" if key == "synthetic" else "")) from None


class HeadTrainer:
    """The training workflow's ``train#trainer``: :func:`visualad_med.training.loop.train` over ``dataset``.

    Builds nothing until :meth:`run`, so MONAI's ``check_properties`` can instantiate it cheaply.

    Args:
        network: the fresh :class:`VisualAD` (``network_def``).
        dataset: the training samples (``train#dataset``).
        inferer: the forward pass of a step (``train#inferer``, a ``SimpleInferer``).
        max_epochs: passes over ``dataset``; replaces ``config.epochs``.
        config: the other hyper-parameters.
        output_dir: receives the checkpoints and the final ``head.safetensors``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        calibration_set: the industrial set, for the threshold and the class balance; ``dataset`` when None.
        resume: continue from ``output_dir/train_state.pt``.
        provenance: recorded in the head's config (data, layout, options).
        balance_classes: draw every class of ``calibration_set`` equally often; ``None``: when it holds
            more than one class.
    """

    def __init__(self, network: VisualAD, dataset, inferer: Callable, max_epochs: int, config: TrainConfig,
                 output_dir: str | Path, device: str | torch.device = "auto", calibration_set=None,
                 resume: bool = False, provenance: dict | None = None, balance_classes: bool | None = None):
        self.network = network
        self.dataset = dataset
        self.inferer = inferer
        self.max_epochs = int(max_epochs)
        self.config = config
        self.output_dir = output_dir
        self.device = device
        self.calibration_set = calibration_set
        self.resume = resume
        self.provenance = provenance
        self.balance_classes = balance_classes

    def run(self) -> Path:
        """Train; returns the final head's path. The bundle's command is recorded in the head."""
        from visualad_med.datasets import class_sampling
        from visualad_med.training.loop import train

        if not self.output_dir:
            raise BundleConfigError("output_dir", "not set; set --output_dir")
        base = self.calibration_set if self.calibration_set is not None else self.dataset
        balance, weights = class_sampling(base, self.balance_classes)
        provenance = {**(self.provenance or {}), "classes": base.classes, "balance_classes": balance,
                      "command": command_line()}
        try:
            return train(self.network, self.dataset, Path(self.output_dir),
                         dataclasses.replace(self.config, epochs=self.max_epochs), resolve_device(self.device),
                         calibration_set=self.calibration_set, resume=self.resume, provenance=provenance,
                         sample_weights=weights, inferer=self.inferer)
        except FileNotFoundError as error:
            if self.resume:
                raise BundleConfigError("resume", f"{error}") from None
            raise
