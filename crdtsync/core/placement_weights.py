"""Corrected weights for rendezvous placement of more than one replica (see `crdtsync.core.placement`'s
docstring, "weights"): how each weight ranks so that a candidate's share of the partitions is its
weight's share of the replicas, and the water-filled shares they aim at. Pure arithmetic, cached per
(weights, count), so that placement itself stays readable."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence

Rank = tuple[int, float]
"""How a weight ranks: (1 saturated, ranked before every other / 0, the weight to score with)."""


def corrected_weights(weights: Sequence[float], count: int) -> list[Rank]:
    """For candidates of `weights` of which `count` replicas are picked: how each ranks, in the
    same order (see the module docstring). Cached per (weights, count)."""
    if count <= 1 or count >= len(weights) or len(set(weights)) <= 1:
        return [(0, w) for w in weights]
    ranks = corrections(tuple(sorted(weights)), count)
    return [ranks[w] for w in weights]


def target_shares(weights: Sequence[float], count: int) -> list[float]:
    """The probability that each candidate of `weights` holds a partition when `count` of them are
    picked: `count * w / W`, at most 1, the rest shared among the others (water-filling)."""
    positive = [w if w > 0 else 0.0 for w in weights]
    saturated = [False] * len(positive)
    while True:
        left = count - sum(saturated)
        total = sum(w for w, s in zip(positive, saturated, strict=True) if not s)
        if left <= 0 or total <= 0:
            return [1.0 if s else 0.0 for s in saturated]
        shares = [1.0 if s else min(1.0, left * w / total) for w, s in zip(positive, saturated, strict=True)]
        grown = [s or share >= 1.0 - 1e-12 for s, share in zip(saturated, shares, strict=True)]
        if grown == saturated:
            return shares
        saturated = grown


_SOLVE_TOLERANCE = 1e-6
"""Error of the logit of every share at which the correction stops (about the relative error of a
small share): far below the sampling noise."""
_SOLVE_STEPS_MAX = 100
_NEWTON_CLASSES_MAX = 8
"""Up to this many weight classes the correction takes full Newton steps (one evaluation of the race
per class per step); beyond, per-class steps (one evaluation per step), which the coupling between
few classes can throw into a cycle."""


@functools.lru_cache(maxsize=256)
def corrections(weights: tuple[float, ...], count: int) -> Mapping[float, Rank]:
    classes = sorted(Counter(weights).items())
    values = [w for w, _ in classes]
    sizes = [m for _, m in classes]
    per_node = target_shares(weights, count)  # weights are sorted: each class is one run
    targets = [per_node[weights.index(w)] for w in values]
    ranks: dict[float, Rank] = {}
    rest: list[int] = []
    saturated = 0
    for c, (w, target) in enumerate(zip(values, targets, strict=True)):
        if w <= 0 or target <= 0:  # never picked but to fill a zone: ranked by the weight itself
            ranks[w] = (0, w)
        elif target >= 1.0 - 1e-12:
            ranks[w] = (1, w)
            saturated += sizes[c]
        else:
            rest.append(c)
    left = count - saturated
    if len(rest) == 1 or left <= 1:
        for c in rest:  # one weight left, or one replica left: the plain race is proportional
            ranks[values[c]] = (0, values[c])
        return ranks
    solved = _solve([values[c] for c in rest], [sizes[c] for c in rest], [targets[c] for c in rest], left)
    for c, x in zip(rest, solved, strict=True):
        ranks[values[c]] = (0, x)
    return ranks


def _logit(p: float) -> float:
    p = min(max(p, 1e-300), 1.0 - 1e-15)
    return math.log(p) - math.log1p(-p)


def _solve(values: list[float], sizes: list[int], targets: list[float], count: int) -> list[float]:
    """Weights x (summing to 1 over the nodes) whose race puts each class in the top `count` with
    its target probability: full Newton steps for few classes, per-class steps for many."""
    if len(values) <= _NEWTON_CLASSES_MAX:
        solved = _solve_newton(values, sizes, targets, count)
        if solved is not None:
            return solved
    return _solve_per_class(values, sizes, targets, count)


def _normalized(logs: list[float], sizes: list[int]) -> list[float]:
    xs = [math.exp(lg) for lg in logs]
    norm = sum(x * m for x, m in zip(xs, sizes, strict=True))
    return [x / norm for x in xs]


def _errors(xs: list[float], sizes: list[int], wanted: list[float], count: int) -> list[float]:
    """logit(probability) - logit(target) of each class."""
    return [_logit(p) - t for p, t in zip(_inclusion(xs, sizes, count), wanted, strict=True)]


def _solve_newton(
    values: list[float], sizes: list[int], targets: list[float], count: int
) -> list[float] | None:
    """Newton on the log weights of every class but the last (scaling every weight alike changes
    nothing, so one is pinned; its equation follows from the others, as the shares sum to `count`),
    the Jacobian by forward differences, each step halved until the worst error falls. None if it
    does not converge."""
    wanted = [_logit(t) for t in targets]
    logs = [math.log(v) for v in values]
    free = len(values) - 1
    xs = _normalized(logs, sizes)
    errors = _errors(xs, sizes, wanted, count)
    for _ in range(_SOLVE_STEPS_MAX):
        worst = max(abs(e) for e in errors)
        if worst < _SOLVE_TOLERANCE:
            return xs
        columns = []
        for j in range(free):
            nudged = list(logs)
            nudged[j] += 1e-6
            shifted = _errors(_normalized(nudged, sizes), sizes, wanted, count)
            columns.append([(shifted[i] - errors[i]) / 1e-6 for i in range(free)])
        step = _linear_solve(
            [[columns[j][i] for j in range(free)] for i in range(free)], [-e for e in errors[:free]]
        )
        if step is None:
            return None
        step = [min(max(d, -3.0), 3.0) for d in step]
        for _halving in range(30):
            trial = [lg + d for lg, d in zip(logs, [*step, 0.0], strict=True)]
            trial_xs = _normalized(trial, sizes)
            trial_errors = _errors(trial_xs, sizes, wanted, count)
            if max(abs(e) for e in trial_errors) < worst:
                logs, xs, errors = trial, trial_xs, trial_errors
                break
            step = [d / 2 for d in step]
        else:
            return None
    return None


def _linear_solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular matrix."""
    size = len(rhs)
    rows = [[*row, b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-300:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, size):
            factor = rows[r][col] / rows[col][col]
            rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    solution = [0.0] * size
    for r in reversed(range(size)):
        solution[r] = (rows[r][size] - sum(rows[r][c] * solution[c] for c in range(r + 1, size))) / rows[r][r]
    return solution


def _solve_per_class(values: list[float], sizes: list[int], targets: list[float], count: int) -> list[float]:
    """Newton-like steps on log x per class (the logit of the probability moves about as much as log
    x for light and nearly saturated nodes alike), each class's slope from its previous step."""
    total = sum(v * m for v, m in zip(values, sizes, strict=True))
    logs = [math.log(v / total) for v in values]
    previous: tuple[list[float], list[float]] | None = None
    wanted = [_logit(t) for t in targets]
    xs = [v / total for v in values]
    for _ in range(_SOLVE_STEPS_MAX):
        xs = _normalized(logs, sizes)
        logs = [math.log(x) for x in xs]
        probs = [_logit(p) for p in _inclusion(xs, sizes, count)]
        if max(abs(p - t) for p, t in zip(probs, wanted, strict=True)) < _SOLVE_TOLERANCE:
            break
        steps = []
        for c, (p, t) in enumerate(zip(probs, wanted, strict=True)):
            slope = 1.0
            if previous is not None:
                moved = logs[c] - previous[0][c]
                if abs(moved) > 1e-12:
                    slope = min(max((p - previous[1][c]) / moved, 0.2), 2.0)
            steps.append(min(max((t - p) / slope, -3.0), 3.0))
        previous = (logs, probs)
        logs = [lg + step for lg, step in zip(logs, steps, strict=True)]
    return xs


def _gauss_legendre(points: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of Gauss-Legendre quadrature on [-1, 1] (Newton on the Legendre polynomial)."""
    nodes, weights = [], []
    for i in range(1, points + 1):
        x = math.cos(math.pi * (i - 0.25) / (points + 0.5))
        derivative = 1.0
        for _ in range(100):
            p0, p1 = 1.0, x
            for j in range(2, points + 1):
                p0, p1 = p1, ((2 * j - 1) * x * p1 - (j - 1) * p0) / j
            derivative = points * (x * p1 - p0) / (x * x - 1)
            dx = p1 / derivative
            x -= dx
            if abs(dx) < 1e-15:
                break
        nodes.append(x)
        weights.append(2 / ((1 - x * x) * derivative * derivative))
    return tuple(nodes), tuple(weights)


_QUADRATURE = _gauss_legendre(8)


def _binomial_head(size: int, rate: float, t: float, count: int) -> list[float]:
    """Pr[j of `size` nodes of `rate` arrived by t] for j < count."""
    arrived = -math.expm1(-rate * t)
    waiting = math.exp(-rate * t)
    out = []
    coefficient = 1.0
    for j in range(count):
        out.append(coefficient * arrived**j * waiting ** (size - j) if j <= size else 0.0)
        coefficient = coefficient * (size - j) / (j + 1)
    return out


def _convolve(a: list[float], b: list[float]) -> list[float]:
    return [sum(a[i] * b[j - i] for i in range(j + 1)) for j in range(len(a))]


def _inclusion(xs: list[float], sizes: list[int], count: int) -> list[float]:
    """For each class (rate x, `sizes` nodes; the rates sum to 1 over the nodes): the probability that
    one of its nodes is among the first `count` to arrive."""
    classes = len(xs)
    result = [0.0] * classes
    unit = [1.0] + [0.0] * (count - 1)
    low, high = 0.0, 0.5
    nodes, weights = _QUADRATURE
    while True:
        half, middle = (high - low) / 2, (high + low) / 2
        for node, weight in zip(nodes, weights, strict=True):
            t = middle + half * node
            heads = [_binomial_head(m, x, t, count) for x, m in zip(xs, sizes, strict=True)]
            prefix = [unit]
            for head in heads:
                prefix.append(_convolve(prefix[-1], head))
            suffix = unit
            for c in range(classes - 1, -1, -1):
                around = _convolve(prefix[c], suffix)  # every other class
                own = _binomial_head(sizes[c] - 1, xs[c], t, count)  # the other nodes of this class
                cumulative = [sum(own[: count - j]) for j in range(count)]
                fewer = sum(around[j] * cumulative[j] for j in range(count))
                result[c] += weight * half * xs[c] * math.exp(-xs[c] * t) * fewer
                suffix = _convolve(suffix, heads[c])
        if sum(prefix[-1]) < 1e-13:  # fewer than `count` arrivals by `high`: almost never
            return result
        low, high = high, 2 * high
