"""DICOM series through pydicom: a folder holding ONE series of slices, or one ``.dcm`` file
(one slice, or a multi-frame file: enhanced CT/MR with per-frame positions, or RT dose
with a GridFrameOffsetVector).

What is decided, and how (the convention of nibabel's ``nicom`` and dcm2niix):

* One series per folder: files of more than one SeriesInstanceUID are refused (each
  series named with its file count). Every non-hidden file in the folder (not its
  subfolders) must be DICOM; a ``DICOMDIR`` is skipped.
* Slices are ordered by their position (ImagePositionPatient) along the slice normal
  n = row direction x column direction (ImageOrientationPatient); all slices must share
  orientation, pixel spacing, rows and columns. Two slices at one position are refused.
* Spacing between slices comes from the positions: the step s = (p_last - p_first) /
  (K - 1). Every slice must lie on p_first + k s within max(0.01 mm, 1% of |s|): a gap
  (missing slices) or uneven spacing is REFUSED, since one affine cannot describe it
  and a label volume written on a wrong grid would be silently misplaced. A single
  slice takes SpacingBetweenSlices, else SliceThickness, else 1 mm (said in
  ``Volume.notes``). A gantry tilt (s not along n) is kept: the affine is sheared.
* Voxel (i, j, k) is column i, row j of slice k, so ``array[i, j, k] =
  slice_k.pixel_array[j, i]``; the affine maps it to LPS as
  p_first + i dc r + j dr c + k s (r, c: row and column direction cosines; dc, dr:
  the column and row spacing, PixelSpacing = [dr, dc]), then to RAS+ by negating x, y.
* Intensities: RescaleSlope/RescaleIntercept (per slice, or per frame), RT dose's
  DoseGridScaling, applied as pydicom's ``apply_modality_lut`` does. The dtype is
  decided from the headers (BitsStored, PixelRepresentation, the rescale): the stored
  dtype without rescale; with integer slopes and intercepts, int16 when the stored
  range (BitsStored) maps into it, and always for CT (Hounsfield units; a slice whose
  values leave int16 is refused when read), else int32; float32 for other rescales.
  MONOCHROME1 values are kept as stored (a display convention), as for TIFF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

SUFFIXES = (".dcm",)
SKIPPED = {"dicomdir"}
POSITION_TOLERANCE_MM = 0.01
POSITION_TOLERANCE_REL = 0.01


def _candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower() not in SKIPPED)


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def claims(path: Path) -> bool:
    """A ``.dcm`` file, or a folder whose files include a DICOM file (Part 10 preamble)."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() == ".dcm" or _is_dicom_file(p)
                   for p in _candidates(path)[:16])
    return path.name.lower().endswith(SUFFIXES)


@dataclass
class _Frame:
    file: Path
    frame: int | None          # index in a multi-frame file, None for a single-frame file
    position: np.ndarray       # (3,) LPS mm
    slope: float
    intercept: float


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        missing = [k for k in ("SeriesInstanceUID", "Rows", "Columns") if k not in ds]
    except InvalidDicomError as error:
        raise DataError(f"{path} is not a DICOM file ({error}); a series folder holds only "
                        f"the series' DICOM slices: move it out") from error
    except Exception as error:  # pydicom raises many types for damaged data
        text = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise DataError(f"cannot read DICOM file {path}: {text}; replace it with a valid "
                        f"copy of the slice (re-export the series)") from error
    if missing:
        raise DataError(f"cannot read DICOM file {path}: no {', '.join(missing)} (truncated, "
                        f"or not an image slice); replace it with a valid copy of the slice "
                        f"(re-export the series)")
    return ds


def _floats(value, count: int, what: str, path: Path) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in value], np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (count,) or not np.isfinite(array).all():
        raise DataError(f"{path} has no valid {what} (patient geometry); it is not a volume "
                        f"slice: convert it with its spacing to NIfTI or a TIFF stack")
    return array


def _first(sequence, name: str):
    return sequence[0] if sequence is not None and len(sequence) else None


def _rescale(item) -> tuple[float, float]:
    slope, inter = item.get("RescaleSlope"), item.get("RescaleIntercept")
    transform = _first(item.get("PixelValueTransformationSequence"), "")
    if slope is None and transform is not None:
        slope, inter = transform.get("RescaleSlope"), transform.get("RescaleIntercept")
    return (1.0 if slope is None else float(slope)), (0.0 if inter is None else float(inter))


def _frames_of(ds, path: Path) -> tuple[list[_Frame], np.ndarray, np.ndarray, float | None]:
    """The frames of one file: (frames, orientation (6,), pixel spacing (2,), thickness)."""
    count = int(ds.get("NumberOfFrames", 1) or 1)
    shared = _first(ds.get("SharedFunctionalGroupsSequence"), "")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and shared is not None:   # enhanced multi-frame
        def group(item, name):
            found = _first(item.get(name), name) if item is not None else None
            return found

        orient_item = group(shared, "PlaneOrientationSequence") or group(
            per_frame[0], "PlaneOrientationSequence")
        measures = group(shared, "PixelMeasuresSequence") or group(
            per_frame[0], "PixelMeasuresSequence")
        orientation = _floats(orient_item.get("ImageOrientationPatient") if orient_item
                              else None, 6, "ImageOrientationPatient", path)
        spacing = _floats(measures.get("PixelSpacing") if measures else None, 2,
                          "PixelSpacing", path)
        thickness = measures.get("SliceThickness") if measures else None
        base_slope, base_inter = _rescale(shared)
        frames = []
        for index, item in enumerate(per_frame):
            plane = group(item, "PlanePositionSequence")
            position = _floats(plane.get("ImagePositionPatient") if plane else None, 3,
                               "ImagePositionPatient", path)
            transform = group(item, "PixelValueTransformationSequence")
            slope, inter = _rescale(transform) if transform else (base_slope, base_inter)
            frames.append(_Frame(path, index, position, slope, inter))
        return frames, orientation, spacing, thickness
    orientation = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path)
    spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", path)
    origin = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
    slope, inter = _rescale(ds)
    if "DoseGridScaling" in ds:
        slope *= float(ds.DoseGridScaling)
    thickness = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    if count == 1:
        return [_Frame(path, None, origin, slope, inter)], orientation, spacing, thickness
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is None or len(offsets) != count:
        raise DataError(f"{path} holds {count} frames without a position for each "
                        f"(no per-frame functional groups or GridFrameOffsetVector); "
                        f"convert it to NIfTI with its spacing")
    normal = np.cross(orientation[:3], orientation[3:])
    return ([_Frame(path, i, origin + float(off) * normal, slope, inter)
             for i, off in enumerate(offsets)], orientation, spacing, thickness)


def _series(path: Path) -> tuple[list, list[Path]]:
    """The headers of the series at `path` (a folder or a file), one series checked."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give a DICOM series folder or .dcm file")
    files = _candidates(path) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no DICOM files; give a folder of one series' slices")
    headers = [_read_header(f) for f in files]
    series: dict[str, list[Path]] = {}
    for f, ds in zip(files, headers):
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append(f)
    if len(series) > 1:
        parts = ", ".join(f"{uid} ({len(fs)} files, e.g. {fs[0].name})"
                          for uid, fs in sorted(series.items()))
        raise DataError(f"{path} holds {len(series)} DICOM series: {parts}; put each series "
                        f"in its own folder")
    return headers, files


def _dtype(headers, frames: list[_Frame]) -> np.dtype:
    ds = headers[0]
    bits, stored = int(ds.get("BitsAllocated", 16)), int(ds.get("BitsStored", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return np.dtype(np.uint8 if bits == 8 else np.uint16)
    base = np.dtype(f"{'i' if signed else 'u'}{max(1, bits // 8)}")
    if all(f.slope == 1 and f.intercept == 0 for f in frames):
        return base
    if not all(float(f.slope).is_integer() and float(f.intercept).is_integer() for f in frames):
        return np.dtype(np.float32)
    stored = stored or bits
    low, high = (-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if signed else (0, 2 ** stored - 1)
    ends = [v * f.slope + f.intercept for f in frames for v in (low, high)]
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= min(ends) and max(ends) <= info.max or (
                dtype == np.int16 and str(ds.get("Modality", "")) == "CT"):
            return np.dtype(dtype)   # CT: int16 Hounsfield units (checked when read)
    return np.dtype(np.float32)


def _geometry(path: Path):
    """Headers, frames in slice order, shape, dtype, LPS affine, notes, the spacing used."""
    headers, files = _series(path)
    frames, orientation, spacing, thickness = [], None, None, None
    for f, ds in zip(files, headers):
        got, orient, pixel, thick = _frames_of(ds, f)
        if orientation is None:
            orientation, spacing, thickness, first = orient, pixel, thick, f
        elif np.abs(orient - orientation).max() > 1e-4 or np.abs(pixel - spacing).max() > 1e-4:
            raise DataError(f"{f} has another orientation or pixel spacing than {first} in "
                            f"series folder {path}; give slices of one acquisition")
        frames.extend(got)
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in headers if "Rows" in ds}
    if len(sizes) != 1:
        raise DataError(f"the slices in {path} have different sizes {sorted(sizes)}; give "
                        f"slices of one acquisition")
    rows, cols = sizes.pop()
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    frames.sort(key=lambda fr: float(fr.position @ normal))
    along = np.array([fr.position @ normal for fr in frames])
    notes = []
    if len(frames) > 1:
        gaps = np.diff(along)
        if gaps.min() < POSITION_TOLERANCE_MM:
            i = int(gaps.argmin())
            raise DataError(f"{frames[i].file.name} and {frames[i + 1].file.name} in {path} lie "
                            f"at the same position ({along[i]:.2f} mm along the normal); "
                            f"keep one acquisition per folder")
        step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
        expected = frames[0].position + np.arange(len(frames))[:, None] * step
        error = np.linalg.norm(np.array([fr.position for fr in frames]) - expected, axis=1)
        tolerance = max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_REL * float(np.linalg.norm(step)))
        if error.max() > tolerance:
            median = float(np.median(gaps))
            missing = round(float(gaps.max()) / median) - 1 if median > 0 else 0
            what = (f"{missing} slice(s) missing between {along[gaps.argmax()]:.2f} and "
                    f"{along[gaps.argmax() + 1]:.2f} mm" if missing >= 1 else
                    f"unevenly spaced slices ({gaps.min():.3f} to {gaps.max():.3f} mm apart)")
            raise DataError(f"{path} has {what} along the slice normal; one affine cannot "
                            f"place them: give the complete, evenly spaced series (or "
                            f"resample it to NIfTI)")
    else:
        gap = float(thickness) if thickness else 1.0
        if not thickness:
            notes.append(f"{path}: one slice without SliceThickness; 1 mm spacing assumed")
        step = normal * gap
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = frames[0].position
    samples = int(headers[0].get("SamplesPerPixel", 1))
    shape = (cols, rows, len(frames)) + ((samples,) if samples > 1 else ())
    return headers, files, frames, shape, _dtype(headers, frames), affine, notes


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def probe_dicom(path: Path) -> tuple[tuple[int, ...], np.dtype, np.ndarray]:
    """(shape (I, J, K[, C]), dtype after rescale, RAS+ affine) from the headers only."""
    _, _, _, shape, dtype, affine, _ = _geometry(Path(path))
    return shape, dtype, LPS_TO_RAS @ affine


def _pixels(file: Path):
    import pydicom

    try:
        return pydicom.dcmread(file).pixel_array
    except Exception as error:  # missing codec, truncated pixel data, ...
        text = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise DataError(f"cannot decode the pixels of DICOM file {file}: {text}; replace "
                        f"it with a valid copy (or install the codec pydicom names)") from error


def read_dicom(path: Path):
    """A DICOM series (folder) or file as a `Volume` (module docstring for every rule).

    Header: ``files`` (one per slice, in slice order; a multi-frame file repeated),
    ``frames`` (frame index per slice, None for single-frame files), ``series_uid``,
    ``study_uid``, ``frame_of_reference_uid``, ``modality``, ``spacing_used`` (mm, along
    i, j, k), ``positions_mm`` (slice positions along the normal).

    Raises:
        DataError: a non-DICOM or corrupt file, two series, missing or unevenly spaced or
            duplicated slices, slices of different geometry, pixels that cannot be decoded.
    """
    from retinaunet_deploy.data.volumes import Volume, spacing_of

    path = Path(path)
    headers, _files, frames, shape, dtype, affine, notes = _geometry(path)
    array = np.empty(shape, dtype)
    cache: dict[Path, np.ndarray] = {}
    for k, frame in enumerate(frames):
        if frame.file not in cache:
            cache = {frame.file: _pixels(frame.file)}   # one file's pixels held at a time
        pixels = cache[frame.file]
        if frame.frame is not None:
            pixels = pixels[frame.frame] if pixels.ndim > 2 + (len(shape) > 3) else pixels
        if pixels.shape[:2] != (shape[1], shape[0]):
            raise DataError(f"{frame.file} decodes to {pixels.shape}, its header says "
                            f"{shape[1]}x{shape[0]}; replace it with a valid copy")
        values = pixels.astype(np.float64) * frame.slope + frame.intercept \
            if (frame.slope, frame.intercept) != (1.0, 0.0) else pixels
        if dtype.kind == "i" and values.size and (
                values.min() < np.iinfo(dtype).min or values.max() > np.iinfo(dtype).max):
            raise DataError(f"{frame.file} has values {values.min():g}..{values.max():g} after "
                            f"its rescale, beyond {dtype} (CT Hounsfield units are read as "
                            f"int16); convert the series to a float32 NIfTI")
        array[:, :, k] = np.swapaxes(np.asarray(values), 0, 1).astype(dtype, copy=False)
    ds = headers[0]
    ras = LPS_TO_RAS @ affine
    header = {"files": [str(f.file) for f in frames], "frames": [f.frame for f in frames],
              "series_uid": str(ds.get("SeriesInstanceUID", "")),
              "study_uid": str(ds.get("StudyInstanceUID", "")),
              "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
              "modality": str(ds.get("Modality", "")),
              "photometric": str(ds.get("PhotometricInterpretation", "")),
              "spacing_used": [round(float(v), 6) for v in spacing_of(ras)],
              "positions_mm": [round(float(f.position @ np.cross(affine[:3, 0], affine[:3, 1])
                                           / np.prod(spacing_of(affine)[:2])), 4)
                               for f in frames]}
    return Volume(array, ras, str(path), header, "DICOM", tuple(notes))
