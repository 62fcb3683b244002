"""The settings of a run over scans, apart from the model and its checkpoint: one frozen :class:`RunSettings`.

The model's own run choices (scoring, map reference, calibrated threshold) are its
:class:`~visualad_med.model.map_settings.MapSettings`; cohort scoring is a
:class:`~visualad_med.model.cohort.CohortSettings`. What is left, how scans are sliced and
written, is :class:`RunSettings`. Its field defaults are the run's defaults: the command line, the
bundle (a ``null`` key) and :class:`~visualad_med.inference.slices.SliceInferer` read them from
here, and every run's slice inferer is :meth:`RunSettings.inferer`, so a resumed run compares
exactly what ran. The module imports no torch (``visualad-med --help`` reads the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from visualad_med.errors import SettingError
from visualad_med.model.map_settings import MapSettings
from visualad_med.model.scorings import PRECISIONS

if TYPE_CHECKING:
    from visualad_med.model.torch_model import VisualAD

    from .slices import SliceInferer

HEAD_THRESHOLD = "head (F1-max on industrial training data)"
"""The report's ``threshold_source`` when the mask threshold is the head's calibrated one."""
USER_THRESHOLD = "user"
"""The report's ``threshold_source`` when the run was given a threshold."""


@dataclass(frozen=True)
class RunSettings:
    """Options of a run over scans.

    Attributes:
        planes: anatomical planes; several average the maps (tri-planar fusion).
        window: intensity window (``auto`` picks from Modality; see :mod:`visualad_med.transforms`).
        batch_size: slices per model call.
        threshold: on the map; ``None`` uses the head's calibrated threshold (or the cohort rule).
        overwrite: redo scans whose report already exists.
        skip_empty: leave slices without body out of the model (map 0, score absent).
        progress: show progress bars.
        precision: autocast of the model (``auto``: bf16 where the device computes it natively, else fp16
            on older GPUs and fp32 on other CPUs; :func:`~visualad_med.model.devices.inference_precision`).
        map_dtype: how the anomaly map file stores values (:data:`~visualad_med.io.writers.MAP_DTYPES`):
            ``int16`` (default: NIfTI scale over the map's range, about half a step of float32,
            less than half the size) or ``float32``. The mask and scores always come from the
            float32 map in memory.
        preview: write a quick-look PNG per scan and the run's ``index.html``.
        feature_store: cohort runs: the folder of the feature store
            (:mod:`~visualad_med.inference.feature_store`); ``None``: ``OUTPUT/.features``. Runs that
            share it (several output folders, or ``torchrun`` nodes on shared storage) reuse each
            other's features.
        threshold_rule: the rule that set ``threshold`` (a cohort run's, from its null distribution);
            ``None`` when the user set it or the head's is used.
        map: the run's map settings (scoring, map reference: ``model.settings.for_run(...)``), passed with
            every call of the model; ``None``: the model's own.

    A field's default is the run's default (``RunSettings.batch_size`` is 8): the command line, the
    bundle and the slice inferer read it from here.
    """

    planes: tuple[str, ...] = ("axial",)
    window: str | tuple[float, float] = "auto"
    batch_size: int = 8
    threshold: float | None = None
    overwrite: bool = False
    skip_empty: bool = True
    progress: bool = True
    precision: str = "auto"
    map_dtype: str = "int16"
    preview: bool = False
    feature_store: str | None = None
    threshold_rule: str | None = None
    map: MapSettings | None = None

    def __post_init__(self) -> None:
        """Check the settings before any scan is read, so a typo fails the run once, not every scan."""
        from visualad_med.io.writers import MAP_DTYPES
        from visualad_med.transforms import resolve_window

        from .slices import check_planes

        check_planes(self.planes)
        if self.window != "auto":
            try:
                resolve_window(self.window)
            except ValueError as error:
                raise SettingError("window", str(error)) from None
        if self.map_dtype not in MAP_DTYPES:
            raise SettingError("map_dtype", f"map_dtype must be one of {', '.join(MAP_DTYPES)}, got {self.map_dtype!r}")
        if self.precision not in PRECISIONS:
            raise SettingError("precision", f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.batch_size < 1:
            raise SettingError("batch_size", f"batch_size must be >= 1, got {self.batch_size}")

    def inferer(self, model: VisualAD) -> SliceInferer:
        """The :class:`~visualad_med.inference.slices.SliceInferer` of these settings, on the model's device."""
        from .slices import SliceInferer

        device = next(model.parameters()).device
        return SliceInferer(self, device)

    def map_settings(self, model: VisualAD) -> MapSettings:
        """The map settings the run passes to ``model``: :attr:`map`, else the model's own."""
        return model.settings if self.map is None else self.map

    def mask_threshold(self, model: VisualAD) -> float:
        """The threshold on the map: these settings', else the model's calibrated one."""
        return model.threshold if self.threshold is None else self.threshold

    @property
    def threshold_source(self) -> str:
        """Where the mask threshold comes from, as the report says it: the rule, the head's or the user's."""
        if self.threshold_rule is not None:
            return self.threshold_rule
        return HEAD_THRESHOLD if self.threshold is None else USER_THRESHOLD

