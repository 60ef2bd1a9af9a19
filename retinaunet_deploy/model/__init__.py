"""The RetinaUNet model: builder, presets, anchors and box coding.

Importing this package does not import TensorFlow; `RetinaUNet.build_model()` does.
"""

from retinaunet_deploy.model.anchors import AnchorConfig, generate_anchors
from retinaunet_deploy.model.boxes import box_iou, decode_boxes, encode_boxes
from retinaunet_deploy.model.retinaunet import (
    BOX_OUTPUT,
    CLS_OUTPUT,
    INPUT_NAME,
    MASK_OUTPUT,
    PRESETS,
    ArchitectureSummary,
    RetinaUNet,
    split_parameter_counts,
)

__all__ = [
    "BOX_OUTPUT",
    "CLS_OUTPUT",
    "INPUT_NAME",
    "MASK_OUTPUT",
    "PRESETS",
    "AnchorConfig",
    "ArchitectureSummary",
    "RetinaUNet",
    "box_iou",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "split_parameter_counts",
]
