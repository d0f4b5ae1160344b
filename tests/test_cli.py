"""The command line's contracts: JSON shapes, exit codes and messages."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, env=None):
    environment = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "device_agent"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=environment, timeout=600)


def test_train_then_predict(small_folder, tmp_path):
    out = str(tmp_path / "adapter")
    proc = cli("train", small_folder, "--backbone", "resnet18", "--weights", "random",
               "--method", "da2", "--epochs", "1", "--resolution", "32", "--batch-size", "4",
               "--adapter-setting", "pool=2", "--adapter-setting", "attention=channel",
               "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"method", "backbone", "epochs", "train_images", "val_images",
                           "val_top1", "trainable_params", "adapter_bytes",
                           "saved_activation_mb", "peak_rss_mb", "images_per_sec"}
    assert result["method"] == "da2" and result["adapter_bytes"] > 0
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    with open(os.path.join(out, "adapter_config.json")) as handle:
        settings = json.load(handle)["adapter_settings"]
    assert settings["pool"] == 2 and settings["attention"] == "channel"
    image = os.path.join(small_folder, "red", "0.png")
    proc = cli("predict", out, image, "--weights", "random", "--json", "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    [prediction] = json.loads(proc.stdout)
    assert len(prediction["top"]) == 2
    assert {t["class"] for t in prediction["top"]} <= {"blue", "green", "red"}


def test_memory_json_keys():
    proc = cli("memory", "--backbone", "resnet18", "--resolution", "32", "--batch-size", "2",
               "--methods", "finetune", "da2", "--no-peak", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["method"] for r in rows] == ["finetune", "da2"]
    for row in rows:
        assert {"method", "saved_activation_mb", "estimated_mb", "theoretical_min_mb",
                "trainable_params", "peak_step_mb"} <= set(row)
    assert rows[0]["saved_activation_mb"] > rows[1]["saved_activation_mb"]


@pytest.mark.parametrize("args,code,message", [
    (["train", "/nonexistent", "--out", "/tmp/x"], 2, "does not exist"),
    (["memory", "--backbone", "vgg16", "--no-peak"], 2, "unknown backbone"),
    (["memory", "--resolution", "3", "--no-peak"], 2, "resolution"),
    (["predict", "/nonexistent", "/nonexistent.png"], 2, "no such image"),
])
def test_bad_input_exits_with_a_clear_message(args, code, message):
    proc = cli(*args)
    assert proc.returncode == code
    assert message in proc.stderr


@pytest.mark.parametrize("setting,message", [
    ("pool", "KEY=VALUE"), ("nope=1", "unknown DA2 adapter settings: nope"),
    ("pool=0", "pool must be a positive integer"), ("attention=gate", "attention must be"),
    ("train_biases=yes", "train_biases must be true or false"),
])
def test_bad_adapter_settings_exit_with_a_clear_message(small_folder, tmp_path, setting,
                                                         message):
    proc = cli("train", small_folder, "--backbone", "resnet18", "--weights", "random",
               "--epochs", "1", "--adapter-setting", setting, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not os.path.exists(str(tmp_path / "o" / "adapter_config.json"))


def test_missing_weights_name_the_file(small_folder, tmp_path):
    proc = cli("train", small_folder, "--backbone", "resnet18", "--epochs", "1",
               "--out", str(tmp_path / "o"), env={"TORCH_HOME": str(tmp_path)})
    assert proc.returncode == 3
    assert "resnet18-f37072fd.pth" in proc.stderr and "To provision" in proc.stderr
    assert not os.path.exists(str(tmp_path / "o"))


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args,code,message", [
    (["status", "a?b"], 2, "'a?b' is not a domain name: domain names are 1-63 characters"),
    (["status", "a b", "--json"], 2, "'a b' is not a domain name"),
    # the name is checked before the folder is even looked at
    (["push", "/nonexistent", "--domain", "Bad/Name"], 2, "'Bad/Name' is not a domain name"),
    (["push", "/nonexistent", "--domain", "fine"], 2, "/nonexistent is not a directory"),
    (["status"], 5, "cannot reach http://127.0.0.1:"),
    (["status", "--server", "localhost:8470"], 2, "the server must be a URL like"),
])
def test_client_errors_are_one_line_and_an_exit_code(args, code, message):
    if "--server" not in args:
        args = args + ["--server", "http://127.0.0.1:%d" % _closed_port()]
    proc = cli(*(args + ["--token", "t"]))
    assert proc.returncode == code, proc.stderr
    [line] = proc.stderr.splitlines()  # one line, no traceback
    assert line.startswith("error: ") and message in line
