"""`device-agent telemetry parse FILE|-`: tegrastats lines -> one JSON sample per line."""
import json
import sys

from device_agent.errors import InvalidInput
from device_agent.telemetry.tegrastats import parse_stream


def run_telemetry(args) -> int:
    if args.file == "-":
        return _print(sys.stdin)
    try:
        handle = open(args.file, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidInput("cannot read %s: %s" % (args.file, exc.strerror)) from exc
    with handle:
        return _print(handle)


def _print(lines) -> int:
    try:
        for sample in parse_stream(lines):
            sys.stdout.write(json.dumps(sample) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has seen enough
        sys.stderr.close()
    return 0
