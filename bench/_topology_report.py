"""bench.topology: the report (tables, targets) of the measured figures."""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass, field
from typing import Any

from bench._common import (
    Target,
    fmt,
    percentile,
    print_table,
)
from bench._topology_real import POLL_S
from bench._topology_sim import (
    ARRIVAL_SLACK_MS,
    CRASH_AFTER_MS,
    CRASH_DC,
    CRASH_LOSSES,
    CRASH_WRITE_RATE_HZ,
    DATACENTERS,
    DRAIN_MS,
    FD_WRITE_RATE_HZ,
    IDLE_MS,
    LAN_LATENCY_MS,
    NODES,
    STRAGGLERS_MS,
    WAN_LATENCY_MS,
    WAN_LOSS_INFO,
    WARMUP_MS,
    WRITE_RATE_HZ,
    Settings,
    silence_to_suspect_ms,
    wan_figures,
)
from crdtsync.core.membership import MembershipConfig, PhiDetector
from crdtsync.core.replica import ReplicaConfig


def liveness_check_ms(replica: ReplicaConfig) -> float:
    """The detector's evaluation period, where the replica polls it (0: evaluated exactly when due)."""
    return float(getattr(replica, "liveness_check_interval_ms", 0.0))


def git_revision() -> str:
    """The commit measured, and whether crdtsync/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "crdtsync"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in crdtsync/" if dirty else "")


def heartbeat_only_detection_s(membership: MembershipConfig, replica: ReplicaConfig) -> tuple[float, float]:
    """(suspect, down) after the last arrival, by the settings, for a member heard only at every heartbeat."""
    heartbeat = replica.heartbeat_interval_ms
    detector = PhiDetector(membership.samples_max, heartbeat, 0.0, heartbeat + membership.acceptable_pause_ms)
    now = 0.0
    for _ in range(50):
        now += heartbeat
        detector.heard(now)
    silence = silence_to_suspect_ms(detector, membership)
    suspect = silence + liveness_check_ms(replica)
    return suspect / 1000.0, (suspect + membership.down_after_suspect_ms) / 1000.0


# ---------------------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    machine: dict[str, str]
    settings: Settings
    results: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "never"
    return fmt(float(value), digits)


def print_header(report: Report) -> None:
    machine = report.machine
    settings = report.settings
    print("crdtsync topology and failure-detection benchmark" + (" (--quick)" if settings.quick else ""))
    print(f"  machine: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}, {machine['python']}")
    versions = ", ".join(
        f"{k} {machine[k]}" for k in ("pycrdt", "pyzmq", "libzmq", "lz4", "msgpack", "crdtsync")
    )
    print(f"  versions: {versions}; source {machine.get('revision', 'unknown')}")
    wan = ", ".join(f"{a}-{b} {ms:g} ms" for (a, b), ms in WAN_LATENCY_MS.items())
    print(
        f"  simulation: seed {settings.seed}; {NODES} nodes in {DATACENTERS} DCs; one-way WAN latency {wan};"
        f" LAN {LAN_LATENCY_MS[0]}-{LAN_LATENCY_MS[1]} ms"
    )
    membership = MembershipConfig()
    replica = ReplicaConfig()
    print(
        f"  detector (defaults): phi_suspect {membership.phi_suspect:g}, acceptable_pause"
        f" {membership.acceptable_pause_ms:g} ms, min_std_deviation {membership.min_std_deviation_ms:g} ms,"
        f" down_after_suspect {membership.down_after_suspect_ms:g} ms, gossip {membership.gossip_interval_ms:g} ms,"
        f" heartbeat {replica.heartbeat_interval_ms:g} ms, "
        + (
            f"liveness check every {liveness_check_ms(replica):g} ms"
            if liveness_check_ms(replica)
            else "liveness evaluated at the detector's next deadline"
        )
    )


def report_wan(report: Report) -> None:
    results = report.results
    runs = [(label, results[key]) for key, label in WAN_RUNS if key in results]
    if not runs:
        return
    settings = report.settings
    figures = {label: wan_figures(run) for label, run in runs}
    rows = []
    for label, run in runs:
        f = figures[label]
        rows.append(
            [
                label,
                fmt(int(run["writes"])),
                _f(f["wan_frames"], 2),
                _f(f["wan_bytes"], 1),
                _f(f["wan_deltas_frames"], 2),
                _f(f["wan_deltas_bytes"], 1),
                _f(f["wan_membership_bytes"], 2),
                _f(f["wan_anti-entropy_bytes"], 2),
                _f(f["wan_repair_bytes"], 2),
                _f(f["wan_bytes_minus_idle"], 1),
                _f(f["idle_wan_bytes_per_s"], 0),
                _f(f["lan_frames"], 2),
                _f(f["lan_bytes"], 1),
            ]
        )
    base = figures[runs[0][0]]
    notes = [
        f"{settings.write_s:g} s of writes at {WRITE_RATE_HZ:,.0f}/s over {settings.docs} docs, then {DRAIN_MS / 1000:g} s"
        f" of drain, counted together; idle: the {IDLE_MS / 1000:g} s before the writes",
        "WAN: frames sent between datacenters (lost ones included); deltas = DELTAS (+RELAYED, never on the WAN);"
        " memb = HEARTBEAT, MEMBERS, HELLO*; AE = TREE_*; repair = SYNC_*, RETRANSMIT_*",
        "-idle: all WAN bytes per update minus the idle window's WAN rate over the same time",
        f"a one-update DELTAS frame on the WAN: {base['delta_frame_bytes']:.1f} B as sent, lz4 included"
        f" ({base['delta_frame_raw_bytes']:.1f} B without): a header with the sender's id, epoch and seq, then"
        f" msgpack of doc id ({base['doc_id_bytes']:.1f} B), before + after state vectors as decoded"
        f" ({base['state_bytes']:.1f} B; version 2 sends the after one as a patch, version 3 neither)"
        f" and the Yjs update ({base['update_bytes']:.1f} B; {base['update_compressed_bytes']:.1f} B at best"
        " with lz4)",
    ]
    idle = runs[0][1]["traffic"].get("idle", {}).get("wan", {})
    idle_s = float(runs[0][1]["idle_s"])
    notes.append(
        f"{runs[0][0]}, idle WAN by kind: "
        + ", ".join(
            f"{kind} {c[0] / idle_s:.1f}/s {c[1] / idle_s:.0f} B/s" for kind, c in sorted(idle.items())
        )
    )
    seed_only = report.results.get("wan_relay1_seed_only_idle")
    if seed_only is not None:
        idle = seed_only["traffic"].get("idle", {}).get("wan", {})
        idle_s = float(seed_only["idle_s"])
        notes.append(
            "same, every node configured with n0 as its only peer (the rest learned by gossip): "
            + ", ".join(
                f"{kind} {c[0] / idle_s:.1f}/s {c[1] / idle_s:.0f} B/s" for kind, c in sorted(idle.items())
            )
        )
    for label, run in runs:
        relay_text = "; ".join(f"{dc}: {','.join(ids)}" for dc, ids in run["relays"].items())
        notes.append(f"{label}: relays {relay_text}; {run['events']:,} events, {run['wall_s']:.1f} s wall")
    print_table(
        "(1) WAN traffic per update, 3 DCs x 3 nodes, simulated",
        [
            "topology",
            "writes",
            "WAN msg",
            "WAN B",
            "delta msg",
            "delta B",
            "memb B",
            "AE B",
            "repair B",
            "B -idle",
            "idle B/s",
            "LAN msg",
            "LAN B",
        ],
        rows,
        notes,
    )

    rows = []
    for label, run in runs:
        arrival = run["arrival"]
        for pair, entry in arrival["pairs"].items():
            rows.append(
                [
                    label,
                    pair,
                    _f(entry["floor_ms"], 0),
                    _f(entry["first"]["p50"], 2),
                    _f(entry["first"]["p99"], 2),
                    _f(entry["all"]["p50"], 2),
                    _f(entry["all"]["p99"], 2),
                    _f(entry["all"]["max"], 2),
                ]
            )
        ex = arrival["excess_all"]
        rows.append(
            [
                label,
                "all pairs: - floor",
                "",
                _f(arrival["excess_first"]["p50"], 2),
                _f(arrival["excess_first"]["p99"], 2),
                _f(ex["p50"], 2),
                _f(ex["p99"], 2),
                _f(ex["max"], 2),
            ]
        )
    lan_notes = [
        f"{label}: inside the writer's DC, all nodes p50 {_f(run['arrival']['lan_all']['p50'], 2)} /"
        f" p99 {_f(run['arrival']['lan_all']['p99'], 2)} / max {_f(run['arrival']['lan_all']['max'], 2)} ms;"
        f" (write, DC) pairs never reached: {run['arrival']['missing']}"
        for label, run in runs
    ]
    print_table(
        "(1) Time from a write to its arrival in another DC (ms, simulated time)",
        ["topology", "DC pair", "floor", "first p50", "first p99", "all p50", "all p99", "all max"],
        rows,
        [
            "floor: the pair's one-way WAN latency; first: the DC's first node holds the write; all: every node",
            *lan_notes,
        ],
    )

    rows = []
    for label, run in runs:
        nodes = run["per_node"]
        relays = [n for n in nodes if n["relay"]]
        others = [n for n in nodes if not n["relay"]]
        busiest = max(nodes, key=lambda n: n["utilization"])
        rows.append(
            [
                label,
                _f(100 * max((n["utilization"] for n in relays), default=math.nan), 1),
                _f(100 * max((n["utilization"] for n in others), default=math.nan), 1),
                f"{busiest['node']} ({'relay' if busiest['relay'] else 'non-relay'})",
                _f(
                    1e3 * sum(n["busy_ms"] for n in nodes) / max(1, sum(n["frames_received"] for n in nodes)),
                    1,
                ),
            ]
        )
    print_table(
        "(1) Replica CPU receiving at 1,000 updates/s (this process, per simulated second)",
        ["topology", "max relay %", "max non-relay %", "busiest", "us/frame"],
        rows,
        ["Replica.receive + tick wall time (observer subtracted) / simulated seconds; one core = 100%"],
    )


WAN_RUNS = (
    ("wan_relay1", "1 relay/DC"),
    ("wan_relay2", "2 relays/DC"),
    ("wan_mesh", "full mesh"),
    ("wan_relay1_loss", f"1 relay/DC, {WAN_LOSS_INFO:.0%} WAN loss"),
)


def report_fd(report: Report) -> None:
    results = report.results
    fp: list[dict[str, Any]] = results.get("false_suspicions", [])
    if fp:
        rows = []
        for loss in sorted({r["loss"] for r in fp}):
            group = [r for r in fp if r["loss"] == loss]
            hours = sum(r["node_hours"] for r in group)
            suspicions = sum(r["suspicions"] for r in group)
            rows.append(
                [
                    f"{loss:.0%}",
                    fmt(len(group)),
                    _f(hours, 2),
                    fmt(suspicions),
                    fmt(sum(r["downs"] for r in group)),
                    _f(suspicions / hours if hours else math.nan, 2),
                    fmt(sum(r["warmup_suspicions"] for r in group)),
                    _f(max(r["write_to_all_ms"]["p50"] for r in group), 1),
                    _f(max(r["write_to_all_ms"]["p99"] for r in group), 1),
                    _f(max(r["write_to_all_ms"]["max"] for r in group), 1),
                    fmt(sum(r["writes_unreached"] for r in group)),
                ]
            )
        print_table(
            "(2) False suspicions, no node down (simulated, loss on every link, 9 nodes)",
            [
                "loss",
                "runs",
                "node-hours",
                "suspicions",
                "downs",
                "per node-hour",
                "in warm-up",
                "write p50",
                "write p99",
                "write max",
                "unreached",
            ],
            rows,
            [
                f"each run: {report.settings.fd_duration_s:g} s after a {WARMUP_MS / 1000:g} s warm-up,"
                f" {FD_WRITE_RATE_HZ:g} writes/s; suspicions: alive -> suspect transitions summed over"
                " every node's view of every other",
                "write p50/p99/max: ms from a write to the moment every node holds it (worst run); unreached:"
                f" writes some node still lacked {STRAGGLERS_MS / 1000:g} s after the run",
                "who suspected whom: "
                + (
                    "; ".join(
                        f"{r['loss']:.0%} loss, seed {r['seed']}: {', '.join(r['suspected'])}"
                        for r in fp
                        if r["suspected"]
                    )
                    or "nobody"
                ),
                "write -> each node p99/max ms, by the receiver's place relative to the writer (first run):",
                *(
                    f"  {r['loss']:.0%}: "
                    + "; ".join(
                        f"{place} {_f(v['p99'], 0)}/{_f(v['max'], 0)}"
                        for place, v in r["write_to_node_ms"].items()
                    )
                    for r in fp
                    if r["seed"] == report.settings.seed
                ),
            ],
        )
    crashes: list[dict[str, Any]] = results.get("crashes", [])
    if crashes:
        rows = []
        late_notes = []
        for role in ("relay", "non-relay"):
            for loss in CRASH_LOSSES:
                group = [r for r in crashes if r["victim_role"] == role and r["loss"] == loss]
                if not group:
                    continue

                def col(key: str, runs: list[dict[str, Any]] = group) -> list[float]:
                    return sorted(float(r[key]) for r in runs if r[key] is not None)

                over = sorted(v for r in group for v in r["suspect_over_expected_ms"])
                expected = sorted(v for r in group for v in r["expected_suspect_ms"])
                rows.append(
                    [
                        f"{role}, {loss:.0%} loss",
                        fmt(len(group)),
                        _p50max(col("first_suspect_ms")),
                        _p50max(col("all_suspect_ms")),
                        _p50max(col("same_dc_down_ms")),
                        _p50max(col("all_down_ms")),
                        f"{percentile(expected, 50) / 1000:.2f}",
                        f"{round(percentile(over, 50))}/{round(over[-1])}",
                        _p50max(col("relay_moved_dc_ms")),
                        _p50max(col("relay_moved_all_ms")),
                        _p50max(col("write_to_all_max_ms")),
                        fmt(sum(int(r["false_suspicions_of_others"]) for r in group)),
                    ]
                )
                by_place: dict[str, list[float]] = {}
                for r in group:
                    for place, late in zip(r["observer_places"], r["suspect_over_expected_ms"], strict=True):
                        by_place.setdefault(place, []).append(late)
                late_notes.append(
                    f"  {role}, {loss:.0%} loss: "
                    + "; ".join(
                        f"{place} {round(percentile(sorted(v), 50))}/{round(max(v))}"
                        for place, v in sorted(by_place.items())
                    )
                )
        print_table(
            f"(2) Crash of a node of {CRASH_DC}: detection by the 8 others (simulated; s, p50/max over seeds)",
            [
                "victim",
                "runs",
                "1st suspect",
                "all suspect",
                "DC down",
                "all down",
                "phi predicts",
                "late ms",
                "relay moved DC",
                "relay moved all",
                "write->all max",
                "false susp.",
            ],
            rows,
            [
                f"crash {CRASH_AFTER_MS / 1000:g} s into the run, {CRASH_WRITE_RATE_HZ:g} writes/s throughout;"
                " DC down: every node of the victim's DC sees it down; all down: every node",
                "phi predicts: median over observers of the silence at which their detector reaches phi_suspect"
                " (from its arrival history at the crash), counted from the crash",
                "late ms: measured suspicion - that prediction, p50/max over observers; evidence that arrives"
                " after the crash (frames in flight, the victim's last heartbeat counter relayed by gossip)"
                " resets the silence. By observer:",
                *late_notes,
                "relay moved: until every node of the victim's DC (DC) / every node (all) names another relay;"
                " write->all max: the longest any write made in the next 15 s took to reach every live node",
                "false susp.: suspicions of nodes other than the victim during the run (all runs)",
            ],
        )


def _p50max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{_f(percentile(values, 50) / 1000, 2)}/{_f(values[-1] / 1000, 2)}"


def report_procs(report: Report) -> None:
    pause = report.results.get("pause")
    if pause is None:
        return
    suspect_s, down_s = heartbeat_only_detection_s(MembershipConfig(), ReplicaConfig())
    rows = []
    for rep in pause["reps"]:
        rows.append(
            [
                f"SIGSTOP #{rep['rep']}",
                " / ".join(_f(v, 2) for v in rep["suspect_s"].values()),
                " / ".join(_f(v, 2) for v in rep["down_s"].values()),
                _f(rep["paused_s"], 2),
                " / ".join(_f(v, 2) for v in rep["alive_after_cont_s"].values()),
                fmt(sum(rep["observer_suspicions"].values())),
                fmt(rep["victim_suspicions_of_others"]),
            ]
        )
    short = pause["short"]
    if short is not None:
        rows.append(
            [
                f"SIGSTOP {short['pause_s']:g} s",
                ",".join(short["states_seen"]) or "none",
                "-",
                _f(short["pause_s"], 2),
                "-",
                fmt(short["observer_suspicions"]),
                fmt(short["victim_suspicions_of_others"]),
            ]
        )
    print_table(
        f"(3) A paused process: 3 `crdtsync serve` processes, {pause['victim']} stopped, seen by"
        f" {' / '.join(pause['observers'])} (s)",
        ["pause", "suspect", "down", "paused", "alive after CONT", "susp. raised", "victim susp."],
        rows,
        [
            f"by the settings, a member heard only at every heartbeat ({ReplicaConfig().heartbeat_interval_ms:g} ms)"
            f" is suspect {suspect_s:.2f} s and down {down_s:.2f} s after its last arrival (+ up to one heartbeat"
            " interval from the pause to the missed arrival); gossip makes arrivals denser",
            f"times from SIGSTOP (SIGCONT) to the answer of the first poll (every {POLL_S * 1000:.0f} ms) that"
            " showed the state;"
            " susp. raised: the observers' member_suspect counters (1 per observer expected for a long pause);"
            " victim susp.: suspicions the paused node raised about the others after it resumed",
        ],
    )


def build_targets(report: Report) -> list[Target]:
    results = report.results
    targets: list[Target] = []
    for key in ("wan_relay1", "wan_relay2"):
        run = results.get(key)
        if run is None:
            continue
        f = wan_figures(run)
        relays = int(run["relays_per_dc"])
        frame_bound = (DATACENTERS - 1) * relays * f["delta_frame_bytes"]
        targets += [
            Target(
                f"{key}_delta_bytes_vs_frame_bound",
                f"(1) {relays} relay/DC: WAN delta bytes/update <= (DCs-1) x {relays} x one-update frame"
                f" ({frame_bound:.0f} B)",
                f["wan_deltas_bytes"],
                frame_bound,
                "B",
                tolerance=1e-9,
            ),
            Target(
                f"{key}_all_bytes_vs_frame_bound",
                f"(1) {relays} relay/DC: all WAN bytes/update (deltas + membership + anti-entropy), same bound",
                f["wan_bytes"],
                frame_bound,
                "B",
            ),
        ]
        if relays == 1:
            update_bound = (DATACENTERS - 1) * relays * f["update_compressed_bytes"]
            targets.append(
                Target(
                    f"{key}_delta_bytes_vs_update_bound",
                    f"(1) 1 relay/DC: WAN delta bytes/update <= (DCs-1) x 1 x bare compressed Yjs update"
                    f" ({update_bound:.0f} B)",
                    f["wan_deltas_bytes"],
                    update_bound,
                    "B",
                ),
            )
        mesh = results.get("wan_mesh")
        if mesh is not None:
            m = wan_figures(mesh)
            targets.append(
                Target(
                    f"{key}_bytes_vs_mesh",
                    f"(1) {relays} relay/DC: WAN bytes/update / full mesh",
                    f["wan_bytes"] / m["wan_bytes"] if m["wan_bytes"] else None,
                    None,
                )
            )
        targets.append(
            Target(
                f"{key}_arrival_p99_over_floor_ms",
                f"(1) {relays} relay/DC: arrival on every node of every other DC, p99 - WAN latency,"
                f" <= {ARRIVAL_SLACK_MS:g} ms",
                run["arrival"]["excess_all"]["p99"],
                ARRIVAL_SLACK_MS,
                "ms",
            )
        )
        if run["arrival"]["missing"]:
            targets.append(
                Target(
                    f"{key}_arrival_missing",
                    f"(1) {relays} relay/DC: (write, DC) pairs never reached",
                    float(run["arrival"]["missing"]),
                    0.0,
                )
            )
    crashes: list[dict[str, Any]] = results.get("crashes", [])
    if crashes:
        down = sorted(float(r["all_down_ms"]) for r in crashes if r["loss"] == 0.05)
        if down:
            targets.append(
                Target(
                    "crash_down_p50_s_loss5",
                    "(2) crash -> down everywhere, 5% loss, p50 s",
                    percentile(down, 50) / 1000,
                    None,
                    "s",
                )
            )
    fp: list[dict[str, Any]] = results.get("false_suspicions", [])
    group = [r for r in fp if r["loss"] == 0.05]
    if group:
        hours = sum(r["node_hours"] for r in group)
        targets.append(
            Target(
                "false_suspicions_per_node_hour_loss5",
                "(2) false suspicions per node-hour, 5% loss",
                sum(r["suspicions"] for r in group) / hours,
                None,
            )
        )
    pause = results.get("pause")
    if pause is not None:
        downs = sorted(v for rep in pause["reps"] for v in rep["down_s"].values() if v is not None)
        if downs:
            targets.append(
                Target(
                    "sigstop_down_max_s", "(3) SIGSTOP -> down on both observers, max s", downs[-1], None, "s"
                )
            )
    return targets


def print_targets(targets: list[Target]) -> None:
    rows = [
        [
            t.text,
            _f(t.value, 4 if not t.unit else 2),
            "" if t.limit is None else f"<= {t.limit:.4g}",
            t.verdict,
        ]
        for t in targets
    ]
    print_table("Targets (from the issue)", ["target", "measured", "limit", "verdict"], rows)
