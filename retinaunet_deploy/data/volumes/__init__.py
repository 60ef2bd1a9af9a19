"""Volumes (CT, MRI, microscopy stacks) with their geometry: NIfTI, DICOM series, TIFF stacks.

A volume is not a 2D image, so it has its own small registry beside `data.readers`
(whose readers return one 2D image and whose folder datasets list 2D files): a
`VolumeFormat` claims a path (a file by its suffix, or a folder), reads it into a
`Volume` and probes its shape, dtype and affine without decoding voxels. Built in:

* NIfTI-1/2 ``.nii``, ``.nii.gz`` (nibabel; `data.volumes.nifti`);
* a DICOM series: a folder of slices, or one ``.dcm`` file (a single slice or a
  multi-frame file) (pydicom; `data.volumes.dicom`);
* a TIFF stack: a multi-page or OME-TIFF ``.tif``/``.tiff`` whose full-resolution
  pages are the slices (tifffile; `data.volumes.tiffstack`). A TIFF of one
  full-resolution page is a 2D image (`data.readers`), not a volume.

Conventions, everywhere in the toolkit:

* ``Volume.array`` is (I, J, K) or (I, J, K, C), indexed like the affine: voxel
  (i, j, k) sits at world ``affine @ (i, j, k, 1)``. Every reader uses the NIfTI/DICOM
  voxel order: i = column, j = row, k = slice (``array[i, j, k]`` is row j, column i of
  slice k as a DICOM viewer or pydicom's ``pixel_array[j, i]`` shows it; a TIFF stack's
  page k is ``array[:, :, k].T``).
* Slices (`slices`) are display images: rows = the SECOND of the two voxel axes other
  than the slicing axis, columns = the first (axis 2: ``array[:, :, k].T``, (J, I), the
  slice as pydicom, SimpleITK's (z, y, x) arrays and PNG exports show it). Slice boxes
  (y1, x1, y2, x2) are in these rows and columns (`slice_affine`, `model.boxes3d`).
* ``Volume.affine`` is (4, 4) float64 mapping voxel indices to world millimetres in
  RAS+ (NIfTI's convention: +x towards the patient's Right, +y Anterior, +z Superior).
  DICOM's LPS+ (+x Left, +y Posterior) is converted by negating x and y.
* The default slicing axis is the last voxel axis k (axial for a RAS NIfTI of a
  head or body scan; the slice index of a DICOM series; the page of a TIFF stack).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

DEFAULT_AXIS = 2
# The card's data.slice_order for runs trained on `slices` as they are cut now (display
# images); runs trained before it recorded none and saw each slice transposed.
SLICE_ORDER = "display: rows and columns as slice_axes"


@dataclass
class Volume:
    """One volume and its geometry.

    Attributes:
        array: (I, J, K) or (I, J, K, C) voxels in the file's pixel dtype after DICOM
            rescale (int16 for CT in Hounsfield units when the rescale is integral,
            float32 otherwise; uint8/uint16/int16/float32 as stored for NIfTI and TIFF),
            indexed like `affine`: i column, j row, k slice (module docstring).
        affine: (4, 4) float64, voxel (i, j, k, 1) -> world millimetres, RAS+.
        source: the file or folder read.
        header: what the format keeps for writing outputs with the same geometry: the
            nibabel header for NIfTI (qform/sform codes, xyzt units), a dict for DICOM
            (``files`` in slice order, ``series_uid``, ``study_uid``, ``spacing_used``...)
            and TIFF (``pages``, ``spacing_source``); None when nothing is known.
        format: the `VolumeFormat.name` ("NIfTI", "DICOM", "TIFF stack").
        notes: one-line remarks on what the reader decided (a spacing assumed, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    source: str
    header: object | None = None
    format: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape, (I, J, K) or (I, J, K, C)."""
        return tuple(self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        """(3,) float64 voxel size in mm along i, j, k: the lengths of the affine's first
        three columns."""
        return spacing_of(self.affine)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """(3,) float64 voxel size in mm: the norms of ``affine[:3, :3]``'s columns."""
    return np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))


@dataclass(frozen=True)
class VolumeFormat:
    """One volume format of the registry.

    Attributes:
        name: in messages ("NIfTI").
        claims: ``claims(path) -> bool``: whether this format reads `path` (by suffix,
            or by looking at a folder's or file's header; never decodes voxels).
        read: ``read(path) -> Volume``; raises `DataError`.
        probe: ``probe(path) -> (shape, dtype, affine)`` from headers only; raises
            `DataError` for what `read` would refuse at header level.
        suffixes: lower-case suffixes it is named by (for output names: ``a.nii.gz`` ->
            ``a``); () for a folder format.
    """

    name: str
    claims: Callable[[Path], bool]
    read: Callable[[Path], Volume]
    probe: Callable[[Path], tuple[tuple[int, ...], np.dtype, np.ndarray]]
    suffixes: tuple[str, ...] = ()


VOLUME_FORMATS: list[VolumeFormat] = []


def register_volume_format(fmt: VolumeFormat) -> VolumeFormat:
    """Add (or replace, by name) a volume format; returns it."""
    VOLUME_FORMATS[:] = [f for f in VOLUME_FORMATS if f.name != fmt.name] + [fmt]
    return fmt


def format_for(path: Path) -> VolumeFormat | None:
    """The format that claims `path`, or None."""
    path = Path(path)
    for fmt in VOLUME_FORMATS:
        try:
            if fmt.claims(path):
                return fmt
        except OSError:
            return None
    return None


def volume_readable(path: Path) -> bool:
    """Whether `path` is a volume some registered format reads: a ``.nii``/``.nii.gz``
    file, a ``.dcm`` file or a folder holding DICOM files, or a TIFF of more than one
    full-resolution page. Looks at names and headers only."""
    return format_for(Path(path)) is not None


def _format_or_error(path: Path) -> VolumeFormat:
    fmt = format_for(path)
    if fmt is None:
        names = ", ".join(f.name for f in VOLUME_FORMATS)
        if not Path(path).exists():
            raise DataError(f"{path} does not exist; give a volume file or DICOM folder")
        raise DataError(f"{path} is not a volume this toolkit reads ({names}); convert it to "
                        f"NIfTI (.nii.gz) or give a folder holding one DICOM series")
    return fmt


def read_volume(path: Path) -> Volume:
    """Read a volume: a ``.nii``/``.nii.gz``, a multi-page or OME ``.tif``, a ``.dcm`` file
    or a FOLDER of DICOM slices.

    Returns:
        `Volume` (array (I, J, K[, C]), affine (4, 4) RAS+ mm).
    Raises:
        DataError: one line naming the file and a remedy: unreadable or corrupt file, a 4D
            NIfTI, a folder of two DICOM series, missing or unevenly spaced slices, ...
    """
    path = Path(path)
    return _format_or_error(path).read(path)


def probe_volume(path: Path) -> tuple[tuple[int, ...], np.dtype, np.ndarray]:
    """What `read_volume` would return, without decoding voxels.

    Returns:
        (shape (I, J, K[, C]), dtype (after DICOM rescale), affine (4, 4) float64 RAS+ mm).
    Raises:
        DataError: as `read_volume` for what the headers show (a corrupt voxel block is
            found only when read).
    """
    path = Path(path)
    return _format_or_error(path).probe(path)


def volume_stem(path: Path) -> str:
    """A volume's name without its suffix: ``ct.nii.gz`` -> ``ct``; a folder's own name."""
    path = Path(path)
    if path.is_dir():
        return path.name
    name = path.name
    lower = name.lower()
    for fmt in VOLUME_FORMATS:
        for suffix in sorted(fmt.suffixes, key=len, reverse=True):
            if lower.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
    return path.stem


def volume_suffix(path: Path) -> str:
    """The suffix `volume_stem` removed (``.nii.gz``), or "" for a folder."""
    path = Path(path)
    return "" if path.is_dir() else path.name[len(volume_stem(path)):].lower()


def slice_axes(axis: int) -> tuple[int, int]:
    """(row axis, column axis): the voxel axes a slice along `axis` has as its rows (H)
    and columns (W): the two other axes in REVERSE order (axis 2: (1, 0), rows j,
    columns i; axis 1: (2, 0); axis 0: (2, 1)).

    Raises:
        DataError: `axis` not in 0..2.
    """
    if axis not in (0, 1, 2):
        raise DataError(f"slice axis must be 0, 1 or 2 (a voxel axis), got {axis}")
    first, second = (a for a in (0, 1, 2) if a != axis)
    return second, first


def slices(volume: Volume | np.ndarray, axis: int = DEFAULT_AXIS) -> np.ndarray:
    """The volume cut into 2D slices along voxel `axis`, each a display image.

    Args:
        volume: a `Volume` or its (I, J, K[, C]) array (i column, j row, k slice).
        axis: 0, 1 or 2 (i, j or k; 2: the default, axial for RAS NIfTI).
    Returns:
        (S, H, W[, C]) view: S = the length of `axis`; H (rows) and W (columns) are the
        two other voxel axes in REVERSE order (`slice_axes`): axis 2: H = J, W = I, so
        slice k is ``array[:, :, k].T``, the image pydicom's ``pixel_array`` gives for a
        DICOM slice and tifffile gives for a TIFF page; axis 1: H = K, W = I
        (``array[:, j, :].T``); axis 0: H = K, W = J (``array[i, :, :].T``).
        `stack_slices(x, axis)` inverts it exactly.
    Raises:
        DataError: `axis` not in 0..2.
    """
    array = volume.array if isinstance(volume, Volume) else np.asarray(volume)
    slice_axes(axis)
    return np.swapaxes(np.moveaxis(array, axis, 0), 1, 2)


def stack_slices(stack: np.ndarray, axis: int = DEFAULT_AXIS) -> np.ndarray:
    """The inverse of `slices`: (S, H, W[, C]) display slices back to the volume's
    (I, J, K[, C]) (a view).

    Raises:
        DataError: `axis` not in 0..2.
    """
    slice_axes(axis)
    return np.moveaxis(np.swapaxes(np.asarray(stack), 1, 2), 0, axis)


def slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """(4, 4) float64 mapping a slice's pixel (row, col, 0, 1) to world mm: the volume's
    affine with its columns reordered to (row axis, column axis, slicing axis)
    (`slice_axes`) and its origin moved to slice `index`.

    Row and column are the slice's H and W as `slices` returns it, so a detection box
    (y1, x1, y2, x2) of slice `index` maps to world through it (pixel centres at
    integer indices)."""
    affine = np.asarray(affine, np.float64)
    row, col = slice_axes(axis)
    out = np.eye(4)
    out[:3, 0] = affine[:3, row]
    out[:3, 1] = affine[:3, col]
    out[:3, 2] = affine[:3, axis]
    out[:3, 3] = affine[:3, 3] + index * affine[:3, axis]
    return out


def check_same_grid(image: tuple | Volume, mask: tuple | Volume, *, image_path=None,
                    mask_path=None, atol_mm: float = 1e-3) -> None:
    """Refuse a mask that does not lie on its image's voxel grid (for volume datasets).

    Args:
        image, mask: `Volume`s, or `probe_volume` tuples (shape, dtype, affine).
        image_path, mask_path: named in the message (default: the volumes' sources).
        atol_mm: largest difference of an affine entry, in mm (or mm per voxel).
    Raises:
        DataError: other spatial shape (I, J, K), or other affine (the largest entry
            difference shown); the remedy is resampling the mask onto the image's grid.
    """
    def parts(v):
        if isinstance(v, Volume):
            return tuple(v.shape[:3]), np.asarray(v.affine, np.float64), v.source
        return tuple(v[0][:3]), np.asarray(v[2], np.float64), None

    ishape, iaff, isrc = parts(image)
    mshape, maff, msrc = parts(mask)
    image_path, mask_path = image_path or isrc or "the image", mask_path or msrc or "the mask"
    if ishape != mshape:
        raise DataError(f"mask {mask_path} has shape {mshape}, its image {image_path} "
                        f"{ishape}; resample the mask onto the image's grid (same shape and "
                        f"affine)")
    diff = float(np.abs(iaff - maff).max())
    if diff > atol_mm:
        raise DataError(f"mask {mask_path} has another affine than its image {image_path} "
                        f"(entries differ by up to {diff:.4g} mm); resample the mask onto "
                        f"the image's grid, or save both with the same affine")


def _register_builtins() -> None:
    from retinaunet_deploy.data.volumes import dicom, nifti, tiffstack

    register_volume_format(VolumeFormat("NIfTI", nifti.claims, nifti.read_nifti,
                                        nifti.probe_nifti, nifti.SUFFIXES))
    register_volume_format(VolumeFormat("DICOM", dicom.claims, dicom.read_dicom,
                                        dicom.probe_dicom, dicom.SUFFIXES))
    register_volume_format(VolumeFormat("TIFF stack", tiffstack.claims, tiffstack.read_stack,
                                        tiffstack.probe_stack, tiffstack.SUFFIXES))


_register_builtins()
