"""Latency of the seed-size RetinaUNet: ONNX Runtime fp32 vs Keras run its fastest way.

Random weights (latency only, no accuracy claim). Keras is timed both as a
compiled tf.function and with XLA (jit_compile=True); the faster one is the
reference. All candidates are interleaved in one run, batch 1, same threads.

    .venv/bin/python bench/seed_latency.py [--size 128] [--threads 2] [--rounds 30]

Writes bench/seed_latency/result.json (generated, not committed) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-detection", action="store_true",
                        help="Time the plain seed U-Net, without the RetinaNet heads.")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "seed_latency")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import onnx
    import onnxslim
    import tensorflow as tf

    from retinaunet_deploy.artifacts import tool_versions
    from retinaunet_deploy.bench.timing import interleaved_latency
    from retinaunet_deploy.export.onnx import keras_to_onnx, name_batch_axis
    from retinaunet_deploy.model import RetinaUNet
    from retinaunet_deploy.runtime.backends import OnnxRuntimeBackend

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    builder = RetinaUNet.from_preset(args.preset, (args.size, args.size, 1), 3,
                                     detection=not args.no_detection)
    model = builder.build_model()
    card = {"input": {"height": args.size, "width": args.size, "channels": 1}}
    proto = onnxslim.slim(keras_to_onnx(model, card, 17))
    name_batch_axis(proto)
    onnx_path = Path(tempfile.mkdtemp()) / "seed.onnx"
    onnx.save(proto, onnx_path)
    ort_backend = OnnxRuntimeBackend(onnx_path, threads=args.threads)

    image = np.random.default_rng(0).uniform(0, 255, (1, args.size, args.size, 1))
    image = image.astype(np.float32)
    tensor = tf.constant(image)
    signature = [tf.TensorSpec((None, args.size, args.size, 1), tf.float32)]
    keras_graph = tf.function(lambda x: model(x, training=False), input_signature=signature)
    keras_xla = tf.function(lambda x: model(x, training=False), input_signature=signature,
                            jit_compile=True)

    def run_keras(fn):
        return lambda: {k: v.numpy() for k, v in fn(tensor).items()}

    candidates = {"keras tf.function": run_keras(keras_graph),
                  "keras tf.function + XLA": run_keras(keras_xla),
                  "onnxruntime fp32": lambda: ort_backend.run(image)}
    reference = candidates["keras tf.function"]()
    for name, run in candidates.items():
        diff = max(float(np.abs(run()[k] - reference[k]).max()) for k in reference)
        print(f"{name}: max |diff| vs keras tf.function = {diff:.2e}")

    figures = interleaved_latency(candidates, rounds=args.rounds, warmup=3,
                                  min_seconds=args.min_seconds)
    keras_best = min(("keras tf.function", "keras tf.function + XLA"),
                     key=lambda n: figures[n]["p50_ms"])
    speedup = figures[keras_best]["p50_ms"] / figures["onnxruntime fp32"]["p50_ms"]
    result = {
        "what": f"{args.preset} preset{' without heads' if args.no_detection else ''}, random weights (latency only), {args.size}x{args.size}x1,"
                f" batch 1, {args.threads} threads, interleaved",
        "cpu": cpu_model(), "cores": os.cpu_count(),
        "versions": tool_versions("tensorflow", "keras", "tf2onnx", "onnxruntime",
                                  "onnxruntime-gpu", "onnxslim"),
        "figures": figures, "keras_fastest": keras_best,
        "onnxruntime_speedup_vs_keras_fastest": speedup,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['what']}; CPU {result['cpu']}")
    print(f"{'candidate':28s} {'p50 ms':>8s} {'p90 ms':>8s} {'runs':>5s}")
    for name, f in figures.items():
        print(f"{name:28s} {f['p50_ms']:8.1f} {f['p90_ms']:8.1f} {f['runs']:5d}")
    print(f"ONNX Runtime fp32 is {speedup:.2f}x faster than Keras' fastest ({keras_best}); "
          f"wrote {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
