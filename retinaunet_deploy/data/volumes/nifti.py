"""NIfTI-1 and NIfTI-2 volumes (``.nii``, ``.nii.gz``) through nibabel.

The array is returned as stored (``dataobj``, native byte order), with nibabel's
scaling (scl_slope/scl_inter) applied only when the header sets one (then float32);
the affine is nibabel's best affine (sform when its code is set, else qform), already
RAS+ millimetres. The header is kept so outputs carry the same qform/sform codes and
units. A 4D (or higher) image is refused unless its extra axes have length 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

SUFFIXES = (".nii.gz", ".nii")


def claims(path: Path) -> bool:
    """A ``.nii`` or ``.nii.gz`` file (by name)."""
    name = Path(path).name.lower()
    return name.endswith(SUFFIXES) and not Path(path).is_dir()


def _load(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{path} does not exist; give an existing NIfTI file")
    try:
        image = nib.load(str(path))
        image.header.get_data_shape()
    except Exception as error:  # nibabel raises many types for a damaged header
        text = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"cannot read {path}: {text}; replace it with a valid NIfTI file "
                        f"(.nii or .nii.gz)") from error
    return image


def _shape(image, path: Path) -> tuple[int, ...]:
    """The 3D shape (a 4D image with one volume counts as 3D); refuses 4D and 2D."""
    shape = tuple(int(n) for n in image.header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise DataError(f"{path} is a {len(shape)}D NIfTI of shape {shape} (e.g. a time "
                        f"series); save each 3D volume as its own file (nibabel "
                        f"'image.slicer[..., t]')")
    if len(shape) < 3:
        shape = shape + (1,) * (3 - len(shape))
    return shape


def _dtype(image) -> np.dtype:
    header = image.header
    slope, inter = header.get_slope_inter()
    stored = np.dtype(header.get_data_dtype()).newbyteorder("=")
    if slope is None or (slope == 1 and (inter or 0) == 0):
        return stored
    return np.dtype(np.float32)


def probe_nifti(path: Path) -> tuple[tuple[int, ...], np.dtype, np.ndarray]:
    """(shape (I, J, K), dtype, affine (4, 4) RAS+ mm) from the header; no voxels read."""
    path = Path(path)
    image = _load(path)
    return _shape(image, path), _dtype(image), np.asarray(image.affine, np.float64)


def read_nifti(path: Path):
    """A NIfTI file as a `Volume` (header: the nibabel header, a copy).

    Raises:
        DataError: a missing, truncated or corrupt file; a 4D image; a non-finite affine.
    """
    from retinaunet_deploy.data.volumes import Volume

    path = Path(path)
    image = _load(path)
    shape, dtype = _shape(image, path), _dtype(image)
    try:
        if dtype == image.header.get_data_dtype().newbyteorder("="):
            array = np.asarray(image.dataobj)
        else:
            array = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # a truncated or corrupt voxel block
        text = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise DataError(f"cannot read the voxels of {path}: {text}; replace it with a valid "
                        f"NIfTI file") from error
    array = np.ascontiguousarray(array.reshape(shape), dtype=dtype)
    affine = np.asarray(image.affine, np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path} has a degenerate affine; set its sform or qform (e.g. "
                        f"with nibabel's 'set_sform') and save it again")
    return Volume(array, affine, str(path), image.header.copy(), "NIfTI")
