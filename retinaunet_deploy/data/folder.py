"""Folder datasets: ``DIR/images/``, ``DIR/masks/`` and optional ``DIR/instances/``.

Files pair up by stem (``images/a.tif`` with ``masks/a.png``), in any format
`data.readers` has a reader for (PNG and TIFF built in):

* images: 8- or 16-bit greyscale, or 8-bit RGB, of any height and width (at
  least one network stride); every image of a dataset has the same channels
  and bit depth;
* masks: one channel of class indices 0..K-1, 0 = background, same size as the
  image; other values (a 0/255 binary mask, a 255 void border) are mapped or marked
  void by the run's label rules (`data.labels`, ``train --label-map``,
  ``--ignore-index``), or refused;
* instances (optional): 16-bit label images, 0 = background, one id per object.
  Each instance becomes one box of the mask class under it. Without them boxes
  are the connected components of each class, so touching objects of one class
  share one box. Void pixels belong to no instance.

Every problem is a `DataError` naming the file and what to do about it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from retinaunet_deploy.data import readers
from retinaunet_deploy.data.labels import apply_labels
from retinaunet_deploy.data.readers import read_image, read_labels
from retinaunet_deploy.data.sample import Sample, check_instances, components_as_instances
from retinaunet_deploy.errors import DataError
from retinaunet_deploy.label_rules import AS_STORED, Labels

MAX_INSTANCES = 65535       # instance labels are 16-bit


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if not readers.readable(path) or path.name.startswith("."):
            continue
        stem = readers.stem_of(path)
        if stem in files:
            raise DataError(f"{path} and {files[stem]} share the name {stem!r}; keep "
                            f"one file per name")
        files[stem] = path
    return files


def list_folder(root: Path) -> dict[str, tuple[Path, Path, Path | None]]:
    """Image name -> (image, mask, instances or None) paths, checked for pairing."""
    root = Path(root)
    image_dir, mask_dir, instance_dir = root / "images", root / "masks", root / "instances"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; a folder dataset needs {root}/images/ and "
                            f"{root}/masks/ with {readers.format_names()} files of matching "
                            f"names")
    images, masks = _files_by_stem(image_dir), _files_by_stem(mask_dir)
    instances = _files_by_stem(instance_dir) if instance_dir.is_dir() else None
    if not images:
        raise DataError(f"no {readers.format_names()} images in {image_dir}; put the training "
                        f"images there")
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


def load_sample(name: str, paths, min_size: int = 16, labels: Labels = AS_STORED) -> Sample:
    """Read and check one sample's files (paths as from `list_folder`); the mask through
    `labels` (`data.labels.apply_labels`: void pixels become `VOID_LABEL` and belong to
    no instance)."""
    image_path, mask_path, instance_path = paths
    image = read_image(image_path)
    stored = read_labels(mask_path, "mask")
    height, width = image.shape[:2]
    if stored.shape != (height, width):
        raise DataError(f"mask {mask_path} is {stored.shape[0]}x{stored.shape[1]} but its image "
                        f"is {height}x{width}; masks must match their images")
    if min(height, width) < min_size:
        raise DataError(f"{image_path} is {height}x{width}, smaller than one network stride "
                        f"({min_size} px); use larger images or leave this one out")
    mask = apply_labels(stored, labels, mask_path)
    void = mask == labels.void if labels.void is not None else None
    if instance_path is None:
        instances = components_as_instances(mask if void is None else np.where(void, 0, mask))
    else:
        ids = read_labels(instance_path, "instance label image")
        if ids.shape != (height, width):
            raise DataError(f"instance labels {instance_path} are {ids.shape[0]}x"
                            f"{ids.shape[1]} but the image is {height}x{width}; they must "
                            f"match")
        if ids.max(initial=0) > MAX_INSTANCES:
            raise DataError(f"instance labels {instance_path} use id {int(ids.max())}, more "
                            f"than a 16-bit label image can hold ({MAX_INSTANCES}); split the "
                            f"image into smaller ones")
        instances = ids.astype(np.int32)
        if void is not None:
            instances[void] = 0
        check_instances(instances, mask, instance_path)
    return Sample(name, image, mask, instances, sample_sha256(paths))


def load_folder_dataset(root: Path, names: list[str] | None = None,
                        num_classes: int | None = None, min_size: int = 16,
                        labels: Labels = AS_STORED) -> list[Sample]:
    """Read and validate a folder dataset (all of it, or the named images).

    Args:
        names: image file names to load (a recorded split); None loads every image.
        num_classes: mask classes including background; checked when given.
        min_size: the network's total stride; smaller images are refused.
        labels: the run's label rules (`label_rules.Labels`), applied to every mask.
    """
    files = list_folder(root)
    names = sorted(files) if names is None else names
    samples = []
    for name in names:
        if name not in files:
            raise DataError(f"{Path(root) / 'images' / name} is gone from the dataset; restore "
                            f"it or retrain")
        samples.append(load_sample(name, files[name], min_size, labels))
    first = samples[0].image
    for sample in samples[1:]:
        if sample.image.shape[2] != first.shape[2] or sample.image.dtype != first.dtype:
            raise DataError(
                f"{files[sample.name][0]} has {sample.image.shape[2]} channel(s) "
                f"{sample.image.dtype} but {files[samples[0].name][0]} has {first.shape[2]} "
                f"{first.dtype}; all images must share channels and bit depth")
    if num_classes is not None:
        for sample in samples:
            classes = (sample.mask if labels.void is None
                       else sample.mask[sample.mask != labels.void])
            if classes.max(initial=0) >= num_classes:
                raise DataError(f"{files[sample.name][1]} has class value {int(classes.max())}"
                                f" but the dataset has {num_classes} classes (0.."
                                f"{num_classes - 1}); fix the mask, or train a model on this "
                                f"dataset ('retinaunet-deploy train --data {root}', with "
                                f"--label-map STORED:CLASS for values that are not classes)")
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
                raise DataError(f"{sample.name} has instance id {int(sample.instances.max())}, "
                                f"more than a 16-bit label image can hold ({MAX_INSTANCES}); "
                                f"split the image into smaller ones")
            Image.fromarray(sample.instances.astype(np.uint16)).save(root / "instances" / name)
