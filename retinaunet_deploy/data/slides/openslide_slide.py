"""Vendor whole-slide formats through OpenSlide (openslide-python + openslide-bin):
Aperio SVS, Hamamatsu NDPI/VMS/VMU, MIRAX, Leica SCN, Ventana BIF, Philips TIFF,
Sakura SVSLIDE, Zeiss CZI, DICOM WSI and generic tiled TIFF.

OpenSlide returns RGBA (not premultiplied; transparent where the scanner stored
nothing); it is composited over white, as OpenSlide's viewers show it, to RGB uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.data.slides import Level, Slide
from retinaunet_deploy.errors import DataError


class OpenSlideSlide(Slide):
    """A slide OpenSlide reads (`Slide` for the API): 3 channels, uint8.

    Raises `DataError` when OpenSlide cannot open the file.
    """

    def __init__(self, path: Path):
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError, ValueError) as error:
            text = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise DataError(f"cannot read {self.path} with OpenSlide: {text}; replace it "
                            f"with a valid slide") from error
        slide = self._slide
        self.format = slide.properties.get("openslide.vendor", "openslide")
        width0, height0 = slide.level_dimensions[0]
        self.levels = [Level(int(h), int(w), (height0 / h, width0 / w))
                       for w, h in slide.level_dimensions]
        self.channels, self.dtype = 3, np.dtype(np.uint8)
        try:
            mpp = (float(slide.properties["openslide.mpp-y"]),
                   float(slide.properties["openslide.mpp-x"]))
        except (KeyError, ValueError):
            mpp = None
        self.mpp = mpp if mpp and min(mpp) > 0 else None

    def _read(self, level, top, left, height, width) -> np.ndarray:
        ds_y, ds_x = self.levels[level].downsample
        # OpenSlide's location is in level-0 pixels, the size in the level's.
        rgba = np.asarray(self._slide.read_region((round(left * ds_x), round(top * ds_y)),
                                                  level, (width, height)))
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        self._slide.close()
