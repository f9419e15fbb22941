"""The monitoring files of deploy/ against the metrics a running daemon exports.

Two daemons in two datacenters take a few writes (and one malformed frame, so that the wire errors
have a series) until every metric family the files use has samples. Then every PromQL expression
of the Grafana dashboard (panel targets and template variables) and of the alert rules must name
only series `/metrics` serves (`crdtsync_store_commits` without `_total` is a query that finds
nothing), and only labels those series carry (or the `job` and `instance` Prometheus adds). The
checker is tested on expressions that are wrong. Where Debian's `prometheus` package is installed,
`promtool` checks the rules, the scrape config and the syntax of every dashboard query, and a real
Prometheus scrapes the two daemons with the shipped scrape job and rules: every dashboard query
returns numbers and every rule evaluates without error (the tests skip, saying so, without it).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
import zmq
from daemon_support import CONVERGE_TIMEOUT_S, Daemon, DaemonPool, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "crdtsync.json"
ALERTS = DEPLOY / "prometheus" / "crdtsync-alerts.yml"
MACHINE_SPEED_ALERTS = frozenset({"CrdtsyncStoreCommitSlow"})
"""Alerts on a latency that the test machine's load alone can raise (a 2-core machine running the
suite's other daemons): not evidence of a fault in the daemons under test."""
SCRAPE = DEPLOY / "prometheus" / "prometheus.yml"

TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""
PROMETHEUS_SERIES = frozenset({"up"})
"""Series Prometheus makes of the scrape itself, which the files may use besides the daemon's."""
GRAFANA_VARIABLES = frozenset({"datasource", "job", "dc", "instance"})

METRIC = re.compile(r"\b(?:crdtsync_[a-z0-9_]+|up)\b")
SELECTOR = re.compile(r"\b(crdtsync_[a-z0-9_]+|up)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"\blabel_values\(\s*[^,]*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
"""The series of a family of each type (for a family declared without samples yet)."""


# ------------------------------------------------------------------------------------------ the checker


def exported_series(exposition: str) -> dict[str, set[str]]:
    """Every series name the exposition text serves (or declares: a family without samples yet)
    -> the label names of its samples."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in SUFFIXES.get(family.type, ("",)):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (names inside label values do not count)."""
    return set(METRIC.findall(QUOTED.sub('""', expr)))


def problems(exprs: Mapping[str, str], exported: Mapping[str, set[str]]) -> list[str]:
    """What is wrong with each expression, by where it comes from: series the daemon does not
    export, labels those series do not have in selectors and groupings, or no crdtsync series at all."""
    known: dict[str, set[str]] = {name: set() for name in PROMETHEUS_SERIES}
    known.update(exported)
    found: list[str] = []
    for where, expr in exprs.items():
        bare = QUOTED.sub('""', expr)
        names = metric_names(expr)
        if not names:
            found.append(f"{where}: no metric in {expr!r}")
        unknown = sorted(name for name in names if name not in known)
        found.extend(f"{where}: {name} is not exported" for name in unknown)
        labels = set(TARGET_LABELS).union(*(known.get(name, set()) for name in names))
        for name, matchers in SELECTOR.findall(bare):
            for label in MATCHER.findall(matchers):
                if name in known and label not in TARGET_LABELS | known[name]:
                    found.append(f"{where}: {name} has no label {label}")
        grouped = [*LABEL_VALUES.findall(bare), *",".join(GROUPING.findall(bare)).split(",")]
        for label in (part.strip() for part in grouped):
            if label and label not in labels:
                found.append(f"{where}: no series of {expr!r} has the label {label}")
    return found


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    exprs: dict[str, str] = {}
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            exprs[f"panel {panel['id']} {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs[f"variable {variable['name']}"] = variable["query"]["query"]
    return exprs


def alert_exprs(rules: dict[str, Any]) -> dict[str, str]:
    return {f"alert {rule['alert']}": rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def load_yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


EXPOSITION = """\
# HELP crdtsync_peer_lag_seconds Lag.
# TYPE crdtsync_peer_lag_seconds gauge
crdtsync_peer_lag_seconds{peer="b"} 0.0
# HELP crdtsync_store_commits_total Commits.
# TYPE crdtsync_store_commits_total counter
crdtsync_store_commits_total 3.0
# HELP crdtsync_store_commit_seconds Latency.
# TYPE crdtsync_store_commit_seconds histogram
crdtsync_store_commit_seconds_bucket{le="0.001"} 1.0
crdtsync_store_commit_seconds_bucket{le="+Inf"} 3.0
crdtsync_store_commit_seconds_count 3.0
crdtsync_store_commit_seconds_sum 0.01
"""


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("crdtsync_peer_lag_second > 1", "crdtsync_peer_lag_second is not exported"),
        ("rate(crdtsync_store_commits[5m])", "crdtsync_store_commits is not exported"),
        ("rate(crdtsync_store_commit_seconds_total[5m])", "crdtsync_store_commit_seconds_total is not"),
        ("crdtsync_store_commit_seconds > 0", "crdtsync_store_commit_seconds is not exported"),
        ('crdtsync_peer_lag_seconds{dc="x"}', "crdtsync_peer_lag_seconds has no label dc"),
        ("max by (member) (crdtsync_peer_lag_seconds)", "has the label member"),
        ('label_values(crdtsync_peer_lag_seconds{job=~"$job"}, member)', "has the label member"),
        ("label_values(crdtsync_peer_lag_seconds, peer)", None),
        ('up{job="crdtsync"} + 1 > vector(2)', None),
        ('sum(up{job="x"}) or label_replace(vector(1), "a", "crdtsync_nope", "", "")', None),
        ("vector(1)", "no metric"),
    ],
)
def test_the_checker_finds_misspelt_metrics_and_labels(expr: str, problem: str | None) -> None:
    exported = exported_series(EXPOSITION)
    good = {
        "rate(crdtsync_store_commits_total[5m])",
        'histogram_quantile(0.99, sum by (instance, le) (rate(crdtsync_store_commit_seconds_bucket{job="j"}[1m])))',
        "rate(crdtsync_store_commit_seconds_sum[1m]) / rate(crdtsync_store_commit_seconds_count[1m])",
        'max by (peer) (crdtsync_peer_lag_seconds{peer=~"b|c", instance!=""})',
    }
    assert problems({expr: expr for expr in good}, exported) == []
    found = problems({"q": expr}, exported)
    if problem is None:
        assert found == []
    else:
        assert found and all(problem in line for line in found), found


# ------------------------------------------------------------------------------------------ the files


def test_the_dashboard_is_a_grafana_dashboard_with_unique_panel_ids_on_one_grid() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert set(variables) == GRAFANA_VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    every = list(panels(dashboard["panels"]))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in every:
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
    for where, expr in dashboard_exprs(dashboard).items():
        used = set(re.findall(r"\$\{?(\w+)", expr)) - {"__rate_interval"}
        assert used <= GRAFANA_VARIABLES, f"{where}: unknown variables {used - GRAFANA_VARIABLES}"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    """Throughput, lag per peer and per datacenter, anti-entropy repairs, suspicions, store commit
    latency and refused frames, each in at least one query."""
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs(load_dashboard()).values()))
    assert {
        "crdtsync_updates_published_total",
        "crdtsync_updates_applied_total",
        "crdtsync_dc_bytes_received_total",
        "crdtsync_peer_lag_seconds",
        "crdtsync_peer_lag_updates",
        "crdtsync_dc_lag_seconds",
        "crdtsync_anti_entropy_docs_repaired_total",
        "crdtsync_anti_entropy_divergence_segments",
        "crdtsync_member_suspicions_total",
        "crdtsync_member_downs_total",
        "crdtsync_member_state",
        "crdtsync_store_commit_seconds_bucket",
        "crdtsync_store_commit_failures_total",
        "crdtsync_frames_dropped_total",
        "crdtsync_wire_errors_total",
        "crdtsync_peers_quarantined_total",
        "crdtsync_docs_evicted_total",
        "crdtsync_doc_loads_total",
    } <= used


def test_the_alert_rules_are_prometheus_rules_of_the_scraped_job() -> None:
    rules = load_yaml(ALERTS)
    scrape = load_yaml(SCRAPE)
    assert ALERTS.name in scrape["rule_files"]
    [job] = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert all(target for group in job["static_configs"] for target in group["targets"])
    names: list[str] = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            names.append(rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            assert f'job="{job["job_name"]}"' in rule["expr"], f"{rule['alert']} selects another job"
    assert len(names) == len(set(names)), names
    used = set().union(*(metric_names(expr) for expr in alert_exprs(rules).values()))
    assert {
        "up",
        "crdtsync_dc_lag_seconds",
        "crdtsync_store_commit_failures_total",
        "crdtsync_peers_quarantined_total",
        "crdtsync_member_state",
        "crdtsync_wire_errors_total",
        "crdtsync_frames_dropped_total",
    } <= used


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def promtool(*args: str | Path) -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_the_alert_rules() -> None:
    promtool("check", "rules", ALERTS)
    promtool("check", "config", "--syntax-only", SCRAPE)


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, with Grafana's variables replaced as Grafana does, as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr.replace("$__rate_interval", "1m")}
        for n, expr in enumerate(dashboard_exprs(load_dashboard()).values())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", path)


# ------------------------------------------------------------------------------------------ the daemon


def scrape(daemon: Daemon) -> str:
    response = daemon.client.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


@pytest.fixture(scope="module")
def two_dcs(pool: DaemonPool) -> list[Daemon]:
    """Two daemons of two datacenters, with every family the files use holding samples."""
    east = pool.new("east-1", dc="east")
    west = pool.new("west-1", dc="west")
    east.peers, west.peers = [west.listen], [east.listen]
    for daemon in (east, west):
        daemon.start()
    for daemon in (east, west):
        daemon.wait_healthy()
    wait_until(lambda: east.peers_up() and west.peers_up(), CONVERGE_TIMEOUT_S, lambda: "peers up")
    for n in range(5):
        east.put("deploy/east", f"k{n}", n)
        west.put("deploy/west", f"k{n}", n)
    # One malformed frame on east's replication port, so crdtsync_wire_errors_total has a series.
    with zmq.Context() as context, context.socket(zmq.DEALER) as junk:
        junk.setsockopt(zmq.LINGER, 0)
        junk.connect(east.listen)
        junk.send(b"not a crdtsync frame")

        def complete() -> bool:
            series = exported_series(scrape(east) + scrape(west))
            wanted = (
                "crdtsync_wire_errors_total",
                "crdtsync_anti_entropy_divergence_segments",
                "crdtsync_peer_last_heard_seconds",
                "crdtsync_store_commit_seconds_bucket",
            )
            return all(series.get(name) for name in wanted) and west.data("deploy/east") is not None

        wait_until(complete, CONVERGE_TIMEOUT_S, lambda: "every family has samples:\n" + scrape(east))
    return [east, west]


@pytest.fixture(scope="module")
def exported(two_dcs: list[Daemon]) -> dict[str, set[str]]:
    """The series the two daemons export."""
    return exported_series("".join(scrape(daemon) for daemon in two_dcs))


def test_every_dashboard_query_names_exported_metrics_and_labels(exported: dict[str, set[str]]) -> None:
    assert exported["crdtsync_dc_lag_seconds"] >= {"dc"}
    assert problems(dashboard_exprs(load_dashboard()), exported) == []


def test_every_alert_expression_names_exported_metrics_and_labels(exported: dict[str, set[str]]) -> None:
    assert problems(alert_exprs(load_yaml(ALERTS)), exported) == []


def test_a_misspelt_metric_in_a_copy_of_the_files_is_found(exported: dict[str, set[str]]) -> None:
    dashboard = copy.deepcopy(load_dashboard())
    target = next(
        target
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if "crdtsync_peer_lag_seconds" in target["expr"]
    )
    target["expr"] = target["expr"].replace("crdtsync_peer_lag_seconds", "crdtsync_peer_lag_second")
    assert [line for line in problems(dashboard_exprs(dashboard), exported) if "is not exported" in line] == [
        f"panel {panel['id']} {panel['title']!r} {target['refId']}: crdtsync_peer_lag_second is not exported"
        for panel in panels(dashboard["panels"])
        if target in panel.get("targets", [])
    ]
    rules = copy.deepcopy(load_yaml(ALERTS))
    rule = rules["groups"][0]["rules"][-1]
    rule["expr"] = rule["expr"].replace("_total", "", 1)
    assert any("is not exported" in line for line in problems(alert_exprs(rules), exported))


def test_every_exported_metric_has_a_row_in_the_metrics_table(exported: dict[str, set[str]]) -> None:
    """docs/daemon.md is where the dashboard and the alerts send people: it lists every series."""
    text = (DEPLOY.parent / "docs" / "daemon.md").read_text()
    documented = set(re.findall(r"^\| `(crdtsync_[a-z0-9_]+)` \|", text, flags=re.MULTILINE))
    families = {name: re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    assert {name for name, family in families.items() if not {name, family} & documented} == set()
    assert documented - set(families.values()) == set()


# ------------------------------------------------------------------------------------------ Prometheus

PROMETHEUS = shutil.which("prometheus")
SCRAPES_S = 6.0
"""How long Prometheus scrapes (every second) before the queries: a few samples for every rate."""
RATE_INTERVAL = "4s"
"""What Grafana's $__rate_interval becomes in the queries (4 scrape intervals)."""


class PrometheusServer:
    """A Prometheus server scraping the daemons with the scrape job and the rules of deploy/."""

    def __init__(self, workdir: Path, daemons: list[Daemon]) -> None:
        config = load_yaml(SCRAPE)
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERTS)]
        [job] = config["scrape_configs"]
        job["static_configs"] = [{"targets": [daemon.url.removeprefix("http://") for daemon in daemons]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        assert PROMETHEUS is not None
        self.log = (workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)

    def api(self, path: str, **params: str) -> Any:
        response = self.client.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited: {self.log.name}"
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.client.close()
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(two_dcs: list[Daemon], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), two_dcs)
    try:
        wait_until(server.ready, CONVERGE_TIMEOUT_S, "prometheus is ready")

        def scraped() -> bool:
            up = server.api("query", query='up{job="crdtsync"}')["result"]
            return len(up) == len(two_dcs) and all(sample["value"][1] == "1" for sample in up)

        wait_until(scraped, CONVERGE_TIMEOUT_S, "prometheus scrapes both daemons", poll_s=0.5)
        # Writes while Prometheus scrapes, so that the rates (and commit latency quantiles) have data.
        deadline = time.monotonic() + SCRAPES_S
        n = 0
        while time.monotonic() < deadline:
            for daemon in two_dcs:
                daemon.put(f"deploy/{daemon.name}", f"scraped{n}", n)
            n += 1
            time.sleep(0.2)
        yield server
    finally:
        server.close()


def test_every_dashboard_query_returns_series_from_a_real_prometheus(prometheus: PrometheusServer) -> None:
    """Each query as Grafana sends it (every job, datacenter and instance chosen) returns data:
    series with at least one number (a join on the wrong labels, or a quantile of a histogram
    without observations, gives none)."""
    empty: list[str] = []
    for where, expr in dashboard_exprs(load_dashboard()).items():
        query = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job", "crdtsync")
        query = query.replace("$dc", ".*").replace("$instance", ".*")
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
        if match is not None:
            values = prometheus.api(f"label/{match[2]}/values", **{"match[]": match[1]})
            if not values:
                empty.append(f"{where}: {query}")
        elif all(series["value"][1] == "NaN" for series in prometheus.api("query", query=query)["result"]):
            empty.append(f"{where}: {query}")
    assert empty == []


def test_every_alert_rule_evaluates_without_error_on_a_real_prometheus(prometheus: PrometheusServer) -> None:
    def evaluated() -> bool:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        return len(rules) == len(alert_exprs(load_yaml(ALERTS))) and all(
            not rule["lastEvaluation"].startswith("0001-")
            for rule in rules  # Go's zero time: not yet
        )

    wait_until(evaluated, CONVERGE_TIMEOUT_S, "every rule was evaluated", poll_s=0.5)
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert {rule["name"]: rule["health"] for rule in rules} == {
        name.removeprefix("alert "): "ok" for name in alert_exprs(load_yaml(ALERTS))
    }
    # Nothing is wrong with the two daemons: no alert fires (pending ones would after their `for`).
    # Store commit latency is the machine's: a loaded machine's fsyncs make it pending without a fault.
    alerts = [alert["labels"]["alertname"] for alert in prometheus.api("alerts")["alerts"]]
    assert [name for name in alerts if name not in MACHINE_SPEED_ALERTS] == []


def test_malformed_frames_make_the_wire_errors_alert_fire(
    two_dcs: list[Daemon], prometheus: PrometheusServer
) -> None:
    """An alert end to end: frames that are not crdtsync frames, counted by the daemon, scraped,
    and over the rule's threshold (after the test above: this one leaves an alert firing)."""
    east = two_dcs[0]
    with zmq.Context() as context, context.socket(zmq.DEALER) as junk:
        junk.setsockopt(zmq.LINGER, 0)
        junk.connect(east.listen)
        for _ in range(20):
            junk.send(b"not a crdtsync frame either")

        def firing() -> list[dict[str, Any]]:
            alerts: list[dict[str, Any]] = prometheus.api("alerts")["alerts"]
            return [alert for alert in alerts if alert["state"] == "firing"]

        wait_until(lambda: bool(firing()), CONVERGE_TIMEOUT_S, "an alert fires", poll_s=0.5)
    [alert] = firing()
    assert alert["labels"]["alertname"] == "CrdtsyncWireErrors"
    assert alert["labels"]["instance"] == east.url.removeprefix("http://")
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["reason"] == "bad_magic"
    assert east.url.removeprefix("http://") in alert["annotations"]["summary"]
