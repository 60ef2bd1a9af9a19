"""Mask values as classes: a run's label rules applied to mask files, and the checks that
refuse masks which are not the classes 0..K-1.

The most common masks are not class indices: a binary mask saved as 0/255, a VOC
mask whose objects are outlined with a 255 "void" border. Read as stored, the first
makes 256 classes of which 254 never occur, the second a class of outlines. So:

* mask values must be the classes 0..K-1 (0 background, no gap) over the dataset;
  anything else is refused in one line naming a file, the values found and the
  fix (`refusal`);
* ``train --label-map 255:1`` maps stored values to classes and ``--ignore-index
  255`` marks void pixels (`label_rules.Labels`, recorded in the card);
  `apply_labels` applies both and is the only way a mask file becomes a sample's
  mask, at training and in every later stage (`data.splits.load_split`);
* a dataset, or a training split, without any foreground pixel is refused.

K is decided by the data: the largest class found + 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError
from retinaunet_deploy.label_rules import VOID_LABEL, Labels

MASK_CLASSES = 256      # masks are held as uint8 class indices


def apply_labels(stored: np.ndarray, labels: Labels, path: Path) -> np.ndarray:
    """A mask file's values as classes.

    Args:
        stored: (H, W) integer values as the file holds them (`readers.read_labels`).
        labels: the run's rules; path: the file, named in errors.
    Returns:
        (H, W) uint8 classes: mapped by ``labels.map``, other values as stored;
        pixels holding ``labels.ignore_index`` are `VOID_LABEL`.
    Raises:
        DataError: a class that a uint8 mask cannot hold (>= 256, or >= 255 with an
            ignore index), naming the file, the values found and the fix.
    """
    values, inverse = np.unique(stored, return_inverse=True)
    mapping = dict(labels.map)
    classes = np.array([mapping.get(int(v), int(v)) for v in values], np.int64)
    void = (values == labels.ignore_index if labels.ignore_index is not None
            else np.zeros(len(values), bool))
    limit = MASK_CLASSES if labels.void is None else VOID_LABEL
    if np.any(classes[~void] >= limit):
        after = f" after {labels.describe()}" if labels.describe() else ""
        raise DataError(f"mask {path} has class value {int(classes[~void].max())}{after}; at "
                        f"most {limit} classes (0..{limit - 1}) fit a mask (values found: "
                        f"{_short([int(v) for v in values])}); "
                        f"{suggest([0, *classes[~void].tolist()], labels)}")
    classes[void] = VOID_LABEL
    return classes.astype(np.uint8)[inverse.reshape(stored.shape)]


def class_values(mask: np.ndarray, labels: Labels) -> set[int]:
    """The classes in a loaded mask (void left out)."""
    values = set(np.unique(mask).tolist())
    return values - {labels.void} if labels.void is not None else values


def foreground_pixels(mask: np.ndarray, labels: Labels) -> int:
    """Pixels of a loaded mask that are a class other than background (void left out)."""
    fore = mask > 0
    if labels.void is not None:
        fore &= mask != labels.void
    return int(np.count_nonzero(fore))


def dataset_classes(samples, mask_paths: dict[str, Path], labels: Labels, where: Path) -> int:
    """K, the number of mask classes of a dataset: its largest class + 1.

    Args:
        samples: every `sample.Sample` of the dataset (masks as `apply_labels` made them).
        mask_paths: sample name -> its mask file (named in errors).
        where: the dataset's folder, named when no mask has foreground.
    Raises:
        DataError (one line): no foreground pixel in any mask; or classes with a gap
            (0/255 masks: 1..254 never occur), naming the first mask holding a class
            above the gap, its values and the fix.
    """
    found = {sample.name: class_values(sample.mask, labels) for sample in samples}
    classes = set().union(*found.values())
    if classes <= {0}:
        raise DataError(no_foreground(f"no mask in {Path(where) / 'masks'} has", labels))
    missing = sorted(set(range(max(classes) + 1)) - classes)
    if missing:
        name = next(n for n in sorted(found) if max(found[n], default=0) > missing[0])
        raise DataError(refusal(
            mask_paths[name], sorted(found[name]), sorted(classes), labels,
            f"class {missing[0]} never occurs in the dataset (its classes: "
            f"{_short(sorted(classes))})", after=labels.describe()))
    return max(classes) + 1


def check_training_split(train_samples, labels: Labels, where: str) -> None:
    """Refuse a training split without one foreground pixel, before any training.

    Raises DataError (one line) naming `where` (the dataset) and what to do.
    """
    if not any(foreground_pixels(sample.mask, labels) for sample in train_samples):
        raise DataError(no_foreground(
            f"the training split of {where} ({len(train_samples)} image(s)) has no mask with",
            labels, splits=True))


def label_map_warnings(description: dict, labels: Labels) -> list[str]:
    """One warning per ``--label-map`` entry whose stored value no mask of the dataset
    holds: the entry maps nothing (a typo, or masks stored otherwise than thought, e.g.
    ``255:1`` on masks already saved as 0/1), so it is named, with the values found.

    Args:
        description: the card's ``data`` block (`sources.folder_description`): for a
            folder dataset its ``path`` and ``splits`` (names); other kinds give none.
    Reads the stored values of every mask of the splits again (only when there is a map).
    """
    if not labels.map or description.get("kind") != "folder":
        return []
    from retinaunet_deploy.data.folder import list_folder
    from retinaunet_deploy.data.readers import read_labels

    files = list_folder(Path(description["path"]))
    stored: set[int] = set()
    for part in description.get("splits", {}).values():
        for name, _ in part:
            stored.update(np.unique(read_labels(files[name][1], "mask")).tolist())
    return [f"--label-map {value}:{target}: no mask holds the stored value {value}, so the "
            f"entry maps nothing (stored values found: {_short(sorted(stored))}); check "
            f"the value" for value, target in labels.map if value not in stored]


def no_foreground(what: str, labels: Labels, splits: bool = False) -> str:
    """The one line refusing data without foreground."""
    rules = f" under {labels.describe()}" if labels.describe() else ""
    fix = "label the objects as classes 1..K-1 (a mask saved as 0/255 needs --label-map 255:1)"
    if splits:
        fix = f"put images with labelled objects in the training split (--splits FILE), or {fix}"
    void = " or void" if labels.void is not None else ""
    return f"{what} a foreground pixel{rules} (every pixel is background{void}); {fix}"


def refusal(path: Path, shown: list[int], classes: list[int], labels: Labels, why: str,
            after: str = "") -> str:
    """The one line refusing a mask whose values are not classes 0..K-1: the file, the
    values `shown` (``after`` the options that changed them), why, and the options that
    make `classes` (the dataset's, or this file's) classes 0..K-1."""
    after = f" after {after}" if after else ""
    return (f"mask {path} has values {_short(shown)}{after}, but masks must hold the classes "
            f"0..K-1 (0 = background, no gap): {why}; {suggest(classes, labels)}")


def suggest(classes: list[int], labels: Labels) -> str:
    """The options that make `classes` (as the current rules make them; void left out)
    0..K-1: a label map (classes in order become 0, 1, 2, ...), and, for masks read as
    stored, an ignore index for the largest value when the rest keep some foreground."""
    classes = sorted(set(classes))
    options = []
    remap = _remap(classes, labels)
    if remap:
        ignore = "" if labels.ignore_index is None else f" --ignore-index {labels.ignore_index}"
        options.append(f"map them with --label-map {remap}{ignore}")
    if labels == Labels() and len(classes) > 2:
        largest, rest = classes[-1], classes[:-1]
        fix = f"--ignore-index {largest}" + (f" --label-map {_remap(rest, labels)}"
                                             if _remap(rest, labels) else "")
        options.append(f"if {largest} marks pixels to leave out (a void border), {fix}")
    return " or ".join(options) if options else "fix the masks"


def _remap(classes: list[int], labels: Labels) -> str:
    """The --label-map value that turns `classes` into 0..len-1, in order, kept with the
    current map ("" when that is the current map)."""
    rank = {c: r for r, c in enumerate(classes)}
    targets = {c for _, c in labels.map}
    mapping = {stored: rank.get(c, c) for stored, c in labels.map}
    mapping.update({c: rank[c] for c in classes
                    if c not in mapping and c not in targets and rank[c] != c})
    mapping = {stored: c for stored, c in sorted(mapping.items()) if stored != c}
    if mapping == dict(labels.map):
        return ""
    return ",".join(f"{stored}:{c}" for stored, c in mapping.items())


def _short(values: list[int], most: int = 12) -> str:
    """[0, 1, 255] (long lists cut: [0, 1, ..., 255] with a count)."""
    if len(values) <= most:
        return str(values)
    return f"[{', '.join(map(str, values[:most - 1]))}, ..., {values[-1]}] ({len(values)} values)"
