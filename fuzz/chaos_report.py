"""The chaos campaign's timeline and its picture (`python -m fuzz.chaos --report DIR`).

The campaign records what happened when, in seconds since its faults began: each fault as a span on
the nodes it touched, each write's answer, the heal, and when each node reached the state every
node converged to. `write_png` draws it with matplotlib (the optional extra `report`:
`pip install 'crdtsync[report]'`): one row per node with its faults and its convergence mark, and
below, acknowledged and failed writes per second.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SPANS_MAX = 100_000
WRITES_MAX = 2_000_000
"""Beyond these the timeline stops recording (a run of days); the figures in the JSON still count."""
PNG_DPI = 110
PNG_WIDTH_IN = 14.0
ROW_HEIGHT_IN = 0.45
RATES_HEIGHT_IN = 3.0

CATEGORY_COLOURS = {
    "kill": "#d62728",
    "term": "#ff7f0e",
    "stop": "#bcbd22",
    "partition": "#1f77b4",
    "reset": "#17becf",
    "degrade": "#9467bd",
    "full": "#8c564b",
    "ioerror": "#e377c2",
    "backup-kill": "#7f7f7f",
    "restore-kill": "#2ca02c",
}
"""A colour per fault kind (the first word of a span's label)."""
NETWORK_KINDS = frozenset({"partition", "reset", "degrade", "slow-close"})
"""Drawn in the lower half of a node's row, the process and disk faults in the upper half."""
MISSING_MATPLOTLIB = (
    "the timeline picture needs matplotlib: pip install 'crdtsync[report]' "
    "(or pip install 'matplotlib>=3.8,<4'); the JSON figures were written without it"
)


@dataclass
class Span:
    node: str
    label: str
    start_s: float
    end_s: float | None = None
    """None while the fault lasts (drawn up to the end of the run)."""


@dataclass
class Timeline:
    """What happened when, in seconds since `started` (the campaign sets it when the faults begin)."""

    nodes: list[str]
    started: float = field(default_factory=time.monotonic)
    spans: list[Span] = field(default_factory=list)
    writes: list[tuple[float, bool]] = field(default_factory=list)
    """(when the answer came, whether it was acknowledged)."""
    heal_s: float | None = None
    end_s: float | None = None
    converged_s: dict[str, float] = field(default_factory=dict)
    """Node -> when it reached the root every node ended with (after the heal)."""

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def begin(self, nodes: list[str] | str, label: str) -> list[Span]:
        """Start a span on each of `nodes`; end them with `end`."""
        names = [nodes] if isinstance(nodes, str) else nodes
        at_s = self.now_s()
        spans = [Span(node, label, at_s) for node in names]
        if len(self.spans) + len(spans) <= SPANS_MAX:
            self.spans.extend(spans)
        return spans

    def end(self, spans: list[Span]) -> None:
        at_s = self.now_s()
        for span in spans:
            if span.end_s is None:
                span.end_s = at_s

    def write(self, acked: bool) -> None:
        if len(self.writes) < WRITES_MAX:
            self.writes.append((self.now_s(), acked))

    def figures(self) -> dict[str, Any]:
        """The timeline's own figures for the JSON report."""
        kinds = Counter(span.label.split()[0] for span in self.spans)
        return {
            "heal_s": self.heal_s,
            "end_s": self.end_s,
            "fault_spans_by_kind": dict(sorted(kinds.items())),
            "converged_after_heal_s_by_node": {
                node: round(at_s - (self.heal_s or 0.0), 3) for node, at_s in sorted(self.converged_s.items())
            },
        }


def write_png(timeline: Timeline, title: str, path: str) -> None:
    """Draw the timeline to `path` (PNG). Raises ImportError with MISSING_MATPLOTLIB without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError(MISSING_MATPLOTLIB) from exc
    end_s = timeline.end_s if timeline.end_s is not None else timeline.now_s()
    rows = len(timeline.nodes)
    figure, (faults, rates) = pyplot.subplots(
        2,
        1,
        sharex=True,
        figsize=(PNG_WIDTH_IN, rows * ROW_HEIGHT_IN + RATES_HEIGHT_IN + 1.5),
        gridspec_kw={"height_ratios": [max(1.0, rows * ROW_HEIGHT_IN), RATES_HEIGHT_IN]},
    )
    try:
        _draw_faults(faults, timeline, end_s, Patch)
        _draw_rates(rates, timeline, end_s)
        faults.set_title(title, fontsize=10, loc="left")
        figure.tight_layout()
        figure.savefig(path, dpi=PNG_DPI)
    finally:
        pyplot.close(figure)


def _draw_faults(axes: Any, timeline: Timeline, end_s: float, patch: Any) -> None:
    row = {node: index for index, node in enumerate(timeline.nodes)}
    seen: set[str] = set()
    for span in timeline.spans:
        if span.node not in row:
            continue
        kind = span.label.split()[0]
        seen.add(kind)
        stop_s = span.end_s if span.end_s is not None else end_s
        lower = kind in NETWORK_KINDS
        axes.broken_barh(
            [(span.start_s, max(0.05, stop_s - span.start_s))],
            (row[span.node] + (0.0 if lower else -0.38), 0.38),
            facecolors=CATEGORY_COLOURS.get(kind, "#333333"),
            alpha=0.75,
        )
    for node, at_s in timeline.converged_s.items():
        if node in row:
            axes.plot([at_s], [row[node]], marker="*", color="black", markersize=11, linestyle="none")
    if timeline.heal_s is not None:
        for target in (axes,):
            target.axvline(timeline.heal_s, color="green", linestyle="--", linewidth=1.2)
    axes.set_yticks(range(len(timeline.nodes)), timeline.nodes)
    axes.set_ylim(-0.6, len(timeline.nodes) - 0.4)
    axes.invert_yaxis()
    axes.set_ylabel("node\n(top: process, disk\nbottom: network)", fontsize=8)
    handles = [patch(color=CATEGORY_COLOURS.get(k, "#333333"), label=k) for k in sorted(seen)]
    handles.append(patch(color="green", label="heal (dashed)"))
    handles.append(patch(color="black", label="converged (star)"))
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    axes.grid(axis="x", alpha=0.3)


def _draw_rates(axes: Any, timeline: Timeline, end_s: float) -> None:
    seconds = max(1, int(end_s) + 1)
    acked = [0] * seconds
    failed = [0] * seconds
    for at_s, ok in timeline.writes:
        bucket = min(seconds - 1, max(0, int(at_s)))
        if ok:
            acked[bucket] += 1
        else:
            failed[bucket] += 1
    xs = list(range(seconds))
    axes.step(xs, acked, where="post", color="#2ca02c", label="writes acknowledged /s")
    axes.step(xs, failed, where="post", color="#d62728", label="writes failed /s (errors)")
    if timeline.heal_s is not None:
        axes.axvline(timeline.heal_s, color="green", linestyle="--", linewidth=1.2)
    axes.set_xlabel("seconds since the faults began")
    axes.set_ylabel("writes per second")
    axes.set_xlim(0, end_s)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    axes.grid(alpha=0.3)
