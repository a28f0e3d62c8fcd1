"""One exception type for every problem a user can fix.

Each error names the problem and says what to do; the CLI prints ``str(err)``
(problem, then a ``→ what to do`` line) and exits non-zero without a traceback.
"""
from __future__ import annotations


class FaevalError(Exception):
    """A problem the user can act on: ``problem`` says what is wrong, ``hint`` what to do."""

    exit_code = 2

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(problem if not hint else f"{problem}\n  → {hint}")


class ConfigError(FaevalError):
    """A preset or ``--set`` value is invalid."""


class DataError(FaevalError):
    """A dataset is missing, corrupt or cannot be downloaded."""


class StoreError(FaevalError):
    """An audit directory or checkpoint cannot be read or written."""
