"""MONAI-style transforms that take CT/MR volumes to 2D model inputs and per-slice maps back.

Each transform is an array class plus a dictionary twin with a trailing ``d``;
:py:func:`slice_pipeline` composes them for volume inference.
"""

from .channels import GreyToRGB, GreyToRGBd, NormalizeChannels, NormalizeChannelsd
from .foreground import has_body
from .pipeline import SliceInfo, SlicePipeline, slice_pipeline
from .slicing import PLANES, SliceLayout, VolumeToSlices, VolumeToSlicesd, anatomical_axis, slice_layout
from .spatial import ResizeLongestPad, ResizeLongestPadd
from .windowing import (
    CT_WINDOWS,
    MODALITY_KEYS,
    ResolvedWindow,
    WindowIntensity,
    WindowIntensityd,
    WindowSpec,
    auto_window,
    modality_from_meta,
    resolve_intensity_window,
    resolve_window,
    window_range,
)

__all__ = [
    "CT_WINDOWS",
    "MODALITY_KEYS",
    "PLANES",
    "ResolvedWindow",
    "GreyToRGB",
    "GreyToRGBd",
    "NormalizeChannels",
    "NormalizeChannelsd",
    "ResizeLongestPad",
    "ResizeLongestPadd",
    "SliceInfo",
    "SliceLayout",
    "SlicePipeline",
    "VolumeToSlices",
    "VolumeToSlicesd",
    "WindowIntensity",
    "WindowIntensityd",
    "WindowSpec",
    "anatomical_axis",
    "auto_window",
    "has_body",
    "modality_from_meta",
    "resolve_intensity_window",
    "resolve_window",
    "slice_layout",
    "slice_pipeline",
    "window_range",
]
