"""The Predictor's one-line messages that name a remedy (kept apart from its logic)."""

from __future__ import annotations

from pathlib import Path


def channels_form(channels: int) -> str:
    """How to save an image with `channels` channels, in words."""
    return {1: "greyscale (1 channel)", 3: "RGB without alpha (3 channels)"}.get(
        channels, f"an image of {channels} channels")


def no_card(path: Path) -> str:
    """The one line refusing an artifact without a model card, with what restores it."""
    from retinaunet_deploy import remake
    from retinaunet_deploy.names import CARD

    if path.suffix == ".onnx":  # the card travels in the file's metadata (export puts it)
        return (f"{path} has no model card in its metadata; use the file its run wrote, or "
                f"{remake.remedy(path)}")
    return (f"{path} has no model card beside it ({path.parent / CARD} not found); copy the "
            f"{CARD} of the run that trained it beside it, or re-train "
            f"('retinaunet-deploy train --out {path.parent}')")


def tile_capped(path: Path | None, requested: int, used: int) -> str:
    """The warning for a tile capped to the backend's largest input."""
    from retinaunet_deploy import remake

    what = path or "the backend"
    command = (remake.command_for(path) if path else None) or "retinaunet-deploy build-engine RUN"
    return (f"--tile {requested} is larger than {what} takes ({used} px, its optimisation "
            f"profile): tiles of {used} px are used; for larger tiles rebuild it with "
            f"'{command} --max-size {requested}'")
