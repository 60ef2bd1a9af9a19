"""2D detections of a volume's slices linked into 3D boxes, and voxel boxes in world mm
(plain numpy; the box conventions of `model.boxes`).

Linking follows Retina U-Net's 2D-to-3D consolidation (Jaeger et al. 2018, arXiv
1811.08661, sec. 2.5; medicaldetectiontoolkit ``predictor.py``, ``nms_2to3D``): per
class, the boxes of all slices are projected onto one plane and clustered like NMS.
The highest-scoring remaining box is the cluster's core; the boxes that overlap it in
the projection join it, but only those on the run of slices connected to the core's
slice (the run ends at the first slice, above or below, where no overlapping box was
found: a "hole"). Joined boxes leave the pool; the next core is the best remaining box.

Two documented changes, so that a cluster's 3D box is the object's extent:

* "Overlap" is intersection over the SMALLER box's area (not IoU) above
  `MIN_OVERLAP`: a sphere's small cap slices lie inside its core slice's box and join
  it (IoU would leave them as boxes of their own).
* The 3D box is the union of the joined boxes (in-plane), over slices first..last
  (the original keeps the core box's in-plane coordinates and widens z by one slice
  each side). Its score is the core's score, as in the original.

Objects of one class that touch side by side stay apart (their slice boxes do not
overlap); two that touch end to end along the slice axis, with overlapping footprints,
are one 3D box (2D detections cannot tell them apart).

Voxel boxes are ``(i1, j1, k1, i2, j2, k2)`` with edges on integers (voxel v covers
[v, v + 1), ends exclusive), like 2D boxes. An affine maps voxel CENTRES (index v) to
world, so an edge coordinate e lies at index e - 0.5 (`world_box`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class SliceBoxes:
    """The 2D detections of a volume's slices, flattened.

    Attributes:
        boxes: (N, 4) float (y1, x1, y2, x2) slice pixels (`model.boxes` convention; rows
            and columns of the slice as `data.volumes.slices` returns it).
        scores: (N,) float. classes: (N,) int detection class.
        slices: (N,) int slice index along the slicing axis.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    slices: np.ndarray


@dataclass(frozen=True)
class Box3D:
    """One linked object: slice-plane box, slice range, class, the core's score, members.

    Attributes:
        box: (y1, x1, y2, x2) slice pixels (union of the members).
        first, last: the first and last slice index (inclusive).
        cls: detection class. score: the core box's score.
        members: indices into the `SliceBoxes` it was built from, core first.
    """

    box: tuple[float, float, float, float]
    first: int
    last: int
    cls: int
    score: float
    members: tuple[int, ...]


def _overlap_min(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over the smaller area of `box` (4,) with each of `others` (N, 4)."""
    h = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    w = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    smaller = np.maximum(np.minimum(area, areas), 1e-9)
    return (h * w) / smaller


def link_slices(found: SliceBoxes, min_overlap: float = MIN_OVERLAP) -> list[Box3D]:
    """Cluster per-slice detections into 3D boxes (module docstring: Retina U-Net's
    ``nms_2to3D``, adapted).

    Args:
        found: the slices' detections.
        min_overlap: intersection over the smaller box above which a box joins a core.
    Returns:
        3D boxes sorted by descending score (ties: by first slice, then position).
    """
    boxes = np.asarray(found.boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(found.scores, np.float64).reshape(-1)
    classes = np.asarray(found.classes, np.int64).reshape(-1)
    slices = np.asarray(found.slices, np.int64).reshape(-1)
    out: list[Box3D] = []
    for cls in np.unique(classes):
        pool = np.flatnonzero(classes == cls)
        # Highest score first; ties broken by the larger box, then slice and position,
        # so the result does not depend on the order detections arrive in.
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        pool = pool[np.lexsort((boxes[pool, 1], boxes[pool, 0], slices[pool], -areas[pool],
                                -scores[pool]))]
        while pool.size:
            core = pool[0]
            matched = pool[_overlap_min(boxes[core], boxes[pool]) > min_overlap]
            present = set(slices[matched].tolist())
            low = high = int(slices[core])
            while low - 1 in present:
                low -= 1
            while high + 1 in present:
                high += 1
            members = matched[(slices[matched] >= low) & (slices[matched] <= high)]
            members = np.concatenate([[core], members[members != core]])
            union = (float(boxes[members, 0].min()), float(boxes[members, 1].min()),
                     float(boxes[members, 2].max()), float(boxes[members, 3].max()))
            out.append(Box3D(union, low, high, int(cls), float(scores[core]),
                             tuple(int(m) for m in members)))
            pool = pool[~np.isin(pool, members)]
    out.sort(key=lambda b: (-b.score, b.first, b.box))
    return out


def voxel_box(box: tuple[float, float, float, float], first: int, last: int,
              axis: int) -> np.ndarray:
    """(6,) float64 voxel box (i1, j1, k1, i2, j2, k2), edges on integers, of a slice-plane
    box (y1, x1, y2, x2) over slices first..last (inclusive) of slicing `axis`.

    The slice's rows (y) and columns (x) are the two other voxel axes in REVERSE order, as
    `data.volumes.slices` cuts them (`data.volumes.slice_axes`): axis 2: y on j, x on i;
    axis 1: y on k, x on i; axis 0: y on k, x on j.
    """
    first_other, second_other = (a for a in (0, 1, 2) if a != axis)
    row, col = second_other, first_other
    low, high = np.zeros(3), np.zeros(3)
    low[row], low[col], low[axis] = box[0], box[1], first
    high[row], high[col], high[axis] = box[2], box[3], last + 1
    return np.concatenate([low, high])


def world_box(voxel: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(6,) float64 (x1, y1, z1, x2, y2, z2) world mm: the axis-aligned bounds of a voxel
    box's 8 corners under `affine` (4, 4) (voxel centres at integer indices, so edge e
    maps from index e - 0.5). For an affine without rotation it is the box exactly."""
    voxel = np.asarray(voxel, np.float64)
    corners = np.array([[voxel[3 * bits[d] + d] for d in range(3)]
                        for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
    world = (np.asarray(affine, np.float64) @ np.c_[corners - 0.5, np.ones(8)].T)[:3].T
    return np.concatenate([world.min(axis=0), world.max(axis=0)])
