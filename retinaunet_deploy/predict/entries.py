"""What an input's results.jsonl entry says about its detections and classes, for every
kind of input (`writer.ResultWriter.render` for images, `predict.slides` for slides).

One place knows how a cap is recorded and warned about: the per-image cap
(``detections_capped``, ``detections_before_cap``), an end-to-end graph whose detection
rows were full (``graph_calls_capped``) and the pre-NMS candidate cap
(``candidates_dropped``); each also gives a warning line naming the input.
"""

from __future__ import annotations

import numpy as np


def class_name(names, cls: int):
    """A class index's name; an index past the names (a card without them) as itself."""
    return names[cls] if cls < len(names) else int(cls)


def class_pixels(names, counts) -> dict:
    """{class name: pixel count} from per-class counts (an int array or list)."""
    return {name: int(count) for name, count in zip(names, counts)}


def detection_list(detections, names) -> list[dict]:
    """[{"box": [y1, x1, y2, x2] image pixels (2 decimals), "score" (4 decimals), "class"}]."""
    return [{"box": [round(float(v), 2) for v in box], "score": round(float(score), 4),
             "class": class_name(names, int(cls))}
            for box, score, cls in zip(detections.boxes, detections.scores, detections.classes)]


def cap_record(path, detections) -> tuple[dict, list[str]]:
    """(entry keys, warning lines) for what the caps left out of `detections` (a
    `postprocess.Detections` with ``dropped``, ``graph_capped`` and
    ``candidates_dropped``) of the input at `path`."""
    kept, dropped = len(detections), int(detections.dropped)
    entry = {"detections_capped": bool(dropped or detections.graph_capped),
             "detections_before_cap": kept + dropped}
    warnings = []
    if detections.graph_capped:
        entry["graph_calls_capped"] = int(detections.graph_capped)
        warnings.append(f"{path}: {detections.graph_capped} end-to-end graph call(s) filled "
                        f"all their detection rows, so more may have been found; run the "
                        f"plain file, or --tile at the patch size")
    if dropped:
        warnings.append(f"{path}: {kept} detections kept of {kept + dropped} found (the "
                        f"per-image cap); raise it with --max-detections")
    if detections.candidates_dropped:
        entry["candidates_dropped"] = int(detections.candidates_dropped)
        warnings.append(f"{path}: {detections.candidates_dropped} candidate boxes over the "
                        f"score threshold were not considered (the pre-NMS cap); raise "
                        f"--max-detections or --score-threshold")
    return entry, warnings


def mask_class_pixels(mask: np.ndarray, names) -> dict:
    """{class name: pixel count} of a label mask (H, W) of class indices."""
    return class_pixels(names, np.bincount(mask.ravel(), minlength=len(names)))
