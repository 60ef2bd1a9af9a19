"""The plain executor of a predict run: read one image, predict it, write it, next.

At most one image's pixels, prediction and overlay are held at a time, so memory
does not grow with the number of inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from retinaunet_deploy.errors import DataError, InputError


def read_item(item) -> np.ndarray:
    """The pixels of a planned input, (H, W, C) as `data.readers.read_image` gives them.

    Raises:
        DataError: the file is unreadable now, or changed size since it was planned.
    """
    from retinaunet_deploy.data.readers import read_image

    image = read_image(Path(item.path))
    if image.shape[:2] != (item.height, item.width):
        raise DataError(f"{item.path} changed since it was checked ({item.height}x{item.width}, "
                        f"now {image.shape[0]}x{image.shape[1]}); run the command again")
    return image


def predict_item(predictor, item, image: np.ndarray):
    """`predictor.predict(image)`, an `InputError` naming the file."""
    try:
        return predictor.predict(image)
    except InputError as error:
        message = str(error)
        raise InputError(message if str(item.path) in message
                         else f"{item.path}: {message}") from error


def report(entry: dict, warn: Callable[[str], None]) -> None:
    """Print an image's warnings (each already names the image)."""
    for warning in entry.get("warnings", []):
        warn(warning)


def run_sequential(predictor, items: list, writer, warn: Callable[[str], None]) -> None:
    """Read, predict and write each of `items` in turn (`writer.write`); print warnings.

    Args:
        predictor: an open `runtime.Predictor`.
        items: the `plan.InputItem`s still to do.
        writer: the run's `writer.ResultWriter`.
        warn: prints one warning line.
    Raises:
        DataError, InputError: an image that cannot be read or predicted (naming it);
        OutputError: an output that cannot be written. Every image finished before
        stays written.
    """
    for item in items:
        image = read_item(item)
        prediction = predict_item(predictor, item, image)
        entry = writer.write(item, image, prediction, predictor)
        del image, prediction
        report(entry, warn)
