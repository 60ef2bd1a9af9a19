"""Latency of the seed-size RetinaUNet: ONNX Runtime fp32 and INT8 vs Keras run its fastest way.

Random weights (latency only, no accuracy claim). Keras is timed both as a
compiled tf.function and with XLA (jit_compile=True); the faster one is the
reference. The INT8 variants are made exactly as `retinaunet-deploy calibrate`
makes them (Q/DQ S8S8 for TensorRT, QOperator U8S8 for the CPU), calibrated on
32 synthetic images, and run the way ONNX Runtime runs them (fused). All
candidates are interleaved in one run, batch 1, same threads.

    .venv/bin/python bench/seed_latency.py [--size 128] [--threads 2] [--rounds 30]

Writes bench/seed_latency/result.json (generated, not committed) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np


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
    from retinaunet_deploy.bench.harness import machine_info
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

    # INT8 variants, made by the calibration stage's own quantiser.
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_dataset
    from retinaunet_deploy.export.calibration import CalibrationOptions, quantize

    work = onnx_path.parent
    prepared = work / "prepared.onnx"
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    calib = synthetic_dataset(SyntheticConfig(size=args.size), 32, seed=0)[0].astype(np.float32)
    options = CalibrationOptions(calibration_images=32)
    quantize(prepared, work / "int8.onnx", calib, options, work)
    quantize(prepared, work / "int8.cpu.onnx", calib, options, work, cpu_form=True)
    int8_backends = {"onnxruntime int8 Q/DQ (TensorRT form)":
                     OnnxRuntimeBackend(work / "int8.onnx", threads=args.threads),
                     "onnxruntime int8 U8S8 (CPU form)":
                     OnnxRuntimeBackend(work / "int8.cpu.onnx", threads=args.threads)}

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
    candidates.update({name: (lambda b=backend: b.run(image))
                       for name, backend in int8_backends.items()})
    reference = candidates["keras tf.function"]()
    for name, run in candidates.items():
        diff = max(float(np.abs(run()[k] - reference[k]).max()) for k in reference)
        print(f"{name}: max |diff| vs keras tf.function = {diff:.2e}")

    figures = interleaved_latency(candidates, rounds=args.rounds, warmup=3,
                                  min_seconds=args.min_seconds)
    keras_best = min(("keras tf.function", "keras tf.function + XLA"),
                     key=lambda n: figures[n]["p50_ms"])
    speedup = figures[keras_best]["p50_ms"] / figures["onnxruntime fp32"]["p50_ms"]
    int8_best = min(int8_backends, key=lambda n: figures[n]["p50_ms"])
    int8_vs_keras = figures[keras_best]["p50_ms"] / figures[int8_best]["p50_ms"]
    int8_vs_fp32 = figures["onnxruntime fp32"]["p50_ms"] / figures[int8_best]["p50_ms"]
    result = {
        "what": f"{args.preset} preset{' without heads' if args.no_detection else ''}, random weights (latency only), {args.size}x{args.size}x1,"
                f" batch 1, {args.threads} threads, interleaved",
        "cpu": machine_info(args.threads)["cpu"], "cores": os.cpu_count(),
        "versions": tool_versions("tensorflow", "keras", "tf2onnx", "onnxruntime",
                                  "onnxruntime-gpu", "onnxslim"),
        "figures": figures, "keras_fastest": keras_best,
        "onnxruntime_speedup_vs_keras_fastest": speedup,
        "int8_fastest": int8_best,
        "int8_speedup_vs_keras_fastest": int8_vs_keras,
        "int8_speedup_vs_onnxruntime_fp32": int8_vs_fp32,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['what']}; CPU {result['cpu']}")
    print(f"{'candidate':40s} {'p50 ms':>8s} {'p90 ms':>8s} {'runs':>5s}")
    for name, f in figures.items():
        print(f"{name:40s} {f['p50_ms']:8.1f} {f['p90_ms']:8.1f} {f['runs']:5d}")
    print(f"ONNX Runtime fp32 is {speedup:.2f}x faster than Keras' fastest ({keras_best})")
    print(f"fastest INT8 ({int8_best}) is {int8_vs_keras:.2f}x faster than Keras' fastest and "
          f"{int8_vs_fp32:.2f}x faster than ONNX Runtime fp32; wrote {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
