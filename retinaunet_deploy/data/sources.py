"""Dataset sources: one registration per kind, and nothing else branches on the kind.

A source knows three things:

* at training, how `train --data VALUE` becomes train / val / test samples and
  the card's ``data`` block (`Source.split`);
* later (export, calibrate, bench), how a recorded split comes back from that
  block, exactly as it was (`Source.load`), and, where it can make any number of
  images, how to make `count` held-out ones (`Source.make`);
* for data shipped inside a package, how to write it as a folder dataset
  (`Source.write_folder`, the `import-data` command).

Built in:

* ``synthetic``: ``{"kind": "synthetic", "seed", "config", "instances": true,
  "counts": {split: n}}``; any image is regenerated bit for bit, so no hashes;
* ``folder`` (any other ``--data`` value: a path): ``{"kind": "folder", "path",
  "instances", "splits": {split: [[name, sha256], ...]}}``, split by a seeded
  shuffle or a user's splits file; the sha256 covers the image, mask and
  instance files together, and a folder that changed since is refused; its
  masks are read through the run's label rules (`data.labels`): classes
  0..K-1, K = the largest class + 1, anything else refused;
* ``stardist-nuclei``: StarDist's DSB 2018 image, written as a folder by
  `import-data` (then trained as that folder);
* ``volumes`` (a folder whose ``images/`` holds NIfTI / DICOM / TIFF-stack volumes):
  a 2D model on slices along ``train --axis``, split per volume (or in slabs for one
  or two volumes) (`data.volume_source`);
* ``mni152-tissue``: nilearn's MNI152 2009 template and its tissue maps, written as a
  volume dataset by `import-data` (`data.mni152`).

Adding a source is one `register_source(Source(...))`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.data import folder, synthetic, volume_source
from retinaunet_deploy.data.labels import dataset_classes
from retinaunet_deploy.data.sample import SPLIT_NAMES
from retinaunet_deploy.errors import ConfigError, DataError
from retinaunet_deploy.label_rules import AS_STORED, Labels


@dataclass
class Splits:
    """The samples of each split (`sample.Sample` lists), plus the card's ``data`` block."""

    train: list
    val: list
    test: list
    class_names: list[str]
    description: dict


def _claims_nothing(value: str) -> bool:
    return False


@dataclass(frozen=True)
class Source:
    """One kind of dataset.

    Attributes:
        kind: its name: the card's ``data["kind"]``, `import-data`'s argument.
        claims: ``claims(value) -> bool``: whether ``train --data VALUE`` names it.
        split: ``split(options) -> Splits`` at training; `options` has the
            `train.TrainOptions` fields (data, seed, size, *_images, *_fraction, splits,
            and `labels`, the label rules).
        load: ``load(data, split, count, min_size) -> [Sample]``: a recorded split
            back from the card's ``data`` block, the first `count` (None: all);
            raises `DataError` when the data changed since. With `takes_labels`,
            also ``labels=`` (the card's `label_rules.Labels`).
        takes_labels: whether its masks are read from files through label rules
            (``train --label-map``, ``--ignore-index``); a source that makes its
            masks as classes (synthetic) refuses those options.
        make: ``make(data, split, count) -> [Sample]``: `count` images of a split,
            for a source that can make any number (None: held-out sets are the
            recorded split).
        write_folder: ``write_folder(out_dir) -> {file name: (height, width)}``:
            write the data as a folder dataset (None: not importable).
        takes_axis: whether ``train --axis`` applies (volume datasets).
    """

    kind: str
    claims: Callable[[str], bool] = _claims_nothing
    split: Callable[[object], Splits] | None = None
    load: Callable[[dict, str, int | None, int], list] | None = None
    make: Callable[[dict, str, int], list] | None = None
    write_folder: Callable[[Path], dict] | None = None
    takes_labels: bool = False
    takes_axis: bool = False


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add (or replace) a source; returns it. Later registrations are asked first
    which ``--data`` values they claim."""
    SOURCES[source.kind] = source
    return source


def unregister_source(kind: str) -> None:
    """Remove a source (tests that register one)."""
    SOURCES.pop(kind, None)


def source_for(value: str) -> Source:
    """The source that trains on ``--data VALUE`` (the latest registered that claims it)."""
    for source in reversed(list(SOURCES.values())):
        if source.split is not None and source.claims(value):
            return source
    raise ConfigError(f"no dataset source takes --data {value!r}; give a folder dataset or one "
                      f"of {[s.kind for s in SOURCES.values() if s.split]}")


def source_of(data: dict) -> Source:
    """The source that recorded a card's ``data`` block (by its ``kind``)."""
    source = SOURCES.get(data.get("kind"))
    if source is None or source.load is None:
        raise DataError(f"the run's data is of kind {data.get('kind')!r}, which this toolkit "
                        f"cannot read back (known: {[k for k, s in SOURCES.items() if s.load]}); "
                        f"retrain with this version")
    return source


def importable() -> tuple[str, ...]:
    """The kinds `import-data` can write as a folder dataset."""
    return tuple(kind for kind, source in SOURCES.items() if source.write_folder)


# === synthetic ===

def _synthetic_split(options) -> Splits:
    config = synthetic.SyntheticConfig(size=options.size)
    parts = {name: synthetic.synthetic_samples(config, count, options.seed, name)
             for name, count in (("train", options.train_images), ("val", options.val_images),
                                 ("test", options.test_images))}
    description = {"kind": "synthetic", "seed": options.seed, "config": config.to_dict(),
                   "instances": True, "counts": {name: len(s) for name, s in parts.items()}}
    return Splits(parts["train"], parts["val"], parts["test"], list(synthetic.CLASS_NAMES),
                  description)


def _synthetic_make(data: dict, split: str, count: int) -> list:
    config = synthetic.SyntheticConfig.from_dict(data["config"])
    return synthetic.synthetic_samples(config, count, data["seed"], split)


def _synthetic_load(data: dict, split: str, count: int | None, min_size: int) -> list:
    available = data["counts"][split]
    return _synthetic_make(data, split, min(count or available, available))


# === folder ===

def decide_splits(names: list[str], seed: int, val_fraction: float,
                  test_fraction: float) -> dict[str, list[str]]:
    """A seeded shuffle of `names` into train / val / test (each at least one image)."""
    n = len(names)
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"the dataset has {n} image(s); training needs at least 3 (train, "
                        f"validation and test each get one or more)")
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n - n_val - n_test, n - n_test])
    return {split: sorted(names[i] for i in part) for split, part in zip(SPLIT_NAMES, parts)}


def read_splits_file(path: Path, available: list[str]) -> dict[str, list[str]]:
    """A user's splits: JSON ``{"train": [names], "val": [names], "test": [names]}``."""
    path = Path(path)
    try:
        given = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read splits file {path}: {error}; give JSON like "
                        f'{{"train": [...], "val": [...], "test": [...]}}') from error
    if not isinstance(given, dict) or sorted(given) != sorted(SPLIT_NAMES) or not all(
            isinstance(v, list) and v and all(isinstance(n, str) for n in v)
            for v in given.values()):
        raise DataError(f"{path} must map exactly 'train', 'val' and 'test' to non-empty lists "
                        f"of image file names")
    seen: dict[str, str] = {}
    for split in SPLIT_NAMES:
        for name in given[split]:
            if name not in available:
                raise DataError(f"{path} names {name!r} ({split}), which is not in the "
                                f"dataset's images/; fix the name or add the image")
            if name in seen:
                raise DataError(f"{path} puts {name!r} in both {seen[name]} and {split}; "
                                f"splits must be disjoint")
            seen[name] = split
    return {split: sorted(given[split]) for split in SPLIT_NAMES}


def folder_description(root: Path, splits: dict[str, list[str]], samples) -> dict:
    """The card's ``data`` block for a folder dataset: recorded names and hashes."""
    by_name = {sample.name: sample.sha256 for sample in samples}
    return {"kind": "folder", "path": str(Path(root).resolve()),
            "instances": (Path(root) / "instances").is_dir(),
            "splits": {split: [[name, by_name[name]] for name in names]
                       for split, names in splits.items()}}


def verify_folder(data: dict) -> None:
    """Refuse a folder dataset that changed since its splits were recorded."""
    root = Path(data["path"])
    if not root.is_dir():
        raise DataError(f"the run's dataset {root} is gone; restore it or retrain")
    files = folder.list_folder(root)
    recorded = {name: sha for names in data["splits"].values() for name, sha in names}
    for name, sha in recorded.items():
        if name not in files:
            raise DataError(f"{root / 'images' / name} is recorded in the run's splits but gone "
                            f"from the dataset; restore it or retrain")
        if folder.sample_sha256(files[name]) != sha:
            raise DataError(f"{root / 'images' / name} (or its mask or instances) changed since "
                            f"training; restore it or retrain")
    added = sorted(set(files) - set(recorded))
    if added:
        raise DataError(f"{root / 'images' / added[0]} was added to the dataset after training "
                        f"({len(added)} new file(s)); remove it or retrain, so that no split "
                        f"silently changes")


def _folder_split(options) -> Splits:
    root = Path(options.data)
    files = folder.list_folder(root)
    names = sorted(files)
    if options.splits:
        chosen = read_splits_file(Path(options.splits), names)
    else:
        chosen = decide_splits(names, options.seed, options.val_fraction, options.test_fraction)
    samples = folder.load_folder_dataset(root, [n for part in chosen.values() for n in part],
                                         labels=options.labels)
    by_name = {s.name: s for s in samples}
    num_classes = dataset_classes(samples, {n: files[n][1] for n in by_name}, options.labels,
                                  root)
    class_names = ["background"] + [f"class_{c}" for c in range(1, num_classes)]
    parts = {split: [by_name[n] for n in part] for split, part in chosen.items()}
    return Splits(parts["train"], parts["val"], parts["test"], class_names,
                  folder_description(root, chosen, samples))


def _folder_load(data: dict, split: str, count: int | None, min_size: int,
                 labels: Labels = AS_STORED) -> list:
    verify_folder(data)
    names = [name for name, _ in data["splits"][split]][:count]
    return folder.load_folder_dataset(Path(data["path"]), names, min_size=min_size,
                                      labels=labels)


# === data shipped in a package ===

def _write_stardist_nuclei(out_dir: Path) -> dict:
    from retinaunet_deploy.data.real import import_stardist_nuclei

    return import_stardist_nuclei(out_dir)


register_source(Source("folder", claims=lambda value: True, split=_folder_split,
                       load=_folder_load, takes_labels=True))
register_source(Source("synthetic", claims=lambda value: value == "synthetic",
                       split=_synthetic_split, load=_synthetic_load, make=_synthetic_make))
register_source(Source("stardist-nuclei", write_folder=_write_stardist_nuclei))
register_source(Source("volumes", claims=volume_source.is_volume_dataset,
                       split=volume_source.split_volumes, load=volume_source.load_volumes,
                       takes_labels=True, takes_axis=True))


def _write_mni152_tissue(out_dir: Path) -> dict:
    from retinaunet_deploy.data.mni152 import import_mni152_tissue

    return import_mni152_tissue(out_dir)


register_source(Source("mni152-tissue", write_folder=_write_mni152_tissue))
