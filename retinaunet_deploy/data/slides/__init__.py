"""Whole-slide images: pyramidal TIFF / OME-TIFF (tifffile + zarr) and the vendor formats
OpenSlide reads, opened lazily, one region at a time.

A slide is a pyramid of levels of one image: level 0 at full resolution, each further
level a downscaled copy. A file is a slide (`slide_kind`) when it is

* a TIFF (``.tif``, ``.tiff``, ``.btf``, ``.ome.tif``...) whose first image has at least
  one reduced-resolution level, stored as SubIFDs (as tifffile and Bio-Formats write
  them) or as following pages marked reduced (NewSubfileType bit 0), AND whose level 0
  is tiled. A plain 2D TIFF (one level, or a stripped image with a thumbnail page) is
  not a slide: it stays an image (`data.tiff`), read whole as before; or
* a file of another suffix that OpenSlide recognises (``.svs``, ``.ndpi``, ``.mrxs``,
  ``.scn``, ``.vms``, ``.vmu``, ``.bif``, ``.svslide``, ``.czi``, ``.dcm``...).

Coordinates: (row, column) = (y, x) in pixels of a level; a level's ``downsample``
(y, x) is level-0 pixels per level pixel. Pixels are returned as (h, w, C) in the
file's dtype (C = 1 grey, 3 RGB; OpenSlide's RGBA is composited over white, as
OpenSlide's own viewers show it). Resolution: ``mpp`` (y, x) micrometres per level-0
pixel from the file's metadata (OME PhysicalSizeX/Y, Aperio's ``MPP``, TIFF
resolution tags in centimetres or inches, OpenSlide's ``openslide.mpp-x/y``), None
when the file does not record it.

Every problem is a one-line `DataError` naming the file and what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
MPP_TOLERANCE = 0.1      # --mpp picks a level whose resolution is within 10% of it


@dataclass(frozen=True)
class Level:
    """One level of a slide: (height, width) pixels and downsample (y, x), level-0 pixels
    per pixel of this level (1.0 at level 0)."""

    height: int
    width: int
    downsample: tuple[float, float]


class Slide:
    """A slide opened for region reads (base of `TiffSlide` and `OpenSlideSlide`).

    Attributes:
        path: the file. format: "TIFF", "OME-TIFF" or OpenSlide's vendor name.
        levels: `Level`s, full resolution first. channels: 1 or 3. dtype: np.dtype.
        mpp: (y, x) micrometres per level-0 pixel, or None when the file has none.
    """

    path: Path
    format: str
    levels: list[Level]
    channels: int
    dtype: np.dtype
    mpp: tuple[float, float] | None

    def read(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The (height, width, C) pixels of `level` from (top, left), inside the level.

        Raises `DataError` for a region outside the level or pixels that cannot be decoded.
        """
        lvl = self.levels[level]
        if top < 0 or left < 0 or top + height > lvl.height or left + width > lvl.width:
            raise DataError(f"{self.path}: region {height}x{width} at ({top}, {left}) is "
                            f"outside level {level} ({lvl.height}x{lvl.width})")
        try:
            region = self._read(level, top, left, height, width)
        except DataError:
            raise
        except Exception as error:  # codecs and libraries raise many types for bad data
            text = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise DataError(f"cannot read {self.path} (level {level} at row {top}, column "
                            f"{left}): {text}; replace it with a valid slide") from error
        return region.reshape(height, width, self.channels)

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """(y, x) micrometres per pixel of `level` (None when the file has no pixel size)."""
        if self.mpp is None:
            return None
        ds = self.levels[level].downsample
        return self.mpp[0] * ds[0], self.mpp[1] * ds[1]

    def describe_levels(self) -> str:
        """"0: 20000x20000, 1: 10000x10000 (...)" for messages (with mpp when known)."""
        parts = []
        for i, lvl in enumerate(self.levels):
            mpp = self.level_mpp(i)
            parts.append(f"{i}: {lvl.height}x{lvl.width}"
                         + (f" at {mpp[1]:.3g} um/px" if mpp else ""))
        return ", ".join(parts)

    def _read(self, level, top, left, height, width) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _suffix(path: Path) -> str:
    return Path(path).suffix.lower()


def slide_kind(path: Path) -> str | None:
    """"tiff" (a pyramidal tiled TIFF), "openslide" (a vendor format OpenSlide reads) or
    None (not a slide: an image, or unreadable; the image readers then say why).

    Reads tags only; never raises for a bad file."""
    path = Path(path)
    if _suffix(path) in TIFF_SUFFIXES:
        from retinaunet_deploy.data.slides.tiff_slide import is_pyramid

        try:
            return "tiff" if is_pyramid(path) else None
        except Exception:  # noqa: BLE001 - a damaged TIFF is the image reader's to refuse
            return None
    if _suffix(path) in (".png", ".jpg", ".jpeg"):
        return None
    try:
        import openslide

        return "openslide" if openslide.OpenSlide.detect_format(str(path)) else None
    except Exception:  # noqa: BLE001 - no OpenSlide here, or not its file
        return None


def open_slide(path: Path) -> Slide:
    """The slide in `path` (`slide_kind` decides the reader).

    Raises `DataError` for a file that is not a slide, a compression this machine cannot
    decode, an image layout other than grey or RGB, or a file the reader refuses.
    """
    path = Path(path)
    kind = slide_kind(path)
    if kind == "tiff":
        from retinaunet_deploy.data.slides.tiff_slide import TiffSlide

        return TiffSlide(path)
    if kind == "openslide":
        from retinaunet_deploy.data.slides.openslide_slide import OpenSlideSlide

        return OpenSlideSlide(path)
    raise DataError(f"{path} is not a whole-slide image (a tiled pyramidal TIFF or a format "
                    f"OpenSlide reads); predict it as an image")


def choose_level(slide: Slide, level: int | None = None, mpp: float | None = None) -> int:
    """The level to predict: `level` when given, else the level whose resolution is
    within `MPP_TOLERANCE` of `mpp` micrometres per pixel (the x resolution), else 0.

    Raises `DataError` (one line, the levels listed) for a level that does not exist, an
    `mpp` on a file that records no pixel size, or one no level is near.
    """
    count = len(slide.levels)
    if level is not None and mpp is not None:
        raise DataError("give --level or --mpp, not both")
    if level is not None:
        if not 0 <= level < count:
            raise DataError(f"{slide.path} has no level {level}: it has {count} level(s) "
                            f"({slide.describe_levels()}); choose --level 0.."
                            f"{count - 1}")
        return level
    if mpp is None:
        return 0
    if not mpp > 0:
        raise DataError(f"--mpp must be positive, got {mpp}")
    if slide.mpp is None:
        raise DataError(f"{slide.path} records no pixel size (no OME PhysicalSizeX, Aperio "
                        f"MPP, resolution tags in cm or inch, or openslide.mpp-x), so "
                        f"--mpp {mpp:g} cannot be found; choose a level with --level "
                        f"({slide.describe_levels()})")
    ratios = [abs(math.log(slide.level_mpp(i)[1] / mpp)) for i in range(count)]
    best = int(np.argmin(ratios))
    if ratios[best] > math.log(1 + MPP_TOLERANCE):
        raise DataError(f"{slide.path} has no level within {MPP_TOLERANCE:.0%} of {mpp:g} "
                        f"um/px (levels {slide.describe_levels()}); choose one of those "
                        f"with --level or --mpp")
    return best
