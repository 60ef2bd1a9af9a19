"""Run the C++ app and the Python Predictor on the same images and file; say how they agree.

    python examples/cpp/compare_with_python.py BINARY MODEL RUN_DIR OUT_DIR
        [--images 8] [--tile 1024] [--runtime openvino] [--threads 2]
        [--min-pixels 0.9999] [--min-matched 0.99]

Writes `--images` images as 8-bit or 16-bit PGMs into OUT_DIR: the run's first held-out
test images (`data.splits.held_out_set`, what every reported figure uses) and, last,
a mosaic of them larger than `--tile` (so it runs as a sliding window); runs BINARY
(build/cpp/retinaunet_infer) on each with `--json`, and the Python Predictor on the
same file in `--runtime` (openvino for an .onnx file, tensorrt for a .plan). Prints
per image the tile count, the pixel agreement of the masks and the Predictor's boxes
matched by a C++ box of the same class at IoU >= 0.9 (and the largest score gap of a
matched pair), then the totals and the C++
wall time; exits 1 when pixel agreement or the matched fraction is below the bars.
Used by tests/test_cpp_app.py and `make gpu-check`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_pgm(path: Path, image: np.ndarray) -> None:
    """An (H, W) uint8 or uint16 image as a binary PGM (16-bit big-endian)."""
    maxval = 255 if image.dtype == np.uint8 else 65535
    data = image.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(f"P5\n{image.shape[1]} {image.shape[0]}\n{maxval}\n".encode() + data)


def read_pgm(path: Path) -> np.ndarray:
    """The 8-bit mask PGM the app writes, (H, W) uint8."""
    data = path.read_bytes()
    magic, width, height, maxval, rest = data.split(maxsplit=4)
    assert magic == b"P5" and int(maxval) == 255, path
    return np.frombuffer(rest, np.uint8).reshape(int(height), int(width))


def test_images(run: Path, count: int, tile: int) -> list[np.ndarray]:
    """`count` images (H, W) of the run's pixel dtype: `count` - 1 held-out test images
    and a mosaic of them more than `tile` pixels wide (so it runs as a sliding window)."""
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.data.splits import held_out_set

    card = load_card(run)
    if card.input.channels != 1:
        raise SystemExit(f"{run}: the app reads greyscale PGMs; this model takes "
                         f"{card.input.channels} channels")
    images = [s.image[..., 0].astype(card.input.pixel_dtype) for s in held_out_set(card, count - 1)]
    height = min(i.shape[0] for i in images)
    row = np.concatenate([i[:height] for i in images], axis=1)
    while row.shape[1] <= tile:
        row = np.concatenate([row, row[:, ::-1]], axis=1)
    return images + [np.concatenate([row, row[::-1]], axis=0)[:, :tile + 100]]


def matched_boxes(python, boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                  iou: float = 0.9) -> tuple[int, float]:
    """How many of the Predictor's boxes a C++ box of the same class overlaps at IoU >= iou,
    and the largest score difference between a matched pair (0 when none matched)."""
    from retinaunet_deploy.model.boxes import box_iou

    if not len(python) or not len(boxes):
        return 0, 0.0
    overlaps = box_iou(python.boxes, boxes) * (python.classes[:, None] == classes[None, :])
    best = overlaps.argmax(axis=1)
    hit = overlaps.max(axis=1) >= iou
    gaps = np.abs(python.scores[hit] - scores[best[hit]])
    return int(hit.sum()), float(gaps.max()) if gaps.size else 0.0


def compare(binary: Path, model: Path, images: list[np.ndarray], out: Path, tile: int = 1024,
            runtime: str = "openvino", threads: int = 2, extra: tuple[str, ...] = ()) -> dict:
    """Per-image and total agreement of the C++ app with the Predictor (module docstring)."""
    from retinaunet_deploy.runtime import Predictor

    out.mkdir(parents=True, exist_ok=True)
    rows, seconds = [], 0.0
    with Predictor.from_artifact(model, runtime=runtime, tile=tile, threads=threads) as predictor:
        for i, image in enumerate(images):
            write_pgm(out / f"{i}.pgm", image)
            start = time.perf_counter()
            result = subprocess.run(
                [str(binary), str(model), str(out / f"{i}.pgm"), str(out / f"{i}.mask.pgm"),
                 "--tile", str(tile), "--threads", str(threads), "--score-threshold",
                 repr(predictor.detection_config.score_threshold), "--json",
                 str(out / f"{i}.json"), *extra], capture_output=True, text=True, check=False)
            seconds += time.perf_counter() - start
            if result.returncode:
                raise RuntimeError(f"{binary} failed on {out / f'{i}.pgm'}: {result.stderr}")
            mask = read_pgm(out / f"{i}.mask.pgm")
            found = json.loads((out / f"{i}.json").read_text())
            assert (found["height"], found["width"]) == image.shape
            boxes = np.array([d["box"] for d in found["detections"]], np.float32).reshape(-1, 4)
            classes = np.array([d["class"] for d in found["detections"]], np.int32)
            scores = np.array([d["score"] for d in found["detections"]], np.float32)
            python = predictor.predict(image)
            matched, score_gap = matched_boxes(python.detections, boxes, classes, scores)
            rows.append({"shape": image.shape,
                         "tiles": len(predictor.tile_layout(*image.shape).origins),
                         "pixels": int((mask == python.mask).sum()), "total": int(mask.size),
                         "python_boxes": len(python.detections), "cpp_boxes": len(boxes),
                         "matched": matched, "score_gap": score_gap})
    pixels = sum(r["pixels"] for r in rows) / sum(r["total"] for r in rows)
    boxes = sum(r["python_boxes"] for r in rows)
    return {"rows": rows, "pixel_agreement": pixels, "python_boxes": boxes,
            "matched_fraction": sum(r["matched"] for r in rows) / boxes if boxes else 1.0,
            "score_gap": max(r["score_gap"] for r in rows), "cpp_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-pixels", type=float, default=0.9999)
    parser.add_argument("--min-matched", type=float, default=0.99)
    args = parser.parse_args(argv)
    runtime = args.runtime
    if runtime == "auto":
        runtime = "openvino" if args.model.suffix == ".onnx" else "auto"
    report = compare(args.binary, args.model, test_images(args.run, args.images, args.tile),
                     args.out, args.tile, runtime, args.threads)
    for i, row in enumerate(report["rows"]):
        print(f"image {i} {row['shape'][0]}x{row['shape'][1]}: {row['tiles']} tile(s), "
              f"pixels {row['pixels'] / row['total']:.6f}, boxes Python {row['python_boxes']} "
              f"C++ {row['cpp_boxes']} matched {row['matched']}")
    print(f"{args.model.name}: pixel agreement {report['pixel_agreement']:.6f}, "
          f"{report['matched_fraction']:.4f} of {report['python_boxes']} boxes matched at "
          f"IoU >= 0.9 (scores within {report['score_gap']:.1e}); C++ {report['cpp_seconds']:.2f} s for {len(report['rows'])} images "
          f"(process start and model compile included)")
    ok = (report["pixel_agreement"] >= args.min_pixels
          and report["matched_fraction"] >= args.min_matched)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
