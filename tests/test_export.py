"""ONNX export of a domain: the static export path against the normal one, parity with
onnxruntime on real images for every backbone and every method with adapters, export.json
against the graph read back with onnx, the cache across versions and rollback, a refused
export, the command line."""
import json
import os

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx", reason="the export extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra is not installed")

from device_agent.cli import main  # noqa: E402
from device_agent.errors import ExportParityError  # noqa: E402
from device_agent.export import cache, graph, onnx_export  # noqa: E402
from device_agent.manifest import load_manifest  # noqa: E402
from device_agent.model import adapter_io, lean_ops  # noqa: E402
from device_agent.model.builder import build_net  # noqa: E402

BACKBONES = sorted(load_manifest())
ADAPTER_METHODS = ("da2", "tinytl_lite_residual")
CLASSES = ["zero", "one", "two"]
SIZE = 64
# The cache, the command line and the route do not depend on the backbone, and Lite0's graph
# takes torch 1.10's exporter 40 s where ResNet-18's takes 8 s (Python 3.6 stage, 2 cores):
# they export ResNet-18. Lite0 keeps its own export tests.
QUICK = "resnet18"


def make_adapter(directory, backbone="efficientnet_lite0", method="da2", size=SIZE, seed=0,
                 settings=None):
    """A saved domain on the seeded random backbone whose trainable tensors are perturbed
    (zero-initialised adapter outputs would make the branches invisible)."""
    net = build_net(backbone, method, len(CLASSES), weights="random", adapter_settings=settings)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.domain.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
        # logits of a few units, not hundreds: a random deep backbone saturates the softmax
        # into exact 0/1, and a parity check of 0 == 0 would prove nothing
        head = net.domain.head.linear
        spread = float(net(torch.rand(4, 3, size, size, generator=generator), lean=False).std())
        if spread > 2:
            head.weight.div_(spread / 2)
            head.bias.div_(spread / 2)
    adapter_io.save_domain(net, "default", str(directory), CLASSES, size)
    return str(directory)


@pytest.fixture(scope="module")
def digit_images(digits_dir):
    names = []
    for root, _, files in os.walk(digits_dir):
        names.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".png"))
    return sorted(names)[::23][:24]


# --- the static export path equals the normal one -------------------------------------------

@pytest.mark.parametrize("size,factor", [((8, 8), 4), ((7, 9), 4), ((5, 3), 2), ((2, 2), 4)])
def test_static_pool_equals_the_ceil_mode_pool(size, factor):
    x = torch.randn(2, 5, *size)
    expected = lean_ops.avg_pool(x, factor, lean=False)
    assert torch.equal(graph.StaticAvgPool(size, factor)(x), expected)


@pytest.mark.parametrize("low,out", [((2, 2), (8, 8)), ((2, 3), (7, 9)), ((3, 1), (7, 5))])
def test_static_block_upsample_equals_repeat_interleave(low, out):
    a = torch.randn(2, 4, *low)
    base = torch.randn(2, 4, *out)
    expected = lean_ops.add_block_upsampled(base, a, lean=False)
    assert torch.equal(base + graph.BlockUpsample(low, out)(a), expected)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method,settings", [("da2", None), ("tinytl_lite_residual", None),
                                             ("da2", {"upsample": "bilinear"})])
def test_export_path_equals_the_normal_path(tmp_path, backbone, method, settings):
    # 72 px: 9x9 and 5x5 maps that pools of 2 and 4 leave partial windows of (the dividing
    # sizes are exported, and checked against onnxruntime, by the tests below)
    size = 72
    make_adapter(tmp_path, backbone, method, size, settings=settings)
    net, config = onnx_export.load_adapter(str(tmp_path))
    model = graph.ExportNet(net, size, config["mean"], config["std"], softmax=False)
    x = torch.rand(2, 3, size, size)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - mean) / std, lean=False)
        got = model(x)
    assert model.static_adapters, "the method has adapters: they must be on the export path"
    assert (got - expected).abs().max().item() <= 1e-6


# --- export, parity, export.json ---------------------------------------------------------

def _check_bundle(result, out_dir, adapter_dir, classes, size, opset=13):
    model = onnx.load(os.path.join(out_dir, "model.onnx"))
    onnx.checker.check_model(model)
    (graph_input,) = [i for i in model.graph.input
                      if i.name not in {t.name for t in model.graph.initializer}]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    with open(os.path.join(out_dir, "export.json")) as handle:
        meta = json.load(handle)
    with open(os.path.join(out_dir, "labels.txt")) as handle:
        assert handle.read().splitlines() == classes
    assert graph_input.name == meta["input"]["name"] == result.input_name == "input_0"
    assert dims == meta["input"]["shape"] == list(result.input_shape) == [1, 3, size, size]
    assert model.graph.output[0].name == meta["output"]["name"] == "output_0"
    assert out_dims == meta["output"]["shape"] == [1, len(classes)]
    assert opsets["ai.onnx"] == meta["onnx"]["opset"] == result.opset == opset
    assert meta["onnx"]["sha256"] == result.onnx_sha256 == cache.hashlib.sha256(
        open(result.onnx_path, "rb").read()).hexdigest()
    assert meta["adapter"]["sha256"] == onnx_export.adapter_sha256(adapter_dir)
    assert meta["exporter"]["onnxruntime"] and meta["exporter"]["torch"] == torch.__version__
    assert meta["parity"]["max_abs_diff"] == result.parity.max_abs_diff
    # static for TensorRT: constant pads, every intermediate shape known
    constants = {t.name for t in model.graph.initializer}
    constants.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    assert all(n.input[1] in constants for n in model.graph.node if n.op_type == "Pad")
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    assert inferred and all(d.HasField("dim_value") for v in inferred
                            for d in v.type.tensor_type.shape.dim)
    return meta


def _export_and_check(tmp_path, digit_images, backbone, method):
    adapter_dir = make_adapter(tmp_path / "adapter", backbone, method)
    out_dir = str(tmp_path / "bundle")
    result = onnx_export.export_domain(adapter_dir, out_dir, parity_images=digit_images)
    meta = _check_bundle(result, out_dir, adapter_dir, CLASSES, SIZE)
    assert meta["parity"]["images_from"] == "images"
    assert result.parity.images == len(digit_images)
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.top1_agreement == 1.0
    meta_probs = onnx_export.torch_reference(*onnx_export.load_adapter(adapter_dir),
                                             torch.rand(2, 3, SIZE, SIZE), True)
    assert float(meta_probs.max()) < 1 - 1e-3, "a saturated softmax checks nothing"
    print("parity %s %s: max abs diff %.3g" % (backbone, method, result.parity.max_abs_diff))
    return result


def test_export_of_the_default_backbone(tmp_path, digit_images):
    _export_and_check(tmp_path, digit_images, "efficientnet_lite0", "da2")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_export_every_backbone_and_method(tmp_path, digit_images, backbone, method):
    if (backbone, method) == ("efficientnet_lite0", "da2"):
        pytest.skip("test_export_of_the_default_backbone")
    _export_and_check(tmp_path, digit_images, backbone, method)


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_export_at_a_size_the_pools_do_not_divide(tmp_path, digit_images, method):
    """72 px: ResNet's 9x9 and 5x5 maps leave partial pooling windows (as 224 px leaves
    7x7 ones): onnxruntime's AveragePool must average them as PyTorch's ceil-mode pool."""
    adapter_dir = make_adapter(tmp_path / "adapter", "resnet18", method, size=72)
    net, _ = onnx_export.load_adapter(adapter_dir)
    sizes = graph.probe_adapter_sizes(net, 72)
    pools = [graph.StaticAvgPool(s[0], 2 if method != "da2" else
                                 net.domain.adapter_for(i).pool_factor(s[0]))
             for i, s in sizes.items()]
    assert any(len(p.rows) > 1 for p in pools), "no partial window at this size"
    result = onnx_export.export_domain(adapter_dir, str(tmp_path / "bundle"),
                                       parity_images=digit_images)
    assert result.input_shape == (1, 3, 72, 72)
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.top1_agreement == 1.0


@pytest.mark.parametrize("method", ["last", "bn_last"])
def test_methods_without_adapters_export_too(tmp_path, method):
    adapter_dir = make_adapter(tmp_path / "adapter", "mobilenet_v2", method)
    result = onnx_export.export_domain(adapter_dir, str(tmp_path / "bundle"))
    assert result.parity.max_abs_diff <= 1e-4 and result.parity.top1_agreement == 1.0


def test_imagenet_input_normalisation(tmp_path, digit_images):
    """EfficientNet-Lite normalises by 0.5/0.5: the graph rebuilds [0, 1] from ImageNet-
    normalised input, and matches PyTorch on the same pictures."""
    adapter_dir = make_adapter(tmp_path / "adapter")
    out_dir = str(tmp_path / "bundle")
    result = onnx_export.export_domain(adapter_dir, out_dir, input_norm="imagenet",
                                       parity_images=digit_images)
    meta = _check_bundle(result, out_dir, adapter_dir, CLASSES, SIZE)
    assert meta["input"]["normalisation"] == "imagenet"
    assert meta["input"]["mean"] == list(graph.IMAGENET_MEAN)
    assert result.parity.max_abs_diff <= 1e-4


def test_logits_when_softmax_is_off(tmp_path):
    adapter_dir = make_adapter(tmp_path / "adapter", QUICK)
    out_dir = str(tmp_path / "bundle")
    onnx_export.export_domain(adapter_dir, out_dir, softmax=False)
    import onnxruntime

    session = onnxruntime.InferenceSession(os.path.join(out_dir, "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    out = session.run(["output_0"], {"input_0": torch.rand(1, 3, SIZE, SIZE).numpy()})[0]
    assert abs(float(out.sum()) - 1.0) > 1e-3  # not probabilities


def test_a_parity_failure_is_refused_and_offers_nothing(tmp_path, monkeypatch):
    """One weight corrupted between the PyTorch reference and the graph: refused, the old
    bundle in out_dir stays as it was, no staging left behind."""
    adapter_dir = make_adapter(tmp_path / "adapter", QUICK)
    out_dir = str(tmp_path / "bundle")
    onnx_export.export_domain(adapter_dir, out_dir)
    before = {n: open(os.path.join(out_dir, n), "rb").read() for n in os.listdir(out_dir)}
    write_onnx = onnx_export.write_onnx

    def corrupted(model, path, shape, opset):
        bias = model.net.domain.head.linear.bias
        with torch.no_grad():
            bias[0] += 0.5
        try:
            write_onnx(model, path, shape, opset)
        finally:
            with torch.no_grad():
                bias[0] -= 0.5

    monkeypatch.setattr(onnx_export, "write_onnx", corrupted)
    with pytest.raises(ExportParityError, match="max abs diff"):
        onnx_export.export_domain(adapter_dir, out_dir)
    assert {n: open(os.path.join(out_dir, n), "rb").read() for n in os.listdir(out_dir)} == before
    assert sorted(os.listdir(str(tmp_path))) == ["adapter", "bundle"]
    with pytest.raises(ExportParityError):
        onnx_export.export_domain(adapter_dir, str(tmp_path / "new"))
    assert not os.path.exists(str(tmp_path / "new"))


@pytest.mark.parametrize("kwargs,message", [
    ({"input_norm": "bgr"}, "input_norm"), ({"opset": 9}, "opset"), ({"opset": 99}, "opset"),
    ({"tolerance": 0}, "tolerance"), ({"batch_size": 0}, "batch_size")])
def test_bad_options_are_refused(tmp_path, kwargs, message):
    from device_agent.errors import InvalidInput

    with pytest.raises(InvalidInput, match=message):
        onnx_export.export_domain(str(tmp_path), str(tmp_path / "out"), **kwargs)


def test_an_out_dir_with_other_files_is_not_overwritten(tmp_path):
    from device_agent.errors import InvalidInput

    adapter_dir = make_adapter(tmp_path / "adapter", QUICK)
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="not an export bundle"):
        onnx_export.export_domain(adapter_dir, str(out_dir))
    assert os.listdir(str(out_dir)) == ["notes.txt"]


# --- the cache -----------------------------------------------------------------------------

def test_the_cache_serves_the_matching_version_after_a_new_one_and_a_rollback(tmp_path):
    v1 = make_adapter(tmp_path / "v1", QUICK, seed=1)
    v2 = make_adapter(tmp_path / "v2", QUICK, seed=2)
    root = str(tmp_path / "exports")
    first = cache.cached_export(v1, root)
    again = cache.cached_export(v1, root)
    assert again == first  # a hit: same directory, same graph
    second = cache.cached_export(v2, root)  # a new version
    assert second.out_dir != first.out_dir and second.onnx_sha256 != first.onnx_sha256
    back = cache.cached_export(v1, root)  # rollback to v1
    assert back.onnx_sha256 == first.onnx_sha256
    meta = onnx_export.read_metadata(back.out_dir)
    assert meta["adapter"]["sha256"] == onnx_export.adapter_sha256(v1)
    # settings are part of the key
    assert cache.cached_export(v1, root, input_norm="imagenet").out_dir != first.out_dir


def test_a_version_rewritten_in_place_is_not_served_stale(tmp_path):
    """The key is the adapter's content, not its path or version number."""
    adapter_dir = make_adapter(tmp_path / "v", QUICK, seed=1)
    root = str(tmp_path / "exports")
    first = cache.cached_export(adapter_dir, root)
    make_adapter(tmp_path / "v", QUICK, seed=3)
    assert cache.cached_export(adapter_dir, root).onnx_sha256 != first.onnx_sha256


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    adapter_dir = make_adapter(tmp_path / "v", QUICK)
    root = str(tmp_path / "exports")
    first = cache.cached_export(adapter_dir, root)
    with open(first.onnx_path, "ab") as handle:
        handle.write(b"junk")
    rebuilt = cache.cached_export(adapter_dir, root)
    assert open(rebuilt.onnx_path, "rb").read() != b"" and \
        cache.hashlib.sha256(open(rebuilt.onnx_path, "rb").read()).hexdigest() == \
        rebuilt.onnx_sha256


# --- the command line ------------------------------------------------------------------------

def test_the_export_command(tmp_path, digit_images, capsys):
    adapter_dir = make_adapter(tmp_path / "adapter", QUICK)
    out_dir = str(tmp_path / "bundle")
    assert main(["export", adapter_dir, "--out", out_dir, "--images"] + digit_images[:4]
                + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["input_name"] == "input_0" and printed["parity"]["images"] == 4
    assert sorted(os.listdir(out_dir)) == ["export.json", "labels.txt", "model.onnx"]


def test_the_export_command_fails_clearly(tmp_path, monkeypatch, capsys):
    adapter_dir = make_adapter(tmp_path / "adapter", QUICK)
    assert main(["export", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
    assert main(["export", adapter_dir, "--out", str(tmp_path / "o"), "--images",
                 str(tmp_path / "missing.png")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["export", adapter_dir, "--out", str(tmp_path / "o"), "--input-norm", "bgr"])
    assert exit_info.value.code == 2

    def refuse(*args, **kwargs):
        raise ExportParityError("max abs diff 0.5")

    monkeypatch.setattr(onnx_export, "check_parity", refuse)
    assert main(["export", adapter_dir, "--out", str(tmp_path / "o")]) == 5
    assert "max abs diff" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "o"))


# --- the worker's view of validation images ----------------------------------------------

def test_parity_uses_the_jobs_validation_split(digits_dir):
    from device_agent.export.worker_request import validation_images
    from device_agent.training import data

    split = data.discover(digits_dir, 0.2, 3)
    images = validation_images({"dataset_dir": digits_dir, "val_fraction": 0.2, "seed": 3})
    assert images == [p for p, _ in split.val][:onnx_export.MAX_PARITY_IMAGES] and images
    assert validation_images({}) == []  # an imported version: no dataset
    assert validation_images({"dataset_dir": "/nonexistent"}) == []


# --- the API route (a live daemon: uvicorn + the real worker) ------------------------------

API_TOKEN = "export-test-token"


def _http(base, path, token=API_TOKEN, method="GET", body=None, content_type=None):
    import urllib.error
    import urllib.request

    headers = {"Authorization": "Bearer " + token} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _import_adapter(base, domain, adapter_dir):
    import io
    import uuid
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            archive.write(os.path.join(adapter_dir, name), name)
    boundary = uuid.uuid4().hex
    body = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n" % boundary).encode() + buffer.getvalue() \
        + ("\r\n--%s--\r\n" % boundary).encode()
    status, _, text = _http(base, "/v1/domains/%s/adapter" % domain, method="PUT", body=body,
                            content_type="multipart/form-data; boundary=" + boundary)
    assert status == 201, text


def _bundle(base, path):
    import io
    import zipfile

    status, headers, body = _http(base, path)
    assert status == 200, body
    assert headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert sorted(archive.namelist()) == ["export.json", "labels.txt", "model.onnx"]
    meta = json.loads(archive.read("export.json"))
    assert archive.read("labels.txt").decode().splitlines() == CLASSES
    assert cache.hashlib.sha256(archive.read("model.onnx")).hexdigest() == meta["onnx"]["sha256"]
    return meta


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    pytest.importorskip("fastapi")
    import live_daemon

    data_dir = str(tmp_path_factory.mktemp("data"))
    proc, base = live_daemon.start(data_dir, API_TOKEN)
    yield base, data_dir
    live_daemon.stop(proc)


@pytest.mark.slow
def test_the_export_route(daemon, tmp_path):
    base, data_dir = daemon
    v1 = make_adapter(tmp_path / "v1", QUICK, seed=1)
    v2 = make_adapter(tmp_path / "v2", QUICK, seed=2)
    _import_adapter(base, "exp", v1)
    _import_adapter(base, "exp", v2)
    path = "/v1/domains/exp/export?format=onnx"
    assert _http(base, path, token=None)[0] == 401
    assert _http(base, path, token="wrong")[0] == 401
    assert _http(base, "/v1/domains/nope/export")[0] == 404
    assert _http(base, path + "&version=9")[0] == 404
    status, headers, body = _http(base, "/v1/domains/exp/export?format=tflite")
    assert status == 400 and headers["Content-Type"] == "application/problem+json"
    assert _http(base, path + "&input_norm=bgr")[0] == 400

    active = _bundle(base, path)  # v2 is active
    assert active["adapter"]["sha256"] == onnx_export.adapter_sha256(v2)
    assert active["parity"]["images_from"] == "synthetic"  # imported: no dataset
    assert active["parity"]["max_abs_diff"] <= 1e-4
    status, _, _ = _http(base, "/v1/domains/exp/activate", method="POST",
                         body=b'{"version": 1}', content_type="application/json")
    assert status == 200
    rolled_back = _bundle(base, path)
    assert rolled_back["adapter"]["sha256"] == onnx_export.adapter_sha256(v1)
    assert _bundle(base, path + "&version=2")["onnx"]["sha256"] == active["onnx"]["sha256"]
    exports = os.path.join(data_dir, "domains", "exp", "exports")
    assert len(cache.entries(exports)) == 2
