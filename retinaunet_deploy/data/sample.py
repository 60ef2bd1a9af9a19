"""One labelled image (`Sample`), the names of a dataset's splits, and boxes from labels.

Every source (synthetic, folder, ...) yields `Sample`s; the patch sampler, the
evaluation and the gates read them. Ground-truth boxes come from instance
labels: one box per instance id, of the mask class under it
(`instance_boxes`). A dataset without instance labels takes the connected
components of each class as its instances (`components_as_instances`), so
touching objects of one class share one box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Sample:
    """One image of a dataset with its labels.

    Attributes:
        name: the image's file name (the key in recorded splits).
        image: (H, W, C) uint8 or uint16 raw pixels, C in {1, 3}.
        mask: (H, W) uint8 class indices, 0 = background; void pixels (a run's
            ``--ignore-index``) hold `label_rules.VOID_LABEL` (255) and no instance.
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


def instance_boxes(instances: np.ndarray, mask: np.ndarray):
    """One box per instance id, of the mask class under it.

    Args:
        instances: (H, W) integer ids, 0 = background. mask: (H, W) class indices.
    Returns:
        boxes (M, 4) float32 (y1, x1, y2, x2) pixels, y2/x2 exclusive; classes (M,)
        int32 detection class = mask class - 1, in order of instance id. Pixels of
        an instance on background are ignored (a hole); an instance over two
        foreground classes takes the larger one (the loaders refuse such labels).
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
    """(H, W) int32 instance ids: the 8-connected components of each foreground class.

    Ids run class by class (ascending class value), each class's components in
    raster order of their first pixel.
    """
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


def boxes_from_mask(mask: np.ndarray, num_classes: int):
    """Boxes of the connected components (8-connectivity) of each foreground class.

    Args:
        mask: (H, W) integer class indices, 0 = background.
        num_classes: mask classes including background.
    Returns:
        boxes: (M, 4) float32 (y1, x1, y2, x2) pixels, y2/x2 exclusive, class by
            class, each class's components in raster order.
        classes: (M,) int32 detection class = mask class - 1.
    Raises:
        DataError: a value outside 0..num_classes-1 (never dropped silently).
    """
    outside = np.unique(mask[(mask < 0) | (mask >= num_classes)])
    if outside.size:
        raise DataError(f"the mask has value(s) {outside[:10].tolist()} outside the "
                        f"{num_classes} classes 0..{num_classes - 1}; fix the mask")
    return instance_boxes(components_as_instances(mask), mask)


def check_instances(instances: np.ndarray, mask: np.ndarray, path: Path) -> None:
    """Refuse an instance that lies on two foreground classes.

    Args:
        instances, mask: (H, W) integer ids and class indices; path: named in the error.
    Raises:
        DataError: naming the instance id, the file and the classes it spans.
    """
    on_object = (instances > 0) & (mask > 0)
    pairs = np.unique(np.stack([instances[on_object], mask[on_object]]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    if np.any(counts > 1):
        bad = int(ids[counts > 1][0])
        classes = pairs[1][pairs[0] == bad].tolist()
        raise DataError(f"instance {bad} in {path} spans mask classes {classes}; an instance "
                        f"must lie on one class: split it or fix the mask")
