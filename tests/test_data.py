"""Datasets: synthetic data, folder loading (sizes, TIFF, instances) and its errors,
instance boxes, anchor matching, the patch sampler."""

import hashlib

import numpy as np
import pytest

from retinaunet_deploy.data.folder import load_folder_dataset, write_folder_dataset
from retinaunet_deploy.data.patches import PatchBatches, PatchOptions
from retinaunet_deploy.data.sample import (
    Sample,
    boxes_from_mask,
    components_as_instances,
    instance_boxes,
)
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_sample, synthetic_samples
from retinaunet_deploy.data.targets import match_anchors
from retinaunet_deploy.errors import ConfigError, DataError
from retinaunet_deploy.model.anchors import AnchorConfig, generate_anchors
from retinaunet_deploy.model.boxes import decode_boxes


def _digest(samples):
    h = hashlib.sha256()
    for s in samples:
        for a in (s.image, s.mask, s.instances):
            h.update(a.tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_different_seed_different_bytes():
    config = SyntheticConfig(size=64)
    first = _digest(synthetic_samples(config, 12, seed=7))
    assert first == _digest(synthetic_samples(config, 12, seed=7))
    assert first != _digest(synthetic_samples(config, 12, seed=8))


def test_splits_are_disjoint_and_datasets_are_prefixes():
    config = SyntheticConfig(size=64)
    train = synthetic_samples(config, 5, seed=0, split="train")
    test = synthetic_samples(config, 5, seed=0, split="test")
    larger = synthetic_samples(config, 8, seed=0, split="train")
    assert not any(a.image.shape == b.image.shape and np.array_equal(a.image, b.image)
                   for a in train for b in test)
    assert _digest(larger[:5]) == _digest(train)


def test_synthetic_images_vary_in_size_and_have_touching_objects_with_instances():
    config = SyntheticConfig(size=128)
    samples = synthetic_samples(config, 30, seed=3)
    shapes = {s.image.shape[:2] for s in samples}
    assert len(shapes) == 30                       # sizes and aspects vary
    assert all(min(s) >= 160 and max(s) <= 320 for s in shapes)  # larger than the patch
    assert any(h != w for h, w in shapes)
    merged = 0
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 1
        assert set(np.unique(s.mask)) <= {0, 1, 2}
        assert np.array_equal(s.mask > 0, s.instances > 0)
        boxes, _classes = instance_boxes(s.instances, s.mask)
        components, _ = boxes_from_mask(s.mask, 3)
        merged += len(boxes) - len(components)
        # Objects are brighter than the background on average.
        assert s.image[s.mask > 0].mean() > s.image[s.mask == 0].mean() + 10
    # Touching objects: instance labels give more boxes than connected components.
    assert merged > 10


def test_synthetic_ring_has_a_background_hole():
    sample = synthetic_sample(SyntheticConfig(size=128, touching_probability=0.0,
                                              ring_probability=1.0), 3, "train", 0)
    boxes, classes = instance_boxes(sample.instances, sample.mask)
    assert np.all(classes == 1)
    for y1, x1, y2, x2 in boxes.astype(int):
        assert sample.mask[(y1 + y2) // 2, (x1 + x2) // 2] == 0


def test_synthetic_rejects_bad_config():
    with pytest.raises(ConfigError, match="size must be >= 32"):
        SyntheticConfig(size=16)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        synthetic_sample(SyntheticConfig(), 0, "dev", 0)


def test_touching_objects_with_instance_labels_give_one_box_each():
    mask = np.zeros((20, 30), np.uint8)
    instances = np.zeros((20, 30), np.int32)
    mask[5:15, 2:12] = 1
    instances[5:15, 2:12] = 1
    mask[5:15, 12:22] = 1       # touches the first: one connected component
    instances[5:15, 12:22] = 2
    boxes, classes = instance_boxes(instances, mask)
    np.testing.assert_array_equal(boxes, [[5, 2, 15, 12], [5, 12, 15, 22]])
    np.testing.assert_array_equal(classes, [0, 0])
    merged, _ = instance_boxes(components_as_instances(mask), mask)
    np.testing.assert_array_equal(merged, [[5, 2, 15, 22]])


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


# === Folder datasets ===

def test_folder_dataset_of_mixed_sizes_round_trips_with_instances(tmp_path):
    samples = synthetic_samples(SyntheticConfig(size=64), 4, seed=1)
    write_folder_dataset(tmp_path, samples)
    loaded = load_folder_dataset(tmp_path)
    assert [s.name for s in loaded] == [f"synthetic-train-0000{i}.png" for i in range(4)]
    assert len({s.image.shape for s in loaded}) == 4
    for original, read in zip(samples, loaded):
        np.testing.assert_array_equal(read.image, original.image)
        np.testing.assert_array_equal(read.mask, original.mask)
        np.testing.assert_array_equal(read.instances, original.instances)
        assert read.sha256 and len(read.sha256) == 64


def test_folder_tiff_sixteen_bit_rgb_and_mixed_suffixes(tmp_path):
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "a" / sub).mkdir(parents=True)
    sixteen = rng.integers(0, 65536, (40, 56)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a" / "images" / "x.tif", sixteen)
    Image.fromarray(np.ones((40, 56), np.uint8)).save(tmp_path / "a" / "masks" / "x.png")
    (sample,) = load_folder_dataset(tmp_path / "a")
    assert sample.image.shape == (40, 56, 1) and sample.image.dtype == np.uint16
    np.testing.assert_array_equal(sample.image[..., 0], sixteen)
    rgb = [Sample(f"{i}.png", rng.integers(0, 256, (32, 48, 3)).astype(np.uint8),
                  np.ones((32, 48), np.uint8), np.ones((32, 48), np.int32)) for i in range(2)]
    write_folder_dataset(tmp_path / "b", rgb, instances=False)
    assert load_folder_dataset(tmp_path / "b")[0].image.shape == (32, 48, 3)


def _folder(tmp_path, count=3):
    write_folder_dataset(tmp_path, synthetic_samples(SyntheticConfig(size=32), count, seed=2))
    return tmp_path


def test_folder_error_missing_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/images does not exist; a folder dataset "
                                        f"needs"):
        load_folder_dataset(tmp_path)


def test_folder_error_empty(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no PNG or TIFF images in .*images; put the training"):
        load_folder_dataset(tmp_path)


def test_folder_error_missing_mask(tmp_path):
    root = _folder(tmp_path)
    (root / "masks" / "synthetic-train-00001.png").unlink()
    with pytest.raises(DataError, match=r"images/synthetic-train-00001.png has no mask in"):
        load_folder_dataset(root)


def test_folder_error_mask_without_image(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "synthetic-train-00002.png").unlink()
    with pytest.raises(DataError, match=r"masks/synthetic-train-00002.png has no image"):
        load_folder_dataset(root)


def test_folder_error_missing_instances_file(tmp_path):
    root = _folder(tmp_path)
    (root / "instances" / "synthetic-train-00000.png").unlink()
    with pytest.raises(DataError, match=r"00000.png has no instance labels in .*instances"):
        load_folder_dataset(root)


def test_folder_error_size_mismatch(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(root / "masks" / "synthetic-train-00000.png")
    with pytest.raises(DataError, match=r"00000.png is 16x32 but its image is \d+x\d+"):
        load_folder_dataset(root)


def test_folder_error_instance_labels_of_another_size(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    Image.fromarray(np.zeros((20, 20), np.uint16)).save(
        root / "instances" / "synthetic-train-00001.png")
    with pytest.raises(DataError, match=r"instance labels .*00001.png are 20x20 but the image "
                                        r"is \d+x\d+; they must match"):
        load_folder_dataset(root)


def _one_sample_folder(root, mask, instances=None, image=None):
    from PIL import Image

    for sub in ("images", "masks") + (("instances",) if instances is not None else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    image = np.zeros(mask.shape, np.uint8) if image is None else image
    Image.fromarray(image).save(root / "images" / "a.png")
    Image.fromarray(mask).save(root / "masks" / "a.png")
    if instances is not None:
        import tifffile

        tifffile.imwrite(root / "instances" / "a.tif", instances)
    return root


def test_folder_error_instance_spanning_two_classes(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[2:10, 2:10], mask[2:10, 10:20] = 1, 2
    instances = np.zeros((32, 32), np.uint16)
    instances[2:10, 2:20] = 5
    root = _one_sample_folder(tmp_path, mask, instances)
    with pytest.raises(DataError, match=r"instance 5 in .*a.tif spans mask classes \[1, 2\]"):
        load_folder_dataset(root)


def test_folder_error_more_instances_than_sixteen_bits(tmp_path):
    instances = np.zeros((32, 32), np.uint32)
    instances[3, 3] = 70000
    root = _one_sample_folder(tmp_path, (instances > 0).astype(np.uint8), instances)
    with pytest.raises(DataError, match=r"use id 70000, more than a 16-bit label image can "
                                        r"hold \(65535\)"):
        load_folder_dataset(root)


def test_folder_error_multi_page_tiff(tmp_path):
    import tifffile

    root = _one_sample_folder(tmp_path, np.zeros((32, 32), np.uint8))
    (root / "images" / "a.png").unlink()
    tifffile.imwrite(root / "images" / "a.tif", np.zeros((3, 32, 32), np.uint8),
                     photometric="minisblack", metadata=None)
    with pytest.raises(DataError, match=r"a.tif is a multi-page TIFF \(3 pages\); save each 2D"):
        load_folder_dataset(root)


def test_folder_error_image_smaller_than_a_stride(tmp_path):
    root = _one_sample_folder(tmp_path, np.zeros((12, 40), np.uint8))
    with pytest.raises(DataError, match=r"a.png is 12x40, smaller than one network stride "
                                        r"\(16 px\)"):
        load_folder_dataset(root)


def test_folder_error_negative_mask_and_too_many_classes(tmp_path):
    import tifffile

    root = _one_sample_folder(tmp_path / "neg", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(root / "masks" / "a.tif", np.full((32, 32), -1, np.int16))
    (root / "masks" / "a.png").unlink()
    with pytest.raises(DataError, match=r"mask .*a.tif has negative value -1"):
        load_folder_dataset(root)
    big = np.zeros((32, 32), np.uint16)
    big[0, 0] = 300
    root = _one_sample_folder(tmp_path / "many", big)
    with pytest.raises(DataError, match=r"a.png has class value 300; at most 256 classes"):
        load_folder_dataset(root)


def test_folder_error_channels_differ(tmp_path):
    from PIL import Image

    root = _folder(tmp_path)
    name = "synthetic-train-00002.png"
    shape = np.asarray(Image.open(root / "masks" / name)).shape
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(root / "images" / name)
    with pytest.raises(DataError, match=r"00002.png has 3 channel\(s\) uint8 but .*00000.png "
                                        r"has 1 uint8; all images must share"):
        load_folder_dataset(root)


def test_folder_error_mask_value_out_of_range(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(DataError, match=r"has class value 2 but the dataset has 2 classes"):
        load_folder_dataset(root, num_classes=2)


def test_folder_error_unreadable_file(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "synthetic-train-00001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"cannot read .*00001.png: .*replace it with a valid PNG"):
        load_folder_dataset(root)


# === Patches ===

def _batches(samples, **kwargs):
    options = PatchOptions(size=64, **kwargs)
    anchors = generate_anchors(AnchorConfig(), (64, 64))
    return PatchBatches(samples, options, 8, anchors, 2, 80.0, 20.0, 255, seed=5), anchors


def test_patch_sampler_oversamples_foreground():
    # Sparse objects: a uniform patch rarely holds one, a centred one always does.
    samples = synthetic_samples(SyntheticConfig(size=64, objects_per_patch=(0.3, 0.3),
                                                side_range=(4.0, 4.0)), 6, seed=1)
    rates = {}
    for fraction in (0.0, 1.0):
        batches, _ = _batches(samples, foreground_fraction=fraction)
        centres = [masks[:, 24:40, 24:40].any(axis=(1, 2)).mean()
                   for masks in (batches.patches(i)[1] for i in range(20))]
        rates[fraction] = float(np.mean(centres))
    assert rates[1.0] > 0.95 and rates[0.0] < 0.5


def test_patch_sampler_pads_small_images_and_targets_follow_the_pixels():
    # An object over the left 20 columns, touching the top and bottom edges.
    mask = np.zeros((40, 50), np.uint8)
    mask[:, :20] = 1
    image = np.where(mask, 200, 50).astype(np.uint8)[..., None]
    small = [Sample("s", image, mask, mask.astype(np.int32))]
    batches, anchors = _batches(small, intensity_jitter=0.0)
    images, masks, boxes = batches.patches(0)
    assert images.shape == (8, 64, 64, 1) and masks.shape == (8, 64, 64)
    for image, mask, (box, _) in zip(images, masks, boxes):
        # Padded by mirroring, as the Predictor pads (no strip of the training mean, 80):
        # the object continues into its mirror below the image, as one object.
        assert np.all(image[mask == 0] == 50.0) and np.all(image[mask == 1] == 200.0)
        assert mask.sum() == 64 * 20 and len(box) == 1   # rotated or flipped
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(box, [[ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]])
    _, targets = batches.batch(0)
    positive = targets["box_deltas"][0, :, 4] == 1
    decoded = decode_boxes(targets["box_deltas"][0, positive, :4], anchors[positive])
    np.testing.assert_allclose(decoded, np.repeat(boxes[0][0], positive.sum(), 0), atol=1e-2)


def test_patch_batches_are_reproducible_and_differ_by_index():
    samples = synthetic_samples(SyntheticConfig(size=64), 4, seed=1)
    first, _ = _batches(samples)
    again, _ = _batches(samples)
    np.testing.assert_array_equal(first.batch(3)[0], again.batch(3)[0])
    assert not np.array_equal(first.batch(3)[0], first.batch(4)[0])
