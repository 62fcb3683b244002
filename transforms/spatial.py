"""Resize a batch of slices to a square model input keeping the aspect ratio (pad, centred), and back."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform, Resize, SpatialPad
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["ResizeLongestPad", "ResizeLongestPadd"]


def _interpolation(mode: str | None, shrinking: bool) -> str:
    """The given mode, or by default ``"area"`` to shrink and ``"bilinear"`` to enlarge."""
    if mode is not None:
        return mode
    return "area" if shrinking else "bilinear"


def _per_slice(img: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a 2D MONAI transform to ``(S, C, H, W)`` in one call by folding ``S * C`` into channels."""
    s, c = img.shape[:2]
    flat = convert_to_tensor(img, track_meta=False).reshape(s * c, *img.shape[2:])
    out = convert_to_tensor(transform(flat), track_meta=False)
    return out.reshape(s, c, *out.shape[1:])


class ResizeLongestPad(InvertibleTransform):
    """Resize slices so the longer side is ``spatial_size``, then pad the shorter side to a square, centred.

    This is MONAI's ``Resize(spatial_size, size_mode="longest")`` followed by
    ``SpatialPad((spatial_size, spatial_size), method="symmetric")``, applied to all slices and
    channels at once: ``(S, C, H, W)`` is folded to ``(S * C, H, W)`` so that resizing is one
    ``torch.nn.functional.interpolate`` call (both MONAI transforms take a single channel-first
    image, not a batch, hence this wrapper). :py:meth:`inverse` crops the padding and resizes back
    to each slice's own ``(H, W)``; with no resizing (``max(H, W) == spatial_size``) it is exact.
    By default shrinking uses ``"area"`` (the mean of the covered pixels, no aliasing) and enlarging
    ``"bilinear"``; MONAI's ``anti_aliasing`` is not used because its Gaussian zero-pads and
    darkens the image border.

    Args:
        spatial_size: side of the square output, e.g. 224 (pixels).
        mode: interpolation mode of ``torch.nn.functional.interpolate`` used both ways
            (``"bilinear"``, ``"area"``, ``"bicubic"``, ``"nearest"``...); None: ``"area"`` to
            shrink, ``"bilinear"`` to enlarge, chosen separately for the forward and the inverse.
        pad_value: value of the padded pixels; 0 is black for windowed images in [0, 1].

    Raises:
        ValueError: if ``spatial_size`` is not a positive int.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: int, mode: str | None = None, pad_value: float = 0.0) -> None:
        if isinstance(spatial_size, bool) or not isinstance(spatial_size, int) or spatial_size <= 0:
            raise ValueError(f"spatial_size must be a positive int, got {spatial_size!r}.")
        self.spatial_size = spatial_size
        self.mode = mode
        self.pad_value = pad_value
        self._resizer = Resize(spatial_size, size_mode="longest")
        self._padder = SpatialPad((spatial_size, spatial_size), method="symmetric", value=pad_value)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Resize and pad ``img``.

        Args:
            img: slices ``(S, C, H, W)``.

        Returns:
            Float32 slices ``(S, C, spatial_size, spatial_size)``; a ``MetaTensor`` keeps its meta
            and gains a trace entry for :py:meth:`inverse`.

        Raises:
            ValueError: if ``img`` is not 4D.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.ndim != 4:
            raise ValueError(f"expected slices (S, C, H, W), got shape {tuple(img.shape)}.")
        mode = _interpolation(self.mode, max(img.shape[2:]) > self.spatial_size)
        resized = _per_slice(img, functools.partial(self._resizer, mode=mode))
        pad_h, pad_w = self._padder.compute_pad_width(resized.shape[2:])[1:]
        padded = _per_slice(resized, self._padder)
        out = convert_to_dst_type(padded, img, dtype=padded.dtype)[0]
        extra_info = {
            "resized": tuple(resized.shape[2:]),
            "pad": (pad_h[0], pad_w[0]),
            "mode": self.mode,
        }
        return self.push_transform(out, orig_size=tuple(img.shape[2:]), extra_info=extra_info)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Map slices ``(S, C', spatial_size, spatial_size)`` traced by this transform back to ``(S, C', H, W)``."""
        transform = self.pop_transform(data)
        return self.inverse_transform(data, transform)

    def inverse_transform(self, data: torch.Tensor, transform: Mapping[str, Any]) -> torch.Tensor:
        """Crop the padding recorded in ``transform`` and resize back to the original ``(H, W)``.

        Args:
            data: slices or per-slice maps ``(S, C', spatial_size, spatial_size)``; any channel count.
            transform: the trace entry pushed by :py:meth:`__call__`.

        Returns:
            Float32 ``(S, C', H, W)``; a ``MetaTensor`` keeps its meta.

        Raises:
            ValueError: if ``data`` is not ``(S, C', spatial_size, spatial_size)``.
        """
        info = transform[TraceKeys.EXTRA_INFO]
        (top, left), (height, width) = info["pad"], info["resized"]
        if data.ndim != 4 or tuple(data.shape[2:]) != (self.spatial_size, self.spatial_size):
            raise ValueError(
                f"expected (S, C, {self.spatial_size}, {self.spatial_size}) at model size, "
                f"got shape {tuple(data.shape)}."
            )
        cropped = data[:, :, top : top + height, left : left + width]
        orig_size = tuple(int(s) for s in transform[TraceKeys.ORIG_SIZE])
        resizer = Resize(orig_size, mode=_interpolation(info["mode"], max(orig_size) < self.spatial_size))
        out = _per_slice(cropped, resizer)
        return convert_to_dst_type(out, data, dtype=out.dtype)[0]


class ResizeLongestPadd(MapTransform, InvertibleTransform):
    """Dictionary-based wrapper of :py:class:`ResizeLongestPad`.

    Args:
        keys: keys of the slice batches to resize. See also: ``monai.transforms.MapTransform``.
        spatial_size: see :py:class:`ResizeLongestPad`.
        mode: see :py:class:`ResizeLongestPad`.
        pad_value: see :py:class:`ResizeLongestPad`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ResizeLongestPad.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int,
        mode: str | None = None,
        pad_value: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resizer = ResizeLongestPad(spatial_size, mode, pad_value)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resizer.inverse(d[key])
        return d
