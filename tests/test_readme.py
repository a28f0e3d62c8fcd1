"""The README stays true: its Python example runs, and its commands exist."""
import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for code in blocks:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "WALKED BACK" in proc.stdout or "TRUSTWORTHY" in proc.stdout


def test_readme_quick_start_is_the_two_commands_ci_runs():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e . && .venv/bin/faeval-tui" in README
    assert "pip install -c constraints.txt -e '.[test]' && .venv/bin/python -m pytest" in README
    assert "-c constraints.txt -e '.[test]'" in ci and ".venv/bin/python -m pytest" in ci


def test_readme_has_no_unfilled_sections():
    assert not re.search(r"^[A-Z_]{6,}$", README, flags=re.M)


def test_every_shipped_preset_is_in_the_readme():
    for path in (Path(__file__).resolve().parent.parent / "presets").glob("*.yaml"):
        stem = re.sub(r"_d512_L\d+$", "_d512_L2/4/8/12", path.stem)
        assert f"`{stem}`" in README, stem
