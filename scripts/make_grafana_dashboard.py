"""Write deploy/grafana/device-agent.json: the dashboard page's panels as a Grafana
dashboard over the daemon's Prometheus metrics (one row of boards per `instance`).

    python scripts/make_grafana_dashboard.py
"""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "deploy", "grafana", "device-agent.json")
SELECT = '{instance=~"$instance"}'

PANELS = [
    ("Memory", "bytes", [("device_agent_ram_used_bytes%s" % SELECT, "RAM used {{instance}}"),
                         ("device_agent_swap_used_bytes%s" % SELECT, "swap {{instance}}"),
                         ("device_agent_worker_rss_bytes%s" % SELECT,
                          "worker RSS {{instance}}")]),
    ("GPU load", "percentunit", [("device_agent_gpu_load_ratio%s" % SELECT, "{{instance}}")]),
    ("Total power", "watt", [("device_agent_power_total_watts%s" % SELECT, "{{instance}}")]),
    ("Temperatures", "celsius", [("device_agent_temperature_celsius%s" % SELECT,
                                  "{{instance}} {{sensor}}")]),
    ("Training step latency p50 / p95", "s", [
        ("histogram_quantile(0.5, sum by (le, instance) (rate("
         "device_agent_train_step_duration_seconds_bucket%s[5m])))" % SELECT, "p50 {{instance}}"),
        ("histogram_quantile(0.95, sum by (le, instance) (rate("
         "device_agent_train_step_duration_seconds_bucket%s[5m])))" % SELECT,
         "p95 {{instance}}")]),
    ("HTTP latency p99 by route", "s", [
        ("histogram_quantile(0.99, sum by (le, route) (rate("
         "device_agent_http_request_duration_seconds_bucket%s[5m])))" % SELECT, "{{route}}")]),
    ("Jobs by state", "short", [("sum by (state) (device_agent_jobs%s)" % SELECT,
                                 "{{state}}")]),
    ("Validation top-1 per domain", "percentunit", [
        ("device_agent_domain_val_top1%s" % SELECT, "{{instance}} {{domain}} ({{method}})")]),
    # per-class results (issue 14): the classes an active adapter recognises worst
    ("Lowest class recall (5 worst classes)", "percentunit", [
        ("bottomk(5, device_agent_class_recall%s)" % SELECT,
         "{{instance}} {{domain}}: {{class}}")]),
]


def panel(index: int, title: str, unit: str, targets) -> dict:
    return {
        "id": index + 1, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict:
    return {
        "title": "device-agent", "uid": "device-agent", "schemaVersion": 39, "version": 1,
        "tags": ["jetson", "device-agent"], "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "instance", "type": "query", "multi": True, "includeAll": True,
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(device_agent_ram_total_bytes, instance)",
             "refresh": 2}]},
        "panels": [panel(i, *spec) for i, spec in enumerate(PANELS)],
    }


if __name__ == "__main__":
    os.makedirs(os.path.dirname(TARGET), exist_ok=True)
    with open(TARGET, "w") as handle:
        json.dump(dashboard(), handle, indent=2)
        handle.write("\n")
    print("wrote %s (%d panels)" % (TARGET, len(PANELS)))
