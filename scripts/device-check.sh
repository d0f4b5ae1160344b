#!/usr/bin/env bash
# The checks that need a GPU, in one short run, for a machine with CUDA (a Jetson, or any
# NVIDIA GPU): the CUDA-only tests (allocator cap, CUDA step peak, lean ops on CUDA against
# plain autograd), `device-agent memory --device cuda` on two backbones, a short training on
# CUDA, the ONNX export of what it trained and, where TensorRT is (or pip-installs), an FP16
# engine build, its cache hit and its parity with onnxruntime. Prints one table (step,
# status, figure, seconds) and exits non-zero when any step failed. Without CUDA the CUDA
# steps are skipped with the reason, and the export still runs (on an untrained adapter).
#
#   bash scripts/device-check.sh            # PYTHON=python3.6 for JetPack 4's interpreter
#
# Every step is bounded by `timeout` (seconds below); the whole run stays under ~8 minutes
# on a GPU machine. DEVICE_CHECK_DIR keeps the work files and logs (default: a temp dir);
# DEVICE_CHECK_INSTALL_TRT=0 skips the `pip install tensorrt` attempt.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SKIP=77

# --- the steps (each runs in its own bash, under timeout; its last line is its figure) ----

cuda_or_skip() {  # HAVE_CUDA: asked once by the runner (importing torch takes seconds)
  if [ "$HAVE_CUDA" != 1 ]; then
    echo "no CUDA here (torch.cuda.is_available() is False)"
    exit "$SKIP"
  fi
}

step_environment() {
  "$PY" - <<'PYTHON'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
print("Python %s, torch %s, %s" % (platform.python_version(), torch.__version__, gpu))
PYTHON
}

step_data() {
  "$PY" - "$WORK/data" <<'PYTHON'
import os, sys
import numpy as np
from PIL import Image
try:  # real handwritten digits (scikit-learn ships them)
    from device_agent.demo import write_digits_folder
    write_digits_folder(sys.argv[1])
    print("1797 handwritten digits (scikit-learn)")
except ImportError:  # three classes of noise over a colour
    rng = np.random.RandomState(0)
    for label, rgb in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 220))):
        os.makedirs(os.path.join(sys.argv[1], str(label)), exist_ok=True)
        for i in range(40):
            pixels = np.clip(np.array(rgb) + rng.randint(-60, 60, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype("uint8")).save(
                os.path.join(sys.argv[1], str(label), "%d.png" % i))
    print("no scikit-learn: 120 images of noise over three colours")
PYTHON
}

step_cuda_tests() {
  cuda_or_skip
  "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_cuda.py" -rs \
    >"$WORK/cuda-tests.log" 2>&1
  local code=$?
  if grep -q "skipped" "$WORK/cuda-tests.log"; then
    echo "a CUDA test skipped on a CUDA machine"
    exit 1
  fi
  tail -n 1 "$WORK/cuda-tests.log"
  exit "$code"
}

memory_on_cuda() {
  cuda_or_skip
  "$PY" -m device_agent memory --backbone "$1" --device cuda --methods da2 finetune \
    --batch-size 8 --json >"$WORK/memory-$1.json" || exit 1
  "$PY" - "$WORK/memory-$1.json" <<'PYTHON'
import json, sys
rows = {r["method"]: r for r in json.load(open(sys.argv[1]))}
peak = lambda m: rows[m].get("cuda_peak_step_mb")
if peak("da2") is None or peak("finetune") is None:
    sys.exit("no CUDA peak in the report")
print("CUDA step peak da2 %.0f MB, finetune %.0f MB" % (peak("da2"), peak("finetune")))
PYTHON
}
step_memory_mobilenet_v2() { memory_on_cuda mobilenet_v2; }
step_memory_efficientnet_lite0() { memory_on_cuda efficientnet_lite0; }

step_train() {
  cuda_or_skip
  "$PY" -m device_agent train "$WORK/data" --backbone mobilenet_v2 --weights random \
    --epochs 3 --resolution 64 --batch-size 32 --device cuda --out "$WORK/adapter" \
    --json >"$WORK/train.log" 2>&1 || { tail -n 5 "$WORK/train.log"; exit 1; }
  "$PY" - "$WORK/train.log" <<'PYTHON'
import json, sys
result = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print("on CUDA: %d epochs, val top-1 %.3f, %.0f images/s"
      % (result["epochs"], result["val_top1"], result["images_per_sec"]))
PYTHON
}

untrained_adapter() {  # without CUDA the export is still checked, on an untrained domain
  "$PY" - "$WORK/adapter" "$WORK/data" <<'PYTHON'
import os, sys
from device_agent.model.adapter_io import save_domain
from device_agent.model.builder import build_net
classes = sorted(os.listdir(sys.argv[2]))
net = build_net("mobilenet_v2", "da2", len(classes), weights="random")
save_domain(net, net.active, sys.argv[1], classes, 64)
PYTHON
}

step_export() {
  local what="the trained adapter"
  if [ ! -f "$WORK/adapter/adapter_config.json" ]; then
    if [ "$HAVE_CUDA" = 1 ]; then
      echo "no adapter (training failed)"
      exit 1
    fi
    untrained_adapter || exit 1
    what="an untrained adapter (no CUDA)"
  fi
  "$PY" -m device_agent export "$WORK/adapter" --out "$WORK/export" --images "$WORK/data" \
    >"$WORK/export.log" 2>&1 || { tail -n 5 "$WORK/export.log"; exit 1; }
  "$PY" - "$WORK/export/export.json" "$what" <<'PYTHON'
import json, sys
meta = json.load(open(sys.argv[1]))
print("%s: opset %d, parity max abs diff %.2g, top-1 %.0f%% on %d images"
      % (sys.argv[2], meta["onnx"]["opset"], meta["parity"]["max_abs_diff"],
         100 * meta["parity"]["top1_agreement"], meta["parity"]["images"]))
PYTHON
}

have_tensorrt() {
  "$PY" -c "import tensorrt" 2>/dev/null || command -v trtexec >/dev/null \
    || [ -x /usr/src/tensorrt/bin/trtexec ]
}

step_tensorrt() {
  cuda_or_skip
  if ! have_tensorrt && [ "${DEVICE_CHECK_INSTALL_TRT:-1}" != 0 ]; then
    "$PY" -m pip install --quiet tensorrt >"$WORK/pip-tensorrt.log" 2>&1
  fi
  if ! have_tensorrt; then
    echo "no TensorRT (no tensorrt module, no trtexec; pip install tensorrt failed)"
    exit "$SKIP"
  fi
  "$PY" -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null \
    || echo "trtexec $(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)"
}

step_engine() {
  cuda_or_skip
  have_tensorrt || { echo "no TensorRT"; exit "$SKIP"; }
  [ -f "$WORK/export/model.onnx" ] || { echo "no export to build from"; exit 1; }
  "$PY" - "$WORK/export/model.onnx" "$WORK/engines" <<'PYTHON'
import sys
from device_agent.export.tensorrt import build_engine
first = build_engine(sys.argv[1], sys.argv[2], "fp16")
if first.status != "built":
    sys.exit("first build: %s (%s)" % (first.status, first.reason))
again = build_engine(sys.argv[1], sys.argv[2], "fp16")
if again.status != "cached":
    sys.exit("the second call did not hit the cache: %s" % again.status)
print("FP16 by %s, TensorRT %s, %.0f s; cache hit on the second call"
      % (first.builder, first.key.tensorrt_version, first.seconds))
PYTHON
}

step_engine_parity() {
  cuda_or_skip
  if [ ! -f "$WORK/engines/model.fp16.engine" ]; then
    echo "no engine (TensorRT unavailable)"
    exit "$SKIP"
  fi
  "$PY" - "$WORK/export" "$WORK/engines/model.fp16.engine" "$WORK/data" <<'PYTHON'
import os, sys
import numpy as np
import torch
from device_agent.export.onnx_export import parity_inputs, read_result
from device_agent.worker.backends import OnnxRuntimeModel, TensorRTModel
export_dir, engine, data = sys.argv[1:]
result = read_result(export_dir)
paths = sorted(os.path.join(r, n) for r, _, names in os.walk(data) for n in names)
images, _ = parity_inputs(paths[::max(1, len(paths) // 32)][:32], result.input_shape[-1])
batch = images.numpy().astype(np.float32)
fp32 = OnnxRuntimeModel(result.onnx_path, 2).probabilities(batch)
fp16 = TensorRTModel(engine, torch.device("cuda")).probabilities(batch)
diff = float(np.abs(fp16 - fp32).max())
agree = float((fp16.argmax(1) == fp32.argmax(1)).mean())
print("TensorRT FP16 vs onnxruntime FP32 on %d images: max abs diff %.2g, top-1 %.0f%%"
      % (len(batch), diff, 100 * agree))
# FP16 keeps about 3 significant digits: probabilities within 2e-2, the same top-1 class
sys.exit(0 if diff <= 2e-2 and agree >= 1.0 else 1)
PYTHON
}

# --- the runner ---------------------------------------------------------------------------

if [ "${1:-}" = __step ]; then  # one step, in its own process (so timeout bounds all of it)
  WORK="$2"
  "step_$3"
  exit $?
fi

WORK="${DEVICE_CHECK_DIR:-$(mktemp -d -t device-check.XXXXXX)}"
mkdir -p "$WORK"
HAVE_CUDA=0
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && HAVE_CUDA=1
export HAVE_CUDA
STEPS=(
  "environment 60"
  "data 60"
  "cuda_tests 150"
  "memory_mobilenet_v2 90"
  "memory_efficientnet_lite0 90"
  "train 120"
  "export 120"
  "tensorrt 150"
  "engine 240"
  "engine_parity 60"
)
declare -a ROWS=()
FAILED=0
for entry in "${STEPS[@]}"; do
  read -r name limit <<<"$entry"
  started=$(date +%s)
  timeout "$limit" bash "${BASH_SOURCE[0]}" __step "$WORK" "$name" >"$WORK/$name.out" 2>&1
  code=$?
  seconds=$(( $(date +%s) - started ))
  figure="$(grep -v '^[[:space:]]*$' "$WORK/$name.out" | tail -n 1 | cut -c1-120)"
  case "$code" in
    0) status=passed ;;
    "$SKIP") status=skipped ;;
    124) status=FAILED; figure="timed out after ${limit} s"; FAILED=1 ;;
    *) status=FAILED; FAILED=1 ;;
  esac
  ROWS+=("$(printf '| %s | %s | %s | %d |' "$name" "$status" "${figure//|//}" "$seconds")")
  printf '%-26s %-8s %4d s  %s\n' "$name" "$status" "$seconds" "$figure" >&2
done

echo
echo "| step | status | figure | seconds |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "logs: $WORK"
exit "$FAILED"
