"""Folder datasets: ``DIR/images/``, ``DIR/masks/`` and optional ``DIR/instances/``.

Files pair up by stem (``images/a.tif`` with ``masks/a.png``), PNG or TIFF:

* images: 8- or 16-bit greyscale, or 8-bit RGB, of any height and width (at
  least one network stride); every image of a dataset has the same channels
  and bit depth;
* masks: one channel of class indices, 0 = background, same size as the image;
* instances (optional): 16-bit label images, 0 = background, one id per object.
  Each instance becomes one box of the mask class under it. Without them boxes
  are the connected components of each class, so touching objects of one class
  share one box.

Every problem is a `DataError` naming the file and what to do about it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

SUFFIXES = (".png", ".tif", ".tiff")
IMAGE_MODES = {"L": (np.uint8, 1), "I;16": (np.uint16, 1), "I;16B": (np.uint16, 1),
               "I;16L": (np.uint16, 1), "RGB": (np.uint8, 3)}
MAX_CLASSES = 256           # masks are stored as uint8 class indices
MAX_INSTANCES = 65535       # instance labels are 16-bit


@dataclass
class Sample:
    """One image of a dataset with its labels.

    Attributes:
        name: the image's file name (the key in recorded splits).
        image: (H, W, C) uint8 or uint16 raw pixels, C in {1, 3}.
        mask: (H, W) uint8 class indices, 0 = background.
        instances: (H, W) int32 instance ids, 0 = background: from ``instances/``
            when given, else the connected components of each class.
        sha256: hash of the image, mask and instance files together (None when
            the sample was generated, not read).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    sha256: str | None = None


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            pages = len(tiff.pages)
            if pages != 1 or len(tiff.series) != 1:
                raise DataError(f"{path} is a multi-page TIFF ({pages} pages); save each 2D "
                                f"image as its own file")
            return tiff.asarray()
    except DataError:
        raise
    except Exception as error:  # tifffile raises many types for a damaged file
        raise DataError(f"cannot read {path}: {error}; replace it with a valid TIFF") from error


def _read_png(path: Path) -> tuple[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.mode, np.asarray(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; replace it with a valid PNG") from error


def read_image(path: Path) -> np.ndarray:
    """One PNG or TIFF image as (H, W, C) uint8 or uint16, C in {1, 3}."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        array = _read_tiff(path)
        if array.ndim == 3 and array.shape[-1] in (1, 3):
            pass
        elif array.ndim != 2:
            raise DataError(f"{path} has shape {array.shape}; use a 2D greyscale or (H, W, 3) "
                            f"RGB TIFF")
        if array.dtype not in (np.uint8, np.uint16) or (array.ndim == 3 and array.shape[-1] == 3
                                                         and array.dtype != np.uint8):
            raise DataError(f"{path} is {array.dtype}; use 8/16-bit greyscale or 8-bit RGB")
    else:
        mode, array = _read_png(path)
        if mode not in IMAGE_MODES:
            raise DataError(f"{path} has PNG mode {mode!r}; use 8/16-bit greyscale or 8-bit "
                            f"RGB (modes {sorted(IMAGE_MODES)})")
        array = array.astype(IMAGE_MODES[mode][0])
    return array.reshape(array.shape[:2] + (-1,))


def read_labels(path: Path, what: str) -> np.ndarray:
    """A single-channel integer label image (mask or instances) as (H, W) int64."""
    path = Path(path)
    array = _read_tiff(path) if path.suffix.lower() in (".tif", ".tiff") else _read_png(path)[1]
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


def instance_boxes(instances: np.ndarray, mask: np.ndarray):
    """One box per instance id, of the mask class under it.

    Args:
        instances: (H, W) integer ids, 0 = background. mask: (H, W) class indices.
    Returns:
        boxes (M, 4) float32 (y1, x1, y2, x2) pixels, y2/x2 exclusive; classes (M,)
        int32 detection class = mask class - 1. Pixels of an instance on background
        are ignored (a hole); an instance over two foreground classes takes the
        larger one (the loaders refuse such labels).
    """
    from scipy import ndimage

    labelled = np.where(mask > 0, instances, 0)
    boxes, classes = [], []
    for index, found in enumerate(ndimage.find_objects(labelled.astype(np.int32)), start=1):
        if found is None:
            continue
        rows, cols = found
        under = mask[rows, cols][labelled[rows, cols] == index]
        boxes.append((rows.start, cols.start, rows.stop, cols.stop))
        classes.append(int(np.bincount(under).argmax()) - 1)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)


def components_as_instances(mask: np.ndarray) -> np.ndarray:
    """(H, W) int32 instance ids: the 8-connected components of each foreground class."""
    from scipy import ndimage

    instances = np.zeros(mask.shape, np.int32)
    next_id = 0
    for value in np.unique(mask):
        if value == 0:
            continue
        labels, count = ndimage.label(mask == value, structure=np.ones((3, 3)))
        instances[labels > 0] = labels[labels > 0] + next_id
        next_id += count
    return instances


def check_instances(instances: np.ndarray, mask: np.ndarray, path: Path) -> None:
    """Refuse an instance that lies on two foreground classes."""
    on_object = (instances > 0) & (mask > 0)
    pairs = np.unique(np.stack([instances[on_object], mask[on_object]]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    if np.any(counts > 1):
        bad = int(ids[counts > 1][0])
        classes = pairs[1][pairs[0] == bad].tolist()
        raise DataError(f"instance {bad} in {path} spans mask classes {classes}; an instance "
                        f"must lie on one class: split it or fix the mask")


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in files:
            raise DataError(f"{path} and {files[path.stem]} share the name {path.stem!r}; keep "
                            f"one file per name")
        files[path.stem] = path
    return files


def list_folder(root: Path) -> dict[str, tuple[Path, Path, Path | None]]:
    """Image name -> (image, mask, instances or None) paths, checked for pairing."""
    root = Path(root)
    image_dir, mask_dir, instance_dir = root / "images", root / "masks", root / "instances"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; a folder dataset needs {root}/images/ and "
                            f"{root}/masks/ with PNG or TIFF files of matching names")
    images, masks = _files_by_stem(image_dir), _files_by_stem(mask_dir)
    instances = _files_by_stem(instance_dir) if instance_dir.is_dir() else None
    if not images:
        raise DataError(f"no PNG or TIFF images in {image_dir}; put the training images there")
    for stem, path in images.items():
        if stem not in masks:
            missing = sorted(set(images) - set(masks))
            raise DataError(f"{path} has no mask in {mask_dir} ({len(missing)} image(s) without "
                            f"a mask); add the masks or remove those images")
        if instances is not None and stem not in instances:
            raise DataError(f"{path} has no instance labels in {instance_dir}; give every image "
                            f"its instances/ file, or remove {instance_dir}")
    for stem, path in masks.items():
        if stem not in images:
            raise DataError(f"{path} has no image in {image_dir}; add the image or remove the "
                            f"mask")
    return {images[s].name: (images[s], masks[s], instances[s] if instances else None)
            for s in images}


def sample_sha256(paths) -> str:
    """One hash over the bytes of a sample's files (image, mask, instances)."""
    digest = hashlib.sha256()
    for path in paths:
        if path is not None:
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def load_sample(name: str, paths, min_size: int = 16) -> Sample:
    """Read and check one sample's files (paths as from `list_folder`)."""
    image_path, mask_path, instance_path = paths
    image = read_image(image_path)
    mask = read_labels(mask_path, "mask")
    height, width = image.shape[:2]
    if mask.shape != (height, width):
        raise DataError(f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image is "
                        f"{height}x{width}; masks must match their images")
    if min(height, width) < min_size:
        raise DataError(f"{image_path} is {height}x{width}, smaller than one network stride "
                        f"({min_size} px); use larger images or leave this one out")
    if mask.max(initial=0) >= MAX_CLASSES:
        raise DataError(f"mask {mask_path} has class value {int(mask.max())}; at most "
                        f"{MAX_CLASSES} classes (0..{MAX_CLASSES - 1}) are supported")
    mask = mask.astype(np.uint8)
    if instance_path is None:
        instances = components_as_instances(mask)
    else:
        labels = read_labels(instance_path, "instance label image")
        if labels.shape != (height, width):
            raise DataError(f"instance labels {instance_path} are {labels.shape[0]}x"
                            f"{labels.shape[1]} but the image is {height}x{width}; they must "
                            f"match")
        if labels.max(initial=0) > MAX_INSTANCES:
            raise DataError(f"instance labels {instance_path} use id {int(labels.max())}, more "
                            f"than a 16-bit label image can hold ({MAX_INSTANCES}); split the "
                            f"image into smaller ones")
        instances = labels.astype(np.int32)
        check_instances(instances, mask, instance_path)
    return Sample(name, image, mask, instances, sample_sha256(paths))


def load_folder_dataset(root: Path, names: list[str] | None = None,
                        num_classes: int | None = None, min_size: int = 16) -> list[Sample]:
    """Read and validate a folder dataset (all of it, or the named images).

    Args:
        names: image file names to load (a recorded split); None loads every image.
        num_classes: mask classes including background; checked when given.
        min_size: the network's total stride; smaller images are refused.
    """
    files = list_folder(root)
    names = sorted(files) if names is None else names
    samples = []
    for name in names:
        if name not in files:
            raise DataError(f"{Path(root) / 'images' / name} is gone from the dataset; restore "
                            f"it or retrain")
        samples.append(load_sample(name, files[name], min_size))
    first = samples[0].image
    for sample in samples[1:]:
        if sample.image.shape[2] != first.shape[2] or sample.image.dtype != first.dtype:
            raise DataError(
                f"{files[sample.name][0]} has {sample.image.shape[2]} channel(s) "
                f"{sample.image.dtype} but {files[samples[0].name][0]} has {first.shape[2]} "
                f"{first.dtype}; all images must share channels and bit depth")
    if num_classes is not None:
        for sample in samples:
            if sample.mask.max() >= num_classes:
                raise DataError(f"{files[sample.name][1]} has class value {int(sample.mask.max())}"
                                f" but the dataset has {num_classes} classes (0.."
                                f"{num_classes - 1}); fix the mask or pass the right number of "
                                f"classes")
    return samples


def write_folder_dataset(root: Path, samples: list[Sample], instances: bool = True) -> None:
    """Write samples as a folder dataset of PNGs (instances as 16-bit PNGs when asked)."""
    from PIL import Image

    root = Path(root)
    for sub in ("images", "masks") + (("instances",) if instances else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for sample in samples:
        name = Path(sample.name).stem + ".png"
        pixels = sample.image[..., 0] if sample.image.shape[-1] == 1 else sample.image
        # Pillow picks the PNG mode from the dtype: uint8 -> L/RGB, uint16 -> I;16.
        Image.fromarray(np.ascontiguousarray(pixels)).save(root / "images" / name)
        Image.fromarray(sample.mask.astype(np.uint8)).save(root / "masks" / name)
        if instances:
            if sample.instances.max(initial=0) > MAX_INSTANCES:
                raise DataError(f"{sample.name} has more than {MAX_INSTANCES} instances")
            Image.fromarray(sample.instances.astype(np.uint16)).save(root / "instances" / name)
