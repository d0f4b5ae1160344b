"""Handlers of the commands that run torch here: memory, train, predict (the `models`
command, in models_command.py, only manages the weights files and never imports torch)."""
import json
import os
from typing import Dict, List, Tuple

import torch

from device_agent.cli.job_flags import params_from_args
from device_agent.cli.progress import TrainingProgress
from device_agent.errors import InvalidInput
from device_agent.jobspec import JobReport, TrainParams
from device_agent.model import adapter_io, backbones
from device_agent.model.network import AdaptedNet
from device_agent.training import data, job
from device_agent.training.inference import classify
from device_agent.training.job import add_job_domain
from device_agent.training.loop import MB, TrainConfig, resolve_device


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run_memory(args) -> int:
    from device_agent.training.profile import memory_report

    if args.resolution < 16 or args.batch_size < 1:
        raise InvalidInput("resolution must be >= 16 and batch size >= 1")
    device = resolve_device(args.device)
    rows = memory_report(args.backbone, args.resolution, args.batch_size, args.methods,
                         peak=not args.no_peak, micro_batch=args.micro_batch, device=str(device))
    if args.json:
        keys = ("method", "saved_activation_mb", "estimated_mb", "theoretical_min_mb",
                "trainable_params", "peak_step_mb")
        extra = ("plain_saved_activation_mb", "peak_train_mb", "ratio_to_finetune",
                 "cuda_peak_step_mb")
        print(json.dumps([{k: row.get(k) for k in keys + extra if k in keys or k in row}
                          for row in rows]))
        return 0
    print("%s, %d px, batch %d (random weights: memory does not depend on their values)"
          % (args.backbone, args.resolution, args.batch_size))
    print("%-22s %10s %10s %10s %10s %12s %9s %10s %10s" % (
        "method", "saved MB", "plain MB", "estimate", "minimum", "trainable", "vs ft",
        "step peak", "train peak"))
    for row in rows:
        print("%-22s %10.2f %10.2f %10.2f %10.2f %12d %9s %10s %10s%s" % (
            row["method"], row["saved_activation_mb"], row["plain_saved_activation_mb"],
            row["estimated_mb"], row["theoretical_min_mb"], row["trainable_params"],
            _fmt(row["ratio_to_finetune"], ".1f") + "x", _fmt(row["peak_step_mb"], ".1f"),
            _fmt(row["peak_train_mb"], ".1f"),
            "  cuda peak %.1f MB" % row["cuda_peak_step_mb"] if "cuda_peak_step_mb" in row else ""))
    return 0


def train_domain(data_dir: str, args) -> JobReport:
    """Train and save one domain as the flags say; returns the job's report."""
    params = TrainParams.from_mapping(params_from_args(args))
    config = TrainConfig.from_params(params, args.device, lean=not args.plain).validate()
    split = data.discover(data_dir, config.val_fraction, config.seed)
    net = AdaptedNet(backbones.build_backbone(params.backbone, args.weights)[0])
    add_job_domain(net, "domain", params, len(split.classes))
    return job.train_domain(net, split, config, args.out, TrainingProgress())


# The summary ``train`` prints; memory in 10^6-byte MB like the ``memory`` command's.
SUMMARY = ("method", "backbone", "epochs", "train_images", "val_images", "val_top1",
           "trainable_params", "adapter_bytes", "images_per_sec")


def run_train(args) -> int:
    report = train_domain(args.data_dir, args)
    summary = {k: getattr(report, k) for k in SUMMARY}
    summary.update(saved_activation_mb=report.saved_activation_bytes / MB,
                   peak_rss_mb=report.peak_rss_bytes / MB)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print("%-20s %s" % (key, value))
        print("adapter saved to %s" % os.path.abspath(args.out))
    return 0


def load_for_predict(adapter_dir: str, weights=None) -> Tuple[AdaptedNet, Dict[str, object]]:
    config = adapter_io.read_config(adapter_dir)
    net = AdaptedNet(backbones.build_backbone(config["backbone"]["name"], weights)[0])
    return net, adapter_io.load_domain(net, adapter_dir, "domain")


def predict_images(net: AdaptedNet, config: Dict[str, object], paths: List[str],
                   top_k: int, device: torch.device) -> List[Dict[str, object]]:
    tops = classify(net, config, [data.load_rgb(p) for p in paths], top_k, device)
    return [{"image": path, "top": top} for path, top in zip(paths, tops)]


def run_predict(args) -> int:
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        raise InvalidInput("no such image: %s" % ", ".join(missing[:3]))
    if args.top_k < 1:
        raise InvalidInput("--top-k must be >= 1")
    net, config = load_for_predict(args.adapter_dir, args.weights)
    results = predict_images(net, config, args.images, args.top_k, resolve_device(args.device))
    if args.json:
        print(json.dumps(results))
        return 0
    for result in results:
        best = ", ".join("%s %.3f" % (t["class"], t["probability"]) for t in result["top"])
        print("%s: %s" % (result["image"], best))
    return 0
