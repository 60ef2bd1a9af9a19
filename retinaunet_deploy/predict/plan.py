"""Planning a predict run: every input checked by its header, and its output name decided,
before anything is read whole or written.

Output names. An image's outputs are ``masks/<name>.png`` and ``overlays/<name>.png``
(a volume's ``masks/<name>.nii.gz`` and more: `predict.volumes`, which plans the paths
`data.volumes.volume_readable` claims: the stem of ``ct.nii.gz`` is ``ct``, a DICOM
folder's its name).
`output_names` gives every input a name no other input of the run has, compared
as a case-insensitive file system compares them (Unicode NFC, case-folded):

1. The file's stem (``a.png`` -> ``a``).
2. Names that clash move, all of them, to the next form that is not the same text:
   ``a_tif`` (stem and suffix), ``x__a`` (the folders that tell it apart from the inputs
   of the same stem, joined by ``__``), ``x__a_tif``, and last ``x__a_tif-3`` (the
   input's position among the run's inputs sorted by path; distinct inputs never share
   one).
3. Each move is checked against every other name again, until none clash.

The names depend only on the set of inputs (not their order), so the same list gives
the same names on every run, and `--resume` finds its outputs again.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError, InputError


@dataclass(frozen=True)
class InputItem:
    """One input image of a run, planned.

    Attributes:
        path: the file as given.
        name: its output name (``masks/<name>.png``), unique in the run.
        height, width: pixels, from the file's header.
        dtype: the pixel dtype the file holds (np.dtype).
    """

    path: Path
    name: str
    height: int
    width: int
    dtype: np.dtype


def _key(name: str) -> str:
    """How a case-insensitive, normalising file system compares two names."""
    return unicodedata.normalize("NFC", name).casefold()


OME_SUFFIXES = (".ome.tif", ".ome.tiff")


def _stem_suffix(path: Path) -> tuple[str, str]:
    """(stem, suffix) of an input: a volume's (`data.volumes.volume_stem`), else an image's."""
    from retinaunet_deploy.data.readers import stem_of, suffix_of
    from retinaunet_deploy.data.volumes import volume_readable, volume_stem, volume_suffix

    if volume_readable(path):
        return volume_stem(path), volume_suffix(path)
    name = path.name
    for ome in OME_SUFFIXES:   # Bio-Formats' double suffix: x.ome.tif is named x
        if name.lower().endswith(ome) and len(name) > len(ome):
            return name[:-len(ome)], name[-len(ome):].lower()
    return stem_of(path), suffix_of(path)


def _forms(path: Path, twins: list[Path], position: int, stem_suffix: tuple[str, str]
           ) -> list[str]:
    """The names `path` may take, plainest first (duplicates of an earlier one removed)."""
    stem, suffix = stem_suffix
    ext = suffix.lstrip(".").replace(".", "_")
    parents = [p.parent.parts for p in twins] if len(twins) > 1 else [path.parent.parts]
    shared = 0
    while all(len(p) > shared for p in parents) and len({p[shared] for p in parents}) == 1:
        shared += 1
    folders = "__".join(path.parent.parts[shared:])
    with_ext = f"{stem}_{ext}" if ext else stem
    forms = [stem, with_ext, f"{folders}__{stem}" if folders else stem,
             f"{folders}__{with_ext}" if folders else with_ext]
    forms.append(f"{forms[-1]}-{position}")
    return list(dict.fromkeys(forms))


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per input path (the rule in this module's docstring).

    Raises:
        InputError: the same file is given twice.
    """
    resolved = [Path(os.path.abspath(p)) for p in paths]
    seen: dict[Path, Path] = {}
    for given, path in zip(paths, resolved):
        if path in seen:
            raise InputError(f"{given} is given twice (also as {seen[path]}); give each "
                             f"image once")
        seen[path] = Path(given)
    stems = {p: _stem_suffix(p) for p in resolved}
    by_stem: dict[str, list[Path]] = {}
    for path in resolved:
        by_stem.setdefault(_key(stems[path][0]), []).append(path)
    order = {path: i for i, path in enumerate(sorted(resolved, key=str))}
    forms = [_forms(p, by_stem[_key(stems[p][0])], order[p], stems[p]) for p in resolved]
    level = [0] * len(resolved)
    while True:
        names = [f[min(lv, len(f) - 1)] for f, lv in zip(forms, level)]
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(_key(name), []).append(i)
        clashing = [i for group in groups.values() if len(group) > 1 for i in group]
        if not clashing:
            return names
        moved = False
        for i in clashing:
            if level[i] < len(forms[i]) - 1:
                level[i] += 1
                moved = True
        if not moved:  # every clashing name is a last form: distinct positions forbid it
            raise AssertionError(f"output names clash: {sorted(set(names))}")


def _header(path: Path) -> tuple[int, int, int, np.dtype]:
    """(height, width, channels, dtype) of an image file from its header
    (`data.readers.probe_image`: no pixels decoded)."""
    from retinaunet_deploy.data.readers import probe_image

    header = probe_image(Path(path))
    return header.height, header.width, header.channels, np.dtype(header.dtype)


def _check_header(predictor, height: int, width: int, channels: int, dtype: np.dtype) -> None:
    """The predictor's input contract at header level (`Predictor.check_header`)."""
    predictor.check_header(height, width, channels, dtype)


def _slide_item(path: Path, name: str, predictor, level: int | None, mpp: float | None):
    """The `predict.slides.SlideItem` of a whole-slide image (`data.slides.slide_kind`),
    or None for any other file."""
    from retinaunet_deploy.data.slides import slide_kind

    if slide_kind(path) is None:
        return None
    from retinaunet_deploy.predict.slides import plan_slide

    return plan_slide(path, name, predictor, level, mpp)


def plan_inputs(paths: list[Path], predictor, level: int | None = None,
                mpp: float | None = None) -> list[InputItem]:
    """Check every input by its header against `predictor`'s contract; name its outputs.

    No pixels are kept and nothing is written. A whole-slide image is planned as a
    `predict.slides.SlideItem` at the level `level` or `mpp` chooses (default 0).

    Raises:
        InputError: one or more inputs cannot be predicted (unreadable, wrong size,
            channels or dtype), every one listed in the one message ("a.png: ...;
            b.tif: ..."); with a single bad input, its own error with its path first.
        InputError: the same file is given twice.
    """
    paths = [Path(p) for p in paths]
    names = output_names(paths)
    items, problems = [], []
    from retinaunet_deploy.data.volumes import volume_readable
    from retinaunet_deploy.predict.volumes import plan_volume

    for path, name in zip(paths, names):
        try:
            slide = _slide_item(path, name, predictor, level, mpp)
            if slide is not None:     # a pyramid: `predict.slides` plans and runs it
                items.append(slide)
                continue
            if volume_readable(path):   # a volume: `predict.volumes` plans and runs it
                items.append(plan_volume(path, name, predictor))
                continue
            if path.is_dir():
                raise InputError(f"{path} is a folder without DICOM files; give image or "
                                 f"volume files, or a folder holding one DICOM series")
            height, width, channels, dtype = _header(path)
            _check_header(predictor, height, width, channels, dtype)
        except (DataError, InputError) as error:
            message = str(error)
            problems.append((error, message if str(path) in message else f"{path}: {message}"))
            continue
        items.append(InputItem(path, name, int(height), int(width), np.dtype(dtype)))
    if len(problems) == 1:
        error, message = problems[0]
        raise type(error)(message) from error
    if problems:
        raise InputError(f"{len(problems)} of {len(paths)} images cannot be predicted "
                         f"(nothing was written): " + "; ".join(m for _, m in problems))
    return items
