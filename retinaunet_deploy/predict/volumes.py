"""Predicting on volumes: the 2D model run slice by slice, outputs on the input's grid.

`plan.plan_inputs` hands a path `data.volumes.volume_readable` claims (a ``.nii``/
``.nii.gz``, a ``.dcm`` or a DICOM series folder, a multi-page TIFF stack) to
`plan_volume`: its header is probed (no voxels decoded) and its slices checked against
the model's input contract. `run_volumes` then, one volume at a time (memory: one
volume, its labels and its detections):

1. reads the volume (`data.volumes.read_volume`);
2. cuts it into 2D slices along the model's slicing axis (`slice_axis`: the card's
   ``data.volumes.axis`` or ``data.axis``, recorded at training; default 2, the last
   voxel axis k: axial for a RAS NIfTI, the slice index of a DICOM series, the page of a
   TIFF stack), as MONAI's ``SliceInferer`` does;
3. predicts them in batches of the predictor's ``batch_size`` (a slice larger than the
   tile runs alone, tiled by the `Predictor`'s sliding window);
4. stacks the slice masks back into a label volume and links the slices' detections
   into 3D boxes (`model.boxes3d.link_slices`, Retina U-Net's 2D-to-3D consolidation);
5. renders every file in memory, then writes them through the run's `ResultWriter`
   (each atomically, then the volume's results.jsonl line), so a volume is written
   whole or not at all, and ``--resume`` skips finished volumes.

Outputs of volume NAME:

    OUT/masks/NAME.nii.gz      uint8 class indices on the input's exact grid
                               (`volume_writers.label_nifti`)
    OUT/seg/NAME.dcm           DICOM input only: a DICOM SEG referencing the series (a
                               source highdicom cannot reference, e.g. an RT dose grid,
                               is warned about and gets the NIfTI alone)
    OUT/detections/NAME.json   with detection heads: per-slice detections and 3D boxes

Coordinates in detections/NAME.json and the results entry: ``box`` (y1, x1, y2, x2)
slice pixels, rows and columns of the slice as displayed (`data.volumes.slices`: the
two other voxel axes in reverse order; axis 2: rows j, columns i, the slice as a
DICOM viewer, pydicom's ``pixel_array`` and a TIFF page show it); ``voxel_box``
(i1, j1, k1, i2, j2, k2) voxel edges (voxel v covers [v, v + 1)); ``world_box_mm``
(x1, y1, z1, x2, y2, z2) RAS+ millimetres, the axis-aligned bounds of the voxel box
(`model.boxes3d.world_box`; DICOM's LPS is x and y negated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError, InputError
from retinaunet_deploy.predict.entries import class_name, mask_class_pixels

SEG_DIR, DETECTIONS_DIR = "seg", "detections"


@dataclass(frozen=True)
class VolumeItem:
    """One input volume of a run, planned.

    Attributes:
        path: the file or DICOM folder as given. name: its output name (unique in the run).
        shape: (I, J, K[, C]) from the header. dtype: voxel dtype after DICOM rescale.
        axis: the slicing axis (0..2). format: "NIfTI", "DICOM" or "TIFF stack".
        height, width: a slice's rows and columns (`data.volumes.slice_axes`: the two
            voxel axes other than `axis`, in reverse order; axis 2: J rows, I columns).
    """

    path: Path
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    axis: int
    format: str
    kind: str = "volume"

    @property
    def height(self) -> int:
        from retinaunet_deploy.data.volumes import slice_axes

        return self.shape[slice_axes(self.axis)[0]]

    @property
    def width(self) -> int:
        from retinaunet_deploy.data.volumes import slice_axes

        return self.shape[slice_axes(self.axis)[1]]


def slice_axis(card) -> int:
    """The voxel axis a model slices volumes along: the card's ``data.volumes.axis`` or
    ``data.axis`` (recorded at training), else 2 (`data.volumes.DEFAULT_AXIS`)."""
    from retinaunet_deploy.data.volumes import DEFAULT_AXIS

    data = getattr(card, "data", None) or {}
    for source in (data.get("volumes"), data):
        if isinstance(source, dict) and source.get("axis") in (0, 1, 2):
            return int(source["axis"])
    return DEFAULT_AXIS


def slice_order_warning(card) -> str | None:
    """A warning for a model trained on volume slices cut in the old order (each slice
    transposed: a card whose ``data`` is volumes without ``slice_order``), else None."""
    from retinaunet_deploy.data.volumes import SLICE_ORDER

    data = getattr(card, "data", None) or {}
    if data.get("kind") != "volumes" or data.get("slice_order") == SLICE_ORDER:
        return None
    return ("its model was trained on volume slices transposed against how they are cut "
            "now (rows and columns as displayed); its masks may be worse than its card "
            "says: retrain it ('retinaunet-deploy train --data DIR --axis N')")


def coordinates_line(axis: int) -> str:
    """detections/NAME.json's ``coordinates`` line for slicing `axis` (module docstring),
    naming the voxel axes a slice's rows and columns are (`data.volumes.slice_axes`)."""
    from retinaunet_deploy.data.volumes import slice_axes

    row, col = slice_axes(axis)
    return (f"box: y1 x1 y2 x2 slice pixels (rows along voxel axis {'ijk'[row]}, columns "
            f"along {'ijk'[col]}: the slice as displayed); voxel_box: i1 j1 k1 i2 j2 k2 voxel "
            f"edges; world_box_mm: x1 y1 z1 x2 y2 z2 RAS+ mm")


def plan_volume(path: Path, name: str, predictor) -> VolumeItem:
    """Probe a volume's header and check its slices against `predictor`'s contract.

    Raises:
        DataError: the volume cannot be read (`data.volumes.probe_volume`'s one line).
        InputError: its slices do not fit the model (size, channels, dtype), naming the
            axis and the slice size.
    """
    from retinaunet_deploy.data.volumes import format_for, probe_volume

    shape, dtype, _ = probe_volume(Path(path))
    axis = slice_axis(getattr(predictor, "card", None))
    item = VolumeItem(Path(path), name, tuple(int(n) for n in shape), np.dtype(dtype), axis,
                      format_for(Path(path)).name)
    channels = shape[3] if len(shape) == 4 else 1
    try:
        predictor.check_header(item.height, item.width, channels, dtype)
    except InputError as error:
        raise InputError(f"{path}: its slices along voxel axis {axis} "
                         f"({item.height}x{item.width}) cannot be predicted: {error}") from error
    return item


@dataclass
class VolumePrediction:
    """A volume's prediction: labels (I, J, K) uint8 on its grid; the slices' detections
    (`model.boxes3d.SliceBoxes`, None without heads); how many slices hit the cap."""

    labels: np.ndarray
    found: object | None
    capped_slices: int
    tiled: bool


def predict_volume(predictor, volume, axis: int) -> VolumePrediction:
    """Run `predictor` over `volume`'s slices along `axis` (module docstring, steps 2-4).

    Raises:
        InputError: a slice the model refuses (values outside its range, NaN), naming
            the volume and the slice.
    """
    from retinaunet_deploy.data.volumes import slices, stack_slices
    from retinaunet_deploy.model.boxes3d import SliceBoxes

    stack = slices(volume.array, axis)
    count, height, width = stack.shape[:3]
    whole = predictor.fits_whole(height, width)
    step = max(1, int(predictor.batch_size)) if whole else 1
    masks = np.empty((count, height, width), np.uint8)
    parts: list[tuple] = []
    capped = 0
    for start in range(0, count, step):
        batch = np.ascontiguousarray(stack[start:start + step])
        if batch.ndim == 3:
            batch = batch[..., None]
        try:
            predictions = predictor.predict(batch)
        except InputError as error:
            raise InputError(f"{volume.source}: slices {start}..{start + len(batch) - 1} "
                             f"along axis {axis}: {error}") from error
        for offset, prediction in enumerate(predictions):
            masks[start + offset] = prediction.mask
            dets = prediction.detections
            if dets is not None and len(dets):
                parts.append((dets.boxes, dets.scores, dets.classes,
                              np.full(len(dets), start + offset)))
            capped += int(dets is not None and dets.capped)
    found = None
    if predictor.det_class_names:
        if parts:
            found = SliceBoxes(*(np.concatenate(column) for column in zip(*parts)))
        else:
            found = SliceBoxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                               np.zeros(0, np.int32), np.zeros(0, np.int64))
    labels = np.ascontiguousarray(stack_slices(masks, axis))
    return VolumePrediction(labels, found, capped, not whole)


def _detections(found, volume, axis: int, names) -> tuple[list[dict], list[dict]]:
    """(per-slice detections, 3D boxes) as JSON-ready dicts (module docstring coordinates)."""
    from retinaunet_deploy.model.boxes3d import link_slices, voxel_box, world_box

    def placed(box, first, last) -> dict:
        voxel = voxel_box(box, first, last, axis)
        return {"voxel_box": [round(float(v), 2) for v in voxel],
                "world_box_mm": [round(float(v), 3) for v in world_box(voxel, volume.affine)]}

    per_slice = [{"slice": int(s), "class": class_name(names, int(c)),
                  "score": round(float(p), 4), "box": [round(float(v), 2) for v in b],
                  **placed(b, int(s), int(s))}
                 for b, p, c, s in zip(found.boxes, found.scores, found.classes, found.slices)]
    boxes = [{"class": class_name(names, b.cls), "score": round(b.score, 4),
              "slices": [b.first, b.last], "box": [round(v, 2) for v in b.box],
              **placed(b.box, b.first, b.last), "slice_detections": len(b.members)}
             for b in link_slices(found)]
    return per_slice, boxes


def render_volume(item: VolumeItem, volume, result: VolumePrediction, predictor,
                  calibration_range=None) -> tuple[dict[str, bytes], dict]:
    """Every output file of a volume as bytes (relative path -> bytes) and its entry."""
    import json

    from retinaunet_deploy import __version__
    from retinaunet_deploy.data.volumes import spacing_of
    from retinaunet_deploy.predict import volume_writers

    mask = f"masks/{item.name}.nii.gz"
    files = {mask: volume_writers.label_nifti(result.labels, volume)}
    warnings = list(volume.notes) + [f"{item.path}: {line}" for line in
                                     [slice_order_warning(getattr(predictor, "card", None))]
                                     if line]
    if volume.format == "DICOM":
        try:
            files[f"{SEG_DIR}/{item.name}.dcm"] = volume_writers.dicom_seg(
                result.labels, volume, tuple(predictor.class_names),
                f"retinaunet-deploy {__version__}")
        except DataError as error:   # e.g. an RT dose grid: the labels are still written
            warnings.append(f"{error}; its labels are in {mask} only")
    entry = {"kind": "volume", "format": volume.format, "size": list(volume.shape[:3]),
             "axis": item.axis, "slices": int(volume.shape[item.axis]), "tiled": result.tiled,
             "spacing_mm": [round(float(v), 6) for v in spacing_of(volume.affine)],
             "class_voxels": mask_class_pixels(result.labels, predictor.class_names)}
    if result.found is not None:
        per_slice, boxes = _detections(result.found, volume, item.axis,
                                       predictor.det_class_names)
        document = {"source": str(item.path), "format": volume.format, "axis": item.axis,
                    "shape": list(volume.shape[:3]),
                    "affine": [[round(float(v), 6) for v in row] for row in volume.affine],
                    "coordinates": coordinates_line(item.axis),
                    "boxes_3d": boxes, "slice_detections": per_slice}
        files[f"{DETECTIONS_DIR}/{item.name}.json"] = (json.dumps(document, indent=1) +
                                                       "\n").encode()
        entry["detections"] = boxes
        entry["slice_detections"] = len(per_slice)
        entry["detections_capped"] = bool(result.capped_slices)
        if result.capped_slices:
            warnings.append(f"{item.path}: {result.capped_slices} slice(s) hit the per-image "
                            f"detection cap; raise it with --max-detections")
    if calibration_range is not None:
        channels = volume.shape[3] if len(volume.shape) == 4 else 1
        warning = calibration_range.check(volume.array.reshape(volume.shape[0], -1, channels))
        if warning:
            warnings.append(f"{item.path}: {warning}")
    entry["warnings"] = warnings
    return files, entry


def run_volumes(predictor, items: list[VolumeItem], writer,
                warn: Callable[[str], None]) -> None:
    """Read, predict and write each planned volume in turn (module docstring).

    Raises:
        DataError: a volume unreadable now or changed since planning (naming it);
        InputError: slices the model refuses; OutputError: a file cannot be written.
        Every volume finished before stays written; nothing of the failing one is.
    """
    from retinaunet_deploy.data.volumes import read_volume
    from retinaunet_deploy.outputs import check_writable
    from retinaunet_deploy.predict.stream import report

    if predictor.det_class_names:
        check_writable(writer.out_dir / DETECTIONS_DIR)
    if any(item.format == "DICOM" for item in items):
        check_writable(writer.out_dir / SEG_DIR)
    for item in items:
        volume = read_volume(item.path)
        if tuple(volume.shape) != item.shape:
            raise DataError(f"{item.path} changed since it was checked ({item.shape}, now "
                            f"{tuple(volume.shape)}); run the command again")
        result = predict_volume(predictor, volume, item.axis)
        files, entry = render_volume(item, volume, result, predictor, writer.calibration_range)
        del volume, result
        report(writer.commit_files(item, files, entry), warn)
