"""engine/ is a library: importing every module of it pulls in neither textual nor rich."""
import subprocess
import sys


def test_engine_never_imports_textual_or_rich():
    code = ("import pkgutil, importlib, sys, engine, engine.methods\n"
            "for m in pkgutil.walk_packages(engine.__path__, 'engine.'): importlib.import_module(m.name)\n"
            "import engine.methods; engine.methods.available_methods()\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')]\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_listing_presets_and_the_help_never_import_torch():
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from faeval_tui.cli import app\n"
            "for args in (['presets'], ['--help'], ['run', '--help']):\n"
            "    res = CliRunner().invoke(app, args)\n"
            "    assert res.exit_code == 0, res.output\n"
            "assert 'synthetic_default' in CliRunner().invoke(app, ['presets']).output\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch']\n"
            "print(bad[:5]); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_package_in_the_source_tree_is_listed_for_the_wheel():
    """A subpackage missing from pyproject's `packages` installs without its modules (the
    slow tier's wheel test found engine.models missing): checked here without building."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    line = re.search(r"^packages = (\[.*\])$", (root / "pyproject.toml").read_text(), re.M)  # tomllib is 3.11+
    listed = set(ast.literal_eval(line[1]))
    found = {".".join(p.parent.relative_to(root).parts) for top in ("engine", "faeval_tui")
             for p in (root / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    found.add("engine.presets")  # presets/ is mapped into the engine (package-dir)
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"
