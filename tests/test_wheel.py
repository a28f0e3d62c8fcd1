"""Install as a user would: the wheel built from this checkout, into a fresh venv, run from a
directory that holds no source. (Slow: it installs torch into the new venv.)"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import WAIT_S

ROOT = Path(__file__).resolve().parent.parent
# one xdist worker for both (.ci/run: -n 2 --dist loadgroup): they share one built wheel and venv
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the bin/ of a fresh venv with it installed)."""
    work = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(ROOT)], cwd=work)
    (wheel,) = (work / "dist").glob("faeval_tui-*.whl")
    run([sys.executable, "-m", "venv", str(work / "venv")], cwd=work)
    pip = work / "venv" / "bin" / "pip"
    run([str(pip), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(wheel)], cwd=work)
    return wheel, work / "venv" / "bin"


def test_the_wheel_installs_only_engine_and_faeval_tui_at_the_top_level(installed):
    wheel, _ = installed
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"engine", "faeval_tui"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "engine/presets/synthetic_default.yaml" in names and "engine/presets/cifar100_d256_L4.yaml" in names
    assert "faeval_tui/app.tcss" in names and not any(n.startswith(("tests/", "bench/")) for n in names)


def test_the_installed_cli_runs_from_a_directory_without_source(installed, tmp_path):
    _, bin_dir = installed
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cli = str(bin_dir / "faeval-tui")
    version = run([cli, "--version"], cwd=empty, env=env).stdout
    assert "faeval-tui" in version and "torch" in version
    listing = run([cli, "presets"], cwd=empty, env=env).stdout
    assert "digits_default" in listing and "synthetic_default" in listing and "cifar100_d256_L4" in listing
    sets = ["epochs=1", "d=16", "diagnostics.rho_directions=2", "seeds=[42]", "methods=[bp,frozen]"]  # digits
    out = run([cli, "run", "--runs-dir", "runs", *sum((["--set", s] for s in sets), [])], cwd=empty, env=env)
    audit = Path(out.stdout.strip().splitlines()[-1])
    assert audit.is_absolute() or (empty / audit).is_dir()
    audit = audit if audit.is_absolute() else empty / audit
    assert sorted(p.name for p in audit.iterdir() if p.is_dir()) == ["bp-s42", "frozen-s42"]
    report = run([cli, "export", str(audit)], cwd=empty, env=env).stdout
    assert "| bp |" in report and "| frozen |" in report
    # the venv's package is the one that ran, not this checkout
    where = run([str(bin_dir / "python"), "-c", "import engine; print(engine.__file__)"], cwd=empty, env=env)
    assert str(ROOT) not in where.stdout
