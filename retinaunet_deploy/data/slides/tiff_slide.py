"""Pyramidal TIFF and OME-TIFF slides through tifffile, read lazily through zarr.

tifffile gives a file's first image series and its pyramid (``series.levels``):
SubIFDs (tifffile, Bio-Formats, OME-TIFF), following pages marked reduced
(NewSubfileType bit 0) and the vendor TIFF layouts it knows (Aperio SVS, NDPI...).
Each level is opened as a zarr array over the file's tiles (``series.aszarr(level=i)``),
so a region read decodes only the tiles it touches.
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from retinaunet_deploy.data import tiff as tiff_module
from retinaunet_deploy.data.slides import Level, Slide
from retinaunet_deploy.data.tiff import tifffile_log
from retinaunet_deploy.errors import DataError

# OME length units -> micrometres.
OME_UNITS = {"um": 1.0, "µm": 1.0, "μm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6,
             "pm": 1e-6, "Å": 1e-4}
RESOLUTION_UNITS = {2: 25400.0, 3: 10000.0}    # ResolutionUnit inch, cm -> micrometres


def is_pyramid(path: Path) -> bool:
    """Whether `path` is a TIFF whose first image has several levels and a tiled level 0
    (tags only). Raises what tifffile raises for a damaged file."""
    import tifffile

    with tifffile_log(path, probe=True), tifffile.TiffFile(path) as tiff:
        if not tiff.series:
            return False
        series = tiff.series[0]
        return len(series.levels) > 1 and bool(series.levels[0].keyframe.is_tiled)


def _ome_mpp(tiff) -> tuple[float, float] | None:
    """(y, x) um per pixel from the OME-XML of the first image, or None."""
    try:
        root = ElementTree.fromstring(tiff.ome_metadata)
    except (ElementTree.ParseError, TypeError, ValueError):
        return None
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"),
                  None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit",
                                                                     "µm")
        if value is None or unit not in OME_UNITS:
            return None
        sizes.append(float(value) * OME_UNITS[unit])
    return tuple(sizes) if all(s > 0 and math.isfinite(s) for s in sizes) else None


def _tag_mpp(page) -> tuple[float, float] | None:
    """(y, x) um per pixel from the Y/XResolution tags in cm or inch, or None (no unit:
    tifffile's and many programs' default, which says nothing about the scan)."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    if unit is None or int(unit.value) not in RESOLUTION_UNITS:
        return None
    sizes = []
    for name in ("YResolution", "XResolution"):
        tag = tags.get(name)
        if tag is None:
            return None
        numerator, denominator = tag.value
        if not numerator or not denominator:
            return None
        sizes.append(RESOLUTION_UNITS[int(unit.value)] * denominator / numerator)
    return tuple(sizes)


def file_mpp(tiff, page) -> tuple[float, float] | None:
    """Level-0 (y, x) um per pixel: OME-XML, then Aperio's MPP, then resolution tags."""
    if tiff.is_ome:
        found = _ome_mpp(tiff)
        if found:
            return found
    if tiff.is_svs:
        try:
            mpp = float(tiff.svs_metadata.get("MPP"))
        except (TypeError, ValueError, AttributeError):
            mpp = None
        if mpp and mpp > 0:
            return mpp, mpp
    return _tag_mpp(page)


class TiffSlide(Slide):
    """A pyramidal TIFF or OME-TIFF slide (the module docstring; `Slide` for the API).

    Raises `DataError` for a layout other than one grey or RGB image (several channels
    as planes, z-stacks, time series), or a level compressed with a codec this machine
    cannot decode.
    """

    def __init__(self, path: Path):
        import tifffile

        self.path = Path(path)
        try:
            with tifffile_log(self.path):
                self._tiff = tifffile.TiffFile(self.path)
        except DataError:
            raise
        except Exception as error:
            text = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise DataError(f"cannot read {self.path}: {text}; replace it with a valid "
                            f"TIFF") from error
        try:
            self._setup()
        except BaseException:
            self._tiff.close()
            raise

    def _setup(self) -> None:
        tiff = self._tiff
        series = tiff.series[0]
        self._series = series
        self.format = "OME-TIFF" if tiff.is_ome else "TIFF"
        axes, shape = series.axes, tuple(int(n) for n in series.shape)
        if axes == "YX":
            self.channels, self._planar = 1, False
        elif axes == "YXS" and shape[-1] in (1, 3):
            self.channels, self._planar = shape[-1], False
        elif axes in ("SYX", "CYX") and shape[0] in (1, 3):
            self.channels, self._planar = shape[0], True
        else:
            raise DataError(f"{self.path} is a slide of axes {axes} and shape {shape}; the "
                            f"toolkit predicts one greyscale or RGB image: save each channel, "
                            f"plane or time point as its own slide")
        for i, level in enumerate(series.levels):
            missing = tiff_module._missing_codec(level.keyframe, self.path)
            if missing:
                raise DataError(f"{missing} (level {i})")
        self.dtype = np.dtype(series.dtype).newbyteorder("=")
        height, width = (shape[1:] if self._planar else shape[:2])
        levels = []
        for level in series.levels:
            lshape = tuple(int(n) for n in level.shape)
            h, w = lshape[1:3] if self._planar else lshape[:2]
            levels.append(Level(h, w, (height / h, width / w)))
        self.levels = levels
        self.mpp = file_mpp(tiff, series.levels[0].keyframe)
        self._arrays: dict[int, object] = {}

    def _array(self, level: int):
        if level not in self._arrays:
            import zarr

            self._arrays[level] = zarr.open(self._series.aszarr(level=level), mode="r")
        return self._arrays[level]

    def _read(self, level, top, left, height, width) -> np.ndarray:
        array = self._array(level)
        if self._planar:
            region = np.moveaxis(np.asarray(array[:, top:top + height, left:left + width]),
                                 0, -1)
        else:
            region = np.asarray(array[top:top + height, left:left + width])
        return np.ascontiguousarray(region, dtype=self.dtype)

    def close(self) -> None:
        self._arrays.clear()
        self._tiff.close()
