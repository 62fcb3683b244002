"""What a run chooses about the model's map: scoring, map reference and threshold, apart from the checkpoint.

A head records the settings its threshold was calibrated for (:class:`~visualad_med.model.checkpoint.HeadConfig`;
the model's ``settings``). A run starts from them and may choose others (``--scoring``, ``--map-reference``):
:meth:`MapSettings.for_run` makes the run's settings, which go with each call (``model(images, settings=...)``,
:class:`~visualad_med.inference.settings.RunSettings`' ``map``) and never change the model. Training and
calibration set the model's own, which a saved head records. No torch: the run settings hold one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from visualad_med.errors import SettingError

from .scorings import MAP_REFERENCES, SCORINGS

if TYPE_CHECKING:
    from .checkpoint import HeadConfig


@dataclass(frozen=True)
class MapSettings:
    """How the model's ``map`` is made and thresholded.

    Attributes:
        scoring: ``visualad``, ``selfsim`` or ``combined`` (``visualad + selfsim_weight * selfsim``).
        selfsim_weight: weight of the self-similarity sum in ``combined``.
        map_reference: ``none`` (the method's map) or ``body`` (map minus its median over the body).
        threshold: decision threshold on ``map``; ``None`` when uncalibrated.
    """

    scoring: str = "visualad"
    selfsim_weight: float = 1.0
    map_reference: str = "none"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise SettingError("scoring", f"unknown scoring {self.scoring!r}; valid: {', '.join(SCORINGS)}")
        if self.map_reference not in MAP_REFERENCES:
            raise SettingError("map_reference", f"unknown map reference {self.map_reference!r}; valid: "
                               f"{', '.join(MAP_REFERENCES)}")

    def for_run(self, scoring: str | None = None, map_reference: str | None = None) -> MapSettings:
        """These settings with the run's ``scoring`` and ``map_reference`` where given (``None``: keep)."""
        return replace(self, scoring=scoring or self.scoring, map_reference=map_reference or self.map_reference)

    @classmethod
    def of(cls, config: HeadConfig) -> MapSettings:
        """The settings a head was calibrated for."""
        return cls(config.scoring, config.selfsim_weight, config.map_reference, config.threshold)

    def recorded_in(self, config: HeadConfig) -> HeadConfig:
        """``config`` with these settings, as a saved head records them."""
        return replace(config, scoring=self.scoring, selfsim_weight=self.selfsim_weight,
                       map_reference=self.map_reference, threshold=self.threshold)
