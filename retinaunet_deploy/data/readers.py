"""Image file readers, one registration per format, chosen by the file's suffix.

MONAI's habit: a reader turns a file into ``(array, metadata)`` and the rest of
the toolkit never branches on the format. `read_image` (an image to segment) and
`read_labels` (a mask or an instance label image) go through `reader_for`; the
folder datasets list the files of every registered suffix. Built in: PNG
(Pillow) and TIFF (tifffile).

Adding a format is one module with a ``read(path) -> (array, metadata)``
function and one `register_reader` call (here for a built-in format, or in the
module that brings it). A reader raises `DataError` for a file it cannot read;
`read_image` then checks the array is an image this toolkit takes (its own
check, or the format's ``as_image`` when the format knows more, like PNG's mode).

A file whose suffix no reader claims is read by Pillow, as the PNG reader (any
image Pillow opens, checked as PNG is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

# PNG modes taken as images: mode -> (dtype, channels).
IMAGE_MODES = {"L": (np.uint8, 1), "I;16": (np.uint16, 1), "I;16B": (np.uint16, 1),
               "I;16L": (np.uint16, 1), "RGB": (np.uint8, 3)}


def image_array(array: np.ndarray, metadata: dict, path: Path) -> np.ndarray:
    """Check a decoded array is an image: (H, W) or (H, W, 1|3); 8/16-bit grey or 8-bit RGB.

    Returns the array unchanged. Raises `DataError` naming the file and what to use.
    """
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        pass
    elif array.ndim != 2:
        raise DataError(f"{path} has shape {array.shape}; use a 2D greyscale or (H, W, 3) "
                        f"RGB {metadata['format']}")
    if array.dtype not in (np.uint8, np.uint16) or (array.ndim == 3 and array.shape[-1] == 3
                                                     and array.dtype != np.uint8):
        raise DataError(f"{path} is {array.dtype}; use 8/16-bit greyscale or 8-bit RGB")
    return array


@dataclass(frozen=True)
class Reader:
    """One file format.

    Attributes:
        format: its name in messages ("PNG", "TIFF").
        suffixes: lower-case file suffixes it reads (".tif", ".tiff"; ".nii.gz" works).
        read: ``read(path) -> (array, metadata)``: the decoded pixels as stored, and
            what the reader knows (PNG mode, TIFF pages, ...); raises `DataError`.
        as_image: ``as_image(array, metadata, path) -> array``: refuse (`DataError`)
            or convert an array that is not an image; default `image_array`.
    """

    format: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], tuple[np.ndarray, dict]]
    as_image: Callable[[np.ndarray, dict, Path], np.ndarray] = image_array


READERS: dict[str, Reader] = {}     # suffix -> reader, in registration order


def register_reader(reader: Reader) -> Reader:
    """Add (or replace) the reader of each of `reader.suffixes`; returns it."""
    for suffix in reader.suffixes:
        if not suffix.startswith(".") or suffix != suffix.lower():
            raise ValueError(f"reader suffixes are lower-case and start with '.', got "
                             f"{suffix!r}")
        READERS[suffix] = reader
    return reader


def unregister_reader(suffix: str) -> None:
    """Remove the reader of `suffix` (tests that register one)."""
    READERS.pop(suffix, None)


def suffix_of(path: Path) -> str:
    """The registered suffix `path` ends with (the longest), else its last suffix, lower-case."""
    name = Path(path).name.lower()
    matches = [s for s in READERS if name.endswith(s) and len(name) > len(s)]
    return max(matches, key=len) if matches else Path(name).suffix


def stem_of(path: Path) -> str:
    """The file name without its suffix (``a.nii.gz`` -> ``a`` when ``.nii.gz`` is registered)."""
    name, suffix = Path(path).name, suffix_of(path)
    return name[: len(name) - len(suffix)] if suffix else name


def readable(path: Path) -> bool:
    """Whether some registered reader claims `path` by its suffix."""
    return suffix_of(path) in READERS


def format_names() -> str:
    """The registered formats for messages: "PNG or TIFF"."""
    formats = list(dict.fromkeys(reader.format for reader in READERS.values()))
    return " or ".join(formats) if len(formats) < 3 else (
        ", ".join(formats[:-1]) + " or " + formats[-1])


def reader_for(path: Path) -> Reader:
    """The reader of `path` by its suffix; the PNG reader (Pillow) when none claims it."""
    return READERS.get(suffix_of(path)) or READERS[".png"]


def read_file(path: Path) -> tuple[np.ndarray, dict]:
    """Any registered file as ``(array, metadata)``.

    Returns:
        array: the pixels as stored (any shape and dtype the format holds).
        metadata: at least ``format``, ``suffix``, ``dtype`` and ``shape``, plus what
            the reader knows (PNG: ``mode``; TIFF: ``pages``, ``series``, ``axes``).
    Raises:
        DataError: the file cannot be read (names it and what to do).
    """
    path = Path(path)
    reader = reader_for(path)
    array, known = reader.read(path)
    return array, {"format": reader.format, "suffix": suffix_of(path),
                   "dtype": str(array.dtype), "shape": tuple(array.shape), **known}


def read_image(path: Path) -> np.ndarray:
    """One image file as (H, W, C) uint8 or uint16, C in {1, 3}.

    Raises `DataError` for an unreadable file or one that is not 8/16-bit
    greyscale or 8-bit RGB, naming the file.
    """
    path = Path(path)
    reader = reader_for(path)
    array, metadata = read_file(path)
    array = reader.as_image(array, metadata, path)
    return array.reshape(array.shape[:2] + (-1,))


def read_labels(path: Path, what: str) -> np.ndarray:
    """A single-channel integer label image (mask or instances) as (H, W) int64.

    `what` names it in errors ("mask", "instance label image"). Raises
    `DataError` for an unreadable file, more than one channel, a non-integer
    dtype or a negative value.
    """
    path = Path(path)
    array, _ = read_file(path)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.dtype.kind not in "uib":
        raise DataError(f"{what} {path} is {array.dtype} of shape {array.shape}; {what}s must "
                        f"be single-channel integer label images")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise DataError(f"{what} {path} has negative value {int(array.min())}; labels are "
                        f"0 (background) or positive")
    return array


# === The built-in formats ===

def read_png(path: Path) -> tuple[np.ndarray, dict]:
    """A PNG (or any file Pillow opens) as stored; metadata ``mode`` (Pillow's)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image), {"mode": image.mode}
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; replace it with a valid PNG") from error


def png_image(array: np.ndarray, metadata: dict, path: Path) -> np.ndarray:
    """A PNG is an image when its mode is one of `IMAGE_MODES`; cast to that mode's dtype."""
    mode = metadata["mode"]
    if mode not in IMAGE_MODES:
        raise DataError(f"{path} has PNG mode {mode!r}; use 8/16-bit greyscale or 8-bit "
                        f"RGB (modes {sorted(IMAGE_MODES)})")
    return array.astype(IMAGE_MODES[mode][0])


def read_tiff(path: Path) -> tuple[np.ndarray, dict]:
    """A single-page TIFF as stored; metadata ``pages``, ``series``, ``axes``.

    A multi-page TIFF (a stack) is refused: each 2D image goes in its own file.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            pages = len(tiff.pages)
            if pages != 1 or len(tiff.series) != 1:
                raise DataError(f"{path} is a multi-page TIFF ({pages} pages); save each 2D "
                                f"image as its own file")
            return tiff.asarray(), {"pages": pages, "series": len(tiff.series),
                                    "axes": tiff.series[0].axes}
    except DataError:
        raise
    except Exception as error:  # tifffile raises many types for a damaged file
        raise DataError(f"cannot read {path}: {error}; replace it with a valid TIFF") from error


register_reader(Reader("PNG", (".png",), read_png, png_image))
register_reader(Reader("TIFF", (".tif", ".tiff"), read_tiff))
