"""The calibrate command's target options, one per registered gate (`judge.targets.GATES`).

Each gate gives ``--<option>`` (its int8/fp32 target) and, when it has one, its
``--<half option>`` (the fp16/bf16 target), with the gate's defaults and help.
They are made when the command parses or shows its help, so a gate registered
at any time before that has its option with no edit here. The flat keyword of
each (`export.options.option_key`) is what `CalibrationOptions.from_flat` takes.
"""

from __future__ import annotations

import click

from retinaunet_deploy.export.options import option_key
from retinaunet_deploy.judge.targets import GATES

# Earlier names of the target options, still accepted.
ALIASES = {"--pixel-agreement": ("--target",), "--mean-dice": ("--min-dice",),
           "--matched-fraction": ("--min-matched",)}


def gate_options() -> list[click.Option]:
    """A click option per gate target, in the order the gates were registered."""
    options = []
    for gate in GATES.values():
        options.append(click.Option(
            [gate.option, *ALIASES.get(gate.option, ()), option_key(gate.option)], type=float,
            default=gate.default, show_default=True, help=gate.help))
        if gate.half_option:
            options.append(click.Option(
                [gate.half_option, option_key(gate.half_option)], type=float,
                default=gate.half_default, show_default=True,
                help=f"FP16/bf16 target: {gate.label} (as {gate.option} for INT8/fp32)."))
    return options


class GateTargetsCommand(click.Command):
    """A command whose parameters end with the gate target options (see module doc)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        # Made once per invocation: parsing and processing must see the same objects.
        gates = ctx.meta.setdefault("retinaunet_deploy.gate_options", gate_options())
        params = list(self.params) + gates
        help_option = self.get_help_option(ctx)
        return params + [help_option] if help_option is not None else params
