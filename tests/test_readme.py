"""The README stays true: its Python example runs and prints what it says, and its commands exist."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import shipped_presets
from tests.conftest import WAIT_S

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEPTH = "README-TEST-DEPTH"
# verdicts.Verdict.describe(): TRUSTWORTHY, NO DATA, or the walk-back diagnostics and the (c) sub-mode
LABEL = re.compile(r"TRUSTWORTHY|NO DATA|WALKED BACK via \([abd]\)(\+\([abd]\))*, (drift|noise|unknown)")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_python_example_runs_and_prints_a_verdict_cosines_and_a_layer_table(tmp_path):
    blocks = [b for b in python_blocks() if "audit_model(" in b]
    assert len(blocks) == 1, "one audit_model example (the tracker's is tests/test_tracker.py's)"
    # the example ends with `model`, the adapted network: ask it how deep it is
    code = blocks[0] + f"\nprint({DEPTH!r}, model.depth)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    depth = int(lines.pop().removeprefix(DEPTH + " "))
    assert depth == 4

    # print(result.label, result.record.cos): the verdict, then cos_0..cos_L
    label, cos = re.fullmatch(r"(.*?) (\[.*\])", lines[0]).groups()
    assert LABEL.fullmatch(label), label
    if "frozen_acc=0.30" in blocks[0]:  # random labels: an untrained net sits near chance, far below 30%
        assert label.startswith("WALKED BACK via (d)"), label
    cos = ast.literal_eval(cos)
    assert len(cos) == depth + 1 and all(isinstance(c, float) and -1 <= c <= 1 for c in cos), cos

    # print(table_markdown(result.table())): one row per layer h_0..h_L, in order
    rows = [line for line in lines[1:] if line.startswith("|")]
    headers = [c.strip() for c in rows[0].strip("|").split("|")]
    assert set(rows[1].strip("|").split("|")) <= {"---", "---:"}  # numbers right-aligned
    body = [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]
    assert all(len(r) == len(headers) for r in body)
    assert [r[headers.index("layer")] for r in body] == [str(l) for l in range(depth + 1)]
    # the table's cosine column says the same cosines the first line printed
    cells = [r[headers.index("cos_l ± std (over samples)")] for r in body]
    shown = [float(c.split(" ± ")[0].strip("†‡ ").replace("−", "-")) for c in cells]
    assert shown == pytest.approx(cos, rel=5e-3, abs=1e-6)


def test_readme_quick_start_is_the_two_commands_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -c constraints.txt -e . && .venv/bin/faeval-tui" in README
    test_cmd = re.search(r"pip install -c constraints.txt -e '\.\[test\]' && \.venv/bin/python -m pytest( -n \d+)?\n",
                         README)
    assert test_cmd, "the README's test command"
    # CI runs that same pytest command, with the same workers
    assert "-c constraints.txt -e '.[test]'" in ci and f".venv/bin/python -m pytest{test_cmd.group(1) or ''}\n" in ci


def test_readme_has_no_unfilled_sections():
    assert not re.search(r"^[A-Z_]{6,}$", README, flags=re.M)


def test_every_shipped_preset_is_in_the_readme():
    presets = shipped_presets()
    assert presets
    for name in presets:
        stem = re.sub(r"_d512_L\d+$", "_d512_L2/4/8/12", name)
        assert f"`{stem}`" in README, stem
