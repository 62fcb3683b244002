"""Reading 2D images and masks, and turning them into normalised model inputs.

Every data set in :mod:`visualad_med.datasets` reads its files through
:func:`read_rgb` and :func:`read_mask` and preprocesses them with
:func:`image_to_tensor` and :func:`mask_to_tensor`, so the conversion rules
live in one place:

* Images become ``uint8`` RGB arrays ``(H, W, 3)``. Grey, palette and RGB(A)
  files go through Pillow's conversion (alpha is discarded, as the reference
  implementation's ``Image.open(path).convert("RGB")`` does). Images with more
  than 8 bits (16-bit PNG/TIFF, 32-bit integer or float) are scaled by the
  image's own maximum, ``round(value * 255 / max)`` with negatives clipped to
  0, then replicated to 3 channels.
* Masks become boolean arrays ``(H, W)``: a pixel is anomalous where its value
  exceeds half the mask's own maximum, so 0/1, 0/255 and 0/65535 encodings all
  work and compression noise near 0 or the maximum is ignored; an all-zero mask
  is empty. Palette masks use their palette indices, RGB masks their luminance.
* Preprocessing resizes the image to ``S x S`` with Pillow's bicubic filter
  (antialiased when shrinking) and normalises with the given mean/std; the
  mask is resized bilinearly to ``S x S`` and binarised at 0.5. This matches
  the reference "resize then centre crop of the same size", which for a square
  target is a plain resize.

A file that cannot be used raises :class:`ImageReadError` (an ``OSError``) naming
the file and the reason: unreadable or truncated, a decompression bomb (Pillow's
``DecompressionBombError``), more pixels than the memory budget of
:mod:`visualad_med.io.budget` allows (checked on the header, before decoding),
or NaN or infinite pixels in a float image or mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .budget import BYTES_PER_PIXEL, budget_problem
from visualad_med.errors import ImageReadError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File extensions (lower case) recognised as images when scanning folders."""

_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names a visible file with an extension in :data:`IMAGE_EXTENSIONS`."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; empty if the folder is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


@contextlib.contextmanager
def _open_image(path: str | Path) -> Iterator[Image.Image]:
    """Open an image lazily (header only) and refuse bombs and images above the memory budget."""
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"decompression bomb refused ({error})") from error
    except OSError as error:
        raise ImageReadError(path, f"unreadable image ({error})") from error
    with image:
        width, height = image.size
        problem = budget_problem(width * height, BYTES_PER_PIXEL, f"image size {width} x {height}", "pixels")
        if problem:
            raise ImageReadError(path, problem)
        try:
            yield image
        except ValueError as error:  # NaN pixels
            raise ImageReadError(path, str(error)) from error
        except (Image.DecompressionBombError, OSError) as error:
            raise ImageReadError(path, f"unreadable image ({error})") from error


def _check_finite(values: np.ndarray) -> None:
    """Raise ``ValueError`` naming the count and first ``(row, column)`` of NaN or infinite pixels."""
    finite = np.isfinite(values)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0][:2])
        raise ValueError(f"{int((~finite).sum())} NaN or infinite pixel(s), first at (row, column) {first}")


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth array by its own maximum to ``uint8`` (negatives clipped).

    Raises:
        ValueError: the array holds NaN or infinite values (no maximum to scale by).
    """
    if array.dtype.kind == "f":
        _check_finite(array)
    values = np.clip(array.astype(np.float64), 0.0, None)
    peak = values.max(initial=0.0)
    if peak <= 0.0:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint(values * (255.0 / peak)).astype(np.uint8)


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any mode to a ``uint8`` RGB array.

    Args:
        image: Pillow image; modes with more than 8 bits per pixel (``I;16``,
            ``I``, ``F``) are scaled by the image's own maximum.

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        grey = _scale_to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8`` RGB (conversion rules in the module docstring).

    Args:
        path: image file (any format Pillow reads).

    Returns:
        ``uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ImageReadError: the file is missing, unreadable, truncated, a bomb, above the memory
            budget, or holds NaN or infinite pixels (see the module docstring).
    """
    with _open_image(path) as image:
        return pil_to_rgb_array(image)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as a boolean array (anomalous where value > half the mask's maximum).

    Args:
        path: mask file; grey, palette (indices are used), RGB or 16-bit.

    Returns:
        ``bool`` array of shape ``(H, W)``.

    Raises:
        ImageReadError: as :func:`read_rgb`.
    """
    with _open_image(path) as image:
        if image.mode in ("P", "PA", "1", "L", "LA") or image.mode in _HIGH_DEPTH_MODES:
            values = np.asarray(image.getchannel(0) if image.mode in ("PA", "LA") else image)
        else:
            values = np.asarray(image.convert("L"))
        if values.dtype.kind == "f":
            _check_finite(values)
    values = values.astype(np.float64)
    peak = values.max(initial=0.0)
    if peak <= 0.0:
        return np.zeros(values.shape, dtype=bool)
    return values > peak / 2.0


def image_size_of(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header only.

    Raises:
        ImageReadError: as :func:`read_rgb`, for what the header shows.
    """
    with _open_image(path) as image:
        width, height = image.size
    return height, width


def check_normalisation(image_size: int, mean: Iterable[float], std: Iterable[float]) -> None:
    """Validate preprocessing arguments.

    Raises:
        ValueError: ``image_size`` is not a positive integer, or ``mean``/``std``
            do not have 3 entries, or a ``std`` entry is not positive.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    mean, std = tuple(mean), tuple(std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 entries (R, G, B), got mean={mean} std={std}")
    if min(std) <= 0:
        raise ValueError(f"std entries must be positive, got std={std}")


def image_to_tensor(
    image: np.ndarray | Image.Image,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """Resize an RGB image to ``S x S`` (bicubic) and normalise it.

    Args:
        image: ``uint8`` array ``(H, W, 3)`` or a Pillow image (converted with
            :func:`pil_to_rgb_array`).
        image_size: output side ``S`` in pixels.
        mean: per-channel mean of the ``[0, 1]`` intensities.
        std: per-channel standard deviation.

    Returns:
        ``float32`` tensor of shape ``(3, S, S)``, ``(x / 255 - mean) / std``.

    Raises:
        ValueError: the array is not ``uint8 (H, W, 3)`` or the arguments are invalid.
    """
    check_normalisation(image_size, mean, std)
    array = pil_to_rgb_array(image) if isinstance(image, Image.Image) else image
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    resized = Image.fromarray(array).resize((image_size, image_size), Image.Resampling.BICUBIC)
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((tensor - mean_t) / std_t).contiguous()


def mask_to_tensor(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """Resize a boolean mask to ``S x S`` (bilinear) and binarise it at 0.5.

    Args:
        mask: ``bool`` array ``(H, W)``.
        image_size: output side ``S`` in pixels.

    Returns:
        ``float32`` tensor of shape ``(S, S)`` holding 0 and 1.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D (H, W) mask, got shape {mask.shape}")
    grey = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(grey.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.float32)
    return torch.from_numpy((resized / 255.0 > 0.5).astype(np.float32))


RESIZE_POLICIES: tuple[str, ...] = ("squash", "pad")
"""``squash``: resize to ``S x S`` (:func:`image_to_tensor`); ``pad``: keep the aspect ratio and pad to a
square (:func:`letterbox_image`), as volume slices are (``ResizeLongestPad``)."""


def letterbox_image(
    image: np.ndarray, image_size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Resize an RGB ``uint8`` image so its longer side is ``S``, pad it to ``S x S`` with black, normalise.

    The same transform as volume slices (:class:`visualad_med.transforms.ResizeLongestPad`).

    Returns:
        ``((3, S, S) float32 tensor, (top, left, height, width))``: the image and where it lies in the square.
    """
    from visualad_med.transforms import ResizeLongestPad

    check_normalisation(image_size, mean, std)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    image = _shrink_large(image, image_size)
    padded = ResizeLongestPad(image_size)(torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None])
    info = padded.applied_operations[-1]["extra_info"]  # the trace ResizeLongestPad.inverse reads
    (top, left), (height, width) = info["pad"], info["resized"]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((torch.as_tensor(padded)[0] - mean_t) / std_t).contiguous(), (int(top), int(left), int(height), int(width))


LARGE_IMAGE_PIXELS = 4096 * 4096
"""Images with more pixels are first shrunk in ``uint8`` (box filter, :func:`_shrink_large`)."""


def _shrink_large(image: np.ndarray, image_size: int) -> np.ndarray:
    """An ``(H, W, 3)`` ``uint8`` image of more than :data:`LARGE_IMAGE_PIXELS`, box-reduced by the integer
    factor that keeps its longest side at least ``2 S``; smaller images unchanged.

    Area resizing of the full image in float32 held several float copies of it (a 6000 x 6000 grey
    PNG peaked at 2.06 GB); the box reduction averages whole blocks, as area resizing does, in uint8.
    """
    height, width = image.shape[:2]
    factor = max(height, width) // (2 * image_size)
    if height * width <= LARGE_IMAGE_PIXELS or factor < 2:
        return image
    return np.asarray(Image.fromarray(image).reduce(factor))


def to_model_input(
    image: np.ndarray, image_size: int, mean: tuple[float, float, float], std: tuple[float, float, float],
    resize: str
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """An RGB ``uint8`` image as the model's normalised ``(3, S, S)`` input under ``resize`` (``pad`` or
    ``squash``), with ``(top, left, height, width)`` of the image inside the square."""
    if resize == "pad":
        return letterbox_image(image, image_size, mean, std)
    return image_to_tensor(image, image_size, mean, std), (0, 0, image_size, image_size)


def letterbox_mask(mask: np.ndarray, image_size: int, placement: tuple[int, int, int, int]) -> torch.Tensor:
    """A boolean ``(H, W)`` mask resized (bilinear, binarised at 0.5) into ``placement`` of an ``S x S`` zero mask."""
    top, left, height, width = placement
    grey = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(grey.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0 > 0.5
    out = torch.zeros(image_size, image_size, dtype=torch.float32)
    out[top:top + height, left:left + width] = torch.from_numpy(resized.astype(np.float32))
    return out
