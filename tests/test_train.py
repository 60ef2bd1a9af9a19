"""Training end to end on the tiny preset: loss goes down, artifacts and card written."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from retinaunet_deploy.card import load_card
from retinaunet_deploy.cli import cli
from retinaunet_deploy.data.folder import write_folder_dataset
from retinaunet_deploy.data.synthetic import SyntheticConfig, synthetic_dataset
from retinaunet_deploy.errors import ArtifactError, ConfigError, DataError
from retinaunet_deploy.train import TrainOptions, train


@pytest.fixture
def tiny_run(tiny_trained):
    return tiny_trained


def test_tiny_training_loss_goes_down(tiny_run):
    _, card = tiny_run
    history = card["training"]["history"]
    for name in ("loss", "mask_loss", "cls_logits_loss"):
        assert history[name][-1] < history[name][0], (name, history[name])


def test_training_writes_a_loadable_model_and_its_card(tiny_run):
    import keras

    out, card = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.keras",
                                                     "model_card.json"]
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert model.get_layer("preprocess") is not None  # normalisation in the graph
    assert load_card(out) == json.loads((out / "model_card.json").read_text())
    assert card["builder"]["base_filters"] == 8 and card["class_names"][1:] == ["disk", "ring"]
    evaluation = card["evaluation"]
    assert evaluation["images"] == 8 and set(evaluation["dice"]) == {"disk", "ring"}
    assert 0 <= evaluation["map@0.1"] <= 1 and 0 <= evaluation["mean_dice"] <= 1
    assert card["input"] == {"name": "image", "layout": "NHWC", "height": 64, "width": 64,
                             "channels": 1, "dtype": "float32", "pixel_dtype": "uint8",
                             "pixel_max": 255}
    # The graph's Rescaling is the card's normalisation.
    norm = card["normalization"]
    assert norm["scale"] == pytest.approx(1 / norm["std"])
    assert norm["offset"] == pytest.approx(-norm["mean"] / norm["std"])


def test_saved_model_reproduces_the_reported_evaluation(tiny_run):
    import keras

    from retinaunet_deploy.evaluate import evaluate_outputs, keras_outputs
    from retinaunet_deploy.model.anchors import AnchorConfig

    out, card = tiny_run
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    images, masks = synthetic_dataset(SyntheticConfig(size=64), 8, seed=0, split="test")
    report = evaluate_outputs(keras_outputs(model, images), masks, card["class_names"],
                              AnchorConfig.from_dict(card["anchors"]))
    assert report == {k: v for k, v in card["evaluation"].items() if k != "split"}


def test_folder_dataset_trains(tmp_path):
    images, masks = synthetic_dataset(SyntheticConfig(size=64), 12, seed=1)
    write_folder_dataset(tmp_path / "data", images, masks)
    card = train(TrainOptions(data=str(tmp_path / "data"), preset="tiny", epochs=1,
                              batch_size=4), tmp_path / "run", verbose=0)
    assert card["data"]["kind"] == "folder"
    assert sum(len(v) for v in card["data"]["files"].values()) == 12
    assert (tmp_path / "run" / "model.keras").is_file()


def test_folder_size_must_match_size_option(tmp_path):
    images, masks = synthetic_dataset(SyntheticConfig(size=64), 4, seed=1)
    write_folder_dataset(tmp_path / "data", images, masks)
    with pytest.raises(DataError, match="are 64x64 but --size is 128; omit --size"):
        train(TrainOptions(data=str(tmp_path / "data"), preset="tiny", size=128, epochs=1),
              tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


def test_too_few_folder_images(tmp_path):
    images, masks = synthetic_dataset(SyntheticConfig(size=64), 2, seed=1)
    write_folder_dataset(tmp_path / "data", images, masks)
    with pytest.raises(DataError, match="has 2 image pairs; training needs at least 3"):
        train(TrainOptions(data=str(tmp_path / "data"), preset="tiny", epochs=1),
              tmp_path / "run", verbose=0)


def test_bad_options():
    with pytest.raises(ConfigError, match="--epochs must be >= 1, got 0"):
        TrainOptions(epochs=0)
    with pytest.raises(ConfigError, match="learning rate must be in"):
        TrainOptions(learning_rate=5)


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
