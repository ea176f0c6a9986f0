from dataclasses import fields

import pytest

from surfad.config import DataConfig, RunConfig
from surfad.data.splits import Splits
from surfad.errors import SurfadError
from surfad.models import available_models, model_spec
from surfad.training import resolve_config


def test_yaml_round_trip(tmp_path):
    config = RunConfig.from_dict({"model": "unet_vae", "data": {"path": "x", "image_size": 64}, "train": {"lr": 1}})
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    config.save(tmp_path / "c.yaml")
    assert RunConfig.load(tmp_path / "c.yaml") == config


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"epoch": 3}}, "config.train: unknown setting"),
        ({"train": {"epochs": "ten"}}, "config.train.epochs: expected int"),
        ({"data": {"skip_bad": "yes"}}, "config.data.skip_bad: expected true or false"),
        ({"data": 5}, "config.data: expected a mapping"),
    ],
)
def test_errors_name_the_field(raw, message):
    with pytest.raises(SurfadError, match=message):
        RunConfig.from_dict(raw)


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(SurfadError, match="bad.yaml: not valid YAML"):
        RunConfig.load(bad)


def test_run_metadata_that_is_not_json_is_a_clear_error(tmp_path):
    """A damaged meta.json names the file instead of raising a JSON traceback."""
    from surfad import bundle

    assert bundle.read_meta(tmp_path) == {}  # runs written without metadata still load
    (tmp_path / bundle.META).write_text("{not json")
    with pytest.raises(SurfadError, match=r"meta.json: not a readable run metadata file"):
        bundle.read_meta(tmp_path)


def test_input_channels_needs_a_resolved_config():
    """Training fills in data.channels; reading a model's input size from a config without it is a clear error."""
    config = RunConfig.from_dict({"data": {"channels": 1}})
    assert config.data.input_channels == 1
    with pytest.raises(SurfadError, match="data.channels is not set"):
        _ = RunConfig().data.input_channels


def test_the_input_size_defaults_to_the_models_own() -> None:
    """Unset, data.image_size becomes the size the model's validation chose (224 for the pretrained
    models, 128 for the from-scratch ones), and the flag's help says so; a size given is kept."""
    no_images = Splits("folder", "data", [], [], [])
    for name in available_models():
        expected = 224 if model_spec(name).pretrained else 128
        assert model_spec(name).image_size == expected, name
        unset = RunConfig(model=name, data=DataConfig(path="data", channels=3))
        assert resolve_config(unset, no_images).data.image_size == expected
        given = RunConfig(model=name, data=DataConfig(path="data", channels=3, image_size=96))
        assert resolve_config(given, no_images).data.image_size == 96
    help_text = next(f for f in fields(DataConfig) if f.name == "image_size").metadata["help"]
    assert "224 for the models on ImageNet features, 128 for the others" in help_text
    with pytest.raises(SurfadError, match="data.image_size is not set"):
        _ = DataConfig().input_size
