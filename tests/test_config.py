import pytest

from hone.config import load_config
from hone.errors import ConfigError


def test_defaults_follow_practice():
    cfg = load_config()
    assert (cfg.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.warmup_ratio, cfg.train.seed) == (2e-4, 3, 16, 0.1, 42)
    assert cfg.train.scheduler == "cosine"
    assert load_config(overrides={"method.name": "full"}).lr == 2e-5


def test_overrides_accept_dotted_and_unique_short_names():
    cfg = load_config(overrides={"lr": "1e-4", "train.epochs": 2, "data.train": "x.jsonl"})
    assert cfg.lr == 1e-4 and cfg.train.epochs == 2 and str(cfg.data.train) == "x.jsonl"


def test_unknown_key_in_yaml_names_line_and_suggests_nearest(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  name: x\ntrain:\n  lr: 1e-4\n  epoch: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:5: unknown key 'train.epoch'; did you mean 'train.epochs'?"


def test_unknown_override_suggests_full_path():
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_config(overrides={"trian.lr": 1})


def test_invalid_value_is_one_line_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: train.lr: Input should be greater than 0"):
        load_config(path)
