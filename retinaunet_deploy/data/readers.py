"""Image file readers, one registration per format, chosen by the file's suffix.

MONAI's habit: a reader turns a file into ``(array, metadata)`` and the rest of
the toolkit never branches on the format. `read_image` (an image to segment) and
`read_labels` (a mask or an instance label image) go through `reader_for`; the
folder datasets list the files of every registered suffix. Built in: PNG
(Pillow) and TIFF (tifffile + imagecodecs: LZW, deflate, zstd, JPEG, tiles,
BigTIFF; see `data.tiff`).

Adding a format is one module with a ``read(path) -> (array, metadata)``
function and one `register_reader` call (here for a built-in format, or in the
module that brings it). A reader raises `DataError` for a file it cannot read;
`read_image` then checks the array is an image this toolkit takes (its own
check, or the format's ``as_image`` when the format knows more, like PNG's mode).

`probe_image` answers what `read_image` would return (size, channels, dtype) from
the file's header alone, without decoding pixels, and refuses with the same
`DataError` a bad mode, dtype or shape gets from `read_image`; a reader gives it
through its ``probe`` (a reader without one is read in full). Damage in the pixel
data itself (a truncated file) is found only when the pixels are read.

A file whose suffix no reader claims is read by Pillow, as the PNG reader (any
image Pillow opens, checked as PNG is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.data import tiff
from retinaunet_deploy.errors import DataError

# PNG modes taken as images: mode -> (dtype, channels).
IMAGE_MODES = {"L": (np.uint8, 1), "I;16": (np.uint16, 1), "I;16B": (np.uint16, 1),
               "I;16L": (np.uint16, 1), "RGB": (np.uint8, 3)}
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclass(frozen=True)
class ImageHeader:
    """What `read_image` would return for a file, read from its header only.

    Attributes:
        path: the file. height, width: pixels. channels: 1 or 3.
        dtype: uint8 or uint16 (the dtype `read_image` returns).
        format: the reader's format name ("PNG", "TIFF").
    """

    path: Path
    height: int
    width: int
    channels: int
    dtype: np.dtype
    format: str


def image_header(shape: tuple[int, ...], dtype, metadata: dict,
                 path: Path) -> tuple[tuple[int, int, int], np.dtype]:
    """Check a stored shape and dtype are an image's: (H, W) or (H, W, 1|3); 8/16-bit grey
    or 8-bit RGB.

    Returns the (H, W, C) shape and the dtype `read_image` gives. Raises `DataError`
    naming the file and what to use.
    """
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype).newbyteorder("=")
    if len(shape) == 3 and shape[-1] in (1, 3):
        pass
    elif len(shape) != 2:
        raise DataError(f"{path} has shape {shape}; use a 2D greyscale or (H, W, 3) "
                        f"RGB {metadata['format']}")
    if dtype not in IMAGE_DTYPES or (len(shape) == 3 and shape[-1] == 3
                                     and dtype != np.uint8):
        raise DataError(f"{path} is {dtype}; use 8/16-bit greyscale or 8-bit RGB")
    return (shape[0], shape[1], shape[2] if len(shape) == 3 else 1), dtype


def image_array(array: np.ndarray, metadata: dict, path: Path) -> np.ndarray:
    """Check a decoded array is an image (`image_header`); returns it unchanged.

    Raises `DataError` naming the file and what to use.
    """
    image_header(array.shape, array.dtype, metadata, path)
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
        probe: ``probe(path) -> (shape, dtype, metadata)``: what ``read`` would return,
            from the header only (no pixels decoded); None: `probe_image` reads the file.
        as_header: ``as_header(shape, dtype, metadata, path) -> ((H, W, C), dtype)``: the
            header-level twin of ``as_image``, refusing exactly what it refuses; default
            `image_header`. A reader with its own ``as_image`` and a ``probe`` gives one.
    """

    format: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], tuple[np.ndarray, dict]]
    as_image: Callable[[np.ndarray, dict, Path], np.ndarray] = image_array
    probe: Callable[[Path], tuple[tuple[int, ...], np.dtype, dict]] | None = None
    as_header: Callable[[tuple, np.dtype, dict, Path], tuple] = image_header


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


def _metadata(reader: Reader, path: Path, shape, dtype, known: dict) -> dict:
    return {"format": reader.format, "suffix": suffix_of(path), "dtype": str(np.dtype(dtype)),
            "shape": tuple(int(n) for n in shape), **known}


def read_file(path: Path) -> tuple[np.ndarray, dict]:
    """Any registered file as ``(array, metadata)``.

    Returns:
        array: the pixels as stored (any shape and dtype the format holds).
        metadata: at least ``format``, ``suffix``, ``dtype`` and ``shape``, plus what
            the reader knows (PNG: ``mode``, ``bit_depth``; TIFF: ``pages``,
            ``compression``, ``photometric``, ...), and ``lossy`` when the format says
            its pixels were compressed lossily (JPEG).
    Raises:
        DataError: the file cannot be read (names it and what to do).
    """
    path = Path(path)
    reader = reader_for(path)
    array, known = reader.read(path)
    return array, _metadata(reader, path, array.shape, array.dtype, known)


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


def probe_image(path: Path) -> ImageHeader:
    """What `read_image(path)` would return, from the file's header: no pixel is decoded.

    Returns:
        `ImageHeader` (height, width, channels 1|3, dtype uint8|uint16, format).
    Raises:
        DataError: as `read_image` would for an unreadable header, a mode, dtype,
            shape or layout that is not an image (same message). Damaged pixel data
            (a truncated file) probes fine and fails when `read_image` reads it.
    """
    path = Path(path)
    reader = reader_for(path)
    if reader.probe is None:    # a format without a header reader: read it
        image = read_image(path)
        return ImageHeader(path, *image.shape, image.dtype, reader.format)
    shape, dtype, known = reader.probe(path)
    metadata = _metadata(reader, path, shape, dtype, known)
    (height, width, channels), dtype = reader.as_header(shape, dtype, metadata, path)
    return ImageHeader(path, height, width, channels, np.dtype(dtype), reader.format)


def read_labels(path: Path, what: str) -> np.ndarray:
    """A single-channel integer label image (mask or instances) as (H, W) int64.

    `what` names it in errors ("mask", "instance label image"). Raises
    `DataError` for an unreadable file, a lossily compressed one (JPEG changes
    label values at object edges), more than one channel, a non-integer dtype or
    a negative value.
    """
    path = Path(path)
    array, metadata = read_file(path)
    if metadata.get("lossy"):
        raise DataError(f"{what} {path} is {metadata.get('compression', 'JPEG')}-compressed, "
                        f"which is lossy and changes label values at object edges; save "
                        f"{what}s uncompressed or with a lossless codec (PNG, or TIFF with "
                        f"LZW, deflate or zstd)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.dtype.kind not in "uib":
        same = (array.ndim == 3 and array.shape[-1] > 1
                and all(np.array_equal(array[..., 0], array[..., i])
                        for i in range(1, array.shape[-1])))
        raise DataError(f"{what} {path} is {array.dtype} of shape {array.shape}; {what}s must "
                        f"be single-channel integer label images"
                        + ("; its channels are equal: save it as greyscale" if same else ""))
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise DataError(f"{what} {path} has negative value {int(array.min())}; labels are "
                        f"0 (background) or positive")
    return array


# === PNG (and anything else Pillow opens) ===

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR = {0: "greyscale", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
MODE_NOTES = {"1": "1-bit", "P": "", "LA": "grey with alpha", "PA": "palette with alpha",
              "RGBA": "RGB with alpha", "RGBa": "RGB with alpha", "La": "grey with alpha",
              "I": "32-bit integer", "F": "32-bit float", "CMYK": "CMYK"}


def _png_ihdr(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file's header; None for a file that is not PNG."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _open_pillow(path: Path, work):
    """Run ``work(image, known)`` on the opened file, Pillow's errors as `DataError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            known = {"mode": image.mode, "pillow_format": image.format,
                     "lossy": image.format in ("JPEG", "MPO"),
                     "transparency": "transparency" in image.info}  # kept as values
            frames = getattr(image, "n_frames", 1)
            if frames > 1:   # Pillow would give the first frame only
                raise DataError(f"{path} holds {frames} frames (an animation or a stack); "
                                f"save each image as its own file")
            ihdr = _png_ihdr(path) if image.format == "PNG" else None
            if ihdr:
                known["bit_depth"], colour = ihdr
                known["colour_type"] = PNG_COLOUR.get(colour, str(colour))
                if known["bit_depth"] == 16 and colour in (2, 4, 6):
                    # Pillow keeps only the high byte of 16-bit colour or alpha PNGs.
                    raise DataError(f"{path} is a 16-bit {known['colour_type']} PNG, which "
                                    f"would be read as 8 bits (the low byte dropped); save it "
                                    f"as 8-bit RGB or 16-bit greyscale without alpha")
            return work(image, known)
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(f"{path} is refused as a possible decompression bomb ({error}); if "
                        f"you trust it, save it as TIFF (no such limit) or split it into "
                        f"smaller images") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; replace it with a valid PNG") from error


def read_png(path: Path) -> tuple[np.ndarray, dict]:
    """A PNG (or any file Pillow opens) as stored; metadata ``mode`` (Pillow's),
    ``pillow_format``, ``lossy``, ``transparency`` (a transparent colour is named: the
    pixels keep their values) and, for a PNG, ``bit_depth`` and ``colour_type``.

    1/2/4-bit greyscale PNGs keep their stored values (0..1, 0..3, 0..15: class
    indices stay class indices); `png_image` scales them to 0..255 for an image.
    A 16-bit colour or grey+alpha PNG is refused (Pillow would keep 8 of its bits), and
    so is a file of several frames (an APNG, a multi-frame GIF: Pillow reads frame 0).
    """
    def work(image, known):
        image.load()
        array = np.asarray(image)
        depth = known.get("bit_depth")
        if image.mode == "L" and depth in (2, 4):   # Pillow scaled them to 0..255
            array = array // (255 // (2 ** depth - 1))
        return array, known

    return _open_pillow(Path(path), work)


def probe_png(path: Path) -> tuple[tuple[int, ...], np.dtype, dict]:
    """The shape, dtype and metadata `read_png` would return, from the header only."""
    from PIL import ImageMode

    def work(image, known):
        mode = ImageMode.getmode(image.mode)
        bands = len(mode.bands)
        shape = (image.height, image.width) + ((bands,) if bands > 1 else ())
        dtype = np.bool_ if image.mode == "1" else np.dtype(mode.typestr)
        return shape, np.dtype(dtype), known

    return _open_pillow(Path(path), work)


def png_header(shape: tuple, dtype, metadata: dict, path: Path):
    """A PNG is an image when its mode is one of `IMAGE_MODES` (then that mode's dtype)."""
    mode = metadata["mode"]
    if mode not in IMAGE_MODES:
        note = MODE_NOTES.get(mode, "")
        raise DataError(f"{path} has PNG mode {mode!r}{f' ({note})' if note else ''}; use "
                        f"8/16-bit greyscale or 8-bit RGB (modes {sorted(IMAGE_MODES)})")
    return image_header(shape, IMAGE_MODES[mode][0], metadata, path)


def png_image(array: np.ndarray, metadata: dict, path: Path) -> np.ndarray:
    """`png_header`'s check; the array cast to its mode's dtype (2/4-bit grey scaled to
    0..255, as PNG viewers show it)."""
    png_header(array.shape, array.dtype, metadata, path)
    depth = metadata.get("bit_depth")
    if metadata["mode"] == "L" and depth in (2, 4):
        array = array * np.uint8(255 // (2 ** depth - 1))
    return array.astype(IMAGE_MODES[metadata["mode"]][0])


# === TIFF (data.tiff) ===

def tiff_header(shape: tuple, dtype, metadata: dict, path: Path):
    """A TIFF is an image when its samples are intensities (`tiff.check_image`), then as
    `image_header`."""
    tiff.check_image(tuple(shape), metadata, path)
    return image_header(shape, dtype, metadata, path)


def tiff_image(array: np.ndarray, metadata: dict, path: Path) -> np.ndarray:
    """`tiff_header`'s check; returns the array unchanged."""
    tiff_header(array.shape, array.dtype, metadata, path)
    return array


register_reader(Reader("PNG", (".png",), read_png, png_image, probe_png, png_header))
register_reader(Reader("TIFF", (".tif", ".tiff"), tiff.read_tiff, tiff_image, tiff.probe_tiff,
                       tiff_header))
