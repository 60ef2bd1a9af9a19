"""Datasets: synthetic determinism, folder loading and its errors, targets, pipeline."""

import hashlib

import numpy as np
import pytest

from retinaunet_deploy.data.folder import load_folder_dataset, write_folder_dataset
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_dataset, synthetic_sample
from retinaunet_deploy.data.targets import boxes_from_mask, match_anchors
from retinaunet_deploy.errors import ConfigError, DataError
from retinaunet_deploy.model.anchors import AnchorConfig, decode_boxes, generate_anchors


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_different_seed_different_bytes():
    config = SyntheticConfig(size=64)
    first = _digest(*synthetic_dataset(config, 12, seed=7))
    again = _digest(*synthetic_dataset(config, 12, seed=7))
    other = _digest(*synthetic_dataset(config, 12, seed=8))
    assert first == again != other


def test_splits_are_disjoint_and_datasets_are_prefixes():
    config = SyntheticConfig(size=64)
    train, _ = synthetic_dataset(config, 5, seed=0, split="train")
    test, _ = synthetic_dataset(config, 5, seed=0, split="test")
    larger, _ = synthetic_dataset(config, 8, seed=0, split="train")
    assert not any(np.array_equal(a, b) for a in train for b in test)
    np.testing.assert_array_equal(larger[:5], train)


def test_synthetic_content_matches_its_description():
    config = SyntheticConfig(size=128)
    images, masks = synthetic_dataset(config, 40, seed=3)
    assert images.dtype == np.uint8 and images.shape == (40, 128, 128, 1)
    assert set(np.unique(masks)) == {0, 1, 2}
    for image, mask in zip(images, masks):
        boxes, classes = boxes_from_mask(mask, 3)
        assert 1 <= len(boxes) <= 3
        # Objects are brighter than the background on average.
        assert image[mask > 0].mean() > image[mask == 0].mean() + 30
    # A ring has a background hole inside its box: its box is not filled by the class.
    _, mask = synthetic_sample(config, 3, "train", 0)
    boxes, classes = boxes_from_mask(mask, 3)
    for (y1, x1, y2, x2), cls in zip(boxes.astype(int), classes):
        inside = mask[y1:y2, x1:x2] == cls + 1
        cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
        assert inside[cy - y1, cx - x1] == (cls == 0)  # solid disk filled at the centre


def test_synthetic_rejects_bad_config():
    with pytest.raises(ConfigError, match="size must be >= 32"):
        SyntheticConfig(size=16)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        synthetic_sample(SyntheticConfig(), 0, "dev", 0)


def test_boxes_from_mask_by_hand():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:5, 3:9] = 1
    mask[10:15, 10:12] = 1
    mask[16:19, 0:4] = 2
    boxes, classes = boxes_from_mask(mask, 3)
    np.testing.assert_array_equal(boxes, [[2, 3, 5, 9], [10, 10, 15, 12], [16, 0, 19, 4]])
    np.testing.assert_array_equal(classes, [0, 0, 1])


def test_match_anchors_positive_ignored_negative_and_forced():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 12], [0, 0, 10, 16], [20, 20, 30, 30],
                        [40, 40, 41, 41]], np.float32)
    boxes = np.array([[0, 0, 10, 10], [40, 40, 48, 48]], np.float32)
    cls_t, box_t = match_anchors(boxes, np.array([1, 0]), anchors, 2)
    # IoUs with box 0: 1.0, 0.83, 0.625, 0, 0; box 1 best anchor has IoU 1/64 -> forced.
    np.testing.assert_array_equal(cls_t[:, -1], [1, 1, 1, 0, 1])
    np.testing.assert_array_equal(cls_t[:, :2], [[0, 1], [0, 1], [0, 1], [0, 0], [1, 0]])
    np.testing.assert_allclose(decode_boxes(box_t[4, :4], anchors[4]), boxes[1], atol=1e-4)
    np.testing.assert_array_equal(box_t[:, -1], cls_t[:, -1])
    anchors[2] = [0, 0, 10, 22]  # IoU 0.4545 with box 0: ignored
    cls_t, _ = match_anchors(boxes, np.array([1, 0]), anchors, 2)
    assert cls_t[2, -1] == -1


def test_match_anchors_without_boxes_is_all_negative():
    anchors = generate_anchors(AnchorConfig(), (32, 32))
    cls_t, box_t = match_anchors(np.zeros((1, 4), np.float32), np.array([-1]), anchors, 2)
    assert np.all(cls_t == 0) and np.all(box_t == 0)


def test_folder_dataset_round_trip(tmp_path):
    images, masks = synthetic_dataset(SyntheticConfig(size=64), 4, seed=1)
    write_folder_dataset(tmp_path, images, masks)
    dataset = load_folder_dataset(tmp_path)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.masks, masks)
    assert dataset.num_classes == 3 and dataset.pixel_max == 255


def test_folder_sixteen_bit_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    sixteen = rng.integers(0, 65536, (2, 32, 32, 1)).astype(np.uint16)
    write_folder_dataset(tmp_path / "a", sixteen, np.zeros((2, 32, 32), np.uint8))
    assert load_folder_dataset(tmp_path / "a").pixel_max == 65535
    rgb = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    write_folder_dataset(tmp_path / "b", rgb, np.ones((2, 32, 32), np.uint8))
    assert load_folder_dataset(tmp_path / "b").images.shape == (2, 32, 32, 3)


def _folder(tmp_path, count=3, size=32):
    images, masks = synthetic_dataset(SyntheticConfig(size=max(size, 32)), count, seed=2)
    write_folder_dataset(tmp_path, images[:, :size, :size], masks[:, :size, :size])
    return tmp_path


def test_folder_error_missing_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/images does not exist; a folder dataset "
                                        f"needs"):
        load_folder_dataset(tmp_path)


def test_folder_error_empty(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no PNG images in .*images; put the training images"):
        load_folder_dataset(tmp_path)


def test_folder_error_missing_mask(tmp_path):
    root = _folder(tmp_path)
    (root / "masks" / "00001.png").unlink()
    with pytest.raises(DataError, match=r"images/00001.png has no mask .*masks/00001.png"):
        load_folder_dataset(root)


def test_folder_error_mask_without_image(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "00002.png").unlink()
    with pytest.raises(DataError, match=r"masks/00002.png has no image"):
        load_folder_dataset(root)


def test_folder_error_size_mismatch(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(root / "masks" / "00000.png")
    with pytest.raises(DataError, match=r"masks/00000.png is 16x32 but its image is 32x32"):
        load_folder_dataset(root)


def test_folder_error_images_of_different_sizes(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "images" / "00002.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "masks" / "00002.png")
    with pytest.raises(DataError, match=r"images/00002.png is 48x48x1 uint8 but .*00000.png is "
                                        r"32x32x1 uint8; all images must share"):
        load_folder_dataset(root)


def test_folder_error_mask_value_out_of_range(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    bad = np.zeros((32, 32), np.uint8)
    bad[3, 3] = 7
    Image.fromarray(bad).save(root / "masks" / "00001.png")
    with pytest.raises(DataError, match=r"masks/00001.png has class value 7 but the dataset has "
                                        r"3 classes"):
        load_folder_dataset(root, num_classes=3)


def test_folder_error_unreadable_file(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"cannot read .*images/00001.png: .*replace it with a "
                                        r"valid PNG"):
        load_folder_dataset(root)


def test_folder_error_size_not_multiple(tmp_path):
    root = _folder(tmp_path, size=40)
    with pytest.raises(DataError, match="are 40x40; height and width must be multiples of 16"):
        load_folder_dataset(root)


def test_pipeline_batches_and_flipped_targets_match_flipped_masks():
    from retinaunet_deploy.data.pipeline import make_dataset

    config = AnchorConfig()
    images, masks = synthetic_dataset(SyntheticConfig(size=64), 6, seed=4)
    dataset = make_dataset(images, masks, 3, 3, config, 2, seed=5)
    anchors = generate_anchors(config, (64, 64))
    batches = list(dataset)
    assert len(batches) == 2
    image, targets = batches[0]
    assert image.shape == (3, 64, 64, 1) and image.dtype.name == "float32"
    assert targets["cls_logits"].shape == (3, len(anchors), 3)
    assert targets["box_deltas"].shape == (3, len(anchors), 5)
    for mask, box_t in zip(targets["mask"].numpy(), targets["box_deltas"].numpy()):
        positive = box_t[:, 4] == 1
        decoded = np.unique(decode_boxes(box_t[positive, :4], anchors[positive]).round(2), axis=0)
        truth, _ = boxes_from_mask(mask, 3)
        np.testing.assert_allclose(decoded, np.unique(truth, axis=0), atol=1e-2)


def test_pipeline_is_reproducible():
    from retinaunet_deploy.data.pipeline import make_dataset

    images, masks = synthetic_dataset(SyntheticConfig(size=64), 6, seed=4)
    runs = [[b[0].numpy() for b in make_dataset(images, masks, 3, 3, AnchorConfig(), 2, seed=9)]
            for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
