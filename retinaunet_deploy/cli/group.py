"""The `retinaunet-deploy` click group, its one-line error handling, and shared helpers.

Nothing heavy is imported at module level, so `--help` answers instantly on a
machine without a GPU. Toolkit errors (`RetinaUNetError`) become one-line
messages with exit code 1, usage errors exit 2; any other exception (a bug) is
one line too, saying so. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os

import click

from retinaunet_deploy import __version__
from retinaunet_deploy.errors import RetinaUNetError


class ToolkitGroup(click.Group):
    """A click group that reports `RetinaUNetError`s as one line, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except RetinaUNetError as error:
            if ctx.meta.get("retinaunet_deploy.debug"):
                raise
            raise click.ClickException(str(error)) from error
        except Exception as error:  # a bug, not bad input: still one line, with how to see more
            if ctx.meta.get("retinaunet_deploy.debug"):
                raise
            first = (str(error).splitlines() or [""])[0][:300]
            raise click.ClickException(
                f"unexpected {type(error).__name__}: {first} (a bug in retinaunet-deploy; "
                f"re-run with --debug for the traceback and report it)") from error


@click.group(cls=ToolkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retinaunet-deploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """Take a Keras RetinaUNet to the edge: train, export to ONNX, make FP16/INT8 and
    TensorRT variants, and prove each against the float model."""
    ctx.meta["retinaunet_deploy.debug"] = debug
    # TensorFlow's C++ start-up chatter (oneDNN, "failed call to cuInit") is noise on a
    # machine without an NVIDIA driver; where there is one, keep its errors visible.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                          "2" if os.path.exists("/dev/nvidiactl") else "3")


def console():
    """A rich console; in logs and CI (not a terminal) wide enough that tables do not wrap."""
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=170)


# A count that must be at least 1 (--threads: 0 or a negative number is refused as a usage
# error naming the option, never passed on to a runtime that reads it as "its default").
POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)


def int_list(ctx, param, value):
    """A click callback: "1,8" -> (1, 8), positive integers only."""
    if value is None:
        return None
    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return values


def comma_text(values) -> str:
    """A default tuple as the CLI spells it: (1, 8) -> "1,8"."""
    return ",".join(str(v) for v in values)


def main():
    cli(prog_name="retinaunet-deploy")
