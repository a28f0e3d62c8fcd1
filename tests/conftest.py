"""Shared test configuration: the tiny audit every engine and console test trains, and
fixtures that build audits from it without leaving global state behind."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# a whole run of this trains in well under a second on one core: 4 batches of 128, d = 16
# (on the synthetic task the synthetic_default preset ships, whatever the embedded default is)
TINY = ["dataset=synthetic", "synthetic.in_dim=16", "synthetic.teacher_width=32", "synthetic.teacher_depth=2",
        "batch_size=128", "workers=1", "epochs=2", "d=16", "synthetic.n_train=512", "synthetic.n_test=1024",
        "diagnostics.rho_directions=4", "seeds=[42]",
        # every test audit trains its runs: a copy of another test's identical run would make a
        # determinism or fault test pass without testing anything (tests/test_reuse.py turns it on)
        "reuse=false"]


def tiny(*sets: str) -> list[str]:
    """TINY with later keys overriding earlier ones (``tiny("epochs=3", "methods=[bp]")``)."""
    return TINY + list(sets)


@pytest.fixture
def new_audit(tmp_path: Path) -> Callable[..., object]:
    """``new_audit("methods=[bp]", ...)``: a fresh audit directory of TINY plus the given keys."""
    from engine import Audit, load_config

    def make(*sets: str, runs_dir: Path | None = None):
        return Audit.create(load_config(None, tiny(*sets)), runs_dir or tmp_path)

    return make


@pytest.fixture
def registered():
    """Register Method subclasses for one test and remove them after it, so no test
    depends on another having registered a method first."""
    from engine.methods import register_method, unregister_method

    names: list[str] = []

    def add(cls):
        register_method(cls)
        names.append(cls.name)
        return cls

    yield add
    for name in names:
        unregister_method(name)


# How long a test waits on a process, a file or a screen state before it gives up: far
# longer than any slow machine needs, shorter than CI's own 90-minute limit, so a hang
# still ends with the test's message. Tests poll for the event, never for a time.
WAIT_S = 3600


def train(audit, workers: int | None = None, listener=None) -> dict[str, str]:
    """Train every unfinished run of ``audit``; run_id → final status."""
    from engine import AuditRunner

    runner = AuditRunner(audit, listener or (lambda event: None), workers=workers)
    runner.submit_unfinished()
    return runner.run()
