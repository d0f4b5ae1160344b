"""``device-agent``: the command line. Importing this loads nothing heavy; each command
imports its side (torch for model work) only when it runs."""
import argparse
import json
import os
import sys
from typing import List, Optional

from device_agent import __version__
from device_agent.cli import export_command
from device_agent.cli.job_flags import add_job_flags
from device_agent.client import DEFAULT_SERVER
from device_agent.cpu_budget import configure_process
from device_agent.errors import AgentError
from device_agent.jobspec import DEFAULT_BACKBONE


def _add_memory(commands) -> None:
    p = commands.add_parser("memory", help="training memory of every method on a backbone")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--methods", nargs="+", help="default: all")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="lean methods accumulate gradients over chunks of this size (peak)")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--device", default="auto", help="peak steps on: auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON list")


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train one domain's adapter on an ImageFolder")
    p.add_argument("data_dir", help="train/<class>/* (+ optional val/<class>/*) or <class>/*")
    add_job_flags(p, local=True)
    p.add_argument("--plain", action="store_true", help="stock autograd (for comparison)")
    p.add_argument("--weights", help="backbone weights file, or 'random' (tests only)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--out", required=True, help="adapter directory (also holds the checkpoint)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")


def _add_predict(commands) -> None:
    p = commands.add_parser("predict", help="classify images with a saved adapter")
    p.add_argument("adapter_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--weights", help="backbone weights file, or 'random' (tests only)")
    p.add_argument("--json", action="store_true")


def _add_demo(commands) -> None:
    p = commands.add_parser("demo", help="start the daemon with a demo domain (real digits), "
                                         "follow its training, predict; no network")
    p.add_argument("--data-dir", default="runs/demo", help="the demo daemon's data dir")
    p.add_argument("--port", type=int, default=0, help="default: 8470, else a free port")
    p.add_argument("--device", default="auto", help="the worker's: auto, cpu, cuda")
    p.add_argument("--weights", help="'random': untrained backbone (tests only)")
    p.add_argument("--exit", action="store_true", help="stop the daemon after the prediction")


def _add_client_flags(p) -> None:
    p.add_argument("--server", default=os.environ.get("DEVICE_AGENT_SERVER", DEFAULT_SERVER),
                   help="the daemon's URL (or DEVICE_AGENT_SERVER)")
    p.add_argument("--token", help="default: DEVICE_AGENT_TOKEN, else the local token file")
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_push(commands) -> None:
    p = commands.add_parser("push", help="upload an ImageFolder to the daemon, train it, follow")
    p.add_argument("data_dir", help="train/<class>/* (+ optional val/<class>/*) or <class>/*")
    p.add_argument("--domain", required=True, help="a-z, 0-9, '_' and '-'")
    _add_client_flags(p)
    add_job_flags(p, local=False)
    p.add_argument("--no-follow", action="store_true", help="queue the job and return")


def _add_telemetry(commands) -> None:
    p = commands.add_parser("telemetry", help="telemetry tools: parse tegrastats output")
    p.add_argument("action", choices=("parse",))
    p.add_argument("file", help="a tegrastats log, or - for standard input")


def _add_status(commands) -> None:
    p = commands.add_parser("status", help="the daemon's domains (or one domain) and worker")
    p.add_argument("domain", nargs="?")
    _add_client_flags(p)


def _add_models(commands) -> None:
    p = commands.add_parser("models", help="the backbone model repository (models/)",
                            description="list: where each backbone's weights are; verify: "
                            "check their SHA-256 offline; fetch: download them (only on a "
                            "connected machine) into models/weights/ or --dir")
    p.add_argument("action", choices=("list", "verify", "fetch"))
    p.add_argument("names", nargs="*", help="default: every backbone of the manifest")
    p.add_argument("--dir", help="fetch into this directory (default: models/weights)")


def _add_serve(commands) -> None:
    p = commands.add_parser("serve", help="run the daemon: REST API + torch worker process",
                            description="Every flag also reads DEVICE_AGENT_<FLAG> from the "
                                        "environment (e.g. DEVICE_AGENT_TOKEN).")
    p.add_argument("--data-dir", help="default: ~/.local/share/device-agent")
    p.add_argument("--host", help="default 127.0.0.1; 0.0.0.0 exposes the API on the network")
    p.add_argument("--port", type=int, help="default 8470")
    p.add_argument("--token", help="API token; default: generated into DATA_DIR/token (0600)")
    p.add_argument("--worker-python", help="the torch worker's interpreter (JetPack 4: python3.6)")
    p.add_argument("--worker-device", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--worker-weights", help="'random': untrained backbones (tests only)")
    p.add_argument("--memory-limit-mb", type=int,
                   help="default per-job memory ceiling (0: what MemAvailable leaves)")
    p.add_argument("--threads", type=int,
                   help="fix the worker's torch threads (default 0: tuned within the CPUs its "
                        "affinity and cgroup quota allow; README: Sharing the CPU)")
    p.add_argument("--predict-backend", choices=("torch", "onnxruntime", "tensorrt"),
                   help="what answers predictions (default torch; one the worker cannot run "
                        "falls back to torch with a logged reason)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="upload the demo domain (digits) at start and queue its training")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="device-agent", description=__doc__)
    parser.add_argument("--version", action="version", version="device-agent " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_memory, _add_train, _add_predict, _add_demo, _add_models, _add_serve,
                _add_push, _add_status, _add_telemetry, export_command.add_parser):
        add(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command == "serve":  # the API side: must not import torch
        from device_agent.cli import serve_command as commands
    elif args.command in ("push", "status", "demo"):  # HTTP clients: no torch either
        from device_agent.cli import client_commands as commands
    elif args.command == "telemetry":
        from device_agent.cli import telemetry_command as commands
    elif args.command == "models":
        from device_agent.cli import models_command as commands
    else:  # the torch side: its thread policy must be in place before torch is imported
        try:
            configure_process()
        except AgentError as exc:
            print("error: %s" % exc.message, file=sys.stderr)
            return exc.exit_code
        from device_agent.cli import torch_commands as commands
        if args.command == "export":
            commands = export_command
    handler = getattr(commands, "run_" + args.command)
    try:
        return handler(args)
    except AgentError as exc:
        print("error: %s" % exc.message, file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.to_dict()}))
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
