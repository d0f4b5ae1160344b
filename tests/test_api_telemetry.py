"""The telemetry router and /metrics: the latest sample, a range, the SSE stream, the
Prometheus text (after a job this module trains), and /metrics opened to scrapers."""
import json
import os
import re
import time
import urllib.request

import live_daemon
import pytest
from api_calls import ROOT, TOKEN, call, train

pytest.importorskip("fastapi")


def test_telemetry_latest_range_and_stream(server):
    base, _ = server
    status, latest = call(base, "GET", "/v1/telemetry")
    assert status == 200 and len(latest) == 1
    sample = latest[0]
    assert sample["source"] == "replay" and sample["ram_total_mb"] == 3964.0
    assert sample["power_total_mw"] > 0 and sample["worker"]["rss_mb"] > 10
    since = time.time() - 60
    status, window = call(base, "GET", "/v1/telemetry?since=%f" % since)
    assert status == 200 and len(window) >= 2
    assert all(a["ts"] < b["ts"] for a, b in zip(window, window[1:]))
    status, coarse = call(base, "GET", "/v1/telemetry?since=%f&step=30" % since)
    assert status == 200 and 1 <= len(coarse) <= 3 and len(coarse) < len(window)
    assert call(base, "GET", "/v1/telemetry?since=10&until=5")[0] == 409
    request = urllib.request.Request(base + "/v1/telemetry/stream?limit=3",
                                     headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert len(events) == 3 and all(e["source"] == "replay" for e in events)


def test_prometheus_metrics(server, small_folder):
    base, _ = server
    assert train(base, "scraped", small_folder)["state"] == "succeeded"
    assert call(base, "GET", "/metrics", token=None)[0] == 401
    request = urllib.request.Request(base + "/metrics",
                                     headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values["device_agent_ram_total_bytes"] == 3964.0 * 1024 * 1024
    assert values["device_agent_power_total_watts"] > 1
    assert values['device_agent_temperature_celsius{sensor="CPU"}'] >= 40
    assert values["device_agent_worker_rss_bytes"] > 10e6
    assert values['device_agent_jobs{state="succeeded"}'] >= 1
    assert values["device_agent_train_step_duration_seconds_count"] > 0
    assert any(k.startswith("device_agent_domain_val_top1{") and 'domain="scraped"' in k
               for k in values)
    route = ('device_agent_http_request_duration_seconds_count{method="GET",'
             'route="/v1/jobs/{job_id}",status="200"}')
    assert values[route] > 0  # one label per route template, not per job id
    # The Grafana dashboard for fleets queries only metrics that the daemon exports.
    with open(os.path.join(ROOT, "deploy", "grafana", "device-agent.json")) as handle:
        queried = set(re.findall(r"device_agent_[a-z0-9_]+", handle.read()))
    exported = set(re.findall(r"^# TYPE (device_agent_[a-z0-9_]+)", text, re.M))
    assert queried and {re.sub(r"_bucket$", "", name) for name in queried} <= exported


def test_metrics_can_be_opened_to_token_less_scrapers(tmp_path):
    proc, base = live_daemon.start(str(tmp_path), TOKEN,
                                   DEVICE_AGENT_METRICS_REQUIRE_TOKEN="false")
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
            assert response.status == 200 and b"device_agent_jobs" in response.read()
        assert call(base, "GET", "/v1/domains", token=None)[0] == 401  # only /metrics opens
    finally:
        live_daemon.stop(proc)
