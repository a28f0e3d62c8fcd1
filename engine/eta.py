"""How long until an audit's verdicts are in, from the epoch times its own records measured.

Each epoch line carries ``train_s`` and ``diag_s`` (seconds per diagnostic); their sum is
what one epoch of that method costs on this machine with this audit's settings (workers,
threads, precision, the ρ and null-band cadence averaged in). The estimate gives every
run still to train its remaining epochs at its method's mean cost and deals the runs to
``workers`` slots the way the scheduler does (running runs first, then the queue in
order, each to the slot that frees first); the answer is when the last slot frees.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence

from .fmt import duration
from .records import Epoch
from .runstore import RunLog


def epoch_cost(rec: Epoch) -> float:
    """Seconds one epoch took: its training plus every diagnostic it measured."""
    return float(rec.train_s or 0.0) + float(sum(rec.diag_s.values()))


def method_costs(runs: Sequence[tuple[str, RunLog]]) -> dict[str, float]:
    """Mean seconds per epoch of each method, over every measured epoch of (method, records)."""
    costs: dict[str, list[float]] = {}
    for method, log in runs:
        for rec in log.epochs:
            cost = epoch_cost(rec)
            if cost > 0:
                costs.setdefault(method, []).append(cost)
    return {m: sum(v) / len(v) for m, v in costs.items()}


def remaining_seconds(runs: Sequence[tuple[str, RunLog, str]], workers: int, epochs: int) -> float | None:
    """Seconds until every run whose status is ``running`` or ``queued`` has ended.

    ``runs`` holds (method, records, status as ``RunLog.status`` gives it) per run, in
    the queue's order; ``epochs`` is the audit's length, for runs with no header yet.
    None until some epoch has been measured; 0.0 when nothing is left to train.
    """
    costs = method_costs([(method, log) for method, log, _ in runs])
    if not costs:
        return None
    fallback = sum(costs.values()) / len(costs)  # a method with no epoch yet: the audit's mean
    running = [r for r in runs if r[2] == "running"]
    queued = [r for r in runs if r[2] == "queued"]
    slots = [0.0] * max(1, workers)
    for method, log, _ in running + queued:
        left = max(0, (log.total_epochs or epochs) - len(log.epochs))
        heapq.heappush(slots, heapq.heappop(slots) + left * costs.get(method, fallback))
    return max(slots)


def untimed(runs: Sequence[tuple[str, RunLog, str]]) -> list[str]:
    """Methods of runs still to train (running or queued) with no measured epoch in the audit
    yet: their cost in ``remaining_seconds`` is the audit's mean, a guess (frozen's epochs,
    which train no blocks, are the cheapest)."""
    timed = method_costs([(method, log) for method, log, _ in runs])
    out: list[str] = []
    for method, _, status in runs:
        if status in ("running", "queued") and method not in timed and method not in out:
            out.append(method)
    return out


def time_left(runs: Sequence[tuple[str, RunLog, str]], workers: int, epochs: int) -> str | None:
    """``about 3 min left``, or ``about 1 min left, more once bp, fa are timed`` while some
    method still to train has no measured epoch; None before any epoch is measured or when
    nothing is left."""
    left = remaining_seconds(runs, workers, epochs)
    if not left:
        return None
    guessed = untimed(runs)
    more = f", more once {', '.join(guessed)} {'is' if len(guessed) == 1 else 'are'} timed" if guessed else ""
    return f"about {duration(left)} left{more}"
