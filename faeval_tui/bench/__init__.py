"""The speed benchmark of issue #5 (``faeval-tui bench``). Not part of the engine: it may use rich and textual.

Its entry points are imported on first use: ``python -m faeval_tui.bench.memory`` runs a
console that must not import torch, and ``profile`` and ``run`` do."""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"markdown": "run", "print_table": "run", "run_bench": "run", "profile_markdown": "profile",
          "run_profiles": "profile"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
