"""Folder datasets: ``DIR/images/*.png`` and ``DIR/masks/*.png`` with matching file names.

Images are 8- or 16-bit greyscale or 8-bit RGB PNGs; masks are single-channel
PNGs (8-bit greyscale or palette, or 16-bit) of class indices, 0 = background.
Every problem is a `DataError` naming the file and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

IMAGE_MODES = {"L": (np.uint8, 1), "I;16": (np.uint16, 1), "I;16B": (np.uint16, 1),
               "I;16L": (np.uint16, 1), "RGB": (np.uint8, 3)}
MASK_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


@dataclass
class FolderDataset:
    """A loaded folder dataset.

    Attributes:
        images: (N, H, W, C) uint8 or uint16 NHWC, C in {1, 3}.
        masks: (N, H, W) uint8 class indices < num_classes.
        names: N file names (without folder), sorted.
        num_classes: mask classes including background.
    """

    images: np.ndarray
    masks: np.ndarray
    names: list[str]
    num_classes: int

    @property
    def pixel_max(self) -> int:
        return int(np.iinfo(self.images.dtype).max)


def _read_png(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.mode, image.copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as error:
        raise DataError(f"cannot read {path}: {error}; replace it with a valid PNG") from error


def read_image(path: Path) -> np.ndarray:
    """One PNG as (H, W, C) uint8 or uint16; `DataError` naming the file if unusable."""
    mode, image = _read_png(path)
    if mode not in IMAGE_MODES:
        raise DataError(f"{path} has PNG mode {mode!r}; use 8/16-bit greyscale or 8-bit RGB "
                        f"(modes {sorted(IMAGE_MODES)})")
    dtype, channels = IMAGE_MODES[mode]
    array = np.asarray(image).astype(dtype)
    return array.reshape(array.shape[:2] + (channels,))


def _read_mask(path: Path) -> np.ndarray:
    mode, image = _read_png(path)
    if mode not in MASK_MODES:
        raise DataError(f"mask {path} has PNG mode {mode!r}; masks must be single-channel class "
                        f"indices (greyscale or palette PNG)")
    return np.asarray(image)


def load_folder_dataset(root: Path, num_classes: int | None = None,
                        multiple_of: int = 16) -> FolderDataset:
    """Load and validate ``root/images`` and ``root/masks``.

    Args:
        root: the dataset folder.
        num_classes: mask classes including background; inferred (max + 1, at least 2)
            when None.
        multiple_of: image height and width must be multiples of this (2**depth).
    """
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; a folder dataset needs {root}/images/ and "
                            f"{root}/masks/ with PNGs of matching names")
    image_names = sorted(p.name for p in image_dir.glob("*.png"))
    mask_names = sorted(p.name for p in mask_dir.glob("*.png"))
    if not image_names:
        raise DataError(f"no PNG images in {image_dir}; put the training images there")
    missing_masks = sorted(set(image_names) - set(mask_names))
    if missing_masks:
        raise DataError(f"{image_dir / missing_masks[0]} has no mask {mask_dir / missing_masks[0]}"
                        f" ({len(missing_masks)} image(s) without a mask); add the masks or "
                        f"remove those images")
    missing_images = sorted(set(mask_names) - set(image_names))
    if missing_images:
        raise DataError(f"{mask_dir / missing_images[0]} has no image "
                        f"{image_dir / missing_images[0]}; add the image or remove the mask")

    images, masks = [], []
    for name in image_names:
        image, mask = read_image(image_dir / name), _read_mask(mask_dir / name)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{mask_dir / name} is {mask.shape[0]}x{mask.shape[1]} but its image "
                            f"is {image.shape[0]}x{image.shape[1]}; masks must match their images")
        if images and image.shape != images[0].shape or images and image.dtype != images[0].dtype:
            raise DataError(
                f"{image_dir / name} is {image.shape[0]}x{image.shape[1]}x{image.shape[2]} "
                f"{image.dtype} but {image_dir / image_names[0]} is "
                f"{'x'.join(map(str, images[0].shape))} {images[0].dtype}; all images must share "
                f"size, channels and bit depth")
        images.append(image)
        masks.append(mask)

    height, width = images[0].shape[:2]
    if height % multiple_of or width % multiple_of:
        raise DataError(f"images in {image_dir} are {height}x{width}; height and width must be "
                        f"multiples of {multiple_of}: crop or pad them first")
    masks_array = np.stack(masks)
    if num_classes is None:
        num_classes = max(2, int(masks_array.max()) + 1)
    for name, mask in zip(image_names, masks):
        if mask.max() >= num_classes:
            raise DataError(f"{mask_dir / name} has class value {int(mask.max())} but the dataset "
                            f"has {num_classes} classes (0..{num_classes - 1}); fix the mask or "
                            f"pass the right number of classes")
    return FolderDataset(np.stack(images), masks_array.astype(np.uint8), image_names, num_classes)


def write_folder_dataset(root: Path, images: np.ndarray, masks: np.ndarray,
                         names: list[str] | None = None) -> None:
    """Write (N, H, W, C) uint8/uint16 images and (N, H, W) masks as a folder dataset."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    names = names or [f"{i:05d}.png" for i in range(len(images))]
    for name, image, mask in zip(names, images, masks):
        pixels = image[..., 0] if image.shape[-1] == 1 else image
        # Pillow picks the PNG mode from the dtype: uint8 -> L/RGB, uint16 -> I;16.
        Image.fromarray(np.ascontiguousarray(pixels)).save(root / "images" / name)
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / name)
