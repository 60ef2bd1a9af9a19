"""The size sweep: one model across image sizes, whole and tiled.

`size_sweep` times a trained run's ONNX file on whole images of growing size and,
at the largest, as a sliding window, all in one interleaved timing, so the cost
per megapixel and the tiling overhead are measured side by side. (The latency-only
sweep of a random-weights preset trains, so it lives above the bench, in
`retinaunet_deploy.latency_sweep`.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy import names
from retinaunet_deploy.bench.machine import machine_info


def size_sweep(run_dir: Path, out_dir: Path, sizes: tuple[int, ...] = (128, 256, 512, 1024),
               tile: int | None = None, overlap: float = 0.25, artifact: str = names.ONNX,
               threads: int = 2, rounds: int = 5, min_seconds: float = 4.0,
               progress=None) -> dict:
    """Time `artifact` end to end (Predictor: pad, run, decode) on one square synthetic-style
    image per size, whole, and at the largest size also as a sliding window of `tile`
    (default: half the largest size), all candidates interleaved in one run.

    Writes ``size_sweep.json`` and ``size_sweep.md`` into `out_dir`; returns the figures:
    per candidate p50 ms and ms per megapixel, the ratio of ms/MP to that at 256 (or the
    second size), and the tiled/whole cost ratio.
    """
    from retinaunet_deploy.artifacts import check_writable, verify_lineage, write_json
    from retinaunet_deploy.data.splits import held_out_set
    from retinaunet_deploy.runtime.predictor import Predictor
    from retinaunet_deploy.timing import interleaved_latency

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_writable(out_dir)
    verify_lineage(run_dir, artifact, f"retinaunet-deploy export {run_dir}")
    largest = max(sizes)
    tile = tile or largest // 2
    whole = Predictor.from_artifact(run_dir / artifact, threads=threads, batch_size=1,
                                    tile=max(largest, 16))
    tiled = Predictor.from_artifact(run_dir / artifact, threads=threads, batch_size=1,
                                    tile=tile, overlap=overlap)
    # Real content at every size (objects, so decoding does real work): a held-out
    # test image repeated by wrapping to each size.
    seed_image = held_out_set(whole.card, 1)[0].image
    images = {size: np.pad(seed_image, [(0, max(0, size - seed_image.shape[0])),
                                        (0, max(0, size - seed_image.shape[1])), (0, 0)],
                           mode="wrap")[:size, :size] for size in sizes}
    candidates = {f"whole {size}": (lambda p=whole, x=images[size]: p.predict(x))
                  for size in sizes}
    candidates[f"tiled {largest}"] = lambda: tiled.predict(images[largest])
    if progress:
        progress(f"size sweep of {artifact}: {len(candidates)} candidates interleaved")
    figures = interleaved_latency(candidates, rounds=rounds, warmup=1, min_seconds=min_seconds)
    rows = {}
    for name, figure in figures.items():
        size = int(name.split()[1])
        rows[name] = {"p50_ms": round(figure["p50_ms"], 2), "megapixels": size * size / 1e6,
                      "ms_per_megapixel": round(figure["p50_ms"] / (size * size / 1e6), 2)}
    base_size = sizes[1] if len(sizes) > 1 else sizes[0]
    base = rows[f"whole {base_size}"]["ms_per_megapixel"]
    for row in rows.values():
        row["ms_per_mp_vs_base"] = round(row["ms_per_megapixel"] / base, 3)
    layout = tiled.tile_layout(largest, largest)   # the layout its sliding window runs
    (tile_h, tile_w), origins = layout.tile, layout.origins
    report = {"run": str(run_dir), "artifact": artifact, "machine": machine_info(threads),
              "sizes": list(sizes), "base_size": base_size, "tile": tile, "overlap": overlap,
              "tiles": {"count": len(origins), "size": [tile_h, tile_w],
                        "pixels_ratio": round(len(origins) * tile_h * tile_w / largest**2, 3)},
              "rows": rows,
              "tiled_over_whole": round(rows[f"tiled {largest}"]["p50_ms"]
                                        / rows[f"whole {largest}"]["p50_ms"], 3)}
    write_json(out_dir / "size_sweep.json", report)
    lines = [f"# Cost against image size: `{artifact}`", "",
             (f"{report['machine']['cpu']}, {threads} threads; end to end through the Predictor "
             f"(pad, run, decode), candidates interleaved in one run, p50 of at least "
             f"{rounds} calls."), "",
             f"| candidate | p50 ms | ms per megapixel | ms/MP vs {base_size} |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['p50_ms']:.1f} | {r['ms_per_megapixel']:.1f} | "
              f"{r['ms_per_mp_vs_base']:.2f}x |" for name, r in rows.items()]
    lines += ["", (f"Tiled at {largest}: {len(origins)} tiles of {tile_h}x{tile_w} (tile "
              f"{tile}, overlap {overlap}), {report['tiles']['pixels_ratio']:.2f}x the pixels; "
              f"cost {report['tiled_over_whole']:.2f}x whole-image."), ""]
    from retinaunet_deploy.artifacts import atomic_path

    with atomic_path(out_dir / "size_sweep.md") as tmp:
        tmp.write_text("\n".join(lines))
    return report
