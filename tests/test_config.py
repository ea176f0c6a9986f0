import pytest

from surfad.config import RunConfig
from surfad.errors import SurfadError


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
