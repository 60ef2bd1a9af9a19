"""TIFF stacks (z-stacks from microscopes, Fiji, tifffile; multi-page and OME-TIFF) as volumes.

A ``.tif``/``.tiff`` is a stack when its first series has more than one full-resolution
page along one axis (``Z``, or ``I``/``Q`` for an unlabelled stack): tifffile's series
axes decide, so OME-TIFF and ImageJ hyperstacks are read as their writers meant. A
stack with a time or channel axis of length > 1 besides Z is refused (save one 3D
stack per time point; channels may be interleaved samples ``S`` of 1 or 3).

Layout: the toolkit's voxel order (`data.volumes`: i column, j row, k slice), so
``array[i, j, k] = page_k[j, i]`` (i: column, j: row, k: page) and a slice along k
(`data.volumes.slices`, ``array[:, :, k].T``) is the page exactly as stored and as
tifffile reads it. Geometry: microscopy has no patient frame; world x runs down the
rows (dy mm per row), world y along the columns (dx mm per column), world z along the
pages (dz): the affine maps (i, j, k) to (j dy, i dx, k dz), i.e. diag(dy, dx, dz)
with its first two columns swapped (a row/column swap: determinant < 0), so page k's
pixel (row r, column c) lies at (r dy, c dx, k dz) mm. The spacings come from OME
``PhysicalSizeY/X/Z`` (with their units), else ImageJ's ``spacing`` with the
XResolution/YResolution tags (``unit``), else 1 mm per voxel (said in
``Volume.notes``). The origin is 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.data.tiff import open_tiff, tifffile_log
from retinaunet_deploy.errors import DataError

SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
STACK_AXES = "ZIQ"
UNITS_MM = {"m": 1e3, "mm": 1.0, "cm": 10.0, "µm": 1e-3, "um": 1e-3, "micron": 1e-3,
            "\\u00B5m": 1e-3, "nm": 1e-6, "inch": 25.4, "centimeter": 10.0}


def _stack_axis(series) -> int | None:
    """The index of the stack axis of a tifffile series, or None when it is not a stack."""
    axes = series.axes
    long_axes = [i for i, a in enumerate(axes) if a not in "YXS" and series.shape[i] > 1]
    if len(long_axes) == 1 and axes[long_axes[0]] in STACK_AXES:
        return long_axes[0]
    return None


def claims(path: Path) -> bool:
    """A ``.tif``/``.tiff`` whose first series has a stack axis (Z, I, Q) of more than one
    page (tags only); one with a time or channel axis besides is claimed too, and refused
    by `read_stack` with what to do."""
    import tifffile

    path = Path(path)
    if path.is_dir() or not path.name.lower().endswith((".tif", ".tiff")):
        return False
    try:
        with tifffile_log(path, probe=True), tifffile.TiffFile(path) as tiff:
            if len(tiff.pages) < 2 or not tiff.series:
                return False
            series = tiff.series[0]
            return any(a in STACK_AXES and n > 1 for a, n in zip(series.axes, series.shape))
    except Exception:  # noqa: BLE001 - not a readable stack: the 2D reader names the problem
        return False


def _spacing(tiff, path: Path) -> tuple[np.ndarray, str]:
    """(dy, dx, dz) mm and where it came from."""
    if tiff.is_ome and tiff.ome_metadata:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(tiff.ome_metadata)
        pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
        if pixels is not None and pixels.get("PhysicalSizeX"):
            sizes = []
            for axis in "YXZ":
                value = float(pixels.get(f"PhysicalSize{axis}", 1.0))
                unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
                sizes.append(value * UNITS_MM.get(unit, 1e-3))
            return np.array(sizes), "OME PhysicalSize"
    if tiff.is_imagej and tiff.imagej_metadata:
        meta = tiff.imagej_metadata
        page = tiff.pages[0]
        unit = UNITS_MM.get(str(meta.get("unit", "")).strip(), None)
        res = [page.tags.get(n) for n in ("YResolution", "XResolution")]
        if unit is not None and all(res):
            dy, dx = (r.value[1] / r.value[0] * unit for r in res)
            dz = float(meta.get("spacing", 1.0)) * unit
            return np.array([dy, dx, dz]), "ImageJ spacing and resolution"
    return np.ones(3), ""


def _layout(tiff, path: Path):
    import tifffile

    if not tiff.series:
        raise DataError(f"{path} holds no image series; replace it with a valid TIFF stack")
    series = tiff.series[0]
    axis = _stack_axis(series)
    if axis is None:
        raise DataError(f"{path} has axes {series.axes} of shape {series.shape}, not one stack "
                        f"axis (Z); save one 3D stack per time point and channel")
    page = series.pages[0] if series.pages else tiff.pages[0]
    if page.compression != 1 and page.compression not in tifffile.TIFF.DECOMPRESSORS:
        raise DataError(f"{path} is compressed with {page.compression}, which this machine "
                        f"cannot decode; run 'pip install imagecodecs' or re-save it with "
                        f"LZW, deflate or zstd")
    shape = tuple(int(n) for n in series.shape)
    keep = [i for i, a in enumerate(series.axes) if a in "YX" or i == axis or
            (a == "S" and shape[i] > 1)]
    out = tuple(shape[i] for i in keep)
    # (Z, Y, X[, S]) -> (X, Y, Z[, S]): i column, j row, k page
    order = [keep.index(i) for a in "XY" for i in keep if series.axes[i] == a]
    order += [keep.index(axis)] + [keep.index(i) for i in keep if series.axes[i] == "S"]
    final = tuple(out[i] for i in order)
    if len(final) == 4 and final[3] not in (1, 3):
        raise DataError(f"{path} has {final[3]} samples per pixel; save greyscale or RGB "
                        f"stacks")
    return series, keep, order, final, np.dtype(series.dtype).newbyteorder("=")


def probe_stack(path: Path):
    """(shape (I, J, K[, C]), dtype, affine) of a TIFF stack from its tags."""
    def work(tiff):
        _, _, _, shape, dtype = _layout(tiff, path)
        spacing, _ = _spacing(tiff, path)
        return shape, dtype, _affine(spacing)

    return open_tiff(Path(path), work, "TIFF stack")


def _affine(spacing: np.ndarray) -> np.ndarray:
    """(4, 4) voxel (i column, j row, k page) -> mm from (dy, dx, dz): (j dy, i dx, k dz)
    (module docstring: world x down the rows, y along the columns)."""
    dy, dx, dz = (float(v) for v in spacing)
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, dy, 0.0], [dx, 0.0, 0.0], [0.0, 0.0, dz]]
    return affine


def read_stack(path: Path):
    """A TIFF stack as a `Volume` (header: ``pages``, ``axes``, ``spacing_source``)."""
    from retinaunet_deploy.data.volumes import Volume

    path = Path(path)

    def work(tiff):
        series, keep, order, shape, dtype = _layout(tiff, path)
        array = series.asarray()
        index = tuple(slice(None) if i in keep else 0 for i in range(array.ndim))
        array = np.transpose(array[index], order)
        if array.shape != shape:
            raise DataError(f"cannot read {path}: it decodes to {array.shape}, its tags say "
                            f"{shape}; replace it with a valid TIFF stack")
        spacing, source = _spacing(tiff, path)
        notes = () if source else ((f"{path}: no physical size in the file; 1 mm voxels "
                                   f"assumed"),)
        header = {"pages": len(tiff.pages), "axes": series.axes,
                  "spacing_source": source or "assumed 1 mm"}
        return Volume(np.ascontiguousarray(array, dtype), _affine(spacing), str(path), header,
                      "TIFF stack", notes)

    return open_tiff(path, work, "TIFF stack")
