"""Scans and folders through the model: the slice inferer, one scan, a folder of scans, cohorts, 2D images."""

from .folder import RunSettings, run_folder
from .slices import SliceInferer, SliceScores

__all__ = ["RunSettings", "SliceInferer", "SliceScores", "run_folder"]
