"""The `serve` command: a run's artifact behind a real Triton server (`retinaunet_deploy.serve`)."""

from __future__ import annotations

from pathlib import Path

import click

from retinaunet_deploy.cli.group import NON_NEGATIVE_INT, POSITIVE_INT, cli
from retinaunet_deploy.serve.repository import SERVED_RUNTIMES, ServeOptions
from retinaunet_deploy.serve.server import GRPC_PORT, HOST, HTTP_PORT

SERVE = ServeOptions()
PORT = click.IntRange(1, 65535)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--artifact", default=None,
              help="The file to serve: one of the run's .onnx files (a name in RUN_DIR or a "
                   "path) [default: the run's recommendation, recommendation.json].")
@click.option("--runtime", type=click.Choice(SERVED_RUNTIMES), default="auto",
              show_default=True,
              help="Runtime of the served model [auto: the recommendation's, else by suffix].")
@click.option("--host", default=HOST, show_default=True,
              help="Address both endpoints listen on (0.0.0.0: every interface).")
@click.option("--port", type=PORT, default=HTTP_PORT, show_default=True,
              help="HTTP port (KServe v2 REST).")
@click.option("--grpc-port", type=PORT, default=GRPC_PORT, show_default=True,
              help="gRPC port (KServe v2 gRPC).")
@click.option("--env", "env", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The served model's environment [default: $RETINAUNET_SERVE_ENV, else "
                   ".serve-env of the checkout: 'make serve-env'].")
@click.option("--max-batch-size", type=POSITIVE_INT, default=SERVE.max_batch_size,
              show_default=True, help="Most images one execution batches (equal shapes only).")
@click.option("--max-queue-delay-us", type=NON_NEGATIVE_INT, default=SERVE.max_queue_delay_us,
              show_default=True, help="How long a request may wait to be batched with others.")
@click.option("--max-queue-size", type=POSITIVE_INT, default=SERVE.max_queue_size,
              show_default=True, help="Waiting requests beyond this are refused at once.")
@click.option("--instances", type=POSITIVE_INT, default=SERVE.instances, show_default=True,
              help="Model instances (processes), each running one batch at a time.")
@click.option("--threads", type=NON_NEGATIVE_INT, default=SERVE.threads, show_default=True,
              help="Intra-op threads per instance (0: the runtime's default).")
@click.option("--tile", type=POSITIVE_INT, default=SERVE.tile, show_default=True,
              help="Images larger than this run as a sliding window of tiles.")
@click.option("--overlap", type=float, default=SERVE.overlap, show_default=True,
              help="Fraction of a tile shared with its neighbour.")
@click.option("--score-threshold", type=float, default=SERVE.score_threshold,
              show_default=True,
              help="Return detections scoring at least this, as `predict` keeps. (The model "
                   "card's 0.05 is for evaluation, where AP needs the low-score tail.)")
def serve(run_dir, artifact, runtime, host, port, grpc_port, env, max_batch_size,
          max_queue_delay_us, max_queue_size, instances, threads, tile, overlap,
          score_threshold):
    """Serve RUN_DIR's recommended artifact (or --artifact) through Triton, KServe v2 over
    HTTP and gRPC, until SIGTERM or Ctrl-C (which drain the accepted requests).

    A request is one input tensor `image`, (N, H, W, C) raw pixels of the card's dtype
    (uint8 or uint16), any H and W; the response holds `labels` (N, H, W) and the
    detections as num_detections, detection_boxes (y1, x1, y2, x2 in the image's pixels),
    detection_scores and detection_classes.
    """
    from retinaunet_deploy.serve.server import serve as run_server

    options = ServeOptions(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                           max_queue_size=max_queue_size, instances=instances, threads=threads,
                           tile=tile, overlap=overlap, score_threshold=score_threshold)
    run_server(run_dir, artifact, runtime, host, port, grpc_port, env, options,
               echo=click.echo)
