"""``--on-alert CMD``: run a command of the user's on every walk-back alert, with the alert
as JSON on its standard input.

The command is an argument list fixed when the audit starts (``parse_command`` splits the
one string of the command line with ``shlex.split``, once): it is never given to a shell
and never formatted with alert data, so nothing in an alert (a run id, a headline) can
become part of a command. Each alert runs the command once, in a background thread, so
training never waits for it; a command still running after ``timeout`` seconds is killed.
Its output goes to ``<audit>/hooks.log`` (appended, one block per call); a command that
fails (non-zero exit, cannot start, timed out) is reported once on stderr and never
stops training.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import encode, now_iso
from .verdicts import Alert

HOOKS_LOG = "hooks.log"
TIMEOUT_S = 30.0


def parse_command(command: str) -> list[str]:
    """The argument list of ``--on-alert CMD``: refused (ConfigError, exit 2) when empty, not
    parseable (an unclosed quote) or when its program is not found on PATH."""
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise ConfigError(f"--on-alert {command!r} cannot be split into arguments: {err}",
                          "quote it as a shell would: --on-alert 'notify-send \"walk back\"'") from None
    if not argv:
        raise ConfigError("--on-alert is empty", "give the command to run, e.g. --on-alert 'python3 notify.py'")
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"--on-alert program {argv[0]!r} not found on PATH (or not executable)",
                          "give the program's full path, or install it; the command is run as given, "
                          "without a shell")
    return argv


def alert_json(alert: Alert, audit_dir: Path | str) -> dict[str, Any]:
    """What the command reads on stdin (non-finite floats as "NaN"/"Infinity"/"-Infinity")."""
    return encode({"run_id": alert.run_id, "epoch": alert.epoch, "diagnostic": alert.diagnostic,
                   "value": alert.value, "threshold": alert.threshold, "headline": alert.headline,
                   "meaning": alert.meaning, "since": alert.since, "audit": str(audit_dir)})


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class AlertHook:
    """Runs ``argv`` once per alert, in the background; ``close()`` waits for the calls still running."""

    def __init__(self, argv: list[str], audit_dir: Path | str, timeout: float = TIMEOUT_S,
                 warn: Callable[[str], None] = _warn_stderr) -> None:
        if not argv:
            raise ValueError("AlertHook needs a command")
        self.argv = list(argv)
        self.audit_dir = Path(audit_dir).absolute()
        self.log_path = self.audit_dir / HOOKS_LOG
        self.timeout = timeout
        self.warn = warn
        self.calls = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._warned = False

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def __call__(self, alert: Alert) -> None:
        """Start the command on ``alert`` and return at once."""
        data = (json.dumps(alert_json(alert, self.audit_dir), allow_nan=False) + "\n").encode()
        thread = threading.Thread(target=self._run, args=(alert, data), name=f"on-alert {alert.run_id}",
                                  daemon=True)
        with self._lock:
            self.calls += 1
            self._threads.append(thread)
        thread.start()

    def _run(self, alert: Alert, data: bytes) -> None:
        started = now_iso()
        problem = ""
        with tempfile.TemporaryFile() as output:  # the output, off memory, until it goes to the log whole
            try:
                proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its own group: Ctrl-C stops training, not it
            except OSError as err:
                problem = f"could not start: {err.strerror or err}"
            else:
                try:
                    proc.stdin.write(data)  # one small JSON line: fits the pipe, never blocks
                    proc.stdin.close()
                except OSError:
                    pass  # it exited without reading: its exit code says how it went
                try:
                    code = proc.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    self._kill(proc)
                    problem = f"timed out after {self.timeout:g} s and was killed"
                else:
                    if code:
                        problem = f"exited {code}" if code > 0 else f"was killed by signal {-code}"
            output.seek(0)
            text = output.read().decode("utf-8", "replace")
        self._log(alert, started, text, problem)
        if problem:
            self._failed(problem)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signal.SIGKILL)  # and whatever it started
            else:  # pragma: no cover - Windows
                proc.kill()
        except OSError:
            pass  # already gone
        proc.wait()

    def _log(self, alert: Alert, started: str, text: str, problem: str) -> None:
        block = (f"--- {started} {alert.run_id} ({alert.diagnostic}) epoch {alert.epoch}: {self.command}\n"
                 + text + ("" if not text or text.endswith("\n") else "\n")
                 + f"--- {problem or 'exited 0'}\n")
        with self._lock:
            try:
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(block)
            except OSError as err:
                self._warn_once(f"warning: --on-alert cannot write {self.log_path}: {err.strerror or err}")

    def _failed(self, problem: str) -> None:
        with self._lock:
            self.failures += 1
        self._warn_once(f"warning: --on-alert {self.command} {problem} (see {self.log_path}; "
                        "training goes on, later failures are only logged there)")

    def _warn_once(self, message: str) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        self.warn(message)

    def close(self) -> None:
        """Wait for every call still running (each ends within ``timeout``)."""
        while True:
            with self._lock:
                pending = [t for t in self._threads if t.is_alive()]
                self._threads = pending
            if not pending:
                return
            for t in pending:
                t.join()
