"""The training job's command-line flags, one per parameter of :data:`device_agent.jobspec.PARAMS`
(stdlib only: ``train`` runs them locally, ``push`` sends them to the daemon)."""
import argparse
import json
from typing import Dict, Optional

from device_agent import jobspec

# A parameter whose flag is not its name: one KEY=VALUE per flag, repeated.
REPEATED = {"adapter_settings": "--adapter-setting"}


def flag_of(param: jobspec.Param) -> str:
    """The flag that sets ``param`` (a boolean that is on by default is ``--no-...``)."""
    if param.name in REPEATED:
        return REPEATED[param.name]
    dashed = param.name.replace("_", "-")
    return "--no-" + dashed if param.type is bool and param.default else "--" + dashed


def add_job_flags(parser: argparse.ArgumentParser, local: bool) -> None:
    """``local`` (train): the flags start at the contract's defaults. Otherwise (push) they
    start unset and only the ones given are sent; the daemon fills in the rest."""
    for param in jobspec.PARAMS:
        default = param.default if local else None
        flag, helps = flag_of(param), param.description
        if param.nullable and param.type in (int, float):
            helps += " (0: the same)"
        if param.type is bool:
            parser.add_argument(flag, dest=param.name, action="store_const",
                                const=not param.default, default=default, help=helps)
        elif param.type is dict:
            parser.add_argument(flag, dest=param.name, action="append", type=_setting,
                                metavar="KEY=VALUE", help=helps + "; repeatable")
        else:
            parser.add_argument(flag, dest=param.name, default=default,
                                type=_batch_size if param.auto else param.type,
                                choices=param.choices or None, help=helps)


def params_from_args(args: argparse.Namespace) -> Dict[str, object]:
    """The job parameters the flags set: a nullable number given as 0 means its default,
    and KEY=VALUE settings become one object. Unset flags are left out."""
    params = {}  # type: Dict[str, object]
    for param in jobspec.PARAMS:
        value = getattr(args, param.name, None)
        if param.type is dict and value is not None:
            value = dict(value)
        if param.nullable and param.type in (int, float) and value == 0:
            value = None
        if value is not None:
            params[param.name] = value
    return params


def _setting(text: str):
    """KEY=VALUE, the value read as JSON when it parses (2, true) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("KEY=VALUE, not %r" % text)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _batch_size(text: str) -> Optional[object]:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number or auto, not %r" % text) from None
