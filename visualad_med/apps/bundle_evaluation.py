"""Glue for the bundle's evaluation workflow (``configs/evaluate.json``): ``visualad-med evaluate`` from config keys.

The config has what MONAI's ``InferProperties`` ask of an ``eval`` workflow, so that
``ConfigWorkflow(..., workflow_type="eval").check_properties()`` passes:

- ``dataset``: :func:`evaluation_dataset`, the labelled 2D set (MVFA, meta.json, MVTec, VisA) at the
  model's input size, or, for ``layout`` ``msd`` or a ``labels_dir``, the scans with their label volumes;
- ``inferer``: the :class:`~visualad_med.inference.slices.SliceInferer` of the config's ``settings``
  (:func:`~visualad_med.apps.bundle.run_settings`), which volumes go through inside
  :func:`~visualad_med.inference.folder.run_folder` (2D images are whole slices already:
  :func:`visualad_med.evaluation.images.evaluate` batches them itself);
- ``evaluator``: :class:`LabelledSetEvaluator`, whose :meth:`~LabelledSetEvaluator.run` is ``run``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from visualad_med.apps.bundle import (VOLUME_LAYOUT, BundleConfigError, BundleRunError, cohort_settings, command_line,
                                      labelled_dataset, require_dir, resolve_device, unwrap)
from visualad_med.inference.settings import RunSettings

logger = logging.getLogger(__name__)


def is_volume_layout(layout: str, labels_dir: str | None) -> bool:
    """Whether the evaluation is on volumes: a Decathlon folder, or scans matched with ``labels_dir``."""
    return bool(labels_dir) or layout == VOLUME_LAYOUT


def evaluation_dataset(network: nn.Module, dataset_dir, layout: str, split: str = "test",
                       classes: Sequence[str] | str | None = None, labels_dir: str | None = None):
    """What the evaluation reads: the labelled 2D set, or a list of
    :class:`~visualad_med.datasets.volume_pairs.VolumePair` (scan and label volume).

    The 2D set is read as :func:`~visualad_med.evaluation.images.evaluate` reads a data root (``skip``
    policy for missing masks, images letterboxed); a volume ``split`` of ``test`` (the config's 2D
    default) means the Decathlon's ``training`` list, the one with labels.
    """
    from visualad_med.datasets.volume_pairs import labelled_volumes
    from visualad_med.evaluation.images import DEFAULT_RESIZE

    if not is_volume_layout(layout, labels_dir):
        return labelled_dataset(unwrap(network), dataset_dir, layout, split, [classes] if isinstance(classes, str)
                                else classes, missing_mask="skip", resize=DEFAULT_RESIZE)
    require_dir(dataset_dir)
    try:
        return labelled_volumes(dataset_dir, labels_dir and require_dir(labels_dir, "labels_dir"),
                                "training" if split == "test" else split)
    except ValueError as error:
        raise BundleConfigError("dataset_dir", f"{error}; set --dataset_dir (and --labels_dir, --split)") from None


class LabelledSetEvaluator:
    """The evaluation workflow's ``evaluator``: :func:`~visualad_med.evaluation.images.evaluate` on a 2D set, or
    :func:`~visualad_med.evaluation.volumes.evaluate_volumes` on volumes, as ``visualad-med evaluate`` does.

    Args:
        network: :class:`~visualad_med.apps.bundle.VisualADMapNet` (or the model itself) on its device.
        dataset: :func:`evaluation_dataset`. Volumes are evaluated from it; a 2D set's data root is handed to
            ``evaluate`` again, so that ``results.json`` records root, layout and split as the CLI's does.
        settings: the run's settings of volumes (:func:`~visualad_med.apps.bundle.run_settings`).
        output_dir: output folder.
        dataset_dir, layout, split, classes: where ``dataset`` came from (recorded).
        overlays, workers, device: of the 2D evaluation (its batch size is ``settings.batch_size``).
        cohort_scoring: volumes: ``mutual`` etc. (see :func:`~visualad_med.apps.bundle.cohort_settings`).
    """

    def __init__(self, network: nn.Module, dataset, settings: RunSettings, output_dir, dataset_dir, layout: str,
                 split: str = "test", classes: Sequence[str] | str | None = None,
                 overlays: int = 8, workers: int = 0, device: str | torch.device = "auto",
                 cohort_scoring: str | None = None):
        self.network, self.dataset, self.settings = network, dataset, settings
        self.output_dir, self.dataset_dir, self.layout, self.split = output_dir, dataset_dir, layout, split
        self.classes = [classes] if isinstance(classes, str) else classes
        self.overlays, self.workers, self.device, self.cohort_scoring = overlays, workers, device, cohort_scoring

    def run(self) -> dict:
        """Evaluate and write the results into ``output_dir``; returns them."""
        if not self.output_dir:
            raise BundleConfigError("output_dir", "not set; set --output_dir")
        if isinstance(self.dataset, list):
            return self._run_volumes()
        return self._run_images()

    def _run_images(self) -> dict:
        from visualad_med.evaluation.images import evaluate
        from visualad_med.evaluation.report import markdown_table

        started = time.perf_counter()
        try:
            results = evaluate(unwrap(self.network), Path(self.dataset_dir), self.layout, Path(self.output_dir),
                               split=self.split, classes=self.classes, batch_size=self.settings.batch_size,
                               overlays=self.overlays, device=resolve_device(self.device), num_workers=self.workers,
                               head=getattr(self.network, "head_path", None), command=command_line().split(" "),
                               map_settings=getattr(self.network, "map_settings", None))
        except ValueError as error:
            key = "batch_size" if getattr(error, "setting", None) == "batch_size" else "dataset_dir"
            raise BundleConfigError(key, f"{error}; set --{key}") from None
        logger.info("results (%.1f s):\n%s", time.perf_counter() - started, markdown_table(results))
        return results

    def _run_volumes(self) -> dict:
        from visualad_med.evaluation.volumes import evaluate_volumes

        cohort = cohort_settings(self.network, self.cohort_scoring, None, None, self.output_dir, self.settings)
        results = evaluate_volumes(unwrap(self.network), self.dataset, Path(self.output_dir), self.settings,
                                   data=str(self.dataset_dir), head=getattr(self.network, "head_path", None),
                                   command=command_line().split(" "), cohort=cohort)
        if results["counts"]["failed"]:
            raise BundleRunError(f"{results['counts']['failed']} of {results['counts']['listed']} scans failed "
                                 f"(reasons above and in {Path(self.output_dir) / 'results.json'})")
        return results
