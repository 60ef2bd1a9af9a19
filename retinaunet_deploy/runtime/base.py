"""The backend contract: what every runtime's backend offers the Predictor, the gates
and the bench (Polygraphy's runner habit: activate, infer, deactivate).

A backend runs the exported graph and nothing else: it takes (N, H, W, C)
float32 raw pixel values (the graph normalises) and returns float32 outputs by
name (`mask` (N, H, W, K) softmax, and with heads `cls_logits` (N, A, C) and
`box_deltas` (N, A, 4)). Validation, padding, tiling and decoding live in the
`Predictor`, so every backend is treated the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.errors import ArtifactError


@dataclass(frozen=True)
class Limits:
    """What inputs a backend takes and how it likes them fed.

    Attributes:
        min_size: smallest height/width in pixels it runs (0: one network stride).
        max_size: largest height/width in pixels it runs whole (None: no limit; the
            Predictor tiles beyond its own `tile` then).
        preferred_batch: images per call it was tuned for (None: the Predictor's 8).
    """

    min_size: int = 0
    max_size: int | None = None
    preferred_batch: int | None = None


NO_LIMITS = Limits()


@runtime_checkable
class Backend(Protocol):
    """One opened artifact in one runtime.

    Attributes:
        path: the file it runs (None for an in-memory model).
        limits: `Limits` of its inputs.
        threads: intra-op CPU threads the runtime reports it runs with, read back
            from the runtime (None on a GPU, or when no count was asked for).
        timing_note: how the bench times it, when that differs from `run` ("" otherwise).
    """

    path: object
    limits: Limits
    threads: int | None
    timing_note: str

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for an (N, H, W, C) float32 batch; `ArtifactError` once closed."""

    def card(self) -> ModelCard | None:
        """The model card the artifact carries or sits beside, or None."""

    def use_fastest(self) -> None:
        """Run one input shape its fastest way from now on (the bench, before timing)."""

    def close(self) -> None:
        """Release the runtime's memory (sessions, compiled models, device buffers)."""

    def __enter__(self): ...

    def __exit__(self, *exc_info) -> None: ...


class BackendBase:
    """What the concrete backends share: ``with open(...) as backend``, and a `close()`
    after which `run` raises a clear `ArtifactError` instead of failing inside a runtime.

    Subclasses drop their runtime objects in `_release()` and call `_check_open()`
    first in `run` (and wherever else they touch those objects).
    """

    path: object = None
    limits: Limits = NO_LIMITS
    threads: int | None = None
    timing_note: str = ""
    closed: bool = False

    def use_fastest(self) -> None:
        """Most backends run every shape one way: nothing to switch."""

    def close(self) -> None:
        """Release what the runtime holds; later calls raise `ArtifactError`. Idempotent."""
        if not self.closed:
            self.closed = True
            self._release()

    def _release(self) -> None:
        """Drop the runtime's objects (sessions, compiled models, buffers)."""

    def _check_open(self) -> None:
        if self.closed:
            raise ArtifactError(f"{self.path or 'the in-memory model'} was closed; open it "
                                f"again to run it")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
