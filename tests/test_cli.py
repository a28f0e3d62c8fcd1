"""The ``faeval-tui`` command line through Typer's CliRunner: help, presets, --version, --data-dir."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import faeval_tui.app
from faeval_tui.cli import app

cli = CliRunner()
SUBCOMMANDS = ("run", "resume", "watch", "presets", "export", "figures", "bench")


def invoke(*args: str):
    return cli.invoke(app, list(args), prog_name="faeval-tui")


def test_help_lists_every_subcommand() -> None:
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    assert "Usage: faeval-tui [OPTIONS] COMMAND [ARGS]..." in res.output
    listed = [line.strip("│ ").split()[0] for line in res.output.splitlines()
              if line.strip("│ ").split()[:1] and line.strip("│ ").split()[0] in SUBCOMMANDS]
    assert listed == list(SUBCOMMANDS)
    assert "--data-dir" in res.output and "--version" in res.output


def test_run_help_lists_its_options() -> None:
    res = invoke("run", "--help")
    assert res.exit_code == 0, res.output
    assert "Usage: faeval-tui run [OPTIONS]" in res.output
    for opt in ("--preset", "--set", "--runs-dir", "--device", "--data-dir", "--debug"):
        assert opt in res.output, opt


def test_presets_lists_names_with_their_descriptions() -> None:
    res = invoke("presets")
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line.split(None, 1)[1] for line in res.output.splitlines() if line.strip()}
    assert lines["digits_default"] == ("Embedded default - real handwritten digits (scikit-learn, no download), "
                                       "ResMLP d=64 L=4 with terminal LN, bp/fa/dfa/frozen x 2 seeds, about a "
                                       "minute on a laptop CPU")
    assert lines["cifar100_d256_L4"] == ("Flagship: CIFAR-100, ResMLP d=256 L=4 with terminal LN, "
                                         "bp/fa/dfa/frozen x 3 seeds, 100 epochs")


def test_version_prints_the_tool_torch_and_the_devices() -> None:
    res = invoke("--version")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"faeval-tui {importlib.metadata.version('faeval-tui')}"
    assert lines[1] == f"torch {torch.__version__}"
    assert lines[2].startswith("cpu: ") and len(lines[2]) > len("cpu: ")
    cuda = [line for line in lines if line.startswith("cuda:")]
    assert len(cuda) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_version_comes_before_anything_else_and_opens_no_console(monkeypatch) -> None:
    opened = []
    monkeypatch.setattr(faeval_tui.app, "launch", lambda **kw: opened.append(kw))
    res = invoke("--preset", "no-such-preset", "--version")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("faeval-tui ") and opened == []


def test_run_with_an_empty_data_dir_names_it_and_leaves_no_audit(tmp_path: Path) -> None:
    data_dir, runs_dir = tmp_path / "empty", tmp_path / "runs"
    data_dir.mkdir()
    res = invoke("run", "--preset", "cifar10_d256_L4", "--data-dir", str(data_dir), "--set", "download=false",
                 "--runs-dir", str(runs_dir))
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(f"error: CIFAR-10 not found in {data_dir}\n")
    assert "--data-dir DIR" in res.stderr and "cifar-10-python.tar.gz" in res.stderr
    assert "Traceback" not in res.output
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []
    assert list(data_dir.iterdir()) == []  # a failed lookup writes nothing into the data dir either


def test_data_dir_wins_over_a_set_data_dir_and_any_path_is_taken_as_is(tmp_path: Path) -> None:
    data_dir = tmp_path / "cifar #1: [x]"  # YAML would read '#' as a comment and ': ' as a mapping
    data_dir.mkdir()
    res = invoke("run", "--preset", "cifar10_d256_L4", "--set", f"data_dir={tmp_path / 'other'}",
                 "--data-dir", str(data_dir), "--set", "download=false", "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 2, res.output
    assert f"not found in {data_dir}\n" in res.stderr and "other" not in res.stderr


def test_the_console_takes_data_dir_too(tmp_path: Path, monkeypatch) -> None:
    opened = []
    monkeypatch.setattr(faeval_tui.app, "launch", lambda **kw: opened.append(kw))
    monkeypatch.chdir(tmp_path)
    res = invoke("--preset", "cifar10_d256_L4", "--data-dir", "data", "--runs-dir", "r", "--set", "data_dir=x")
    assert res.exit_code == 0, res.output
    [kw] = opened
    assert kw["cfg"].data_dir == str(tmp_path / "data")  # absolute: the audit's config.yaml resumes anywhere
    assert kw["runs_dir"] == Path("r") and kw["cfg"].dataset == "cifar10"


def test_the_console_command_exits_2_with_the_reason_training_could_not_start(tmp_path: Path, monkeypatch) -> None:
    from engine.errors import DataError
    from faeval_tui.app import FaevalApp

    def run(self):  # the console as a user closes it with q on the "cannot start" dialog
        self.failure = DataError("CIFAR-10 not found in /nowhere", "pass --data-dir DIR")

    monkeypatch.setattr(FaevalApp, "run", run)
    res = cli.invoke(app, ["--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "CIFAR-10 not found in /nowhere" in res.output and "--data-dir" in res.output
    assert not (tmp_path / "runs").exists()


def test_watch_exits_non_zero_when_the_console_crashed(tmp_path, monkeypatch) -> None:
    from faeval_tui.app import FaevalApp
    from tests.test_console_fixtures import write_fixture_audit

    def run(self):  # Textual's own exit code after an unhandled exception in the app
        self._return_code = 1

    monkeypatch.setattr(FaevalApp, "run", run)
    res = cli.invoke(app, ["watch", str(write_fixture_audit(tmp_path / "a"))])
    assert res.exit_code == 1


def test_quitting_watch_says_where_the_audit_stands(tmp_path, monkeypatch) -> None:
    """As the console does on quitting: an unfinished audit nobody trains gets the resume command."""
    from faeval_tui.app import FaevalApp
    from tests.test_console_fixtures import write_fixture_audit

    monkeypatch.setattr(FaevalApp, "run", lambda self: None)  # opened, then quit at once
    path = write_fixture_audit(tmp_path / "a")  # its penalty rerun stopped at epoch 3 of 5
    res = cli.invoke(app, ["watch", str(path)])
    assert res.exit_code == 0
    assert res.output.strip() == f"1 run(s) unfinished; continue with: faeval-tui resume {path}"


@pytest.mark.parametrize("target", ["fa-s42/records.jsonl", "config.yaml", "fa-s42/notes.md", "."])
def test_export_never_writes_over_the_audits_own_files(tmp_path, target) -> None:
    from tests.test_console_fixtures import write_fixture_audit

    path = write_fixture_audit(tmp_path / "a")
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    res = cli.invoke(app, ["export", str(path), "--out", str(path / target)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert ("is a directory" if target == "." else "is inside the audit") in res.output
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before  # nothing touched
    ok = cli.invoke(app, ["export", str(path), "--out", str(path / "report.md")])  # beside them: fine
    assert ok.exit_code == 0 and (path / "report.md").read_text().startswith("#")


def test_run_prints_the_audit_directory_alone_on_stdout(tmp_path) -> None:
    """`A=$(faeval-tui run …)` gets the directory: the progress lines go to stderr."""
    from tests.conftest import tiny

    sets = [a for s in tiny("methods=[bp]", "epochs=1") for a in ("--set", s)]
    res = cli.invoke(app, ["run", "--runs-dir", str(tmp_path / "runs"), *sets])
    assert res.exit_code == 0, res.output
    (audit,) = (tmp_path / "runs").iterdir()
    assert res.stdout == f"{audit}\n"
    assert "bp-s42" in res.stderr and "epoch   1" in res.stderr
