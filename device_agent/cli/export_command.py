"""``device-agent export ADAPTER_DIR --out DIR``: a saved domain as an ONNX bundle (torch
side; its module imports nothing heavy until the command runs)."""
import json
import os
from typing import List


def add_parser(commands) -> None:
    p = commands.add_parser(
        "export", help="export a saved adapter as ONNX (model.onnx, labels.txt, export.json)",
        description="Frozen backbone + the domain's adapters + head, opset 13 (TensorRT 8.0/"
                    "8.2 on JetPack 4.6), input input_0 (1x3xSxS RGB), output output_0; "
                    "checked against PyTorch with onnxruntime before anything is written.")
    p.add_argument("adapter_dir")
    p.add_argument("--out", required=True, help="the bundle's directory (new, or a bundle)")
    p.add_argument("--input-norm", choices=("builtin", "imagenet"), default="builtin",
                   help="builtin: RGB in [0, 1], the backbone's normalisation in the graph; "
                        "imagenet: mean/std-normalised input, as jetson-inference feeds")
    p.add_argument("--no-softmax", action="store_true", help="output logits, not probabilities")
    p.add_argument("--opset", type=int, default=13)
    p.add_argument("--images", nargs="+", default=[],
                   help="parity images: files or folders (ImageFolder); default: synthetic")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max abs difference of the outputs against PyTorch")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _image_files(paths: List[str]) -> List[str]:
    from device_agent.errors import InvalidInput
    from device_agent.imagefolder import is_image_name

    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names) if is_image_name(n))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise InvalidInput("%s is neither an image file nor a folder" % path)
    if paths and not files:
        raise InvalidInput("no images under %s" % ", ".join(paths))
    return files


def run_export(args) -> int:
    from device_agent.export.onnx_export import export_domain

    result = export_domain(args.adapter_dir, args.out, input_norm=args.input_norm,
                           softmax=not args.no_softmax, opset=args.opset,
                           parity_images=_image_files(args.images), tolerance=args.tolerance)
    if args.json:
        print(json.dumps(dict(result._asdict(), parity=dict(result.parity._asdict()))))
        return 0
    parity = result.parity
    print("exported %s (sha256 %s)" % (result.onnx_path, result.onnx_sha256[:16]))
    print("input %s %s, output %s, opset %d" % (result.input_name, list(result.input_shape),
                                                 result.output_name, result.opset))
    print("parity on %d images: max abs diff %.3g, top-1 agreement %.0f%%"
          % (parity.images, parity.max_abs_diff, 100 * parity.top1_agreement))
    return 0
