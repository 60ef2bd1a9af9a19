"""`retinaunet-deploy`: a thin click CLI. Commands parse options and call library functions.

Every option's default is the library's own (the stage's options dataclass), never
restated here. Commands live by what they work on: `model_commands` (info, train,
import-data, export), `deploy_commands` (calibrate, check-trt, build-engine,
triton), `run_commands` (predict, bench) and `serve_commands` (serve).
"""

from retinaunet_deploy.cli import (  # noqa: F401
    deploy_commands,
    model_commands,
    run_commands,
    serve_commands,
)
from retinaunet_deploy.cli.group import cli, main

__all__ = ["cli", "main"]
