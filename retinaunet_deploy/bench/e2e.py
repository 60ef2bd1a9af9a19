"""Bench section: post-processing in the graph against the numpy post-process.

For every end-to-end file of the run (`names.is_end_to_end`) with its plain twin,
three callables are timed side by side by the same interleaved harness as the
rows (`timing.interleaved_latency`), in ONNX Runtime on the CPU with the bench's
threads, on the bench's latency input (training patches, where the graph's fixed
caps are the card's: export/README.md "End-to-end files"):

* ``network``: the plain file alone (`mask`, `cls_logits`, `box_deltas`);
* ``network + numpy``: the plain file, then `postprocess.decode_detections` and the
  argmax of `mask` (what the Predictor does after the graph);
* ``network + graph``: the end-to-end file (the same network and the post-process
  inside it, `labels` included).

The post-process costs are the differences from ``network`` (``numpy_ms``,
``graph_ms``), at each batch size of the bench.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.names import is_end_to_end, plain_name

MODES = ("network", "network + numpy", "network + graph")


def end_to_end_pairs(run_dir: Path, recorded: list[str]) -> list[tuple[str, str]]:
    """(plain file, end-to-end file) of every recorded end-to-end file whose files exist."""
    return [(plain_name(f), f) for f in recorded
            if is_end_to_end(f) and (run_dir / f).is_file() and (run_dir / plain_name(f)).is_file()]


def measure_end_to_end(run_dir: Path, card: ModelCard, images: np.ndarray, batch_sizes,
                       threads: int, rounds: int, min_seconds: float, say=None) -> dict:
    """The section's figures: {"runtime", "input", "pairs": [{plain, e2e, latency: batch ->
    mode -> `timing.summarize` figures, plus ``numpy_ms`` and ``graph_ms``}]}; {} without
    end-to-end files. A pair whose e2e file or parent is missing, changed since recorded
    or unreadable has ``failed`` (the one-line reason) instead of figures. `images` are
    (n, H, W, C) float32 pixels of one size."""
    from retinaunet_deploy import remake
    from retinaunet_deploy.artifacts import load_manifest, verify_lineage
    from retinaunet_deploy.errors import ArtifactError
    from retinaunet_deploy.model.anchors import generate_anchors
    from retinaunet_deploy.postprocess import decode_detections
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend
    from retinaunet_deploy.runtime.providers import CPU
    from retinaunet_deploy.timing import interleaved_latency

    run_dir = Path(run_dir)
    pairs = end_to_end_pairs(run_dir, list(load_manifest(run_dir)["artifacts"]))
    if not pairs:
        return {}
    say = say or (lambda message: None)
    size = tuple(images.shape[1:3])
    anchors = generate_anchors(card.anchors, size)
    config = card.detection_config

    def numpy_after(backend, batch):
        outputs = backend.run(batch)
        decode_detections(outputs["cls_logits"], outputs["box_deltas"], anchors, size, config)
        return outputs["mask"].argmax(-1).astype(np.uint8)

    results = []
    for plain, e2e in pairs:
        say(f"post-processing in the graph ({e2e}) against numpy ({plain})")
        figures = {"plain": plain, "e2e": e2e, "latency": {}}
        with contextlib.ExitStack() as stack:
            try:  # a changed or broken file is a failed pair (its reason), not a failed bench
                for file in (plain, e2e):
                    verify_lineage(run_dir, file, remake.command_for(run_dir / file) or "")
                base, twin = (stack.enter_context(OnnxRuntimeBackend(run_dir / file, threads,
                                                                     providers=[CPU]))
                              for file in (plain, e2e))
            except ArtifactError as error:
                results.append({**figures, "failed": str(error)})
                continue
            for batch_size in batch_sizes:
                batch = np.ascontiguousarray(
                    np.resize(images, (batch_size, *images.shape[1:])), np.float32)
                timed = interleaved_latency({
                    MODES[0]: lambda b=batch, n=base: n.run(b),
                    MODES[1]: lambda b=batch, n=base: numpy_after(n, b),
                    MODES[2]: lambda b=batch, n=twin: n.run(b)},
                    rounds=rounds, warmup=2, min_seconds=min_seconds, batch_size=batch_size)
                network = timed[MODES[0]]["p50_ms"]
                timed["numpy_ms"] = timed[MODES[1]]["p50_ms"] - network
                timed["graph_ms"] = timed[MODES[2]]["p50_ms"] - network
                figures["latency"][str(batch_size)] = timed
        results.append(figures)
    return {"runtime": f"ONNX Runtime CPU, {threads} threads",
            "input": f"{size[0]}x{size[1]} training patches", "pairs": results}


def markdown_section(figures: dict) -> list[str]:
    """report.md lines of the section (none without figures)."""
    if not figures:
        return []
    intro = (f"{figures['runtime']}, {figures['input']}; p50 ms per call, interleaved. "
             f"numpy / graph = the post-process's share (the call minus the network alone).")
    header = "| files | batch | network | network + numpy | network + graph | numpy | graph |"
    lines = ["", "## Post-processing in the graph vs numpy", "", intro, "", header,
             "|---|---|---|---|---|---|---|"]
    for pair in figures["pairs"]:
        if "failed" in pair:
            lines.append(f"| {pair['e2e']} vs {pair['plain']} | failed: {pair['failed']} "
                         f"||||||")
        for batch, timed in pair["latency"].items():
            lines.append(f"| {pair['e2e']} vs {pair['plain']} | {batch} | "
                         + " | ".join(f"{timed[m]['p50_ms']:.2f}" for m in MODES)
                         + f" | {timed['numpy_ms']:.2f} | {timed['graph_ms']:.2f} |")
    return lines


def append_section(report_md: Path, figures: dict) -> None:
    """Add `markdown_section` to the end of report.md (rewritten atomically)."""
    from retinaunet_deploy.artifacts import atomic_path

    if not figures:
        return
    text = Path(report_md).read_text().rstrip("\n") + "\n" + "\n".join(
        markdown_section(figures)) + "\n"
    with atomic_path(Path(report_md)) as tmp:
        tmp.write_text(text)
