"""Handlers of the torch-side commands: memory, train, predict."""
import json
import os
from typing import Dict, List, Tuple

import torch

from device_agent.cli.progress import TrainingProgress
from device_agent.errors import InvalidInput
from device_agent.model import adapter_io, backbones
from device_agent.model.builder import build_net
from device_agent.model.network import AdaptedNet
from device_agent.training import data
from device_agent.training.inference import classify
from device_agent.training.loop import TrainConfig, Trainer, resolve_device


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


def train_domain(data_dir: str, args, backbone: str, method: str) -> Dict[str, object]:
    """Train and save one domain; returns the result with the adapter's size."""
    config = TrainConfig(epochs=args.epochs, lr=args.lr,
                         batch_size=0 if args.batch_size == "auto" else args.batch_size,
                         memory_limit_mb=args.memory_limit_mb,
                         label_smoothing=args.label_smoothing, resolution=args.resolution,
                         seed=args.seed, lean=not args.plain, micro_batch=args.micro_batch,
                         patience=args.patience, hflip=not args.no_hflip,
                         val_fraction=args.val_fraction, device=args.device).validate()
    torch.manual_seed(config.seed)
    split = data.discover(data_dir, config.val_fraction, config.seed)
    net = build_net(backbone, method, len(split.classes), weights=args.weights,
                    adapter_settings=dict(args.adapter_setting), train_bn=args.train_bn)
    trainer = Trainer(net, split, config, args.out, TrainingProgress())
    result = trainer.run()
    saved = adapter_io.save_domain(net, net.active, args.out, split.classes, trainer.resolution,
                                   metrics={k: v for k, v in result.items() if k != "history"})
    trainer.clear_checkpoint()
    result["adapter_bytes"] = saved["weights_bytes"]
    result["adapter_dir"] = os.path.abspath(args.out)
    return result


def run_train(args) -> int:
    result = train_domain(args.data_dir, args, args.backbone, args.method)
    summary = {k: result[k] for k in (
        "method", "backbone", "epochs", "train_images", "val_images", "val_top1",
        "trainable_params", "adapter_bytes", "saved_activation_mb", "peak_rss_mb",
        "images_per_sec")}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print("%-20s %s" % (key, value))
        print("adapter saved to %s" % result["adapter_dir"])
    return 0


def load_for_predict(adapter_dir: str, weights=None) -> Tuple[AdaptedNet, Dict[str, object]]:
    config = adapter_io.read_config(adapter_dir)
    backbone, info = backbones.build_backbone(config["backbone"]["name"], weights)
    net = AdaptedNet(backbone)
    net.backbone_info = info
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
