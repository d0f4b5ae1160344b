"""One training job, assembled once: the worker, the ``train`` command and the benchmarks
all add a domain and train it through these two functions, so a job trains the same way
wherever it runs (same seeding, same save, same report)."""
from typing import Callable, List, NamedTuple, Optional

import torch

from device_agent.errors import AgentError
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


class WarmStart(NamedTuple):
    used: bool
    note: str  # why (not): shown as a job event and in the report


def warm_start(net: AdaptedNet, name: str, adapter_dir: str, classes: List[str],
               params: TrainParams) -> WarmStart:
    """Initialize domain ``name`` (fresh from :func:`add_job_domain`) with the weights of
    the adapter in ``adapter_dir`` when it is the same model -- the same classes in the same
    order, method, backbone and adapter shapes -- so that training continues from it.
    Otherwise ``name`` stays fresh, and the note says why."""
    if not adapter_dir:
        return WarmStart(False, "no active adapter: trained from scratch")
    try:
        config = adapter_io.read_config(adapter_dir)
    except AgentError as exc:
        return WarmStart(False, "the active adapter is unreadable (%s): trained from "
                                "scratch" % exc.message)
    if list(config["class_names"]) != list(classes):
        return WarmStart(False, "the active adapter's classes (%s) differ from this "
                                "snapshot's (%s): trained from scratch"
                         % (", ".join(config["class_names"][:10]), ", ".join(classes[:10])))
    if config["method"] != params.method:
        return WarmStart(False, "the active adapter is %s, this job %s: trained from scratch"
                         % (config["method"], params.method))
    source = name + "-warm"
    try:
        adapter_io.load_domain(net, adapter_dir, source)
        loaded, target = net.domains[source].state_dict(), net.domains[name].state_dict()
        # checked first: load_state_dict copies the tensors that fit before it complains
        differ = sorted(k for k in set(loaded) | set(target) if k not in loaded
                        or k not in target or loaded[k].shape != target[k].shape)
        if differ:
            return WarmStart(False, "the active adapter does not fit this job (tensors %s "
                                    "differ): trained from scratch" % ", ".join(differ[:3]))
        net.domains[name].load_state_dict(loaded)
    except AgentError as exc:  # another backbone, a damaged file
        return WarmStart(False, "the active adapter cannot be loaded (%s): trained from "
                                "scratch" % exc.message[:200])
    finally:
        if source in net.domains:
            net.remove_domain(source)
        net.set_active(name)
    return WarmStart(True, "started from the active adapter (same %d classes)" % len(classes))


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
