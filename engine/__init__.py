"""faeval engine: audit local-credit learning rules against the protocol, without any UI.

    from engine import load_config, Audit, AuditRunner
    audit = Audit.create(load_config("synthetic_default", ["epochs=3"]), "runs")
    runner = AuditRunner(audit, listener=print)   # any callable gets the engine's events
    runner.submit_unfinished()
    statuses = runner.run()                       # {"bp-s42": "finished", ...}

Names are imported on first use (PEP 562), so ``import engine`` and commands that
only read presets never import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Audit": "audit", "AuditRunner": "scheduler", "RunSpec": "plan", "plan_runs": "plan",
    "AuditConfig": "config", "Thresholds": "config", "load_config": "config",
    "ConfigError": "errors", "DataError": "errors", "FaevalError": "errors", "StoreError": "errors",
    "Method": "methods", "Probe": "methods", "available_methods": "methods", "get_method": "methods",
    "register_method": "methods", "unregister_method": "methods",
    "Auditable": "model", "ResMLP": "model",
    "Epoch": "records", "Header": "records", "Start": "records", "End": "records",
    "Tracker": "tracker", "freeze_blocks": "tracker",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
