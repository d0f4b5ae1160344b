"""`device-agent models list|verify|fetch`: the model repository, without torch (weights
are provisioned on machines that may not have it yet)."""
import os
import sys

from device_agent import manifest


def run_models(args) -> int:
    names = args.names or sorted(manifest.load_manifest())
    infos = [manifest.backbone_info(name) for name in names]
    if args.action == "fetch":
        directory = args.dir or os.path.join(manifest.models_dir(), "weights")
        for info in infos:
            path = manifest.fetch_weights(info, directory)
            print("%-20s fetched  %s" % (info["name"], path))
        return 0
    failures = 0
    for info in infos:
        try:
            path = manifest.find_weights(info)
            if args.action == "verify":
                manifest.check_digest(info, path)
        except Exception as exc:  # a missing or bad file is a finding here, not a crash
            print("%-20s %-8s %s" % (info["name"], "MISSING" if "not found" in str(exc)
                                     else "BAD", getattr(exc, "message", exc)))
            failures += 1
            continue
        print("%-20s %-8s %s" % (info["name"], "OK" if args.action == "verify" else "present",
                                 path))
    if args.action == "verify" and failures:
        print("%d of %d backbones are missing or do not match the manifest" % (
            failures, len(names)), file=sys.stderr)
        return 3
    return 0
