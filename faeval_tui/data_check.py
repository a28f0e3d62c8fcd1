"""The console's data check in a process of its own (``python -m faeval_tui.data_check``).

A console that trains in a process of its own (the default) only has to know, before it
creates the audit directory, that the device and the data are usable and what pins an
npz file (``engine.data.checked_task``). Loading the data for that in the console would
import torch and keep a second copy of CIFAR beside the trainer's for as long as the
console runs (about 250 MiB); this process loads it, answers, and exits.

The config goes in on stdin as JSON (``AuditConfig.dump``); one JSON object comes out on
stdout: the pinned ``data_path``/``data_sha256`` and a warning the console shows (bf16 on a
CPU that emulates it), or the refusal's class, problem and hint.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import IO, Any

from engine import errors
from engine.config import AuditConfig, validate
from engine.errors import FaevalError, StoreError

PINNED = ("data_path", "data_sha256")


def command() -> list[str]:
    return [sys.executable, "-m", "faeval_tui.data_check"]


def start() -> subprocess.Popen:
    """The check's process; ``answer`` sends it the config and reads what it found."""
    return subprocess.Popen(command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, close_fds=True)


def answer(proc: subprocess.Popen, cfg: AuditConfig) -> str | None:
    """Send ``cfg`` to the check in ``proc`` and wait for it: pins an npz file in ``cfg``
    as ``checked_task`` would and returns the check's warning (None: nothing to say), or
    raises the check's refusal as the same FaevalError."""
    out, err = proc.communicate(json.dumps(cfg.dump()))
    try:
        reply: dict[str, Any] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    except json.JSONDecodeError:
        reply = {}
    if proc.returncode != 0 or not reply:
        tail = "\n".join(err.strip().splitlines()[-8:]) or f"exit code {proc.returncode}, no output"
        raise StoreError(f"the data check process ended without an answer (exit code {proc.returncode}):\n{tail}",
                         "run `faeval-tui run` with the same options to see the problem, or the console "
                         "with --in-process")
    if "problem" in reply:
        cls = getattr(errors, reply.get("error", ""), FaevalError)
        if not (isinstance(cls, type) and issubclass(cls, FaevalError)):
            cls = FaevalError
        raise cls(reply["problem"], reply.get("hint", ""))
    for key in PINNED:
        setattr(cfg, key, reply.get(key))
    return reply.get("warning")


def main(stdin: IO[str] = sys.stdin, stdout: IO[str] = sys.stdout) -> int:
    from engine.data import checked_task  # torch, in this process only
    from engine.device import precision_warning, training_device

    try:
        cfg = validate(json.loads(stdin.read()), "the console's config")
        checked_task(cfg)
    except FaevalError as err:
        reply: dict[str, Any] = {"error": type(err).__name__, "problem": err.problem, "hint": err.hint}
    else:
        reply = {key: getattr(cfg, key) for key in PINNED}
        reply["warning"] = precision_warning(cfg, training_device(cfg))
    stdout.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
