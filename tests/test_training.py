"""The training engine: real data, early stopping, checkpoints and resume."""
import json
import os

import pytest
import torch

from device_agent.errors import InvalidInput
from device_agent.model.builder import build_net
from device_agent.training import data
from device_agent.training.loop import Stopped, TrainConfig, Trainer


def _resnet_run(folder, out, epochs, on_progress=None, val_fraction=0.34):
    torch.manual_seed(0)
    split = data.discover(folder, val_fraction=val_fraction, seed=0)
    net = build_net("resnet18", "da2", len(split.classes), weights="random")
    config = TrainConfig(epochs=epochs, batch_size=4, resolution=32, lr=1e-2)
    trainer = Trainer(net, split, config, out, on_progress)
    return trainer, trainer.run()


class _Crash(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_result(textured_folder, tmp_path):
    """Bit-identical on CPU. Textured images make every augmentation draw count, and without
    a validation split the last epoch's weights are kept (not a best epoch both runs may
    share), so a random stream that drifts after resuming fails this test."""
    losses = {"whole": [], "resumed": []}

    def recorder(name, crash_at=None):
        def record(event):
            if event["event"] == "step" and event["epoch"] >= 1:
                if (event["epoch"], event["step"]) == crash_at:
                    raise _Crash()
                losses[name].append(event["loss"])
        return record

    whole, _ = _resnet_run(textured_folder, str(tmp_path / "whole"), 3, recorder("whole"),
                           val_fraction=0)
    with pytest.raises(_Crash):
        _resnet_run(textured_folder, str(tmp_path / "resumed"), 3, recorder("resumed", (1, 2)),
                    val_fraction=0)
    assert os.path.isfile(str(tmp_path / "resumed" / "checkpoint" / "state.json"))
    losses["resumed"] = []
    resumed, result = _resnet_run(textured_folder, str(tmp_path / "resumed"), 3,
                                  recorder("resumed"), val_fraction=0)
    assert result.resumed and result.epochs == 3
    assert len(losses["whole"]) == 2 * 5  # epochs 1-2, 18 images in batches of 4
    assert losses["resumed"] == losses["whole"]
    expected, got = whole.net.domain.state_dict(), resumed.net.domain.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_checkpoint_of_another_run_is_refused(small_folder, tmp_path):
    _resnet_run(small_folder, str(tmp_path), 1)
    with pytest.raises(InvalidInput):
        _resnet_run(small_folder, str(tmp_path), 2)


def test_early_stopping_keeps_the_best_epoch(small_folder, tmp_path):
    torch.manual_seed(0)
    split = data.discover(small_folder, val_fraction=0.34)
    net = build_net("resnet18", "last", 3, weights="random")
    config = TrainConfig(epochs=8, batch_size=4, resolution=32, lr=1e-9, patience=1)
    trainer = Trainer(net, split, config, str(tmp_path))
    result = trainer.run()  # a vanishing learning rate cannot improve: stops after 2 epochs
    assert result.epochs == 2 and len(trainer.history) == 2


def test_stratified_split_is_seeded_and_keeps_every_class():
    samples = [("img%d" % i, i % 3) for i in range(30)]
    train, val = data.stratified_split(samples, 0.2, seed=1)
    assert data.stratified_split(samples, 0.2, seed=1) == (train, val)
    assert sorted({label for _, label in val}) == [0, 1, 2]
    assert len(train) + len(val) == 30 and not set(train) & set(val)


@pytest.mark.parametrize("layout,message", [
    ({"a": 1}, "at least 2 classes"), ({"a": 1, "b": 0}, "at least 2 classes"),
    ({"train/a": 1, "train/b": 1, "val/c": 1}, "missing from train")])
def test_bad_layouts_are_clear_errors(tmp_path, layout, message):
    from PIL import Image

    for directory, count in layout.items():
        os.makedirs(str(tmp_path / directory))
        for i in range(count):
            Image.new("RGB", (8, 8)).save(str(tmp_path / directory / ("%d.png" % i)))
    with pytest.raises(InvalidInput, match=message):
        data.discover(str(tmp_path))


@pytest.mark.parametrize("mode", ["CMYK", "P", "I;16", "LA", "RGBA", "L", "1"])
def test_every_image_mode_decodes_to_rgb(tmp_path, mode):
    from PIL import Image

    path = str(tmp_path / ("x.%s" % ("tiff" if mode in ("CMYK", "I;16") else "png")))
    Image.new(mode, (5, 7)).save(path)
    image = data.load_rgb(path)
    assert image.mode == "RGB" and image.size == (5, 7)


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -1), ("lr", -1.0),
                                         ("lr", float("nan")), ("resolution", 4),
                                         ("label_smoothing", 1.0), ("val_fraction", 1.0)])
def test_absurd_settings_are_refused(field, value):
    with pytest.raises(InvalidInput):
        TrainConfig(**{field: value}).validate()


def test_devices_are_checked():
    from device_agent.training.loop import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("tpu", "banana", "cuda:0" if not torch.cuda.is_available() else "mps"):
        with pytest.raises(InvalidInput):
            resolve_device(bad)


def test_should_stop_ends_the_run_and_keeps_the_last_epochs_checkpoint(small_folder, tmp_path):
    torch.manual_seed(0)
    split = data.discover(small_folder, val_fraction=0.34)
    net = build_net("resnet18", "last", 3, weights="random")
    config = TrainConfig(epochs=5, batch_size=4, resolution=32)
    trainer = Trainer(net, split, config, str(tmp_path),
                      should_stop=lambda: len(trainer.history) >= 1)
    with pytest.raises(Stopped):
        trainer.run()
    assert len(trainer.history) == 1
    with open(os.path.join(trainer.checkpoint_dir, "state.json")) as handle:
        assert json.load(handle)["epoch"] == 0
