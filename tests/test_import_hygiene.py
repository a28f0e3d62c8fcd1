"""What importing a piece pulls in, each checked in a fresh interpreter: engine/ is a
library (neither textual nor rich), and the CLI's help, the presets and a console whose
trainer is a process of its own never import torch."""
import subprocess
import sys


def assert_never_imports(code: str, *packages: str) -> None:
    """Run ``code`` in a fresh interpreter; then none of ``packages`` may have been imported."""
    code += (f"\nimport sys\nbad = [m for m in sys.modules if m.split('.')[0] in {packages!r}]\n"
             "print(bad[:5]); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_engine_never_imports_textual_or_rich():
    assert_never_imports("import pkgutil, importlib, engine, engine.methods\n"
                         "for m in pkgutil.walk_packages(engine.__path__, 'engine.'): importlib.import_module(m.name)\n"
                         "engine.methods.available_methods()", "textual", "rich")


def test_listing_presets_and_the_help_never_import_torch():
    assert_never_imports("from typer.testing import CliRunner\n"
                         "from faeval_tui.cli import app\n"
                         "for args in (['presets'], ['--help'], ['run', '--help']):\n"
                         "    res = CliRunner().invoke(app, args)\n"
                         "    assert res.exit_code == 0, res.output\n"
                         "assert 'synthetic_default' in CliRunner().invoke(app, ['presets']).output", "torch")


CONSOLE_MODULES = ("faeval_tui.app", "faeval_tui.live", "faeval_tui.feeds", "faeval_tui.data_check",
                   "faeval_tui.cli", "engine.markdown")


def test_the_console_modules_and_every_preset_load_without_torch():
    """A console whose trainer is a process of its own keeps torch (180 MiB of RSS, 250 with
    CIFAR's data) out of its process: its modules, and loading and validating every preset
    (method names included), never import it."""
    assert_never_imports(f"for m in {CONSOLE_MODULES!r}: __import__(m)\n"
                         "from engine.config import load_config, shipped_presets\n"
                         "cfgs = [load_config(name) for name in shipped_presets()]\n"
                         "assert len(cfgs) >= 5 and all(c.methods for c in cfgs)", "torch")


def test_the_method_names_listed_without_torch_are_the_methods_the_registry_loads():
    code = ("import sys, engine.methods as m\n"
            "names = m.method_names()\n"
            "assert 'torch' not in sys.modules\n"
            "print(names == m.available_methods(), names)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(" ", 1) == ["True", "['bp', 'dfa', 'ep', 'fa', 'fa_lillicrap', 'frozen']\n"]


def test_the_first_lookup_from_two_training_threads_at_once_finds_every_method():
    """An audit's worker threads are the first to load the methods (a config is validated
    by their names alone): the second waits for the first's discovery, however slow, and
    does not see a half-filled registry."""
    code = ("import importlib, threading, time, engine.methods as m\n"
            "real = importlib.import_module\n"
            "def slow(name, *a):\n"
            "    time.sleep(0.2)\n"
            "    return real(name, *a)\n"
            "m.importlib.import_module = slow\n"
            "found, errors = [], []\n"
            "def look():\n"
            "    try:\n"
            "        found.append(m.get_method('frozen').name)\n"
            "    except KeyError as err:\n"
            "        errors.append(str(err))\n"
            "threads = [threading.Thread(target=look) for _ in range(2)]\n"
            "[t.start() or time.sleep(0.05) for t in threads]\n"
            "[t.join() for t in threads]\n"
            "print(found, errors)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['frozen', 'frozen'] []\n"


PLUGIN = """
import torch
from engine.methods.bp import Backprop

class Mine(Backprop):
    name = {name!r}
    description = "a plugin's bp"
"""


def _plugin_env(tmp_path, entry: str, name: str) -> dict:
    """A distribution on PYTHONPATH whose ``faeval_tui.methods`` entry point ``entry`` loads
    a method named ``name``."""
    import os

    (tmp_path / "mine_plugin.py").write_text(PLUGIN.format(name=name))
    info = tmp_path / "mine_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[faeval_tui.methods]\n{entry} = mine_plugin:Mine\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))


def test_an_entry_point_method_is_a_valid_preset_value_before_it_is_loaded(tmp_path):
    code = ("import sys\nfrom engine.config import load_config\n"
            "cfg = load_config(None, ['methods=[mine,frozen]'])\n"
            "assert 'torch' not in sys.modules and 'mine_plugin' not in sys.modules\n"
            "from engine.methods import get_method\n"
            "print(get_method('mine').description)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_plugin_env(tmp_path, "mine", "mine"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "a plugin's bp\n"


def test_an_entry_point_named_unlike_its_method_is_refused_with_what_to_rename(tmp_path):
    code = "from engine.methods import available_methods\navailable_methods()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_plugin_env(tmp_path, "mine", "other"))
    assert proc.returncode == 1
    assert ("the faeval_tui.methods entry point 'mine' (mine_plugin:Mine) loads a method named 'other': "
            "name the entry point after the method") in proc.stderr


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
