"""Benchmark reports: the markdown table a person reads, and two plots.

* ``report.md``: one row per (artifact, backend), with format, precision, size,
  agreement with the float model, Dice against ground truth, p50 latency,
  throughput and speed-up over Keras;
* ``latency_vs_agreement.png``: the trade-off at a glance;
* ``overlays.png``: reference vs each variant on a few images, with the pixels
  where they disagree in red.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinaunet_deploy.artifacts import atomic_path
from retinaunet_deploy.card import ModelCard


def _fmt(value, spec, missing="—"):
    """A figure as shown; `missing` for an absent one or one written as null (undefined:
    its ``<key>_reason`` in report.json says why)."""
    return missing if value is None else format(value, spec)


def _with_interval(fidelity: dict, name: str, value, spec: str) -> str:
    """A figure and its 95% interval: 99.95% [99.91, 99.98]."""
    text = _fmt(value, spec)
    bounds = (fidelity.get("intervals") or {}).get(name)
    if bounds and value is not None:
        low, high = (format(b, spec).rstrip("%") for b in bounds)
        text += f" [{low}, {high}]"
    return text


def gate_verdict(row: dict) -> str:
    """pass, miss (which target), or pass with the 95% interval reaching past a target."""
    fidelity = row["fidelity"]
    if row["name"] == "keras fp32":
        return "reference"
    if "passed" not in fidelity:
        return "—"
    if not fidelity["passed"]:
        return "miss: " + "; ".join(fidelity["failures"])
    if fidelity.get("interval_failures"):
        return "pass, but " + "; ".join(fidelity["interval_failures"])
    return "pass"


def table_rows(report: dict) -> list[list[str]]:
    """The report's rows as display strings (shared by report.md and the terminal)."""
    batches = [str(b) for b in report["options"]["batch_sizes"]]
    first, last = batches[0], batches[-1]
    lines = []
    for row in report["rows"]:
        fidelity, truth = row["fidelity"], row["ground_truth"]
        lat = row["latency"]
        size = f"{row['size_bytes'] / 1e6:.2f}" if row["size_bytes"] else "—"
        if row["status"] != "ok":
            lines.append([row["name"], row["precision"], size, row["status"]]
                         + [""] * (len(HEADER) - 4))
            continue
        matched = fidelity.get("detections", {}).get("matched_fraction")
        lines.append([
            row["name"], row["precision"], size,
            _with_interval(fidelity, "pixel_agreement", fidelity.get("pixel_agreement"),
                           ".3%"),
            _with_interval(fidelity, "mean_dice_vs_reference",
                           fidelity.get("mean_dice_vs_reference"), ".4f"),
            _with_interval(fidelity, "matched_fraction", matched, ".1%"),
            gate_verdict(row),
            _fmt(truth.get("mean_dice"), ".4f"),
            _fmt(truth.get("map@0.1"), ".3f"),
            _fmt(truth.get("map@0.5"), ".3f"),
            _fmt(lat.get(first, {}).get("end_to_end", {}).get("p50_ms"), ".1f"),
            _fmt(lat.get(last, {}).get("end_to_end", {}).get("images_per_s"), ".1f"),
            _fmt(lat.get(first, {}).get("speedup_vs_reference"), ".2f") + "x",
            share_text(lat.get(first, {})),
        ])
    return lines


def share_text(figures: dict) -> str:
    """A batch's share of limit as shown: a percentage, "fault" when the row attained
    more than the measured limit (`bench.peak.limit_fault`: never a figure), or —."""
    return "fault" if figures.get("limit_fault") else _fmt(figures.get("share_of_limit"), ".0%")


HEADER = ["row", "precision", "MB", "pixel agreement [95% CI]", "Dice vs float [95% CI]",
          "boxes matched [95% CI]", "gate", "Dice vs GT",
          "AP@0.1", "AP@0.5", "p50 ms (batch {first})", "images/s (batch {last})",
          "speed-up vs Keras", "share of limit"]


def header(report: dict) -> list[str]:
    batches = report["options"]["batch_sizes"]
    return [h.format(first=batches[0], last=batches[-1]) for h in HEADER]


def write_markdown(path: Path, report: dict) -> None:
    machine = report["machine"]
    lines = [
        f"# Benchmark: {report['run']}",
        "",
        (f"Every figure is measured on {report['images']} whole held-out images "
         + (f"({report['slices']} slices of {report['volumes']} volume(s)) "
            if "volumes" in report else "")
         + f"({report['split']} split, {report.get('image_sizes', 'various sizes')}) through the "
         f"Predictor that apps use (padding, tiling, decoding); {machine['cpu']} "
         f"({', '.join(machine.get('cpu_flags', [])) or 'flags unknown'}), "
         f"{machine['cores']} cores, {machine['threads']} threads (every CPU row's intra-op "
         f"thread count, Keras included, read back from its runtime and asserted); "
         f"{report['model']['parameters']:,} parameters, "
         f"{report['model']['gflops_per_image']:.2f} GFLOPs per training patch."),
        "",
        *([f"**{report['few_images_warning']}**", ""] if report.get("few_images_warning")
          else []),
        ("Agreement is against the Keras float model on the same images (its stored "
         "predictions, the reference calibrate gates with); brackets hold 95% bootstrap "
         "intervals over the images. A row's gate is the target calibrate applies to its "
         "precision; 'pass, but' means the interval reaches past a target, so these images "
         "cannot tell the row from a miss. Dice and AP against "
         "ground truth count one box per instance. Latency is the median end to end (input "
         f"checks + inference + box decoding/NMS) on {report.get('latency_input', 'images')}; "
         "rows were timed interleaved in one run. Compare rows within this report, never "
         "across machines."),
        "",
        "| " + " | ".join(header(report)) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(report)]
    notes = [f"- {row['name']}: {row['status']}: {row['reason']}" for row in report["rows"]
             if row["status"] != "ok"]
    notes += [f"- {row['name']}: {row['notes']}" for row in report["rows"] if row.get("notes")]
    if notes:
        lines += ["", "Notes:", *notes]
    lines += ["", limits_text(report.get("limits")), *faults_text(report.get("limit_faults"))]
    lines += ["", f"Versions: {machine['versions']}", ""]
    if "recommendation" in report:
        from retinaunet_deploy.bench.recommend import recommendation_line

        lines += [f"**{recommendation_line(report['recommendation'])}**", ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def limits_text(limits: dict | None) -> str:
    """One line: the measured limits, and what 'share of limit' means."""
    if not limits or "skipped" in limits:
        return f"No limit measured: {(limits or {}).get('skipped', 'not asked for')}."
    parts = [_limit_part(precision, limits[precision])
             for precision in ("int8", "bf16", "fp32") if precision in limits]
    return (f"Limits measured here ({limits['workload']}): {', '.join(parts)}. Each is the "
            f"best of repeats measured between the rows' timings. 'Share of "
            f"limit' is a CPU row's model GFLOP/s (inference only, p50) over the limit of its "
            f"precision (fp16 on CPU: fp32).")


def _limit_part(precision: str, limit: dict) -> str:
    if "gflops" not in limit:
        return f"{precision}: {limit.get('skipped')}"
    repeats = [r["gflops"] for r in limit.get("repeats", [])]
    text = f"{precision} {limit['gflops']:.0f} GFLOP/s"
    if len(repeats) > 1:
        text += f" (best of {len(repeats)}: {', '.join(f'{g:.0f}' for g in repeats)})"
    return text


def faults_text(faults: list[dict] | None) -> list[str]:
    """Lines naming every row that attained more than its measured limit (none: [])."""
    if not faults:
        return []
    title = ("**Limit measurement disturbed.** A share over 100% of the limit is a "
             "measurement fault, not a figure:")
    return ["", title, *(f"- {fault['note']}" for fault in faults)]


def write_plots(out_dir: Path, report: dict, images: np.ndarray, masks: dict, card: ModelCard):
    """latency_vs_agreement.png and overlays.png (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from retinaunet_deploy.visualize import to_grey_rgb

    first = str(report["options"]["batch_sizes"][0])
    ok = [r for r in report["rows"] if r["status"] == "ok" and first in r["latency"]]
    # A row whose agreement is undefined (null in report.json) has no point to plot.
    plotted = [r for r in ok if r["fidelity"].get("pixel_agreement") is not None
               and r["latency"][first]["end_to_end"].get("p50_ms") is not None]
    figure, axes = plt.subplots(figsize=(8, 4.8))
    for index, row in enumerate(plotted):
        x = row["latency"][first]["end_to_end"]["p50_ms"]
        y = 100 * row["fidelity"]["pixel_agreement"]
        axes.scatter(x, y, s=40)
        # Alternate label offsets: rows with equal agreement would print on top of each other.
        axes.annotate(row["name"], (x, y), fontsize=7, textcoords="offset points",
                      xytext=(5, 4 if index % 2 == 0 else -10))
    axes.ticklabel_format(axis="y", useOffset=False, style="plain")
    axes.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.4f"))
    axes.set_xlabel(f"p50 latency, batch {first}, end to end (ms)")
    axes.set_ylabel("pixel agreement with float (%)")
    axes.set_title("latency vs agreement (up and left is better)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(Path(out_dir) / "latency_vs_agreement.png") as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)

    names = [r["name"] for r in ok if r["name"] in masks]
    if not names or not len(images):
        return
    reference = masks[names[0]]
    pixel_max = card.input.pixel_max
    figure, grid = plt.subplots(len(images), len(names) + 1,
                                figsize=(2.2 * (len(names) + 1), 2.2 * len(images)),
                                squeeze=False)
    colours = np.array([(0, 0, 0), (255, 140, 0), (0, 200, 255), (60, 220, 60)], np.float64)
    for i, image in enumerate(images):
        grey = to_grey_rgb(image, pixel_max)
        grid[i, 0].imshow(grey)
        grid[i, 0].set_title("image" if i == 0 else "", fontsize=7)
        for j, name in enumerate(names, start=1):
            mask = masks[name][i]
            shown = grey.astype(np.float64)
            fg = mask > 0
            shown[fg] = 0.55 * shown[fg] + 0.45 * colours[mask[fg] % len(colours)]
            differs = mask != reference[i]
            shown[differs] = (255, 0, 0)
            grid[i, j].imshow(shown.astype(np.uint8))
            if i == 0:
                grid[i, j].set_title(f"{name}\n{int(differs.sum())} px differ" if j > 1
                                     else name, fontsize=6)
            elif j > 1:
                grid[i, j].set_title(f"{int(differs.sum())} px differ", fontsize=6)
    for axis in grid.ravel():
        axis.axis("off")
    figure.tight_layout()
    with atomic_path(Path(out_dir) / "overlays.png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)


def write_sweep_markdown(path: Path, report: dict) -> None:
    """The latency-only sweep: one table per input size, clearly labelled."""
    machine = report["machine"]
    lines = [f"# Latency only: `{report['preset']}` preset, random weights",
             "",
             (f"No accuracy is claimed here: the weights are random. {machine['cpu']}, "
             f"{machine['cores']} cores; every CPU row, Keras included, ran with "
             f"{machine['threads']} intra-op thread(s), read back from its runtime and "
             f"asserted; rows interleaved in one run per size."), ""]
    for sweep in report["sweeps"]:
        batches = list(sweep["rows"][0]["latency"]) or ["1"]
        lines += [(f"## {sweep['size']}x{sweep['size']}: {sweep['parameters']:,} parameters, "
                  f"{sweep['gflops_per_image']:.2f} GFLOPs per image"), "",
                  ("| row | precision | MB | batch | p50 ms (inference) | p50 ms (end to end) "
                  "| images/s | speed-up vs Keras | share of limit |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in sweep["rows"]:
            size = f"{row['size_bytes'] / 1e6:.2f}" if row["size_bytes"] else "—"
            if row["status"] != "ok":
                lines.append(f"| {row['name']} | {row['precision']} | {size} | | "
                             f"{row['status']}: {row['reason']} | | | | |")
                continue
            for batch in batches:
                lat = row["latency"][batch]
                lines.append(
                    f"| {row['name']} | {row['precision']} | {size} | {batch} | "
                    f"{_fmt(lat['inference']['p50_ms'], '.1f')} | "
                    f"{_fmt(lat['end_to_end']['p50_ms'], '.1f')} | "
                    f"{_fmt(lat['end_to_end']['images_per_s'], '.1f')} | "
                    f"{_fmt(lat.get('speedup_vs_reference'), '.2f')}x | "
                    f"{share_text(lat)} |")
        lines.append("")
    lines += [limits_text(report.get("limits")), *faults_text(report.get("limit_faults")), ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
