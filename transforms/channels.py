"""Channel steps for RGB backbones: grey to three channels, per-channel mean/std normalisation."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, NormalizeIntensity, RepeatChannel, Transform
from monai.utils import TransformBackends, convert_to_tensor

__all__ = ["GreyToRGB", "GreyToRGBd", "NormalizeChannels", "NormalizeChannelsd"]


def _check_dim(img: torch.Tensor, channel_dim: int) -> int:
    if not -img.ndim <= channel_dim < img.ndim:
        raise ValueError(f"channel_dim={channel_dim} is out of range for an image of shape {tuple(img.shape)}.")
    return channel_dim % img.ndim


class GreyToRGB(Transform):
    """Repeat a single grey channel three times.

    MONAI's ``RepeatChannel(3)`` along ``channel_dim``: it repeats dim 0 only, so a batch of
    slices ``(S, 1, H, W)`` is moved to channel-first and back.

    Args:
        channel_dim: the channel dimension: 0 for an image ``(1, H, W)``, 1 for slices ``(S, 1, H, W)``.
    """

    backend = RepeatChannel.backend

    def __init__(self, channel_dim: int = 0) -> None:
        self.channel_dim = channel_dim
        self._repeat = RepeatChannel(3)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Repeat the channel.

        Args:
            img: grey image with one channel at ``channel_dim``, e.g. ``(S, 1, H, W)``.

        Returns:
            The same with three identical channels, e.g. ``(S, 3, H, W)``.

        Raises:
            ValueError: if ``channel_dim`` is out of range or holds more than one channel.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        dim = _check_dim(img, self.channel_dim)
        if img.shape[dim] != 1:
            raise ValueError(f"expected one grey channel at dim {dim}, got shape {tuple(img.shape)}.")
        return self._repeat(img.movedim(dim, 0)).movedim(0, dim).contiguous()


class NormalizeChannels(Transform):
    """Normalise each channel with a backbone's mean and std: ``(x - mean[c]) / std[c]``.

    MONAI's ``NormalizeIntensity(subtrahend=mean, divisor=std, channel_wise=True)`` along
    ``channel_dim``: it takes channels at dim 0 only, so a batch ``(S, 3, H, W)`` is moved to
    channel-first and back. The input is copied first: ``NormalizeIntensity`` with
    ``channel_wise=True`` writes into a float input in place.

    Args:
        mean: per-channel mean, e.g. ``(0.485, 0.456, 0.406)`` (ImageNet) for inputs in [0, 1].
        std: per-channel standard deviation, same length, all > 0.
        channel_dim: the channel dimension: 0 for an image ``(3, H, W)``, 1 for slices ``(S, 3, H, W)``.

    Raises:
        ValueError: if ``mean`` and ``std`` differ in length or a std is not > 0.
    """

    backend = NormalizeIntensity.backend

    def __init__(self, mean: Sequence[float], std: Sequence[float], channel_dim: int = 0) -> None:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need the same, non-zero length, got mean={mean}, std={std}.")
        if min(std) <= 0:
            raise ValueError(f"std must be > 0 for every channel, got std={std}.")
        self.mean, self.std, self.channel_dim = mean, std, channel_dim
        self._normalize = NormalizeIntensity(subtrahend=mean, divisor=std, channel_wise=True, dtype=np.float32)

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Normalise ``img``.

        Args:
            img: image with ``len(mean)`` channels at ``channel_dim``, e.g. ``(S, 3, H, W)``.

        Returns:
            Float32 tensor of the same shape.

        Raises:
            ValueError: if ``channel_dim`` is out of range or the channel count is not ``len(mean)``.
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        dim = _check_dim(img, self.channel_dim)
        if img.shape[dim] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} channels at dim {dim}, got shape {tuple(img.shape)}.")
        channel_first = img.movedim(dim, 0).to(dtype=torch.float32, copy=True)  # NormalizeIntensity writes in place
        return self._normalize(channel_first).movedim(0, dim).contiguous()


class GreyToRGBd(MapTransform):
    """Dictionary-based wrapper of :py:class:`GreyToRGB`.

    Args:
        keys: keys of the images to convert. See also: ``monai.transforms.MapTransform``.
        channel_dim: see :py:class:`GreyToRGB`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = GreyToRGB.backend

    def __init__(self, keys: KeysCollection, channel_dim: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = GreyToRGB(channel_dim)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class NormalizeChannelsd(MapTransform):
    """Dictionary-based wrapper of :py:class:`NormalizeChannels`.

    Args:
        keys: keys of the images to normalise. See also: ``monai.transforms.MapTransform``.
        mean: see :py:class:`NormalizeChannels`.
        std: see :py:class:`NormalizeChannels`.
        channel_dim: see :py:class:`NormalizeChannels`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = NormalizeChannels.backend

    def __init__(
        self,
        keys: KeysCollection,
        mean: Sequence[float],
        std: Sequence[float],
        channel_dim: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeChannels(mean, std, channel_dim)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d
