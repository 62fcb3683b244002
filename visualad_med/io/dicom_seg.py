"""DICOM Segmentation (SEG) of a mask, written with highdicom on the grid of the loaded scan.

The SEG is what 3D Slicer's QuantitativeReporting (dcmqi) and highdicom read back onto the mask's
voxels, for tilted and untilted series alike (see :func:`write_dicom_seg`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import torch
from monai.data.utils import orientation_ras_lps
from pydicom.sr.codedict import codes
from pydicom.valuerep import format_number_as_ds

from .atomic import atomic_path
from .writers import ANOMALY_COLOR, SOFTWARE, affine_matrix, check_color, spatial_volume

logger = logging.getLogger(__name__)

_CONTENT_CREATOR = "visualad_med^"
"""ContentCreatorName of the DICOM SEG: the software, as a family name (a DICOM person name)."""


_SEG_SOURCE_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID",
                          "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
                          "StudyTime")
"""Attributes a DICOM SEG copies from its source slices (highdicom reads each; empty values are allowed)."""


def dicom_seg_problem(source_datasets: Sequence[pydicom.Dataset]) -> str | None:
    """Why :func:`write_dicom_seg` cannot reference these source slices, ``None`` when it can.

    A SEG belongs to its source's study and references each source slice, so it needs the study,
    series and instance UIDs and the patient and study attributes it copies; a SEG with a made-up
    StudyInstanceUID would sit in a study of its own, apart from its scan.
    """
    for ds in source_datasets:
        missing = [name for name in _SEG_SOURCE_ATTRIBUTES if name not in ds]
        if missing:
            return (f"{getattr(ds, 'filename', None) or 'a source slice'} has no {', '.join(missing)}, which a "
                    "DICOM SEG copies from its source series")
    return None


def write_dicom_seg(
    mask: np.ndarray | torch.Tensor,
    affine: np.ndarray | torch.Tensor,
    source_datasets: Sequence[pydicom.Dataset],
    path: Path | str,
    algorithm_name: str,
    algorithm_version: str,
    *,
    segment_label: str = "anomaly",
    color: tuple[float, float, float] = ANOMALY_COLOR,
    content_creator_name: str = _CONTENT_CREATOR,
    series_description: str = "VisualAD anomaly",
    series_number: int = 9001,
) -> Path:
    """Write a binary mask as a DICOM Segmentation with highdicom, one frame per plane of its grid.

    The frames are the Z planes of the ``(X, Y, Z)`` grid (rows along Y, columns along X), built
    from an :class:`highdicom.Volume`: each frame has its own ImagePositionPatient, all share one
    PlaneOrientation and one PixelMeasures whose SpacingBetweenSlices is the grid's Z spacing
    (highdicom takes PixelSpacing and SliceThickness from the source slices when their pixel
    spacing is the grid's, as for a scan's own grid). The frames thus form a regularly
    spaced stack, which highdicom's ``get_volume`` and dcmqi (3D Slicer's DICOM SEG reader)
    need; a tilted series' own slices do not, their positions do not step along their normal.
    Empty frames are left out (all kept when the whole mask is empty).

    The whole source series is referenced (ReferencedSeriesSequence). highdicom adds frame-level
    references where every plane lies in a source plane: with SpatialLocationsPreserved YES when
    the grid is the source stack itself (no tilt, no missing slice), NO when the planes are
    those of a tilted series moved in-plane; none when a plane was interpolated. Source slices
    without a FrameOfReferenceUID (anonymised data such as CQ500) get one derived from their
    SeriesInstanceUID, with a warning, because the SEG IOD requires it.

    Args:
        mask: ``(X, Y, Z)`` array on the scan's grid, nonzero inside.
        affine: ``(4, 4)`` voxel index to RAS mm, the loaded scan's affine
            (:attr:`~visualad_med.io.dicom_series.DicomSeries.affine` for a DICOM series).
        source_datasets: the source slices (headers suffice), from one series.
        path: output file (``.dcm``).
        algorithm_name: name in the AlgorithmIdentificationSequence.
        algorithm_version: version in the AlgorithmIdentificationSequence.
        segment_label: label of the single segment.
        color: segment colour, RGB in [0, 1], stored as RecommendedDisplayCIELabValue.
        content_creator_name: ContentCreatorName (a DICOM person name).
        series_description: SeriesDescription of the SEG.
        series_number: SeriesNumber of the SEG.

    Returns:
        ``path``.
    """
    path = Path(path)
    labels = spatial_volume(mask) != 0
    check_color(color)
    if not source_datasets:
        raise ValueError("a DICOM SEG needs at least one source slice, got none.")
    sources = _with_frame_of_reference(source_datasets)
    volume = hd.Volume(
        array=np.ascontiguousarray(labels.transpose(2, 1, 0)),  # (Z, Y, X): frames, rows, columns
        affine=_frame_row_column_affine(affine_matrix(affine)),
        coordinate_system="PATIENT",
        frame_of_reference_uid=sources[0].FrameOfReferenceUID,
    )
    segment = _segment(segment_label, color, algorithm_name, algorithm_version)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=volume,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=series_description,
        content_creator_name=content_creator_name,
    )
    _set_slice_spacing(seg, volume.spacing_between_slices)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        seg.save_as(temporary)
    return path


def _segment(label: str, color: tuple[float, float, float], algorithm_name: str,
             algorithm_version: str) -> hd.seg.SegmentDescription:
    """The SEG's single segment: a lesion found automatically by the named algorithm, in ``color``."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*(255.0 * c for c in color)),
    )


def _frame_row_column_affine(affine: np.ndarray) -> np.ndarray:
    """``(4, 4)`` LPS affine of the ``(Z, Y, X)`` transpose of a grid, from its ``(X, Y, Z)`` RAS affine.

    highdicom indexes a volume (frame, row, column); a grid's rows run along Y and its columns
    along X, so the frame, row and column steps are the grid's Z, Y and X columns.
    """
    lps = orientation_ras_lps(affine)
    return lps[:, [2, 1, 0, 3]]


def _set_slice_spacing(seg: hd.seg.Segmentation, spacing: float) -> None:
    """Set the SEG's SpacingBetweenSlices to its frames' spacing along their normal (mm).

    highdicom replaces a volume's pixel measures by the source slices' own when their
    PixelSpacing agrees, SpacingBetweenSlices included: for a tilted series that is the step
    along the tilted stepping direction (CQ500: 0.625 mm), not the 0.618 mm between the frames.
    The source's SliceThickness (the nominal thickness of the same planes) is kept.
    """
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = format_number_as_ds(float(spacing))


def _with_frame_of_reference(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The datasets, copied with a FrameOfReferenceUID derived from the series when they lack one."""
    if all("FrameOfReferenceUID" in ds for ds in datasets):
        return list(datasets)
    uid = pydicom.uid.generate_uid(entropy_srcs=[SOFTWARE, str(datasets[0].SeriesInstanceUID)])
    logger.warning("source series %s has no FrameOfReferenceUID; the SEG uses %s", datasets[0].SeriesInstanceUID, uid)
    copies = [copy.deepcopy(ds) for ds in datasets]
    for ds in copies:
        ds.FrameOfReferenceUID = uid
    return copies


