"""What `retinaunet-deploy info` prints about an architecture: sizes and cost."""

from __future__ import annotations

from dataclasses import dataclass

# Every layer that belongs to the detection heads has this prefix (or is an output
# concat); parameter and FLOP counts are split on it.
HEAD_PREFIX = "head_"


@dataclass(frozen=True)
class ArchitectureSummary:
    """What `retinaunet-deploy info` prints: sizes and cost of one configuration.

    FLOPs count 2 x multiply-accumulates of the convolutions for one image
    (batch 1), the usual convention; BN, activations and bias adds are ignored.
    """

    unet_params: int
    head_params: int
    unet_gflops: float
    head_gflops: float
    outputs: dict[str, tuple]
    num_anchors: int

    @property
    def total_params(self) -> int:
        return self.unet_params + self.head_params

    @property
    def total_gflops(self) -> float:
        return self.unet_gflops + self.head_gflops


def split_parameter_counts(model) -> tuple[int, int]:
    """(U-Net parameters, detection-head parameters) of a built RetinaUNet model."""
    head = sum(layer.count_params() for layer in model.layers
               if layer.name.startswith(HEAD_PREFIX))
    return model.count_params() - head, head
