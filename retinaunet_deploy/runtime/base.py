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
    """

    path: object
    limits: Limits
    threads: int | None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for an (N, H, W, C) float32 batch."""

    def card(self) -> dict | None:
        """The model card the artifact carries or sits beside, or None."""

    def close(self) -> None:
        """Release the runtime's memory (sessions, compiled models, device buffers)."""

    def __enter__(self): ...

    def __exit__(self, *exc_info) -> None: ...


class BackendBase:
    """Context-manager plumbing shared by the concrete backends: ``with open(...) as b``."""

    limits: Limits = NO_LIMITS
    threads: int | None = None

    def close(self) -> None:
        """Drop the runtime's objects; subclasses release what they hold."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
