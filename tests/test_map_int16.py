"""int16 anomaly maps: ``write_nifti(..., "int16")`` has nibabel choose the NIfTI scale and apply it as it writes."""

from __future__ import annotations

import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from visualad_med.io.writers import write_nifti


def smooth_map(shape: tuple[int, int, int] = (48, 40, 24)) -> np.ndarray:
    """A float32 ``shape`` map like an anomaly map (smooth, noisy low bits), Fortran-ordered as a DICOM scan's."""
    rng = np.random.default_rng(3)
    coarse = ndimage.zoom(rng.normal(size=[side // 8 for side in shape]), 8, order=1)
    values = coarse * 0.8 + 1.2 + rng.normal(scale=0.01, size=coarse.shape)
    return np.asfortranarray(values, dtype=np.float32)


def test_int16_map_spans_int16_and_decodes_within_half_a_step(tmp_path):
    values = smooth_map()
    write_nifti(values, np.eye(4), tmp_path / "map.nii.gz", "int16")
    image = nib.load(tmp_path / "map.nii.gz")
    stored = np.asarray(image.dataobj.get_unscaled())
    step = float(image.dataobj.slope)
    assert image.get_data_dtype() == np.int16 and (stored.min(), stored.max()) == (-32768, 32767)
    assert step == pytest.approx((float(values.max()) - float(values.min())) / 65535, rel=1e-6)
    error = np.abs(np.asarray(image.dataobj, dtype=np.float64) - values).max()
    assert error <= 0.51 * step  # half a step, plus the float32 rounding of scl_slope and scl_inter


def test_constant_map_is_stored_exactly(tmp_path):
    write_nifti(np.full((4, 5, 6), 2.5, np.float32), np.eye(4), tmp_path / "constant.nii.gz", "int16")
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "constant.nii.gz").dataobj), 2.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_map_is_refused_and_nothing_written(tmp_path, bad):
    values = smooth_map()
    values[1, 2, 3] = bad
    with pytest.raises(ValueError, match="1 non-finite values"):
        write_nifti(values, np.eye(4), tmp_path / "map.nii.gz", "int16")
    assert not list(tmp_path.iterdir())


def test_writing_int16_allocates_no_copy_of_the_map(tmp_path):
    """nibabel converts a block at a time: no full int16 (or float64) array of the map is made."""
    values = smooth_map((256, 256, 128))  # 32 MiB of float32
    tracemalloc.start()
    try:
        write_nifti(values, np.eye(4), tmp_path / "map.nii.gz", "int16")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < values.nbytes / 8  # a full int16 copy would be half of values.nbytes
