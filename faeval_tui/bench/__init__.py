"""The speed benchmark of issue #5 (``faeval-tui bench``). Not part of the engine: it may use rich and textual."""
from .profile import profile_markdown, run_profiles
from .run import markdown, print_table, run_bench

__all__ = ["markdown", "print_table", "profile_markdown", "run_bench", "run_profiles"]
