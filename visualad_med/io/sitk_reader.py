"""A MONAI ``ImageReader`` on SimpleITK, for ``LoadImage``: NRRD, MetaImage and DICOM pixel stacks.

Written because MONAI's ``ITKReader`` needs the ``itk`` package, which is not a dependency, and
``PydicomReader`` cannot decode compressed DICOM (e.g. CQ500's JPEG Lossless) without optional
plugins; SimpleITK is a dependency and decodes them with its built-in GDCM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

__all__ = ["SimpleITKReader", "sitk_affine"]

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


def sitk_affine(image: sitk.Image, lps_to_ras: bool = True) -> np.ndarray:
    """``(4, 4)`` voxel index to world mm from a SimpleITK image's origin, spacing and direction.

    SimpleITK's world is LPS; with ``lps_to_ras`` the result is RAS, as MONAI's readers give it.
    """
    dimension = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dimension, dimension)
    affine = np.eye(dimension + 1)
    affine[:dimension, :dimension] = direction * np.asarray(image.GetSpacing())
    affine[:dimension, dimension] = image.GetOrigin()
    return orientation_ras_lps(affine) if lps_to_ras else affine


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """Silence ITK's own warnings (printed to stderr) for the duration of a read."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


class SimpleITKReader(ImageReader):
    """Read an image file, or a list of DICOM files as one series in the given order.

    Unlike MONAI's readers, a sequence of files is one DICOM series (the caller sorts it), not
    images stacked as channels; ITK's own slice spacing is kept in the meta but callers with
    irregular stacks replace the affine (see :class:`~visualad_med.io.dicom_series.DicomSeries`).
    ``get_data`` returns the array as ``(X, Y, Z)`` (or ``(X, Y, Z, C)`` for vector pixels), a
    transposed view of SimpleITK's C-ordered ``(Z, Y, X)`` buffer (Fortran order: no copy), and
    the meta with ``affine`` (RAS unless ``affine_lps_to_ras=False``), ``original_affine``,
    ``spatial_shape``, ``space``, ``spacing``, ``original_channel_dim`` and the image's own
    key-value metadata (e.g. NRRD header fields).

    Args:
        affine_lps_to_ras: convert SimpleITK's LPS world to RAS, as MONAI's readers do.
    """

    def __init__(self, affine_lps_to_ras: bool = True):
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """Whether every name ends with a suffix SimpleITK reads here (``.nrrd``, ``.mha``, ...)."""
        return all(str(name).lower().endswith(SUFFIXES) for name in ensure_tuple(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs) -> sitk.Image:
        """Read one file, or a DICOM series from its files in the given order.

        Args:
            data: a path, or a sequence of DICOM slice paths already sorted.
            kwargs: unused, for MONAI's interface.
        """
        names = [str(name) for name in ensure_tuple(data)]
        if len(names) == 1:
            return sitk.ReadImage(names[0])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        with _itk_warnings_off():
            return reader.Execute()

    def get_data(self, img: sitk.Image) -> tuple[np.ndarray, dict]:
        """The ``(X, Y, Z[, C])`` array (a transposed view) and its meta dictionary (see the class docstring)."""
        array = sitk.GetArrayFromImage(img)
        spatial = img.GetDimension()
        components = img.GetNumberOfComponentsPerPixel()
        axes = tuple(reversed(range(spatial))) + ((spatial,) if components > 1 else ())
        array = array.transpose(axes)
        affine = sitk_affine(img, self.affine_lps_to_ras)
        meta = {key: img.GetMetaData(key) for key in img.GetMetaDataKeys() if not key.startswith("ITK_")}
        meta.update(
            {
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(img.GetSize()),
                MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if components > 1 else float("nan"),
                "spacing": np.asarray(img.GetSpacing()),
            }
        )
        return array, meta
