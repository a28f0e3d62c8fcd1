"""The console's trainer: ``faeval-tui resume DIR`` in a process of its own, detached from
the terminal session, so training outlives the console and a dropped SSH connection.

The console follows it through its files as ``watch`` does and steers it through the
audit directory (``engine.control``). Its output goes to ``<audit>/trainer.log``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

TRAINER_LOG = "trainer.log"
NICE = 10  # the console's event loop wins the cores whenever it has work (as the in-process runner's nice)


def command(audit_dir: Path, on_alert: list[str] | None = None, nice: int = NICE) -> list[str]:
    cmd = [sys.executable, "-m", "faeval_tui", "resume", str(audit_dir), "--nice", str(nice)]
    if on_alert:
        cmd += ["--on-alert", shlex.join(on_alert)]
    return cmd


def spawn(audit_dir: Path, on_alert: list[str] | None = None, nice: int = NICE) -> subprocess.Popen:
    """Start the trainer: its own session (no controlling terminal, so no SIGHUP when the
    terminal goes), stdin closed, stdout and stderr appended to trainer.log."""
    audit_dir = Path(audit_dir).absolute()
    with open(audit_dir / TRAINER_LOG, "ab") as log:
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # its lines reach the log as they are printed
        return subprocess.Popen(command(audit_dir, on_alert, nice), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env,
                                cwd=audit_dir)


def log_tail(audit_dir: Path, lines: int = 12) -> str:
    try:
        text = (Path(audit_dir) / TRAINER_LOG).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
