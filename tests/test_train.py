"""Training end to end on the tiny preset: loss goes down, artifacts and card written."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.card import load_card
from retinaunet_deploy.cli import cli
from retinaunet_deploy.data.folder import write_folder_dataset
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_samples
from retinaunet_deploy.errors import ArtifactError, ConfigError, DataError
from retinaunet_deploy.train import TrainOptions, train


@pytest.fixture
def tiny_run(tiny_trained):
    return tiny_trained


def test_tiny_training_loss_goes_down(tiny_run):
    _, card = tiny_run
    history = card.training["history"]
    for name in ("loss", "mask_loss", "cls_logits_loss"):
        assert history[name][-1] < history[name][0], (name, history[name])


def test_training_writes_a_loadable_model_and_its_card(tiny_run):
    import keras

    out, card = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.keras",
                                                     "model_card.json"]
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert model.input_shape == (None, None, None, 1)  # any height and width
    assert model.get_layer("preprocess") is not None  # normalisation in the graph
    assert load_card(out).to_dict() == json.loads((out / "model_card.json").read_text())
    assert card.to_dict() == json.loads((out / "model_card.json").read_text())
    assert card.builder["base_filters"] == 8 and card.class_names[1:] == ("disk", "ring")
    evaluation = card.evaluation
    assert evaluation["images"] == 8 and set(evaluation["dice"]) == {"disk", "ring"}
    assert evaluation["whole_images"] and evaluation["objects"] > 8
    assert 0 <= evaluation["map@0.1"] <= 1 and 0 <= evaluation["mean_dice"] <= 1
    assert card.to_dict()["input"] == {
        "name": "image", "layout": "NHWC", "height": None, "width": None, "channels": 1,
        "dtype": "float32", "stride": 16, "patch_size": 64, "pixel_dtype": "uint8",
        "pixel_max": 255}
    assert card.input.to_dict() == card.to_dict()["input"]
    assert card.training["images"] == {"train": 16, "val": 8, "test": 8}
    # The label rules are recorded (none for synthetic masks), and the card is strict JSON.
    assert card.to_dict()["labels"] == {"map": {}, "ignore_index": None}
    json.loads((out / "model_card.json").read_text(),
               parse_constant=lambda constant: pytest.fail(f"the card holds {constant}"))
    assert 1 <= card.training["best_epoch"] <= card.training["epochs_run"]
    assert 0 <= card.training["best_val_score"] <= 1
    # Fewer than 16 test images: said loudly, in the card.
    assert any("only 8 image(s)" in w for w in card.warnings)
    # The graph's Rescaling is the card's normalisation.
    norm = card.normalization
    assert norm.scale == pytest.approx(1 / norm.std)
    assert norm.offset == pytest.approx(-norm.mean / norm.std)


def test_saved_model_reproduces_the_reported_evaluation_on_whole_images(tiny_run):
    from retinaunet_deploy.data.splits import load_split
    from retinaunet_deploy.judge.ground_truth import evaluate_predictions
    from retinaunet_deploy.runtime import Predictor

    out, card = tiny_run
    samples = load_split(card, "test")
    assert len({s.image.shape for s in samples}) > 1     # whole images of several sizes
    predictions = Predictor.from_artifact(out / "model.keras").predict([s.image for s in samples])
    report = evaluate_predictions(predictions, samples, card.class_names)
    assert report == {k: v for k, v in card.evaluation.items()
                      if k not in ("split", "whole_images")}


def _mixed_folder(root, count=10, seed=1):
    """A folder dataset of mixed sizes, none equal to the training size."""
    samples = synthetic_samples(SyntheticConfig(size=64), count, seed=seed)
    write_folder_dataset(root, samples)
    return samples


FOLDER_OPTIONS = {"preset": "tiny", "size": 64, "epochs": 1, "steps_per_epoch": 2,
                  "batch_size": 4}


def test_folder_of_mixed_sizes_trains_and_records_its_splits(tmp_path):
    from retinaunet_deploy.data.splits import load_split

    samples = _mixed_folder(tmp_path / "data")
    assert all(s.image.shape[0] != 64 for s in samples)
    card = train(TrainOptions(data=str(tmp_path / "data"), **FOLDER_OPTIONS), tmp_path / "run",
                 verbose=0)
    data = card.data
    assert data["kind"] == "folder" and data["instances"]
    recorded = {split: [name for name, _ in entries] for split, entries in data["splits"].items()}
    assert sorted(n for names in recorded.values() for n in names) == sorted(s.name for s in samples)
    assert all(len(sha) == 64 for entries in data["splits"].values() for _, sha in entries)
    # Later stages read exactly the recorded lists.
    assert [s.name for s in load_split(card, "test")] == recorded["test"]
    assert (tmp_path / "run" / "model.keras").is_file()


def test_a_changed_folder_is_refused_never_resplit(tmp_path):
    from PIL import Image

    from retinaunet_deploy.data.splits import load_split

    samples = _mixed_folder(tmp_path / "data")
    card = train(TrainOptions(data=str(tmp_path / "data"), **FOLDER_OPTIONS), tmp_path / "run",
                 verbose=0)
    test_name = card.data["splits"]["test"][0][0]
    image = tmp_path / "data" / "images" / test_name
    original = image.read_bytes()
    # Changed pixels.
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    with pytest.raises(DataError, match=rf"images/{test_name} \(or its mask or instances\) "
                                        rf"changed since training; restore it or retrain"):
        load_split(card, "val")
    image.write_bytes(original)
    load_split(card, "val")
    # A file added.
    write_folder_dataset(tmp_path / "data", synthetic_samples(SyntheticConfig(size=64), 1,
                                                              seed=9, split="val"))
    with pytest.raises(DataError, match=r"synthetic-val-00000.png was added to the dataset "
                                        r"after training"):
        load_split(card, "train")
    for sub in ("images", "masks", "instances"):
        (tmp_path / "data" / sub / "synthetic-val-00000.png").unlink()
    # A file missing.
    for sub in ("images", "masks", "instances"):
        (tmp_path / "data" / sub / test_name).unlink()
    with pytest.raises(DataError, match=rf"{test_name} is recorded in the run's splits but gone"):
        load_split(card, "test")
    # The CLI stages say it in one line too.
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run")])
    assert result.exit_code == 1 and "recorded in the run's splits but gone" in result.output
    assert not (tmp_path / "run" / "model.onnx").exists()
    assert len(samples) == 10


def test_user_splits_file(tmp_path):
    samples = _mixed_folder(tmp_path / "data", count=6)
    names = [s.name for s in samples]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": names[:3], "val": names[3:5], "test": names[5:]}))
    card = train(TrainOptions(data=str(tmp_path / "data"), splits=str(splits), **FOLDER_OPTIONS),
                 tmp_path / "run", verbose=0)
    assert [n for n, _ in card.data["splits"]["test"]] == names[5:]
    assert any("only 1 image(s)" in w for w in card.warnings)
    splits.write_text(json.dumps({"train": names[:3], "val": names[2:5], "test": names[5:]}))
    with pytest.raises(DataError, match=rf"puts '{names[2]}' in both train and val"):
        train(TrainOptions(data=str(tmp_path / "data"), splits=str(splits), **FOLDER_OPTIONS),
              tmp_path / "run2", verbose=0)
    splits.write_text(json.dumps({"train": ["nope.png"], "val": names[3:5], "test": names[5:]}))
    with pytest.raises(DataError, match=r"names 'nope.png' \(train\), which is not in the "
                                        r"dataset's images/"):
        train(TrainOptions(data=str(tmp_path / "data"), splits=str(splits), **FOLDER_OPTIONS),
              tmp_path / "run3", verbose=0)
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


def test_too_few_folder_images(tmp_path):
    _mixed_folder(tmp_path / "data", count=2)
    with pytest.raises(DataError, match="the dataset has 2 image"):
        train(TrainOptions(data=str(tmp_path / "data"), preset="tiny", epochs=1),
              tmp_path / "run", verbose=0)


def test_bad_options():
    with pytest.raises(ConfigError, match="--epochs must be >= 1, got 0"):
        TrainOptions(epochs=0)
    with pytest.raises(ConfigError, match="learning rate must be in"):
        TrainOptions(learning_rate=5)
    with pytest.raises(ConfigError, match="--size must be a multiple of 16"):
        TrainOptions(size=100)
    with pytest.raises(ConfigError, match="--steps-per-epoch must be >= 1"):
        TrainOptions(steps_per_epoch=0)


def test_cli_train_reports_bad_data_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "nowhere"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path}/nowhere/images does not exist")
    assert "Traceback" not in result.output


def test_load_card_errors(tmp_path):
    with pytest.raises(ArtifactError, match="model_card.json not found; train a model"):
        load_card(tmp_path)
    (tmp_path / "model_card.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        load_card(tmp_path)
    (tmp_path / "model_card.json").write_text('{"card_version": 1}')
    with pytest.raises(ArtifactError, match=r"lacks \['builder'"):
        load_card(tmp_path)


def test_data_error_cleans_nothing_up_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"previous model")
    with pytest.raises(DataError):
        train(TrainOptions(data=str(tmp_path / "missing")), run, verbose=0)
    assert (run / "model.keras").read_bytes() == b"previous model"
    assert np.array_equal(sorted(p.name for p in run.iterdir()), ["model.keras"])
