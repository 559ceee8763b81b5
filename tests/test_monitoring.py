"""The shipped Prometheus rules and Grafana dashboards, against promtool and a real Prometheus
that scrapes a running (simulated) line on loopback."""
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, line_config, running, simulated_sorter, wait_for

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "configs" / "prometheus" / "scrapsort.rules.yml"
DASHBOARDS = sorted((REPO / "configs" / "grafana").glob("*.json"))
# What Grafana fills in before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$site": "plant1", "$line": "line1", "$__rate_interval": "1m"}
PROMETHEUS_OWN = {"up", "ALERTS"}

needs_promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (tests/peers/ensure.sh)")
needs_prometheus = pytest.mark.skipif(not shutil.which("prometheus"), reason="prometheus not installed (tests/peers/ensure.sh)")


def dashboard_queries():
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield path.name, panel["title"], target["expr"]


def grafana_expanded(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


@needs_promtool
def test_the_rules_pass_promtool_check_and_every_alert_has_a_unit_test():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "scrapsort.rules.test.yml"], capture_output=True, text=True,
                          cwd=RULES.parent, timeout=300)
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load((RULES.parent / "scrapsort.rules.test.yml").read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert alerts == tested


def exported_series(metrics_text: str) -> set:
    """Every series name the daemon exports, labelled metrics without samples yet included."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""], "summary": ["_sum", "_count", ""]}
    return {family.name + suffix for family in text_string_to_metric_families(metrics_text)
            for suffix in suffixes.get(family.type, [""])}


def query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:  # a bad query answers 400 with the reason (JSON)
        body = error.read().decode(errors="replace")
        return json.loads(body) if body.startswith("{") else {"status": "starting", "error": body}
    except OSError as error:  # not listening yet
        return {"status": "unreachable", "error": str(error)}


@needs_prometheus
def test_a_real_prometheus_scrapes_the_line_and_evaluates_every_rule_and_dashboard_query(tmp_path, trained_run):
    _, run = trained_run
    port, prom_port = free_port(), free_port()
    config = line_config(tmp_path, run, observability={"port": port}, simulator={"items": 80, "spacing_mm": 200},
                         models={"shadow": str(run / "model.onnx")})
    rules = tmp_path / "scrapsort.rules.yml"  # the shipped rules, evaluated every second instead of 30 s
    rules.write_text(RULES.read_text().replace("interval: 30s", "interval: 1s"))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "scrapsort", "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"site": "plant1", "line": "line1"}}]}]}))
    base = f"http://127.0.0.1:{prom_port}"
    sorter = simulated_sorter(config)
    with running(sorter):
        prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def has(expr):
                return query(base, expr).get("data", {}).get("result")
            assert wait_for(lambda: has('up{job="scrapsort"} == 1'), timeout=30), prometheus.stderr
            assert wait_for(lambda: has("scrapsort:items:rate15m > 0") and has("scrapsort:shadow_agreement:1h"),
                            timeout=40)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                exported = exported_series(answer.read().decode())
            recorded = {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
            for dashboard, title, expr in dashboard_queries():
                names = set(re.findall(r"\b(scrapsort[a-z_:0-9]*|up|ALERTS)\b(?=\s*[{\[(]|\s*\)|\s*$)", expr))
                assert names and names <= exported | recorded | PROMETHEUS_OWN, (dashboard, title, names - exported)
                answer = query(base, grafana_expanded(expr))
                assert answer["status"] == "success", (dashboard, title, answer)
            rule_groups = json.loads(urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10).read())["data"]["groups"]
            health = {r.get("name"): (r["health"], r.get("lastError", "")) for g in rule_groups for r in g["rules"]}
            assert len(health) == 17 and all(h == "ok" for h, _ in health.values()), health
            line_panel = grafana_expanded(next(e for d, t, e in dashboard_queries() if t.startswith("Items per minute, by")))
            assert query(base, line_panel)["data"]["result"]  # the line's throughput panel shows data
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=20)
