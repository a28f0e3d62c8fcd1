"""faeval engine: audit local-credit learning rules against the protocol, without any UI.

    from engine import load_config, Audit, AuditRunner
    audit = Audit.create(load_config("synthetic_default", ["epochs=3"]), "runs")
    runner = AuditRunner(audit, listener=print)   # any callable gets the engine's events
    runner.submit_unfinished()
    statuses = runner.run()                       # {"bp-s42": "finished", ...}
"""
from .audit import Audit, AuditRunner, RunSpec, plan_runs
from .config import AuditConfig, Thresholds, load_config
from .errors import ConfigError, DataError, FaevalError, StoreError
from .methods import Method, Probe, available_methods, get_method, register_method
from .model import Auditable, ResMLP

__all__ = ["Audit", "AuditConfig", "AuditRunner", "Auditable", "ConfigError", "DataError", "FaevalError",
           "Method", "Probe", "ResMLP", "RunSpec", "StoreError", "Thresholds", "available_methods", "get_method",
           "load_config", "plan_runs", "register_method"]
