"""Event-loop lag of the running console while two runs train in its worker processes.

A coroutine on the app's own loop asks to wake every ``tick`` seconds and records how
late it wakes: every key press, redraw and engine message waits at least that long.
Samples count only while runs are training (after the first ``RunStarted``).
"""
from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from engine.config import load_config


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def _measure(seconds: float, tick: float, runs_dir: Path, sets: list[str]) -> dict[str, float]:
    from faeval_tui.app import FaevalApp

    app = FaevalApp(cfg=load_config("synthetic_default", sets), runs_dir=runs_dir, bell=False)
    lags: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 60
        # both workers' children are up (each takes a few seconds to spawn and import torch)
        while sum(1 for v in app.state.runs.values() if v.log.started) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        running_at_start = sum(1 for v in app.state.runs.values() if v.log.started)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - t0 - tick)
        epochs = sum(len(v.log.epochs) for v in app.state.runs.values())
        app.live_feed.stop()
        if app.training is not None:
            await app.training.wait()
        await pilot.pause()
    lags_ms = [1000 * max(0.0, v) for v in lags]
    return {"ui_lag_p50_ms": _percentile(lags_ms, 50), "ui_lag_p99_ms": _percentile(lags_ms, 99),
            "ui_lag_max_ms": max(lags_ms), "ui_lag_samples": len(lags_ms), "ui_runs_training": running_at_start,
            "ui_epochs_recorded": epochs}


def console_lag(seconds: float = 10.0, tick: float = 0.01, epochs: int = 50) -> dict[str, float]:
    """Lag percentiles (ms) of the console on the embedded synthetic preset, workers = 2."""
    with tempfile.TemporaryDirectory(prefix="faeval-bench-ui-") as tmp:
        sets = ["workers=2", f"epochs={epochs}", "seeds=[42,123]"]
        return asyncio.run(_measure(seconds, tick, Path(tmp), sets))
