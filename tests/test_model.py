"""The RetinaUNet builder: seed equivalence, presets, heads, serialisation, validation."""

import json

import numpy as np
import pytest

from retinaunet_deploy.errors import ConfigError
from retinaunet_deploy.model import (
    BOX_OUTPUT,
    CLS_OUTPUT,
    MASK_OUTPUT,
    PRESETS,
    RetinaUNet,
    generate_anchors,
    split_parameter_counts,
)

SEED_PARAMS = 31_054_275  # shared/retinaunet.md's U-Net at (128, 128, 1), 3 classes


def _layer_signature(layer):
    """Type, parameter count and the config that defines the computation (not the name)."""
    config = layer.get_config()
    keys = ("filters", "kernel_size", "strides", "padding", "activation", "pool_size", "axis",
            "use_bias", "epsilon", "momentum")
    return (type(layer).__name__, layer.count_params(),
            {k: config[k] for k in keys if k in config})


def test_default_build_is_exactly_the_seed_unet():
    from tests.seed_unet import RetinaUNet as SeedRetinaUNet

    seed = SeedRetinaUNet((128, 128, 1), 3).build_model()
    ours = RetinaUNet((128, 128, 1), 3).build_model()

    assert ours.count_params() == seed.count_params() == SEED_PARAMS
    assert [_layer_signature(layer) for layer in ours.layers] == \
        [_layer_signature(layer) for layer in seed.layers]
    assert list(ours.output_names) == [MASK_OUTPUT]
    assert split_parameter_counts(ours) == (SEED_PARAMS, 0)


def test_seed_summary_counts_unet_and_heads_apart():
    bare = RetinaUNet.from_preset("seed", (128, 128, 1), 3, detection=False).summary()
    assert bare.unet_params == SEED_PARAMS and bare.head_params == 0
    # 12.03 GMACs of convolutions for the seed at 128x128 -> 24.05 GFLOPs.
    assert bare.unet_gflops == pytest.approx(24.05, abs=0.01)

    with_heads = RetinaUNet.from_preset("seed", (128, 128, 1), 3).summary()
    assert with_heads.unet_params == SEED_PARAMS
    assert with_heads.head_params > 0 and with_heads.head_gflops > 0
    assert with_heads.unet_gflops == pytest.approx(bare.unet_gflops)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_output_names_and_shapes(preset):
    builder = RetinaUNet.from_preset(preset, (64, 64, 1), 3)
    model = builder.build_model()
    outputs = model(np.zeros((2, 64, 64, 1), np.float32))

    assert set(outputs) == {MASK_OUTPUT, CLS_OUTPUT, BOX_OUTPUT}
    expected = {name: (2,) + shape[1:] for name, shape in builder.output_shapes().items()}
    assert {name: tuple(t.shape) for name, t in outputs.items()} == expected
    assert expected[MASK_OUTPUT] == (2, 64, 64, 3)
    assert expected[CLS_OUTPUT][2] == 2 and expected[BOX_OUTPUT][2] == 4
    probs = np.asarray(outputs[MASK_OUTPUT])
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_anchor_count_equals_head_output_length():
    builder = RetinaUNet.from_preset("tiny", (64, 96, 1), 3)
    outputs = builder.build_model()(np.zeros((1, 64, 96, 1), np.float32))
    anchors = generate_anchors(builder.anchor_config, (64, 96))
    # 9 anchors on 16x24 + 8x12 + 4x6 positions
    assert len(anchors) == 9 * (16 * 24 + 8 * 12 + 4 * 6)
    assert outputs[CLS_OUTPUT].shape[1] == outputs[BOX_OUTPUT].shape[1] == len(anchors)


def test_head_output_follows_anchor_shape_order():
    """Anchor a has shape index a % K; the head must put channel k*C + c at (a, c)."""
    builder = RetinaUNet.from_preset("tiny", (64, 64, 1), 3)
    model = builder.build_model()
    k = builder.anchor_config.anchors_per_position
    c = builder.num_det_classes
    out = model.get_layer("head_cls_out")
    kernel, _ = out.get_weights()
    bias = (10 * np.arange(k)[:, None] + np.arange(c)[None, :]).reshape(-1).astype(np.float32)
    out.set_weights([np.zeros_like(kernel), bias])

    logits = np.asarray(model(np.random.rand(1, 64, 64, 1).astype(np.float32))[CLS_OUTPUT])[0]
    shape_index = np.arange(len(logits)) % k
    expected = 10 * shape_index[:, None] + np.arange(c)[None, :]
    np.testing.assert_array_equal(logits, expected)


def test_class_logits_start_at_the_prior():
    builder = RetinaUNet.from_preset("tiny", (64, 64, 1), 3)
    model = builder.build_model()
    logits = np.asarray(model(np.random.rand(1, 64, 64, 1).astype(np.float32))[CLS_OUTPUT])
    probs = 1 / (1 + np.exp(-logits))
    assert abs(float(probs.mean()) - 0.01) < 0.005


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    import keras

    model = RetinaUNet.from_preset("tiny", (64, 64, 1), 3).build_model()
    images = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    before = model(images)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)  # built-in layers only
    after = loaded(images)
    for name in before:
        np.testing.assert_array_equal(np.asarray(before[name]), np.asarray(after[name]))


def test_builder_config_round_trip_is_json():
    builder = RetinaUNet.from_preset("small", (128, 128, 3), 4, head_convs=2)
    config = json.loads(json.dumps(builder.get_config()))
    rebuilt = RetinaUNet.from_config(config)
    assert rebuilt.get_config() == builder.get_config()
    assert rebuilt.num_det_classes == 3 and rebuilt.input_shape == (128, 128, 3)
    assert rebuilt.output_shapes() == builder.output_shapes()


@pytest.mark.parametrize("shape, message", [
    ((100, 128, 1), "input height 100 is not a multiple of 16.*96 or 112"),
    ((128, 72, 1), "input width 72 is not a multiple of 16.*64 or 80"),
    ((8, 8, 1), "input height 8 is not a multiple of 16.*16 or 32"),
    ((128, 128), r"input_shape must be \(height, width, channels\)"),
])
def test_invalid_sizes_are_rejected_with_valid_sizes(shape, message):
    with pytest.raises(ValueError, match=message):
        RetinaUNet(shape, 3)


def test_depth_changes_the_valid_multiple():
    RetinaUNet((40, 40, 1), 3, depth=3, base_filters=4)  # 40 = 5 * 2**3: fine
    with pytest.raises(ConfigError, match="multiple of 8"):
        RetinaUNet((36, 36, 1), 3, depth=3)


@pytest.mark.parametrize("kwargs, message", [
    ({"detection_levels": (4, 32)}, r"use distinct strides from \[2, 4, 8, 16\]"),
    ({"detection_levels": (3,)}, "invalid for depth 4"),
    ({"num_classes": 1}, "num_classes counts background"),
    ({"anchor_ratios": ()}, "ratios must be positive and non-empty"),
    ({"prior_probability": 1.5}, "prior_probability"),
])
def test_invalid_options_are_rejected(kwargs, message):
    options = {"num_classes": 3, **kwargs}
    with pytest.raises(ConfigError, match=message):
        RetinaUNet((64, 64, 1), **options)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'.*\['seed', 'small', 'tiny'\]"):
        RetinaUNet.from_preset("huge", (64, 64, 1), 3)
