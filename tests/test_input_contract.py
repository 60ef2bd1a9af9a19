"""The input contract, enforced in one place (`Predictor.check_input` / `check_header`).

Issue 19, input 4: `Predictor.predict` accepted a float image scaled x257 (0..65535 on
an 8-bit model: 99.6% foreground, 300 confident boxes where there are 7) and negative
values, although the README promises an `InputError` for anything outside the
contract. Every refusal is one line naming the value found.
"""

import numpy as np
import pytest

from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples
from retinaunet_deploy.errors import InputError
from retinaunet_deploy.runtime.base import BackendBase
from retinaunet_deploy.runtime.predictor import Predictor


def _card(pixel_dtype="uint8", pixel_max=255, channels=1):
    return {"card_version": 1, "builder": {}, "normalization": {},
            "input": {"height": None, "width": None, "channels": channels, "stride": 16,
                      "patch_size": 32, "pixel_dtype": pixel_dtype, "pixel_max": pixel_max},
            "class_names": ["background", "disk"]}


class Counting(BackendBase):
    """A mask-only backend that counts its runs (a refused input must never run)."""

    calls = 0

    def run(self, batch):
        Counting.calls += 1
        n, h, w = batch.shape[:3]
        return {"mask": np.full((n, h, w, 2), 0.5, np.float32)}


@pytest.fixture
def predictor():
    Counting.calls = 0
    return Predictor(Counting(), _card())


@pytest.fixture(scope="module")
def test_image():
    """A demo-like 8-bit test image (disks and rings on a noisy background)."""
    return synthetic_samples(SyntheticConfig(size=64), 1, seed=3, split="test")[0].image


def _one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_float_image_scaled_x257_is_refused_with_the_value_found(predictor, test_image):
    scaled = test_image.astype(np.float32) * 257  # 0..65535, an 8-bit model
    top = float(scaled.max())
    with pytest.raises(InputError, match=rf"pixel value {top:g} \(above pixel_max 255") as error:
        predictor.predict(scaled)
    assert f"span {float(scaled.min()):g}..{top:g}" in _one_line(error)
    assert "[0, 255]" in str(error.value)
    assert Counting.calls == 0


def test_negative_values_are_refused_with_the_value_found(predictor, test_image):
    normalised = (test_image.astype(np.float32) - 120.0) / 40.0  # a z-scored image
    low = float(normalised.min())
    with pytest.raises(InputError, match=rf"pixel value {low:g} \(below 0") as error:
        predictor.predict(normalised)
    _one_line(error)
    one_negative = test_image.astype(np.float64)
    one_negative[5, 7] = -0.5
    with pytest.raises(InputError, match=r"pixel value -0.5 \(below 0"):
        predictor.check_input(one_negative)
    assert Counting.calls == 0


def test_nan_and_inf_are_refused_with_where_they_are(predictor, test_image):
    image = test_image.astype(np.float32)
    image[9, 4] = np.nan
    with pytest.raises(InputError, match=r"NaN or Inf \(1 value\(s\), the first nan at row 9, "
                                         r"column 4\)") as error:
        predictor.predict(image)
    _one_line(error)
    batch = np.stack([test_image.astype(np.float32)] * 3)
    batch[2, 0, 1] = -np.inf
    with pytest.raises(InputError, match=r"the batch of 3 contains NaN or Inf .* row 0, "
                                         r"column 1 of image 2"):
        predictor.check_input(batch)


def test_the_contract_edges_are_accepted(predictor, test_image):
    edges = np.zeros((32, 48, 1), np.float32)
    edges[0, 0], edges[-1, -1] = 0.0, 255.0
    predictor.check_input(edges)
    predictor.check_input(np.float16(edges))
    predictor.check_input(test_image)                    # uint8, the card's dtype
    predictor.check_input(test_image / 255.0)            # a 0..1 image is inside the range
    assert predictor.predict(edges).mask.shape == (32, 48)


def test_a_12_bit_card_refuses_uint16_values_above_its_pixel_max():
    predictor = Predictor(Counting(), _card("uint16", 4095))
    image = np.full((32, 32), 4000, np.uint16)
    predictor.check_input(image)
    image[3, 3] = 5000
    with pytest.raises(InputError, match=r"pixel value 5000 \(above pixel_max 4095"):
        predictor.check_input(image)


@pytest.mark.parametrize("header, message", [
    ((12, 40, 1, "uint8"), r"image size 12x40 is smaller than one network stride \(16 px\)"),
    ((64, 64, 3, "uint8"), r"image has 3 channel\(s\), the model takes 1"),
    ((64, 64, 1, "uint16"), r"integer images must be uint8 .* got uint16"),
    ((64, 64, 1, "int16"), r"integer images must be uint8 .* got int16"),
    ((64, 64, 1, "bool"), r"unsupported image dtype bool"),
    ((64, 64, 1, "complex64"), r"unsupported image dtype complex64"),
])
def test_header_checks_need_no_pixels(predictor, header, message):
    with pytest.raises(InputError, match=message):
        predictor.check_header(*header)
    height, width, channels, dtype = header
    with pytest.raises(InputError, match=message):  # the same refusal from the pixels
        predictor.check_input(np.zeros((height, width, channels), dtype))


def test_header_checks_pass_what_the_card_takes(predictor):
    for dtype in ("uint8", np.float32, np.dtype("float64"), "float16"):
        predictor.check_header(16, 4000, 1, dtype)


def test_a_trained_model_refuses_the_scaled_image_before_it_runs(tiny_exported, test_image):
    run_dir, _ = tiny_exported
    with Predictor.from_artifact(run_dir / "model.onnx", threads=1) as onnx:
        assert onnx.predict(test_image).mask.shape == test_image.shape[:2]
        with pytest.raises(InputError, match=r"above pixel_max 255"):
            onnx.predict(test_image.astype(np.float32) * 257)
        with pytest.raises(InputError, match=r"below 0"):
            onnx.predict(test_image.astype(np.float32) - 128)
