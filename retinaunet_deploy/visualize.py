"""Pictures a person can look at: mask and detection overlays (Pillow only)."""

from __future__ import annotations

import numpy as np

# Class colours (RGB), background first; cycled for more classes.
PALETTE = [(0, 0, 0), (255, 140, 0), (0, 200, 255), (60, 220, 60), (230, 60, 200),
           (250, 230, 40), (150, 100, 255)]


def to_grey_rgb(image: np.ndarray, pixel_max: float) -> np.ndarray:
    """(H, W[, C]) raw pixels -> (H, W, 3) uint8 for display (greyscale replicated).

    16-bit images are shown between their 0.5 and 99.5 percentiles: microscopy data
    rarely fills its range (the DSB nuclei image is 16-bit with values 0-235, black
    when scaled by 65535). 8-bit images keep 0..pixel_max.
    """
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    low, high = 0.0, float(max(pixel_max, 1))
    if pixel_max > 255:
        low, high = (float(v) for v in np.percentile(image, [0.5, 99.5]))
        high = max(high, low + 1)
    image = np.clip((image - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]


def overlay(image: np.ndarray, mask: np.ndarray, detections, class_names, det_class_names,
            pixel_max: float = 255, scale: int = 4, alpha: float = 0.45):
    """Image with the class mask blended in and detection boxes labelled "class score".

    Args:
        image: (H, W[, C]) raw pixels. mask: (H, W) class indices.
        detections: `postprocess.Detections` or None. scale: integer upscaling, so
            small medical crops stay legible.
    Returns:
        A PIL RGB image of size (W * scale, H * scale).
    """
    from PIL import Image, ImageDraw

    rgb = to_grey_rgb(image, pixel_max)
    # Blend by lookup table, one class and channel at a time (uint8 throughout): the same
    # bytes as blending the float image, without float copies of a mostly-foreground
    # 2048x2048 image (160 MB more at peak).
    levels = np.arange(256, dtype=np.float64)
    for index in range(1, int(mask.max(initial=0)) + 1):
        selected = mask == index
        if not selected.any():
            continue
        colour = PALETTE[index % len(PALETTE)]
        for channel in range(3):
            table = ((1 - alpha) * levels + alpha * colour[channel]).astype(np.uint8)
            plane = rgb[:, :, channel]
            plane[selected] = table[plane[selected]]
    picture = Image.fromarray(rgb).resize(
        (mask.shape[1] * scale, mask.shape[0] * scale), Image.NEAREST)
    if detections is not None:
        draw = ImageDraw.Draw(picture)
        for (y1, x1, y2, x2), score, cls in zip(detections.boxes, detections.scores,
                                                detections.classes):
            colour = PALETTE[(int(cls) + 1) % len(PALETTE)]
            # y2/x2 are exclusive; a box under one pixel wide still draws as one pixel.
            box = [x1 * scale, y1 * scale, max(x1 * scale, x2 * scale - 1),
                   max(y1 * scale, y2 * scale - 1)]
            draw.rectangle(box, outline=colour, width=2)
            name = det_class_names[cls] if cls < len(det_class_names) else str(int(cls))
            label = f"{name} {score:.2f}"
            text_y = max(0, box[1] - 12)
            draw.rectangle([box[0], text_y, box[0] + 6 * len(label) + 4, text_y + 11],
                           fill=(0, 0, 0))
            draw.text((box[0] + 2, text_y), label, fill=colour)
    return picture
