"""Issue 21, item 2: intensities beyond 8/16-bit unsigned, one normalisation for all.

The card records a scheme chosen at training (`normalization`): ``global`` (8/16-bit,
in the graph, today's), ``zscore`` per image, ``ct`` clip + z-score with the training
foreground's statistics. `normalize` is the one function that applies it; the
Predictor (every runtime), the calibration patches and the INT8 calibration range
go through it. No TensorFlow here: a counting backend stands in for the graph.
"""

import numpy as np
import pytest

from retinaunet_deploy.card import ModelCard
from retinaunet_deploy.errors import ConfigError, InputError
from retinaunet_deploy.normalization import (
    Normalization,
    choose_scheme,
    fit_normalization,
    normalize,
    normalize_image,
    pixel_max_for,
)
from retinaunet_deploy.runtime.base import BackendBase
from retinaunet_deploy.runtime.calibration_range import CalibrationRange, intensity_record
from retinaunet_deploy.runtime.predictor import Predictor

CT = Normalization(mean=40.0, std=20.0, scale=1.0, offset=0.0, in_graph=False, scheme="ct",
                   clip_low=0.0, clip_high=100.0)
ZSCORE = Normalization(in_graph=False, scheme="zscore")


def _card(normalization: Normalization, pixel_dtype="int16", pixel_max=1000):
    return {"card_version": 1, "builder": {}, "normalization": normalization.to_dict(),
            "input": {"height": None, "width": None, "channels": 1, "stride": 16,
                      "patch_size": 32, "pixel_dtype": pixel_dtype, "pixel_max": pixel_max},
            "class_names": ["background", "tissue"]}


class Recording(BackendBase):
    """A mask-only backend that keeps every batch the graph was given."""

    def __init__(self):
        self.batches = []

    def run(self, batch):
        self.batches.append(batch.copy())
        n, h, w = batch.shape[:3]
        return {"mask": np.full((n, h, w, 2), 0.5, np.float32)}


def test_the_card_records_the_scheme_and_reads_old_cards_as_global():
    old = {"in_graph": True, "mean": 100, "std": 20.0, "scale": 0.05, "offset": -5.0}
    assert Normalization.from_dict(old).scheme == "global"
    card = ModelCard.from_dict(_card(CT))
    assert card.normalization == CT and card.input.pixel_dtype == "int16"
    assert card.to_dict()["normalization"]["clip_high"] == 100.0
    assert Normalization.from_dict(ZSCORE.to_dict()) == ZSCORE
    with pytest.raises(ValueError, match="in_graph must be False"):
        Normalization(in_graph=True, scheme="zscore")
    with pytest.raises(ValueError, match="clip_low and clip_high"):
        Normalization(in_graph=False, scheme="ct")
    from retinaunet_deploy.errors import ArtifactError
    with pytest.raises(ArtifactError, match="malformed 'normalization'.*unknown normalisation"):
        ModelCard.from_dict({**_card(CT), "normalization": {"scheme": "minmax",
                                                            "in_graph": False}})
    with pytest.raises(ArtifactError, match="malformed 'input'.*pixel_dtype"):
        ModelCard.from_dict(_card(CT, pixel_dtype="complex64"))


def test_normalize_zscore_is_per_image_and_channel_and_ct_clips_then_zscores():
    rng = np.random.default_rng(0)
    images = np.stack([rng.normal(10, 3, (20, 24, 2)), rng.normal(-500, 50, (20, 24, 2))])
    images[1, ..., 1] = 7.0                                    # a constant channel -> 0
    out = normalize(images, ZSCORE)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert np.allclose(out[0].mean(axis=(0, 1)), 0, atol=1e-5)
    assert np.allclose(out[0].std(axis=(0, 1)), 1, atol=1e-4)
    assert np.allclose(out[1, ..., 0].std(), 1, atol=1e-4) and not out[1, ..., 1].any()
    hu = np.array([-1000, 0, 50, 100, 3000], np.int16).reshape(1, 1, 5, 1)
    assert normalize(hu, CT).ravel().tolist() == pytest.approx([-2, -2, 0.5, 3, 3])
    raw = np.arange(12, dtype=np.uint8).reshape(1, 2, 6, 1)
    assert np.array_equal(normalize(raw, Normalization()), raw.astype(np.float32))  # in graph
    assert normalize_image(raw[0, ..., 0], ZSCORE).shape == (2, 6, 1)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        normalize(raw[0], ZSCORE)


def test_ct_statistics_come_from_the_training_foreground_only():
    rng = np.random.default_rng(1)
    image = np.full((40, 40, 1), -1000, np.int16)              # air around the object
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    image[10:30, 10:30, 0] = rng.normal(60, 10, (20, 20)).astype(np.int16)
    mask[0, 0] = 255                                           # a void pixel, in air
    norm = fit_normalization("ct", [image], [mask], void=255)
    foreground = image[10:30, 10:30, 0].astype(np.float64)
    assert norm.mean == pytest.approx(foreground.mean())
    assert norm.std == pytest.approx(foreground.std())
    assert (norm.clip_low, norm.clip_high) == pytest.approx(
        tuple(np.percentile(foreground, [0.5, 99.5])))
    assert not norm.in_graph and norm.scheme == "ct"
    with pytest.raises(ConfigError, match="no foreground pixel"):
        fit_normalization("ct", [image], [np.zeros_like(mask)])
    glob = fit_normalization("global", [np.full((4, 4, 1), 10, np.uint8)], None)
    assert (glob.mean, glob.std, glob.in_graph) == (10.0, 1.0, True)   # today's rule


def test_the_scheme_is_chosen_by_the_training_dtype():
    assert choose_scheme("auto", np.uint8) == choose_scheme("auto", np.uint16) == "global"
    assert choose_scheme("auto", np.int16) == choose_scheme("auto", np.float32) == "zscore"
    assert choose_scheme("ct", np.int16) == "ct"
    with pytest.raises(ConfigError, match="global takes 8- or 16-bit unsigned"):
        choose_scheme("global", np.float32)
    assert pixel_max_for(np.uint16, []) == 65535
    assert pixel_max_for(np.float32, [np.array([[-3.0, 41.2]])]) == 42


def test_the_predictor_takes_signed_and_float_pixels_and_normalises_whole_images():
    backend = Recording()
    predictor = Predictor(backend, _card(ZSCORE), tile=32)
    rng = np.random.default_rng(2)
    image = rng.normal(-300, 80, (48, 40)).astype(np.float32)  # MRI-like, negative values
    predictor.predict(image)                                    # tiled: 48 > tile 32
    seen = np.concatenate([b.reshape(-1) for b in backend.batches])
    expected = normalize_image(image, ZSCORE)
    # Every tile holds values of the WHOLE image's z-score (not a per-tile one).
    assert set(np.round(seen, 4)) <= set(np.round(expected.reshape(-1), 4))
    for dtype in (np.int16, np.int32, np.uint16, np.float64):  # zscore is scale-free
        predictor.check_input(np.zeros((32, 32), dtype))
    with pytest.raises(InputError, match="NaN or Inf"):
        predictor.check_input(np.full((32, 32), np.nan, np.float32))
    with pytest.raises(InputError, match="unsupported image dtype bool"):
        predictor.check_input(np.zeros((32, 32), bool))
    ct = Predictor(Recording(), _card(CT))
    ct.check_input(np.full((32, 32), -1024, np.int16))
    with pytest.raises(InputError, match="Hounsfield.*got unsigned uint16.*rescale slope"):
        ct.check_input(np.zeros((32, 32), np.uint16))
    ct.predict(np.full((32, 32), 5000, np.int16))
    assert np.allclose(ct.backend.batches[-1], 3.0)             # clipped at 100 HU: 3 std


def test_the_calibration_range_measures_what_the_graph_takes():
    rng = np.random.default_rng(3)
    calib_raw = rng.normal(40, 15, (16, 32, 32, 1))
    calib = normalize(calib_raw, CT)                            # as `calibration_images`
    record = intensity_record(calib, 1000, normalization=CT)
    assert record["normalization"] == CT.to_dict()
    guard = CalibrationRange.from_record(record, "test")
    assert guard.normalization == CT
    assert guard.check(calib_raw[0].astype(np.int16)) is None   # raw HU, normalised first
    warning = guard.check((calib_raw[0] + 40).astype(np.int16))
    assert warning and "mean pixel value" in warning and "\n" not in warning
    z = intensity_record(normalize(calib_raw, ZSCORE), 1000, normalization=ZSCORE)
    # A z-scored model does not care about gain: 3x brighter is the same data to it.
    assert CalibrationRange.from_record(z, "test").check(calib_raw[0] * 3) is None
    # Today's in-graph records keep raw values and no normalisation entry.
    assert "normalization" not in intensity_record(calib_raw, 255)


def test_zscore_over_the_nonzero_region_keeps_zeros_and_bounds_sparse_slices():
    """Skull-stripped data (background exactly 0): a slice with a little tissue would
    z-score it to tens of standard deviations over the whole slice; over its nonzero
    pixels (nnU-Net's use_mask_for_norm) it stays a z-score and the zeros stay 0."""
    rng = np.random.default_rng(4)
    sparse = np.zeros((1, 64, 64, 1))
    sparse[0, 30:33, 30:33, 0] = rng.normal(0.7, 0.1, (3, 3))
    whole = normalize(sparse, ZSCORE)
    assert whole.max() > 15                                    # the problem
    masked = Normalization(in_graph=False, scheme="zscore", nonzero_mask=True)
    out = normalize(sparse, masked)
    inside = sparse[0, ..., 0] != 0
    assert np.all(out[0, ..., 0][~inside] == 0) and abs(out[0, ..., 0][inside].mean()) < 1e-5
    assert out.max() < 3 and np.allclose(out[0, ..., 0][inside].std(), 1, atol=1e-4)
    assert not normalize(np.zeros((1, 8, 8, 1)), masked).any()   # an empty slice stays 0
    # Decided at training by the share of nonzero pixels, recorded in the card.
    assert fit_normalization("zscore", list(sparse)) == masked
    assert not fit_normalization("zscore", [rng.normal(0, 1, (8, 8, 1))]).nonzero_mask
    assert Normalization.from_dict(masked.to_dict()) == masked
    with pytest.raises(ValueError, match="nonzero_mask is for the 'zscore' scheme only"):
        Normalization(in_graph=True, nonzero_mask=True)
