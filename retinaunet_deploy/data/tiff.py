"""TIFF files as microscopes, Fiji and scanners write them, through tifffile + imagecodecs.

Read: uncompressed, LZW, deflate (adobe_deflate), zstd, PackBits, LZMA, JPEG and
the other codecs imagecodecs brings; stripped or tiled; classic or BigTIFF;
either byte order. What a file holds decides what is read:

* One full-resolution image per file (page 0). Reduced-resolution pages
  (thumbnails, pyramid levels: NewSubfileType bit 0) are downscaled copies of
  it and are left out (counted in the metadata as ``reduced_pages``).
  A file with more than one full-resolution page (a z-stack, a time series,
  channels stored as pages, several images) is refused: which page is "the
  image" is ambiguous.
* Samples per pixel: 1 (greyscale, or a palette's indices) or 3 (RGB; planar
  RGB is returned interleaved as (H, W, 3)). RGB with an alpha sample, grey
  with alpha or any other sample count is refused by `check_image` (the alpha
  is not dropped silently).
* Values as stored: MINISWHITE (an "inverting LUT") is a display convention and
  is not inverted (``photometric`` in the metadata says which).

Every problem is a `DataError` naming the file and what to do: a codec this
machine lacks names the codec and the fix (``pip install imagecodecs``).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

# Compression codes that lose information: fine for an image, wrong for labels.
LOSSY_COMPRESSION = {6: "old-style JPEG", 7: "JPEG", 34892: "lossy JPEG"}
# Photometric interpretations an image may have (labels only need one integer sample).
IMAGE_PHOTOMETRIC = {"MINISWHITE", "MINISBLACK", "RGB", "PALETTE", "YCBCR"}
MAX_PAGES_LOOKED_AT = 64


def _name(enum, value) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _missing_codec(page, path: Path) -> str | None:
    """A one-line refusal when this machine cannot decode `page`'s compression or predictor."""
    import tifffile

    if page.compression != 1 and page.compression not in tifffile.TIFF.DECOMPRESSORS:
        what = f"compressed with {_name(tifffile.COMPRESSION, page.compression)}"
    elif page.predictor != 1 and page.predictor not in tifffile.TIFF.UNPREDICTORS:
        what = f"written with predictor {_name(tifffile.PREDICTOR, page.predictor)}"
    else:
        return None
    return codec_remedy(path, what)


def codec_remedy(path: Path, what: str) -> str:
    """`path is a TIFF <what> ...; <how to get the codec>` for a codec this machine lacks."""
    try:
        import imagecodecs
    except ImportError:
        return (f"{path} is a TIFF {what}, and the codec package is not installed; run "
                f"'pip install imagecodecs' (a dependency of retinaunet-deploy) or re-save it "
                f"uncompressed")
    return (f"{path} is a TIFF {what}, which imagecodecs {imagecodecs.__version__} here cannot "
            f"decode; run 'pip install --upgrade imagecodecs' or re-save it uncompressed or "
            f"with LZW, deflate or zstd")


def _layout(tiff, path: Path) -> tuple[object, tuple[int, ...], np.dtype, dict]:
    """The page to read, the shape and dtype `read_tiff` returns, and the metadata.

    Reads tags only (no pixel data). Raises `DataError` for more than one
    full-resolution page or a codec this machine lacks.
    """
    import tifffile

    count = len(tiff.pages)
    # A long stack is refused without reading every page's tags.
    pages = list(tiff.pages) if count <= MAX_PAGES_LOOKED_AT else []
    full = [page for page in pages if not getattr(page, "subfiletype", 0) & 1]
    if len(full) != 1:
        found = f"{count} pages" + (f", {len(full)} full-resolution" if pages and
                                    len(full) != count else "")
        raise DataError(f"{path} is a multi-page TIFF ({found}); save each 2D image as its "
                        f"own file")
    page = full[0]
    missing = _missing_codec(page, path)
    if missing:
        raise DataError(missing)
    shape = tuple(int(n) for n in page.shape)
    planar = page.samplesperpixel > 1 and page.planarconfig == 2 and len(shape) == 3
    if planar:
        shape = shape[1:] + shape[:1]
    photometric = _name(tifffile.PHOTOMETRIC, page.photometric)
    metadata = {
        "pages": count, "reduced_pages": count - 1, "series": len(tiff.series),
        "axes": tiff.series[0].axes if tiff.series else "", "bigtiff": bool(tiff.is_bigtiff),
        "tiled": bool(page.is_tiled), "compression": _name(tifffile.COMPRESSION,
                                                           page.compression),
        "lossy": page.compression in LOSSY_COMPRESSION, "photometric": photometric,
        "samples": int(page.samplesperpixel), "extra_samples": len(page.extrasamples),
        "planar": planar,
    }
    return page, shape, np.dtype(page.dtype).newbyteorder("="), metadata


def open_tiff(path: Path, work, what: str = "TIFF"):
    """Run ``work(tiff)`` on the open file, mapping tifffile's many errors to `DataError`
    (a missing codec names itself and its remedy; a truncated file, `tifffile_log`; else
    "replace it with a valid <what>")."""
    import tifffile

    with tifffile_log(path, what):
        try:
            with tifffile.TiffFile(path) as tiff:
                return work(tiff)
        except DataError:
            raise
        except Exception as error:  # tifffile and the codecs raise many types for a damaged file
            text = (str(error).splitlines() or [type(error).__name__])[0][:200]
            if "imagecodecs" in text:
                raise DataError(codec_remedy(path, f"whose codec is missing ({text})")) from error
            raise DataError(f"cannot read {path}: {text}; replace it with a valid {what}") from error


# tifffile's log line for a page or tag stored past the end of the file.
_OFFSET_PAST_END = re.compile(r"invalid (page|value|data) offset")


@contextlib.contextmanager
def tifffile_log(path: Path, what: str = "TIFF", *, probe: bool = False):
    """Hold what tifffile logs while the block opens `path`.

    tifffile only logs a page or tag whose offset points past the end of the file (a
    truncated or damaged file) and goes on with the pages before it, so a truncated
    3-page stack would read as one image. Such a log raises `DataError` when the block
    ends; tifffile's other lines are then passed on as they are. ``probe=True`` (a
    check of the tags that a reader repeats) drops them all and raises nothing: the
    reader says it."""
    import logging

    logger = logging.getLogger("tifffile")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if probe:
        return
    damaged = [r.getMessage() for r in records if _OFFSET_PAST_END.search(r.getMessage())]
    if damaged:
        raise DataError(f"cannot read {path}: it is truncated or damaged (tifffile: "
                        f"{damaged[0][:160]}); replace it with a valid {what}")
    for record in records:
        logger.handle(record)


def read_tiff(path: Path) -> tuple[np.ndarray, dict]:
    """A TIFF's one full-resolution image as stored: (H, W) or (H, W, S), native byte order.

    Metadata: ``pages``, ``reduced_pages``, ``series``, ``axes``, ``bigtiff``,
    ``tiled``, ``compression`` (tifffile's name), ``lossy``, ``photometric``,
    ``samples``, ``extra_samples``, ``planar`` (planar samples, returned interleaved).
    Raises `DataError` (see the module docstring).
    """
    def work(tiff):
        page, shape, dtype, metadata = _layout(tiff, path)
        array = page.asarray()
        if metadata["planar"]:
            array = np.moveaxis(array, 0, -1)
        if array.shape != shape:    # what probe_tiff promised is what is returned
            raise DataError(f"cannot read {path}: its pixels decode to {array.shape}, its tags "
                            f"say {shape}; replace it with a valid TIFF")
        return np.ascontiguousarray(array, dtype=dtype), metadata

    return open_tiff(Path(path), work)


def probe_tiff(path: Path) -> tuple[tuple[int, ...], np.dtype, dict]:
    """The shape, dtype and metadata `read_tiff` would return, from the tags only."""
    def work(tiff):
        _, shape, dtype, metadata = _layout(tiff, path)
        return shape, dtype, metadata

    return open_tiff(Path(path), work)


def check_image(shape: tuple[int, ...], metadata: dict, path: Path) -> None:
    """Refuse a TIFF whose samples are not an image's intensities (before the shape check).

    Raises `DataError` for a palette TIFF, a photometric other than grey/RGB, or
    extra samples (alpha) or sample counts other than 1 and 3.
    """
    photometric = metadata["photometric"]
    if photometric == "PALETTE":
        raise DataError(f"{path} is a palette (indexed-colour) TIFF: its values are colour "
                        f"indices, not intensities; save it as greyscale or RGB")
    if photometric not in IMAGE_PHOTOMETRIC or (photometric == "YCBCR"
                                                and metadata["compression"] not in
                                                ("JPEG", "OJPEG", "JPEG_LOSSY")):
        raise DataError(f"{path} has TIFF photometric {photometric}; save it as greyscale or "
                        f"RGB")
    samples, extra = metadata["samples"], metadata["extra_samples"]
    if extra or samples not in (1, 3):
        kind = {"RGB": "RGB", "YCBCR": "RGB"}.get(photometric, "grey")
        detail = (f"{kind} + {extra} extra sample(s), e.g. alpha" if extra
                  else f"{samples} channels")
        raise DataError(f"{path} has {samples} samples per pixel ({detail}) of shape "
                        f"{shape}; the toolkit takes greyscale or RGB: save it without "
                        f"the extra samples, or each channel as its own greyscale file")
