"""The trainer's per-class results: the kept (best) epoch's validation confusion matrix in
the job report, through a resume, and none without a validation split (torch side: runs on
Python 3.6 + torch 1.10 too)."""
import json

import pytest
import torch

from device_agent import classmetrics
from device_agent.model.builder import build_net
from device_agent.training import data
from device_agent.training.loop import TrainConfig, Trainer, evaluate


class _Crash(Exception):
    pass


def _run(folder, out, epochs=3, val_fraction=0.5, crash_after_epoch=None):
    torch.manual_seed(0)
    split = data.discover(folder, val_fraction=val_fraction, seed=0)
    net = build_net("resnet18", "last", len(split.classes), weights="random")
    config = TrainConfig(epochs=epochs, batch_size=4, resolution=32, lr=3e-2)

    def progress(event):
        if event["event"] == "epoch" and event["epoch"] == crash_after_epoch:
            raise _Crash()
    trainer = Trainer(net, split, config, out, progress)
    return trainer, trainer.run()


def _matrix(report):
    return classmetrics.from_cells(report.val_confusion, len(report.classes))


def test_the_report_holds_the_kept_epochs_matrix(textured_folder, tmp_path):
    trainer, report = _run(textured_folder, str(tmp_path))
    matrix = _matrix(report)
    results = report.class_results()
    assert results.matrix == matrix and results.classes == trainer.split.classes
    assert results.total == len(trainer.split.val) == report.val_images == 9
    assert results.correct / float(results.total) == report.val_top1
    assert [sum(row) for row in matrix] == [3, 3, 3]  # each class's val images
    # the kept weights (loaded at the end of the run) predict exactly this matrix again
    batches = data.loader(trainer.split.val, data.eval_transform(trainer.transforms), 4,
                          shuffle=False)
    assert evaluate(trainer.net, batches, 3).confusion == matrix
    # the best epoch, not the last: its top-1 is the report's
    assert report.val_top1 == max(h["val_top1"] for h in report.history)


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_resumed_run_reports_the_same_matrix(textured_folder, tmp_path, old_checkpoint):
    """Resuming restores the best epoch's matrix with its weights; a checkpoint written
    before per-class results (no best_confusion) evaluates the kept weights instead."""
    _, whole = _run(textured_folder, str(tmp_path / "whole"))
    with pytest.raises(_Crash):
        _run(textured_folder, str(tmp_path / "resumed"), crash_after_epoch=1)
    state_path = str(tmp_path / "resumed" / "checkpoint" / "state.json")
    with open(state_path) as handle:
        state = json.load(handle)
    assert state["best_confusion"] is not None
    if old_checkpoint:
        del state["best_confusion"]
        with open(state_path, "w") as handle:
            json.dump(state, handle)
    _, resumed = _run(textured_folder, str(tmp_path / "resumed"))
    assert resumed.resumed and resumed.val_top1 == whole.val_top1
    assert _matrix(resumed) == _matrix(whole)


def test_no_validation_split_no_matrix(small_folder, tmp_path):
    _, report = _run(small_folder, str(tmp_path), epochs=1, val_fraction=0)
    assert report.val_images == 0 and report.val_confusion is None
    assert report.class_results() is None
