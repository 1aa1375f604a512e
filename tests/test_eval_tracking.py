"""Training curves go to TensorBoard; asking for a tracker that is not installed is a config error."""
import importlib.util

import pytest

from hone.errors import ConfigError
from hone.training.trackers import Trackers, tracker_names


def test_tensorboard_receives_every_logged_scalar(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trackers = Trackers(tracker_names("tensorboard"), tmp_path)
    trackers.on_step({"step": 1, "loss": 2.5, "lr": 1e-4, "tokens_per_s": 100.0, "elapsed_s": 1.0})
    trackers.on_step({"step": 2, "loss": 2.0, "lr": 2e-4, "tokens_per_s": 110.0, "val_loss": 2.2})
    trackers.on_end()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 2.0)]
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("train/val_loss")] == [(2, 2.2)]
    assert "train/elapsed_s" not in events.Tags()["scalars"]


def test_tracker_names_parse_and_validate():
    assert tracker_names("none") == [] and tracker_names("") == []
    assert tracker_names(" TensorBoard ") == ["tensorboard"]
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        tracker_names("tensorboard,comet")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_asking_for_an_uninstalled_tracker_says_how_to_install_it():
    with pytest.raises(ConfigError, match="pip install wandb"):
        tracker_names("tensorboard,wandb")
