"""Volume datasets: a 2D model trained on the slices of NIfTI / DICOM / TIFF-stack volumes.

``train --data DIR`` takes DIR as a volume dataset when ``DIR/images/`` holds volumes
(`data.volumes.volume_readable`: ``.nii``/``.nii.gz``, a folder of one DICOM series,
a multi-page TIFF) and ``DIR/masks/`` a label volume of the same name (stem) for each,
on the same voxel grid (same shape and affine, `data.volumes.check_same_grid`; anything
else is refused before training). An optional ``DIR/classes.json`` (a JSON list,
background first) names the classes.

Slices are taken along voxel axis ``train --axis`` (0, 1 or 2; default 2, axial for a
RAS NIfTI, `data.volumes.slices`): each slice is one 2D image (H, W, C) with its mask
(H, W), as displayed (axis 2: rows j, columns i, the slice as pydicom or a PNG export
shows it; `data.volumes.slice_axes`), so patch sampling, foreground oversampling,
evaluation and every runtime see slices exactly as they see the 2D images of a folder
dataset. Boxes are the connected
components of each class within a slice (no instance labels).

Splits are decided per volume, never per slice, so no slice of a validation or test
volume is ever trained on:

* three volumes or more: a seeded shuffle of the VOLUMES into train / val / test
  (`sources.decide_splits`), or a splits file naming volumes (``--splits``);
* one or two volumes (a template such as the MNI152): SLAB splits. The slicing
  axis is cut into slabs of `SLAB_SLICES` consecutive slices, the slabs are shuffled
  (seeded) into train / val / test like volumes, and the `GAP_SLICES` slices of a
  slab that touch a slab of another split are left out of the lower-priority one
  (train < val < test), so that a held-out slice is at least `GAP_SLICES` + 1 slices
  from any slice of another split. Held-out slabs come from the SAME subject: their
  figures measure generalisation across slices of one anatomy, not across subjects;
  the card and the warnings say so.

The card's ``data`` block: ``{"kind": "volumes", "path", "axis", "slice_order" (the
`data.volumes.SLICE_ORDER` its slices were cut in), "split_by": "volume" |
"slab", "slab": {"slices", "gap"} (slab only), "instances": false, "splits": {split:
[[volume name, sha256, [[start, stop], ...]], ...]}, "counts": {split: {"volumes",
"slices"}}}``; the sha256 covers the image and mask files (every file of a DICOM
folder), and a dataset that changed since is refused, as for folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from retinaunet_deploy.data.folder import sample_sha256
from retinaunet_deploy.data.sample import SPLIT_NAMES, Sample, components_as_instances
from retinaunet_deploy.data.volumes import SLICE_ORDER
from retinaunet_deploy.errors import DataError
from retinaunet_deploy.label_rules import AS_STORED, Labels

SLAB_SLICES = 8      # slices per slab (single- or two-volume datasets)
GAP_SLICES = 2       # slices left out next to a slab of another split
PRIORITY = {"train": 0, "val": 1, "test": 2}   # the lower loses the gap slices


def _entries(folder: Path) -> dict[str, Path]:
    from retinaunet_deploy.data.volumes import volume_readable, volume_stem

    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not volume_readable(path):
            continue
        stem = volume_stem(path)
        if stem in found:
            raise DataError(f"{path} and {found[stem]} share the name {stem!r}; keep one "
                            f"volume per name")
        found[stem] = path
    return found


def is_volume_dataset(value: str) -> bool:
    """Whether ``--data VALUE`` is a folder whose ``images/`` holds at least one volume."""
    from retinaunet_deploy.data.volumes import volume_readable

    images = Path(value) / "images"
    try:
        return images.is_dir() and any(not p.name.startswith(".") and volume_readable(p)
                                       for p in images.iterdir())
    except OSError:
        return False


def list_volumes(root: Path) -> dict[str, tuple[Path, Path]]:
    """Volume name -> (image path, mask path), paired by stem; `DataError` for a volume
    without its mask, a mask without its volume, or no volume at all."""
    root = Path(root)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub} does not exist; a volume dataset needs {root}/images/ "
                            f"and {root}/masks/ with volumes of matching names")
    images, masks = _entries(root / "images"), _entries(root / "masks")
    if not images:
        raise DataError(f"no volumes in {root / 'images'}; put .nii.gz files, DICOM series "
                        f"folders or multi-page TIFFs there")
    for name, path in images.items():
        if name not in masks:
            raise DataError(f"{path} has no mask volume in {root / 'masks'}; add "
                            f"masks/{name}.nii.gz (same shape and affine) or remove it")
    for name, path in masks.items():
        if name not in images:
            raise DataError(f"{path} has no image volume in {root / 'images'}; add the "
                            f"volume or remove the mask")
    return {name: (images[name], masks[name]) for name in images}


def volume_sha256(paths) -> str:
    """One hash over the bytes of a volume's files (every file of a DICOM folder, sorted):
    `folder.sample_sha256` over them, so a volume and a 2D sample hash alike."""
    files = []
    for path in map(Path, paths):
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return sample_sha256(files)


def read_pair(name: str, paths, labels: Labels = AS_STORED):
    """(image (I, J, K, C) array, mask (I, J, K) uint8 classes) of one volume, checked:
    the mask on the image's grid, integer-valued, not negative, through `labels`."""
    from retinaunet_deploy.data.labels import apply_labels
    from retinaunet_deploy.data.volumes import check_same_grid, read_volume

    image_path, mask_path = paths
    image, stored = read_volume(image_path), read_volume(mask_path)
    check_same_grid(image, stored, image_path=image_path, mask_path=mask_path)
    array = image.array if image.array.ndim == 4 else image.array[..., None]
    if stored.array.ndim != 3:
        raise DataError(f"mask {mask_path} has shape {stored.shape}; a mask volume holds one "
                        f"label per voxel (I, J, K)")
    values = stored.array
    if values.dtype.kind == "f" and (not np.all(np.isfinite(values))
                                     or np.any(values != np.round(values))):
        raise DataError(f"mask {mask_path} holds non-integer values; save the labels as an "
                        f"integer volume (class indices 0..K-1)")
    if values.dtype.kind not in "uifb":
        raise DataError(f"mask {mask_path} is {values.dtype}; masks are integer label volumes")
    values = values.astype(np.int64)
    if values.size and values.min() < 0:
        raise DataError(f"mask {mask_path} has negative value {int(values.min())}; labels are "
                        f"0 (background) or positive")
    return array, apply_labels(values, labels, mask_path)


def slab_ranges(length: int, seed: int, val_fraction: float, test_fraction: float,
                slab: int = SLAB_SLICES, gap: int = GAP_SLICES) -> dict[str, list[list[int]]]:
    """Split one axis of `length` slices into slabs shuffled into train / val / test.

    Returns {split: [[start, stop], ...]} (stop exclusive, ascending) with the `gap`
    slices next to a slab of another split removed from the lower-priority split.
    Raises `DataError` when the axis has fewer than 3 slabs.
    """
    from retinaunet_deploy.data.sources import decide_splits

    starts = list(range(0, length, slab))
    if len(starts) < 3:
        raise DataError(f"a single volume of {length} slices along the axis makes fewer than "
                        f"3 slabs of {slab}; give more volumes, or slice along a longer axis "
                        f"(--axis)")
    names = [f"{i:06d}" for i in range(len(starts))]
    chosen = decide_splits(names, seed, val_fraction, test_fraction)
    owner = [None] * len(starts)
    for split, part in chosen.items():
        for name in part:
            owner[int(name)] = split
    keep = np.ones(length, bool)
    which = np.empty(length, object)
    for index, start in enumerate(starts):
        which[start:start + slab] = owner[index]
    for index in range(1, len(starts)):
        a, b = owner[index - 1], owner[index]
        if a != b:
            boundary = starts[index]
            lose = slice(boundary - gap, boundary) if PRIORITY[a] < PRIORITY[b] else \
                slice(boundary, boundary + gap)
            keep[lose] = False
    ranges: dict[str, list[list[int]]] = {s: [] for s in SPLIT_NAMES}
    for split in SPLIT_NAMES:
        mine = keep & (which == split)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mine.astype(np.int8), [0]])))
        ranges[split] = [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]
    return ranges


def slice_name(volume: str, axis: int, index: int) -> str:
    """A slice's sample name: ``VOLUME.k042`` (the axis letter i, j, k and the index)."""
    return f"{volume}.{'ijk'[axis]}{index:03d}"


def volume_slices(name: str, image: np.ndarray, mask: np.ndarray, axis: int,
                  ranges, sha256: str | None, min_size: int = 16,
                  source: Path | None = None, void: int | None = None) -> list[Sample]:
    """The `Sample`s of a volume's slices in `ranges` ([[start, stop], ...]) along `axis`:
    image (H, W, C), mask (H, W) uint8, instances the connected components per class
    (`void` pixels, the label rules' void value, belong to none)."""
    from retinaunet_deploy.data.volumes import slices

    images, masks = slices(image, axis), slices(mask, axis)
    height, width = masks.shape[1:3]
    if min(height, width) < min_size:
        raise DataError(f"{source or name}: slices along axis {axis} are {height}x{width}, "
                        f"smaller than one network stride ({min_size} px); slice along another "
                        f"axis (--axis)")
    out = []
    for start, stop in ranges:
        for index in range(start, stop):
            m = np.ascontiguousarray(masks[index])
            out.append(Sample(slice_name(name, axis, index), np.ascontiguousarray(images[index]),
                              m, components_as_instances(m if void is None else np.where(m == void, 0, m)),
                              sha256))
    return out


def class_names_of(root: Path, num_classes: int) -> list[str]:
    """The classes' names: ``DIR/classes.json`` when present (K names, background first),
    else background, class_1, ..."""
    path = Path(root) / "classes.json"
    if not path.is_file():
        return ["background"] + [f"class_{c}" for c in range(1, num_classes)]
    try:
        names = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}; give a JSON list of class names, "
                        f"background first") from error
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
            and len(names) >= num_classes):
        raise DataError(f"{path} must list at least {num_classes} class names (background "
                        f"first), the masks' classes 0..{num_classes - 1}")
    return names[:num_classes]


def split_volumes(options):
    """`Source.split` of volume datasets (see the module docstring)."""
    from retinaunet_deploy.data.labels import dataset_classes
    from retinaunet_deploy.data.sources import Splits, decide_splits, read_splits_file
    from retinaunet_deploy.data.volumes import DEFAULT_AXIS

    root = Path(options.data)
    axis = DEFAULT_AXIS if options.axis is None else options.axis
    files = list_volumes(root)
    labels = options.labels
    pairs = {name: read_pair(name, paths, labels) for name, paths in files.items()}
    dtype = np.result_type(*(image.dtype for image, _ in pairs.values()))
    channels = {image.shape[3] for image, _ in pairs.values()}
    if len(channels) > 1:
        raise DataError(f"the volumes in {root / 'images'} have {sorted(channels)} channels; "
                        f"all must have the same")
    by_volume = len(files) >= 3 or options.splits
    if by_volume:
        chosen = (read_splits_file(Path(options.splits), sorted(files)) if options.splits else
                  decide_splits(sorted(files), options.seed, options.val_fraction,
                                options.test_fraction))
        ranges = {split: {name: [[0, pairs[name][1].shape[axis]]] for name in names}
                  for split, names in chosen.items()}
    else:
        ranges = {split: {} for split in SPLIT_NAMES}
        for name, (_, mask) in pairs.items():
            for split, part in slab_ranges(mask.shape[axis], options.seed,
                                           options.val_fraction,
                                           options.test_fraction).items():
                if part:
                    ranges[split][name] = part
    shas = {name: volume_sha256(paths) for name, paths in files.items()}
    parts = {split: [sample for name, spans in ranges[split].items()
                     for sample in volume_slices(name, pairs[name][0].astype(dtype, copy=False),
                                                 pairs[name][1], axis, spans, shas[name],
                                                 source=files[name][0], void=labels.void)]
             for split in SPLIT_NAMES}
    everything = [s for part in parts.values() for s in part]
    num_classes = dataset_classes(everything, {s.name: files[s.name.rsplit(".", 1)[0]][1]
                                               for s in everything}, labels, root)
    description = {
        "kind": "volumes", "path": str(root.resolve()), "axis": axis, "dtype": str(dtype),   # the volumes' common dtype
        "slice_order": SLICE_ORDER,
        "split_by": "volume" if by_volume else "slab",
        **({} if by_volume else {"slab": {"slices": SLAB_SLICES, "gap": GAP_SLICES}}),
        "instances": False,
        "splits": {split: [[name, shas[name], spans] for name, spans in ranges[split].items()]
                   for split in SPLIT_NAMES},
        "counts": {split: {"volumes": len(ranges[split]), "slices": len(parts[split])}
                   for split in SPLIT_NAMES}}
    return Splits(parts["train"], parts["val"], parts["test"],
                  class_names_of(root, num_classes), description)


def verify_volumes(data: dict) -> dict[str, tuple[Path, Path]]:
    """The recorded volumes' files; `DataError` when the dataset changed since training
    (a volume gone, changed or added)."""
    root = Path(data["path"])
    if not root.is_dir():
        raise DataError(f"the run's dataset {root} is gone; restore it or retrain")
    files = list_volumes(root)
    recorded = {name: sha for entries in data["splits"].values() for name, sha, _ in entries}
    for name, sha in recorded.items():
        if name not in files:
            raise DataError(f"volume {name!r} is recorded in the run's splits but gone from "
                            f"{root / 'images'}; restore it or retrain")
        if volume_sha256(files[name]) != sha:
            raise DataError(f"{files[name][0]} (or its mask) changed since training; restore "
                            f"it or retrain")
    added = sorted(set(files) - set(recorded))
    if added:
        raise DataError(f"{files[added[0]][0]} was added to the dataset after training "
                        f"({len(added)} new volume(s)); remove it or retrain, so that no "
                        f"split silently changes")
    return files


def load_volumes(data: dict, split: str, count: int | None, min_size: int,
                 labels: Labels = AS_STORED) -> list:
    """`Source.load`: the recorded slices of `split` (the first `count`), read back."""
    files = verify_volumes(data)
    axis, out = int(data["axis"]), []
    for name, sha, spans in data["splits"][split]:
        if count is not None and len(out) >= count:
            break
        image, mask = read_pair(name, files[name], labels)
        image = image.astype(data.get("dtype", image.dtype), copy=False)
        out += volume_slices(name, image, mask, axis, spans, sha, min_size, files[name][0],
                             labels.void)
    return out[:count] if count is not None else out


def split_counts(data: dict, samples) -> dict:
    """{"volumes": n, "slices": m} of `samples` (slices) of a volume run; {} otherwise."""
    if data.get("kind") != "volumes":
        return {}
    return {"volumes": len({s.name.rsplit(".", 1)[0] for s in samples}),
            "slices": len(samples)}


def counts_phrase(counts: dict) -> str:
    """" (m slices of n volume(s))" for `split_counts` of a volume run; "" otherwise."""
    return f" ({counts['slices']} slices of {counts['volumes']} volume(s))" if counts else ""
