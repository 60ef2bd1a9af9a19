"""Serve load: `retinaunet-deploy serve` under 1, 4 and 16 concurrent clients on loopback,
against the same artifact's in-process batch-8 throughput, measured in the same run.

    retinaunet-deploy bench RUN_DIR --serve-load [--serve-artifact FILE[:RUNTIME]]
                                    [--serve-images 192]

The images: `count` synthetic images of one size, twice the model's patch on each side
(`throughput.folder_images(same_size=True)`, the middle of the demo's test sizes): a
stream from one camera or scanner, so Triton's dynamic batcher, which only groups
requests of equal shape, can batch them. Each client sends one image per request (HTTP,
binary tensors; tritonclient) and waits for its answer before the next.

* ``in_process``: the artifact opened in this process with the same runtime and threads,
  `Backend.run` on batches of 8 copies of one image padded as the Predictor pads it
  (inference only, warm): images/s = 8 x batches / seconds, over every image.
* ``clients_N``: N client threads send the `count` requests; images/s = count / wall
  seconds from the first request to the last answer; latency p50/p99 per request (ms).

The server runs with its defaults (one instance, dynamic batching up to 8) and
`threads`; candidates run in rounds whose order rotates, median of the rounds. The
issue's acceptance: 16 clients at least 0.7x the in-process figure.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

TARGET_RATIO = 0.7
BATCH = 8
CLIENTS = (1, 4, 16)


def _in_process(predictor, image: np.ndarray, count: int) -> float:
    """Seconds for `count` images as batches of `BATCH` (backend only)."""
    from retinaunet_deploy.data.patches import pad_to

    height, width = predictor.padded_size(*image.shape[:2])
    batch = pad_to(image.astype(np.float32)[None], height, width, axes=(1, 2))
    batch = np.ascontiguousarray(np.repeat(batch, BATCH, axis=0))
    predictor.backend.run(batch)  # warm
    start = time.perf_counter()
    for _ in range(-(-count // BATCH)):
        predictor.backend.run(batch)
    return time.perf_counter() - start


def serve_load(run_dir: Path, artifact: str | None, runtime: str = "auto", threads: int = 2,
               count: int = 192, rounds: int = 3, clients: tuple[int, ...] = CLIENTS,
               server_args: tuple[str, ...] = (), progress=None, pythonpath=None) -> dict:
    """Measure as the module says; `artifact` None: the run's recommendation.

    Returns {"artifact", "runtime", "images", "image_size", "threads", "rounds",
    "machine", "in_process": {"images_per_s", "rounds_images_per_s"}, "clients":
    [{"clients", "images_per_s", "p50_ms", "p99_ms", "rounds_images_per_s", "errors"}],
    "ratio_16", "target_ratio", "passed", "server_args"}.
    """
    from retinaunet_deploy.bench.machine import machine_info
    from retinaunet_deploy.bench.throughput import folder_images
    from retinaunet_deploy.card import load_card
    from retinaunet_deploy.predict import open_predictor
    from retinaunet_deploy.serve.load import ServerProcess, run_clients
    from retinaunet_deploy.serve.server import served_artifact

    say = progress or (lambda message: None)
    run_dir = Path(run_dir)
    path, runtime = served_artifact(run_dir, artifact, runtime)
    images = folder_images(load_card(run_dir), count, same_size=True)
    requests = [(image[None], "http") for image in images]
    predictor = open_predictor(path, threads=threads, runtime=runtime)
    say(f"serve load: starting the server on {path.name} ({runtime})")
    server = ServerProcess(run_dir, "--artifact", str(path), "--runtime", runtime,
                           "--threads", str(threads), *server_args, pythonpath=pythonpath)
    seconds: dict[str, list[float]] = {"in_process": []}
    latencies: dict[int, list[float]] = {n: [] for n in clients}
    errors = dict.fromkeys(clients, 0)
    try:
        run_clients(requests[:2 * BATCH], 4, server.host, server.http, server.grpc)  # warm
        keys = ["in_process", *clients]
        for turn in range(rounds):
            shift = turn % len(keys)
            for key in keys[shift:] + keys[:shift]:
                say(f"serve load: round {turn + 1} of {rounds}, {key}")
                time.sleep(0.5)
                if key == "in_process":
                    seconds[key].append(_in_process(predictor, images[0], count))
                    continue
                start = time.perf_counter()
                outcomes = run_clients(requests, key, server.host, server.http, server.grpc)
                seconds.setdefault(key, []).append(time.perf_counter() - start)
                latencies[key].extend(o.seconds * 1000 for o in outcomes if o.error is None)
                errors[key] += sum(o.error is not None for o in outcomes)
    finally:
        predictor.close()
        stopped = server.stop()
    done = BATCH * -(-count // BATCH)
    in_process = done / statistics.median(seconds["in_process"])
    rows = []
    for n in clients:
        ordered = sorted(latencies[n])
        rows.append({"clients": n,
                     "images_per_s": round(count / statistics.median(seconds[n]), 2),
                     "rounds_images_per_s": [round(count / t, 2) for t in seconds[n]],
                     "p50_ms": round(float(np.percentile(ordered, 50)), 2) if ordered else None,
                     "p99_ms": round(float(np.percentile(ordered, 99)), 2) if ordered else None,
                     "errors": errors[n]})
    top = next((r for r in rows if r["clients"] == max(clients)), rows[-1])
    ratio = top["images_per_s"] / in_process
    return {"artifact": path.name, "runtime": runtime, "images": count,
            "image_size": "x".join(map(str, images[0].shape[:2])), "threads": threads,
            "rounds": rounds, "machine": machine_info(threads),
            "in_process": {"images_per_s": round(in_process, 2), "batch": BATCH,
                           "rounds_images_per_s": [round(done / t, 2)
                                                   for t in seconds["in_process"]]},
            "clients": rows, "ratio": round(ratio, 3), "ratio_clients": top["clients"],
            "target_ratio": TARGET_RATIO, "passed": bool(ratio >= TARGET_RATIO),
            "server_args": list(server_args), "server_exit_code": stopped}


def markdown(figures: dict) -> list[str]:
    """The serve-load section (report lines)."""
    machine = figures["machine"]
    flags = ", ".join(machine.get("cpu_flags", [])) or "flags unknown"
    lines = ["## Serve load: `serve` over loopback against in-process batch 8", "",
             (f"{figures['artifact']} ({figures['runtime']}), {figures['images']} synthetic "
              f"{figures['image_size']} px images per level, one per request (HTTP); "
              f"{machine['cpu']} ({flags}), {machine['cores']} cores, {figures['threads']} "
              f"threads for the model, clients on the same machine; server options "
              f"{' '.join(figures['server_args']) or '(defaults)'}. Median of "
              f"{figures['rounds']} interleaved rounds."), "",
             "| | images/s | p50 ms | p99 ms | x in-process | errors |",
             "|---|---|---|---|---|---|",
             (f"| in-process, batch {figures['in_process']['batch']} (inference only) | "
             f"{figures['in_process']['images_per_s']:.1f} | | | 1.00 | |")]
    base = figures["in_process"]["images_per_s"]
    for row in figures["clients"]:
        lines.append(f"| {row['clients']} client(s) | {row['images_per_s']:.1f} | "
                     f"{row['p50_ms']} | {row['p99_ms']} | {row['images_per_s'] / base:.2f} | "
                     f"{row['errors']} |")
    lines += ["", (f"{figures['ratio_clients']} clients: {figures['ratio']:.2f}x in-process "
                  f"({'meets' if figures['passed'] else 'misses'} the "
                  f"{figures['target_ratio']}x target).")]
    return lines


def write(out_dir: Path, figures: dict) -> None:
    """OUT/serve_load.json and serve_load.md, atomically."""
    from retinaunet_deploy.artifacts import atomic_path, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "serve_load.json", figures)
    with atomic_path(out_dir / "serve_load.md") as tmp:
        tmp.write_text("\n".join(markdown(figures)) + "\n")
