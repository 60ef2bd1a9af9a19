"""The outputs of a predict run, written so that a killed or disk-full run keeps every
finished image and `--resume` can tell finished from unfinished.

    OUT/masks/<name>.png      class indices at the image's own size (8-bit, 0 = background)
    OUT/overlays/<name>.png   image, mask colours, boxes with class and score (not with
                              overlays=False: predict --no-overlays)
    OUT/results.jsonl         line 1: the run's header (artifact, its sha256, runtime,
                              options); then one line per finished image, appended as it
                              finishes: {"path": ..., **entry}; rewritten at the end
                              in the run's order
    OUT/detections.json       the summary written at the end: artifact, runtime, and
                              per image path its entry
    A whole-slide image (`predict.slides`) has masks/<name>.ome.tif and
    detections/<name>.geojson instead of the PNGs, written by its own path and recorded
    by `commit_outputs` (its entry lists them under ``outputs``).

An image's entry: size [H, W]; mask and overlay (paths relative to OUT; no overlay
keys without overlays) and their sha256; tiled; class_pixels {class: count}; with
detection heads, detections (box [y1, x1, y2, x2] image pixels, score, class) and the
caps' record (`entries.cap_record`: detections_capped, detections_before_cap, ...);
warnings (one line each, also printed).

Writing an image has two steps. `ResultWriter.render` draws and encodes it (mask and
overlay PNG bytes, its entry): no file is touched, so several images may render at once
in other threads. `ResultWriter.commit` then writes it, one image at a time in the run's
order: mask, then overlay (each to a temporary file renamed over its name), then its
results.jsonl line. An image is finished when its line is there and both files still
have the sha256 it records. Inputs with other outputs (volumes: `predict.volumes`) are
written by `ResultWriter.commit_files`; their line lists every file and its sha256
under ``files``, and they are finished when all of them still match.

Durability. Each line is handed to the kernel (one `os.write`) as its image finishes,
so a killed or crashed process keeps every finished image's line: the kernel writes it
out after the process is gone. results.jsonl is fsynced at most once a second
(`SYNC_SECONDS`) and when the writer closes, so a power loss or kernel crash may lose
the lines of the last second; `--resume` then redoes those images, and it redoes any
image whose files a crash left incomplete, since their sha256 no longer matches.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import atomic_path, sha256_file, write_json
from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.outputs import check_writable, output_error
from retinaunet_deploy.predict.entries import cap_record, detection_list, mask_class_pixels

RESULTS = "results.jsonl"
DETECTIONS = "detections.json"
OUTPUT_FOLDERS = ("masks", "overlays", "seg", "detections")   # OUT's, of every input kind
RESULTS_KIND = "retinaunet-deploy predict results"
OVERLAY_SIDE = 512    # small images are upscaled (by 2-4x) until their longer side nears this
OVERLAY_MAX_SCALE = 4
PNG_LEVEL = 1         # zlib level of both PNGs: 3x faster than PIL's 6, same bytes every run
SYNC_SECONDS = 1.0    # results.jsonl is fsynced at most this often, and on close


def overlay_scale(height: int, width: int) -> int:
    """The overlay's integer upscaling of an image: the largest of 1..4 that keeps its
    longer side at most `OVERLAY_SIDE` px (1 for images that long already)."""
    return max(1, min(OVERLAY_MAX_SCALE, OVERLAY_SIDE // max(height, width, 1)))


@dataclass
class Rendered:
    """An image ready to commit: its mask and overlay PNG bytes and its entry (without
    the files' paths and sha256, which `ResultWriter.commit` adds)."""

    mask_png: bytes
    overlay_png: bytes | None      # None: the run writes no overlays
    entry: dict


def _png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def _remedy(error: OSError) -> str | None:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ("free space on that disk or choose another --out, then run the same "
                "command with --resume: the finished images are kept")
    return None


class ResultWriter:
    """Writes each image's outputs atomically and appends its line to results.jsonl.

    `render` may run in several threads at once; everything else from one thread (the
    executors commit on the driver, in the run's order).

    Args:
        out_dir: the output folder (created; checked writable first).
        header: what makes the run's results what they are (artifact, its sha256,
            runtime, options); line 1 of results.jsonl. Keys ``artifact`` (a path,
            however given) and ``kind`` are not compared on resume.
        resume: keep the finished images of an earlier run with the same header;
            without it, a folder that holds an earlier run's results.jsonl is refused.
        calibration_range: an object with ``.check(image) -> str | None`` (the INT8
            artifact's `CalibrationRange`), or None.
        overlays: draw and write overlays/<name>.png for each image (False: masks and
            results only; drawing and encoding the overlay is most of a small image's
            writing cost, bench/README.md "Folder throughput").

    Raises:
        OutputError: the folder cannot be written (path and OS reason).
        ConfigError: resume over results of another artifact, runtime or options; an
            earlier run's results without resume.
    """

    def __init__(self, out_dir: Path, *, header: dict, resume: bool,
                 calibration_range=None, overlays: bool = True):
        self.out_dir = Path(out_dir)
        self.overlays = overlays
        self.header = {"kind": RESULTS_KIND, **header}
        self.calibration_range = calibration_range
        self.entries: dict[str, dict] = {}     # path -> entry, of this run and resumed
        self.done: dict[str, dict] = {}        # path -> line, finished by an earlier run
        # What this run creates, removed again if it fails before finishing any image.
        self._created = [p for p in (self.out_dir, *self.out_dir.parents) if not p.exists()]
        self._fresh_results = False
        self._writes = 0
        for folder in (self.out_dir, self.out_dir / "masks",
                       *([self.out_dir / "overlays"] if overlays else [])):
            check_writable(folder)
        self.results = self.out_dir / RESULTS
        self._synced = time.monotonic()
        if not resume and self.results.exists():
            # Starting afresh would drop its record while its files stay beside new ones.
            raise ConfigError(f"{self.out_dir} holds the results of an earlier predict run "
                              f"({RESULTS}); finish it with --resume (same artifact and "
                              f"options), or give a new --out (or delete that folder)")
        if resume and self.results.exists():
            self._load_earlier()
        else:
            self._start_afresh()
        try:
            self._fd = os.open(self.results, os.O_WRONLY | os.O_APPEND)
        except OSError as error:
            raise output_error(self.results, error) from error

    # === Resume ===

    def _start_afresh(self) -> None:
        try:
            with atomic_path(self.results) as tmp:
                tmp.write_text(json.dumps(self.header) + "\n")
            self._fresh_results = True
        except OSError as error:
            raise output_error(self.results, error, _remedy(error)) from error

    def _load_earlier(self) -> None:
        """Read results.jsonl of an earlier run: check its header, keep its complete lines,
        cut a line a kill left half-written."""
        data = self.results.read_bytes()
        again = ("run without --resume (or with another --out) to start over, or with "
                 "the earlier run's artifact and options to finish it")
        lines = data.split(b"\n")
        try:
            earlier = json.loads(lines[0])
        except ValueError:
            raise ConfigError(f"{self.results}: its first line is not a results header; "
                              f"{again}") from None
        if not isinstance(earlier, dict) or earlier.get("kind") != RESULTS_KIND:
            raise ConfigError(f"{self.results}: its first line is not a results header; "
                              f"{again}")
        ignored = ("artifact", "kind")
        for key in sorted(set(earlier) | set(self.header)):
            if key not in ignored and earlier.get(key) != self.header.get(key):
                raise ConfigError(f"{self.results}: the earlier run had {key} "
                                  f"{json.dumps(earlier.get(key))}, this one "
                                  f"{json.dumps(self.header.get(key))}; {again}")
        good = len(lines[0]) + 1
        for raw in lines[1:-1]:   # the last piece has no newline: empty, or cut by a kill
            try:
                line = json.loads(raw)
            except ValueError:
                break
            if not isinstance(line, dict) or not isinstance(line.get("path"), str):
                break
            self.done[line["path"]] = line
            good += len(raw) + 1
        if good < len(data):
            try:
                os.truncate(self.results, good)
            except OSError as error:
                raise output_error(self.results, error) from error

    def is_done(self, item) -> bool:
        """Whether an earlier run finished `item` (its line, and both files with the sha256
        that line records). A finished item's entry joins this run's summary."""
        line = self.done.get(str(item.path))
        if line is None or line.get("name") != item.name:
            return False
        image_files = ("mask", "overlay") if self.overlays else ("mask",)
        recorded = line.get("files") or {   # a volume's; else keys naming files
            line[kind]: line[f"{kind}_sha256"]
            for kind in line.get("outputs", image_files)}   # a slide's: mask, geojson
        for relative, sha in recorded.items():
            path = self.out_dir / relative
            if not path.is_file() or sha256_file(path) != sha:
                return False
        self.entries[str(item.path)] = {k: v for k, v in line.items() if k != "path"}
        return True

    # === Writing ===

    def _save(self, path: Path, data: bytes) -> str:
        """`data` to a temporary file renamed over `path`; its sha256."""
        self._writes += 1      # from here on, a failed run keeps its results.jsonl
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except OSError as error:
            raise output_error(path, error, _remedy(error)) from error
        return hashlib.sha256(data).hexdigest()

    def _append(self, line: dict) -> None:
        self._writes += 1
        data = (json.dumps(line) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.results))
            if time.monotonic() - self._synced >= SYNC_SECONDS:
                os.fsync(self._fd)
                self._synced = time.monotonic()
        except OSError as error:
            try:   # no half line: the file ends after the last finished image
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise output_error(self.results, error, _remedy(error)) from error

    def write(self, item, image: np.ndarray, prediction, predictor) -> dict:
        """`commit(item, render(item, image, prediction, predictor))`: write one image's
        mask and overlay, then append its line; returns its entry.

        Args:
            item: its `plan.InputItem`. image: (H, W[, C]) its pixels as read.
            prediction: `runtime.Prediction` of `image`.
            predictor: anything with ``class_names``, ``det_class_names``, ``pixel_max``,
                ``fits_whole(h, w)`` and ``config_for(h, w)`` (a `Predictor`).
        Raises:
            OutputError: a file cannot be written (path, OS reason); the image's line is
                then not written, so `--resume` redoes it.
        """
        return self.commit(item, self.render(item, image, prediction, predictor))

    def render(self, item, image: np.ndarray, prediction, predictor) -> Rendered:
        """Draw and encode one image's outputs (arguments as `write`); writes nothing and
        changes nothing in the writer, so it may run in any thread."""
        from PIL import Image

        from retinaunet_deploy.visualize import overlay

        height, width = image.shape[:2]
        mask_png = _png(Image.fromarray(prediction.mask))
        overlay_png = None
        if self.overlays:
            picture = overlay(image, prediction.mask, prediction.detections,
                              predictor.class_names, predictor.det_class_names,
                              pixel_max=predictor.pixel_max, scale=overlay_scale(height, width))
            overlay_png = _png(picture)
            del picture
        entry = {"tiled": not predictor.fits_whole(height, width),
                 "class_pixels": mask_class_pixels(prediction.mask, predictor.class_names)}
        warnings = []
        if prediction.detections is not None:
            entry["detections"] = detection_list(prediction.detections,
                                                 predictor.det_class_names)
            caps, warnings = cap_record(item.path, prediction.detections)
            entry.update(caps)
        if self.calibration_range is not None:
            warning = self.calibration_range.check(image)
            if warning:
                warnings.append(f"{item.path}: {warning}")
        entry["warnings"] = warnings
        return Rendered(mask_png, overlay_png, entry)

    def commit(self, item, rendered: Rendered) -> dict:
        """Write a rendered image's mask and overlay files, then append its line; returns
        its entry. Call in the run's order, from one thread.

        Raises:
            OutputError: as `write`.
        """
        name, (height, width) = item.name, (item.height, item.width)
        mask_path = f"masks/{name}.png"
        entry = {"name": name, "size": [height, width], "mask": mask_path,
                 "mask_sha256": self._save(self.out_dir / mask_path, rendered.mask_png)}
        if rendered.overlay_png is not None:
            overlay_path = f"overlays/{name}.png"
            entry.update(overlay=overlay_path, overlay_sha256=self._save(
                self.out_dir / overlay_path, rendered.overlay_png))
        entry.update(rendered.entry)
        self._append({"path": str(item.path), **entry})
        self.entries[str(item.path)] = entry
        return entry

    def commit_files(self, item, files: dict[str, bytes], entry: dict) -> dict:
        """Write an input's output files (path relative to the output folder -> bytes),
        each atomically and in order, then append its line; returns its entry (`entry`
        with ``name`` and ``files`` {path: sha256} added). For inputs whose outputs are
        not a mask and overlay PNG (volumes, slides). Raises `OutputError` as `write`."""
        saved = {relative: self._save(self.out_dir / relative, data)
                 for relative, data in files.items()}
        return self.commit_outputs(item, {**entry, "files": saved})

    def commit_outputs(self, item, entry: dict) -> dict:
        """Append the line of an input whose files are already written atomically (a slide's,
        by `predict.slides`; a volume's, by `commit_files`); `entry` lists them under
        ``files`` {path: sha256} or ``outputs`` (keys whose values are paths relative to
        OUT, each with its ``<key>_sha256``), so `is_done` checks them.
        Returns the entry (with ``name``).

        Raises:
            OutputError: results.jsonl cannot be written.
        """
        entry = {"name": item.name, **entry}
        self._append({"path": str(item.path), **entry})
        self.entries[str(item.path)] = entry
        return entry

    def finish(self, items=None) -> dict:
        """Rewrite results.jsonl as the header and one line per image in order (dropping
        lines an image redone on resume left), write detections.json (artifact, runtime,
        per image path its entry), and close.

        Args:
            items: the run's `InputItem`s, in the order the summary lists them (default:
                every image written or resumed, in that order); each must be finished.
        Returns the per-path entries.
        """
        self.close()
        paths = [str(i.path) for i in items] if items is not None else list(self.entries)
        missing = [p for p in paths if p not in self.entries]
        if missing:
            raise ConfigError(f"{len(missing)} image(s) have no result ({missing[0]}, ...); "
                              f"run the same command with --resume to finish them")
        images = {p: self.entries[p] for p in paths}
        # The log, compacted: the header and one line per image, in the run's order (a
        # resumed run's log then matches an uninterrupted run's byte for byte).
        lines = [self.header] + [{"path": p, **entry} for p, entry in images.items()]
        try:
            with atomic_path(self.results) as tmp:
                tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
        except OSError as error:
            raise output_error(self.results, error, _remedy(error)) from error
        summary = {"artifact": self.header.get("artifact"),
                   "artifact_sha256": self.header.get("artifact_sha256"),
                   "runtime": self.header.get("runtime"),
                   "options": self.header.get("options"), "images": images}
        try:
            write_json(self.out_dir / DETECTIONS, summary)
        except OSError as error:
            raise output_error(self.out_dir / DETECTIONS, error, _remedy(error)) from error
        return images

    def close(self) -> None:
        """Fsync and close results.jsonl (every line written is then on disk)."""
        if getattr(self, "_fd", None) is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError:
                pass    # its lines are with the kernel; finish() rewrites the file anyway
            finally:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        self.close()
        if exc_type is not None and self._fresh_results and not self._writes:
            self._remove_empty_start()

    def _remove_empty_start(self) -> None:
        """A run refused before it wrote any file (an input found bad while reading) leaves
        nothing: not its header-only results.jsonl, nor the empty folders it created."""
        import contextlib

        with contextlib.suppress(OSError):
            self.results.unlink()
        for folder in self._created:      # deepest first; a folder holding anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()
