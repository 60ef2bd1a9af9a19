"""`RetinaUNet`: the seed's Keras U-Net, plus optional RetinaNet detection heads.

With default arguments `RetinaUNet(input_shape, num_classes).build_model()` is
exactly the seed model of `shared/retinaunet.md`: four encoder blocks (64, 128,
256, 512 filters), a 1024-filter bridge, four decoder blocks and a 1x1 softmax
conv, with the same layers in the same order (31,054,275 parameters for
(128, 128, 1) and 3 classes).

`detection_levels` adds what the seed's text describes (Retina U-Net, Jaeger
et al. 2018): RetinaNet's shared class and box subnets on coarse decoder levels,
the full-resolution mask head kept as the segmentation output.

The built model uses only built-in Keras layers (no Lambda, no custom classes),
so its `.keras` file loads with `safe_mode=True` anywhere Keras 3 runs, without
this package.
"""

from __future__ import annotations

import math

from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.model.anchors import AnchorConfig
from retinaunet_deploy.model.summary import HEAD_PREFIX, ArchitectureSummary, split_parameter_counts

INPUT_NAME = "image"
MASK_OUTPUT = "mask"
CLS_OUTPUT = "cls_logits"
BOX_OUTPUT = "box_deltas"

# Named presets: the architecture options they fix. Presets carry detection
# heads on strides (4, 8, 16) unless `detection=False`.
PRESETS: dict[str, dict] = {
    "seed": {"base_filters": 64, "depth": 4, "head_filters": 256, "head_convs": 4},
    "small": {"base_filters": 16, "depth": 4, "head_filters": 64, "head_convs": 4},
    "tiny": {"base_filters": 8, "depth": 4, "head_filters": 16, "head_convs": 2},
}
PRESET_DETECTION_LEVELS = (4, 8, 16)


class RetinaUNet:
    """Builder of the RetinaUNet Keras model.

    Args:
        input_shape: (H, W, C) of one image; H and W multiples of 2**depth.
        num_classes: mask classes including background (class 0), >= 2.
        base_filters: filters of the first encoder block; block i has
            base_filters * 2**i, the bridge base_filters * 2**depth. Seed: 64.
        depth: number of encoder (and decoder) blocks. Seed: 4.
        detection_levels: decoder strides that carry RetinaNet heads, any of
            2**k for k in 1..depth (2**depth is the bridge). Empty (the
            default) builds the seed's plain U-Net.
        num_det_classes: detection classes; default num_classes - 1 (each
            foreground mask class is a box class).
        head_filters: width of the per-level 1x1 projection and of the subnets.
        head_convs: 3x3 conv + ReLU layers in each subnet before its output conv.
        anchor_scales, anchor_ratios, anchor_size_factor: see `AnchorConfig`.
        prior_probability: initial foreground probability of the class logits
            (RetinaNet: 0.01), which keeps focal loss stable at the start.
        input_scale, input_offset: when given, the model starts with a
            `Rescaling` layer named "preprocess" computing x * scale + offset,
            so normalisation travels inside the graph (ONNX, TensorRT) and apps
            feed raw pixel values. None (the default, the seed) adds no layer.

    Outputs of the built model (a dict, names stable through ONNX/TensorRT):
        mask: (N, H, W, num_classes) float32 softmax probabilities.
        cls_logits: (N, A, num_det_classes) float32 logits (sigmoid -> score).
        box_deltas: (N, A, 4) float32 (dy, dx, dh, dw), see `boxes.py`.
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        base_filters: int = 64,
        depth: int = 4,
        detection_levels=(),
        num_det_classes: int | None = None,
        head_filters: int = 256,
        head_convs: int = 4,
        anchor_scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        anchor_ratios=(0.5, 1.0, 2.0),
        anchor_size_factor: float = 4.0,
        prior_probability: float = 0.01,
        input_scale: float | None = None,
        input_offset: float | None = None,
    ):
        # === Validate and keep every argument (returned by get_config) ===
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in input_shape):
            raise ConfigError(
                f"input_shape must be (height, width, channels) positive ints, got {input_shape}"
            )
        if not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"depth must be an int >= 1, got {depth!r}")
        _check_spatial_size(input_shape[:2], 2**depth, depth)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(
                f"num_classes counts background too and must be >= 2, got {num_classes!r}"
            )
        if not isinstance(base_filters, int) or base_filters < 1:
            raise ConfigError(f"base_filters must be an int >= 1, got {base_filters!r}")
        detection_levels = tuple(sorted(int(s) for s in detection_levels))
        valid_strides = [2**k for k in range(1, depth + 1)]
        bad = [s for s in detection_levels if s not in valid_strides]
        if bad or len(set(detection_levels)) != len(detection_levels):
            raise ConfigError(
                f"detection_levels {detection_levels} invalid for depth {depth}: "
                f"use distinct strides from {valid_strides}"
            )
        if num_det_classes is None:
            num_det_classes = num_classes - 1
        if not isinstance(num_det_classes, int) or num_det_classes < 1:
            raise ConfigError(f"num_det_classes must be an int >= 1, got {num_det_classes!r}")
        if head_filters < 1 or head_convs < 0:
            raise ConfigError(
                f"head_filters must be >= 1 and head_convs >= 0, got {head_filters}, {head_convs}"
            )
        if not 0 < prior_probability < 1:
            raise ConfigError(f"prior_probability must be in (0, 1), got {prior_probability}")

        self.input_shape = input_shape
        self.num_classes = num_classes
        self.base_filters = base_filters
        self.depth = depth
        self.detection_levels = detection_levels
        self.num_det_classes = num_det_classes
        self.head_filters = int(head_filters)
        self.head_convs = int(head_convs)
        self.anchor_scales = tuple(float(s) for s in anchor_scales)
        self.anchor_ratios = tuple(float(r) for r in anchor_ratios)
        self.anchor_size_factor = float(anchor_size_factor)
        self.prior_probability = float(prior_probability)
        if (input_scale is None) != (input_offset is None):
            raise ConfigError("input_scale and input_offset go together: give both or neither")
        if input_scale is not None and not (math.isfinite(input_scale) and input_scale != 0
                                            and math.isfinite(input_offset)):
            raise ConfigError(f"input_scale must be finite and non-zero and input_offset finite, "
                              f"got {input_scale}, {input_offset}")
        self.input_scale = None if input_scale is None else float(input_scale)
        self.input_offset = None if input_offset is None else float(input_offset)
        # Built even without heads so that bad anchor options fail here, not later.
        self._anchors = AnchorConfig(detection_levels, self.anchor_scales, self.anchor_ratios,
                                     self.anchor_size_factor)
        self._conv_log: list[tuple[str, int]] | None = None

    # === Construction helpers ===

    @classmethod
    def from_preset(cls, name: str, input_shape, num_classes: int, detection: bool = True,
                    **overrides) -> RetinaUNet:
        """Builder for a named preset (`PRESETS`); `detection=False` drops the heads."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        options = dict(PRESETS[name])
        options["detection_levels"] = PRESET_DETECTION_LEVELS if detection else ()
        options.update(overrides)
        return cls(input_shape, num_classes, **options)

    @property
    def has_detection(self) -> bool:
        return bool(self.detection_levels)

    @property
    def anchor_config(self) -> AnchorConfig | None:
        """The anchors matching the head outputs, or None without heads."""
        return self._anchors if self.has_detection else None

    def output_shapes(self) -> dict[str, tuple]:
        """Output name -> shape with None for the batch axis, without building."""
        h, w, _ = self.input_shape
        shapes = {MASK_OUTPUT: (None, h, w, self.num_classes)}
        if self.has_detection:
            a = self._anchors.num_anchors((h, w))
            shapes[CLS_OUTPUT] = (None, a, self.num_det_classes)
            shapes[BOX_OUTPUT] = (None, a, 4)
        return shapes

    # === Functional wiring ===

    @property
    def stride(self) -> int:
        """Total stride 2**depth: any input height and width must be a multiple of it."""
        return 2**self.depth

    def build_model(self, any_size: bool = False):
        """Build the Keras 3 functional model (see the class docstring for outputs).

        Args:
            any_size: input (None, None, C): the fully convolutional network then takes
                any height and width that are multiples of `stride` (what training,
                export and every runtime use). False keeps `input_shape` fixed (the
                seed's form, used for summaries).
        """
        import keras

        shape = (None, None, self.input_shape[2]) if any_size else self.input_shape
        inputs = keras.Input(shape, name=INPUT_NAME)

        x = inputs
        if self.input_scale is not None:
            x = keras.layers.Rescaling(self.input_scale, self.input_offset, name="preprocess")(x)
        skips = []
        for i in range(self.depth):
            s, x = self.encoder_block(x, self.base_filters * 2**i, f"enc{i + 1}")
            skips.append(s)

        x = self.conv_block(x, self.base_filters * 2**self.depth, "bridge")
        features_by_stride = {2**self.depth: x}

        for j in range(self.depth):
            x = self.decoder_block(x, skips[-1 - j], self.base_filters * 2 ** (self.depth - 1 - j),
                                   f"dec{j + 1}")
            features_by_stride[2 ** (self.depth - 1 - j)] = x

        outputs = {MASK_OUTPUT: self._conv(
            keras.layers.Conv2D(self.num_classes, (1, 1), activation="softmax", name=MASK_OUTPUT), x
        )}
        if self.has_detection:
            outputs.update(self.detection_heads([features_by_stride[s] for s in
                                                 self.detection_levels]))
        return keras.Model(inputs=inputs, outputs=outputs, name="retinaunet")

    def conv_block(self, inputs, num_filters, name):
        """Two (3x3 conv, BN, ReLU), as in the seed."""
        import keras

        x = inputs
        for k in (1, 2):
            x = self._conv(keras.layers.Conv2D(num_filters, 3, padding="same",
                                               name=f"{name}_conv{k}"), x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn{k}")(x)
            x = keras.layers.Activation("relu", name=f"{name}_relu{k}")(x)
        return x

    def encoder_block(self, inputs, num_filters, name):
        """Conv block, then 2x2 max-pool; returns (skip features, pooled)."""
        import keras

        x = self.conv_block(inputs, num_filters, name)
        p = keras.layers.MaxPool2D((2, 2), name=f"{name}_pool")(x)
        return x, p

    def decoder_block(self, inputs, skip_features, num_filters, name):
        """2x2 stride-2 transposed conv, concat with the skip, conv block."""
        import keras

        x = self._conv(keras.layers.Conv2DTranspose(num_filters, (2, 2), strides=2,
                                                    padding="same", name=f"{name}_upconv"), inputs)
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip_features])
        return self.conv_block(x, num_filters, name)

    def detection_heads(self, level_features):
        """RetinaNet heads over the decoder levels, in ascending-stride order.

        Each level is projected to `head_filters` by its own 1x1 conv; the class
        and box subnets are shared across levels (same layer objects). Per level
        the (N, Hs, Ws, K*C) output is reshaped to (N, Hs*Ws*K, C), which is the
        anchor order of `anchors.generate_anchors`, then levels are concatenated.
        """
        import keras

        k = self._anchors.anchors_per_position
        c = self.num_det_classes
        # Output convs use RetinaNet's init: N(0, 0.01) weights, class bias at the prior.
        # Hidden head convs use He init instead: with RetinaNet's N(0, 0.01) the signal
        # shrinks ~5x per layer on these narrow, normalisation-free heads and the
        # class subnet trains markedly slower (measured on the synthetic set).
        def weight_init():  # a fresh initializer per layer: Keras warns when one is reused
            return keras.initializers.RandomNormal(stddev=0.01)

        def hidden_init():
            return keras.initializers.HeNormal()

        prior_bias = -math.log((1 - self.prior_probability) / self.prior_probability)

        def subnet(prefix, out_channels, out_bias):
            layers = []
            for n in range(1, self.head_convs + 1):
                layers.append(keras.layers.Conv2D(
                    self.head_filters, 3, padding="same", kernel_initializer=hidden_init(),
                    name=f"{HEAD_PREFIX}{prefix}_conv{n}"))
                layers.append(keras.layers.Activation("relu", name=f"{HEAD_PREFIX}{prefix}_relu{n}"))
            layers.append(keras.layers.Conv2D(
                out_channels, 3, padding="same", kernel_initializer=weight_init(),
                bias_initializer=keras.initializers.Constant(out_bias),
                name=f"{HEAD_PREFIX}{prefix}_out"))
            return layers

        cls_subnet = subnet("cls", k * c, prior_bias)
        box_subnet = subnet("box", k * 4, 0.0)

        cls_per_level, box_per_level = [], []
        for stride, features in zip(self.detection_levels, level_features):
            p = self._conv(keras.layers.Conv2D(self.head_filters, 1, kernel_initializer=hidden_init(),
                                               name=f"{HEAD_PREFIX}proj_s{stride}"), features)
            for subnet_layers, channels, out_list, tag in (
                (cls_subnet, c, cls_per_level, "cls"), (box_subnet, 4, box_per_level, "box")
            ):
                x = p
                for layer in subnet_layers:
                    x = self._conv(layer, x) if isinstance(layer, keras.layers.Conv2D) else layer(x)
                out_list.append(keras.layers.Reshape(
                    (-1, channels), name=f"{HEAD_PREFIX}{tag}_reshape_s{stride}")(x))

        def join(tensors, name):
            if len(tensors) == 1:  # Concatenate needs two inputs; keep the output name stable.
                return keras.layers.Identity(name=name)(tensors[0])
            return keras.layers.Concatenate(axis=1, name=name)(tensors)

        return {CLS_OUTPUT: join(cls_per_level, CLS_OUTPUT),
                BOX_OUTPUT: join(box_per_level, BOX_OUTPUT)}

    def _conv(self, layer, x):
        """Apply a conv layer, logging its FLOPs when `summary()` is counting."""
        y = layer(x)
        if self._conv_log is not None:
            kh, kw = layer.kernel_size
            cin, cout = x.shape[-1], y.shape[-1]
            # A transposed conv does its MACs per *input* position, a conv per output one.
            positions = (x.shape[1] * x.shape[2] if "Transpose" in type(layer).__name__
                         else y.shape[1] * y.shape[2])
            self._conv_log.append((layer.name, 2 * positions * kh * kw * cin * cout))
        return y

    # === Introspection ===

    def summary(self) -> ArchitectureSummary:
        """Build the model once and count parameters and FLOPs, U-Net and heads apart."""
        self._conv_log = []
        try:
            model = self.build_model()
            conv_log = self._conv_log
        finally:
            self._conv_log = None
        unet_params, head_params = split_parameter_counts(model)
        head_flops = sum(f for name, f in conv_log if name.startswith(HEAD_PREFIX))
        unet_flops = sum(f for name, f in conv_log if not name.startswith(HEAD_PREFIX))
        h, w, _ = self.input_shape
        return ArchitectureSummary(
            unet_params=unet_params,
            head_params=head_params,
            unet_gflops=unet_flops / 1e9,
            head_gflops=head_flops / 1e9,
            outputs=self.output_shapes(),
            num_anchors=self._anchors.num_anchors((h, w)) if self.has_detection else 0,
        )

    # === Config ===

    def get_config(self) -> dict:
        """Every constructor argument, JSON-serialisable (lists for tuples)."""
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "base_filters": self.base_filters,
            "depth": self.depth,
            "detection_levels": list(self.detection_levels),
            "num_det_classes": self.num_det_classes,
            "head_filters": self.head_filters,
            "head_convs": self.head_convs,
            "anchor_scales": list(self.anchor_scales),
            "anchor_ratios": list(self.anchor_ratios),
            "anchor_size_factor": self.anchor_size_factor,
            "prior_probability": self.prior_probability,
            "input_scale": self.input_scale,
            "input_offset": self.input_offset,
        }

    @classmethod
    def from_config(cls, config: dict) -> RetinaUNet:
        return cls(**config)


def _check_spatial_size(size, multiple, depth):
    for dim_name, d in zip(("height", "width"), size):
        if d % multiple:
            lower = max(multiple, d // multiple * multiple)
            raise ConfigError(
                f"input {dim_name} {d} is not a multiple of {multiple} (2**depth, depth={depth}); "
                f"valid sizes are multiples of {multiple}, e.g. {lower} or {lower + multiple}"
            )
