"""One training job, assembled once: the worker, the ``train`` command and the benchmarks
all add a domain and train it through these two functions, so a job trains the same way
wherever it runs (same seeding, same save, same report)."""
from typing import Callable, Optional

import torch

from device_agent.jobspec import JobReport, TrainParams
from device_agent.model import adapter_io
from device_agent.model.network import AdaptedNet, DomainModule
from device_agent.training import data
from device_agent.training.loop import Progress, StopCheck, TrainConfig, Trainer
from device_agent.training.threads import ThreadTuner


def add_job_domain(net: AdaptedNet, name: str, params: TrainParams,
                   classes: int) -> DomainModule:
    """A fresh domain for ``params``, made active. The job's seed is set first: it draws
    the domain's initial weights (and then the augmentations), so equal jobs give equal
    adapters."""
    torch.manual_seed(params.seed)
    return net.add_domain(name, DomainModule(net.backbone, params.method, classes,
                                             params.adapter_settings, params.train_bn))


def train_domain(net: AdaptedNet, split: data.Split, config: TrainConfig, out_dir: str,
                 on_progress: Optional[Progress] = None, tuner: Optional[ThreadTuner] = None,
                 should_stop: Optional[StopCheck] = None,
                 on_report: Optional[Callable[[JobReport], None]] = None,
                 save: bool = True) -> JobReport:
    """Train ``net``'s active domain on ``split`` (resuming from a checkpoint of this very
    run in ``out_dir``), then save the adapter into ``out_dir`` (unless not ``save``) and
    drop the checkpoint. ``on_report`` completes the report before it is saved with the
    adapter. A ``should_stop`` that says yes raises ``Stopped``; the checkpoint stays."""
    trainer = Trainer(net, split, config, out_dir, on_progress, tuner, should_stop)
    report = trainer.run()
    if on_report is not None:
        on_report(report)
    if save:
        adapter_io.save_report(net, net.active, out_dir, report)
    trainer.clear_checkpoint()
    return report
