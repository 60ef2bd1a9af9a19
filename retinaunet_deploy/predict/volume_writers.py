"""The files a volume's prediction becomes, as bytes (nothing is written here: the
`writer.ResultWriter` writes them atomically and records their sha256).

* ``label_nifti``: the label volume (uint8 class indices, (I, J, K)) as ``.nii.gz`` on
  the input's exact grid. NIfTI in: the input's header (NIfTI-1 or -2), with its
  qform and sform (matrices and codes), pixdim, units and dim_info unchanged; only
  the data type (uint8, no scaling), cal_min/cal_max and the intent (NIFTI_INTENT_LABEL)
  change. DICOM or TIFF in: a NIfTI-1 with the volume's affine as qform and sform (code
  1, scanner), units mm. Gzip with mtime 0, so the same labels give the same bytes.
* ``dicom_seg``: a DICOM Segmentation (highdicom; BINARY, one segment per foreground
  class, frames of empty slices omitted) referencing the source series' instances, in
  the source's frame of reference.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

NIFTI_INTENT_LABEL = 1002
PRIVATE_SCHEME = "99RUNET"


def label_nifti(labels: np.ndarray, volume) -> bytes:
    """``.nii.gz`` bytes of `labels` ((I, J, K) uint8) with `volume`'s geometry.

    Args:
        labels: class indices on the volume's voxel grid (same (I, J, K) as the input).
        volume: the `data.volumes.Volume` it was predicted from.
    """
    import nibabel as nib

    labels = np.asarray(labels, np.uint8)
    header = volume.header
    if isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = kind(labels, None, header=header.copy())
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        image.set_qform(qform if qform is not None else volume.affine, code=int(qcode or 0))
        image.set_sform(sform if sform is not None else volume.affine, code=int(scode or 0))
        out = image.header
        out.set_data_shape(labels.shape)
        out["pixdim"] = header["pixdim"]
    else:
        image = nib.Nifti1Image(labels, volume.affine)
        image.set_qform(volume.affine, code=1)
        image.set_sform(volume.affine, code=1)
        out = image.header
        out.set_xyzt_units("mm")
    out.set_data_dtype(np.uint8)
    out.set_slope_inter(1.0, 0.0)
    out["cal_min"], out["cal_max"] = 0, float(labels.max(initial=0))
    out.set_intent(NIFTI_INTENT_LABEL, name="labels")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def dicom_seg(labels: np.ndarray, volume, class_names: tuple[str, ...],
              software: str) -> bytes:
    """DICOM SEG bytes of `labels` ((I, J, K) uint8) for a DICOM `volume`.

    Args:
        labels: class indices (0 background) on the series' voxel grid.
        volume: a `Volume` read from a DICOM series (its header lists the files).
        class_names: mask class names, index 0 background; segment n is class n.
        software: the toolkit's name and version, recorded in the SEG.
    Raises:
        DataError: highdicom refuses the source (e.g. an RT dose grid is not an image
            it can reference), naming the series and what is still written.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    header = volume.header
    files, frames = [Path(f) for f in header["files"]], header["frames"]
    ordered = list(range(len(files)))
    if frames[0] is not None:                     # one multi-frame source: its frame order
        ordered.sort(key=lambda k: frames[k])
        sources = [pydicom.dcmread(files[0])]
    else:
        sources = [pydicom.dcmread(f) for f in files]
    mask = np.stack([labels[:, :, k].T for k in ordered]).astype(np.uint8)  # (K, rows, cols)
    found = [c for c in range(1, len(class_names)) if (labels == c).any()]
    count = max(found, default=1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="retinaunet-deploy", version=software.split()[-1],
        family=codes.cid7162.ArtificialIntelligence)
    names = [class_names[n] if n < len(class_names) else str(n) for n in range(count + 1)]
    # The model's classes have no standard code: a private scheme (DICOM PS3.16 8.2,
    # designators starting "99") names them as the model card does.
    category = hd.sr.CodedConcept("class", PRIVATE_SCHEME, "Model class")
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=names[n][:64],
        segmented_property_category=category,
        segmented_property_type=hd.sr.CodedConcept(f"class{n}", PRIVATE_SCHEME, names[n][:64]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for n in range(1, count + 1)]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(),
            series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="retinaunet-deploy", manufacturer_model_name="RetinaUNet",
            software_versions=software, device_serial_number="0",
            omit_empty_frames=bool(found))
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        text = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"cannot write a DICOM SEG for {volume.source}: {text}; predict the "
                        f"series converted to NIfTI for a label volume without SEG") from error
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()
