"""The ``faeval-tui`` command: the console by default, headless subcommands for scripts."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from engine.errors import FaevalError

app = typer.Typer(add_completion=False, no_args_is_help=False, rich_markup_mode="rich",
                  help="Audit local-credit learning rules (FA, DFA, …) against BP and a frozen-blocks baseline.")

PresetOpt = Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset name (see `presets`) or YAML path; "
                                                   "default: the embedded digits audit (digits_default).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a preset key: --set epochs=2 "
                                                      "--set seeds=[42] --set thresholds.growth=100")]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Where audit directories are created.")]
ExecutorOpt = Annotated[Optional[str], typer.Option("--executor", metavar="local|slurm", help="Where runs train: "
                                                    "this machine, or one SLURM job per run (the slurm.* keys; "
                                                    "same as --set executor=…).")]
NoReuseOpt = Annotated[bool, typer.Option("--no-reuse", help="Train every run, even one a finished identical run "
                                          "under the runs dir could stand in for (same as --set reuse=false).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda (overrides the preset).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder holding (or receiving) the CIFAR "
                                                    "archives; same as --set data_dir=DIR, and wins over it.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]

_debug = False


def _sets(sets: list[str] | None, device: str | None, data_dir: Path | None = None, executor: str | None = None,
          no_reuse: bool = False) -> list[str]:
    """--set values, then the explicit options, which win over a --set of the same key."""
    out = list(sets or []) + ([f"device={device}"] if device else [])
    out += ([f"executor={executor}"] if executor else []) + (["reuse=false"] if no_reuse else [])
    if data_dir is not None:
        # absolute, so a resume from another folder finds it; quoted, so YAML takes any path as a string
        path = str(data_dir.expanduser().absolute())
        out.append("data_dir='" + path.replace("'", "''") + "'")
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform's answer is vaguer but cheap
    return platform.processor() or platform.machine() or "unknown"


def _version(value: bool) -> None:
    """--version: this tool's and torch's versions, and the devices training can use."""
    if not value:
        return
    from importlib.metadata import version

    import torch

    typer.echo(f"faeval-tui {version('faeval-tui')}")
    typer.echo(f"torch {torch.__version__}")
    typer.echo(f"cpu: {_cpu_name()} ({os.cpu_count() or '?'} logical cores)")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            typer.echo(f"cuda:{i}: {torch.cuda.get_device_name(i)}")
    raise typer.Exit()


def fail(err: FaevalError) -> None:
    """One clear message on stderr and a non-zero exit; a traceback only with --debug."""
    if _debug:
        raise err
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(err.exit_code)


OnAlertOpt = Annotated[Optional[str], typer.Option("--on-alert", metavar="CMD", help="Run CMD on every walk-back "
                                                   "alert with the alert as JSON on stdin; split like a shell "
                                                   "would, run without one; output to <audit>/hooks.log.")]


@app.callback(invoke_without_command=True)
def console(ctx: typer.Context, preset: PresetOpt = None, set_: SetOpt = None,
            runs_dir: RunsDirOpt = Path("runs"), device: DeviceOpt = None, data_dir: DataDirOpt = None,
            debug: DebugOpt = False,
            no_bell: Annotated[bool, typer.Option("--no-bell", help="Do not ring the bell on alerts.")] = False,
            on_alert: OnAlertOpt = None, executor: ExecutorOpt = None, no_reuse: NoReuseOpt = False,
            in_process: Annotated[bool, typer.Option("--in-process", help="Train inside the console's own "
                                                     "process: quitting or a dropped connection stops "
                                                     "training (default: a process of its own, which "
                                                     "outlives the console).")] = False,
            version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                           help="Print versions and devices, then exit.")] = None,
            ) -> None:
    """Open the console and start the audit (no preset: the embedded default)."""
    global _debug
    _debug = debug
    if ctx.invoked_subcommand is not None:
        return
    from engine.config import load_config

    try:
        cfg = load_config(preset, _sets(set_, device, data_dir, _executor(executor), no_reuse))
        from .app import launch

        code = launch(cfg=cfg, runs_dir=runs_dir, bell=not no_bell, on_alert=_alert_hook(on_alert),
                      detach=not in_process)
    except FaevalError as err:
        fail(err)
    if code:
        raise typer.Exit(code)  # the console crashed: its traceback is above


StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit 3 when every run finished but at least one "
                                         "ended WALKED BACK (a failed or stopped run still exits 1).")]
EXIT_CODES = ("Exit codes: 0 every run finished; 1 a run failed, diverged or was stopped (resume it); 2 an "
              "error the message names (bad input is refused before anything is written); 3 with --strict, "
              "every run finished and at least one ended WALKED BACK. 1 wins over 3.")
EXIT_WALKED_BACK = 3


def _executor(value: str | None) -> str | None:
    if value is not None and value not in ("local", "slurm"):
        raise typer.BadParameter(f"{value!r} is not local or slurm", param_hint="--executor")
    return value


def _alert_hook(command: str | None):
    """--on-alert's command as an argument list, checked before anything is written."""
    if command is None:
        return None
    from engine.hooks import parse_command

    return parse_command(command)


def _finish(audit, shown: Path, statuses: dict[str, str], strict: bool) -> None:
    """Print the audit directory (``shown``) and exit with the code ``EXIT_CODES`` documents."""
    typer.echo(str(shown))
    unfinished = any(s != "finished" for s in statuses.values())
    if strict:
        from engine.tables import audit_views

        back = [(v.log.run_id, v.verdict.label) for v in audit_views(audit) if v.verdict.walked_back]
        summary = ", ".join(f"{rid} ({label})" for rid, label in back)
        typer.echo(f"strict: {len(back)} run{'s' if len(back) != 1 else ''} walked back" +
                   (f": {summary}" if back else ""), err=True)
        if back and not unfinished:
            raise typer.Exit(EXIT_WALKED_BACK)
    if unfinished:
        raise typer.Exit(1)


def _train(audit, task, argv: list[str] | None) -> dict[str, str]:
    """run_headless with --on-alert's hook, waiting for the hook's calls still running at the end."""
    from .headless import run_headless

    if argv is None:
        return run_headless(audit, task)
    from engine.hooks import AlertHook

    hook = AlertHook(argv, audit.path)
    try:
        return run_headless(audit, task, on_alert=hook)
    finally:
        hook.close()


@app.command(epilog=EXIT_CODES)
def run(preset: PresetOpt = None, set_: SetOpt = None, runs_dir: RunsDirOpt = Path("runs"),
        device: DeviceOpt = None, data_dir: DataDirOpt = None, strict: StrictOpt = False,
        on_alert: OnAlertOpt = None, executor: ExecutorOpt = None, no_reuse: NoReuseOpt = False,
        debug: DebugOpt = False) -> None:
    """Run an audit headless with a progress display; prints the audit directory."""
    global _debug
    _debug = _debug or debug
    from engine.audit import Audit
    from engine.config import load_config
    from engine.data import checked_task

    try:
        argv = _alert_hook(on_alert)
        cfg = load_config(preset, _sets(set_, device, data_dir, _executor(executor), no_reuse))
        # device and data are checked before the audit directory exists: a refusal leaves nothing behind
        if cfg.executor == "slurm":
            from engine.slurm import check_slurm

            check_slurm(cfg)  # submitit installed, sbatch on PATH
        task = checked_task(cfg)  # an npz file's absolute path and SHA-256 go into config.yaml
        audit = Audit.create(cfg, runs_dir)
        statuses = _train(audit, task, argv)
    except FaevalError as err:
        fail(err)
    _finish(audit, audit.path, statuses, strict)


@app.command(epilog=EXIT_CODES)
def resume(audit_dir: Annotated[Path, typer.Argument(help="Audit directory to continue.")],
           strict: StrictOpt = False, on_alert: OnAlertOpt = None, executor: ExecutorOpt = None,
           no_reuse: NoReuseOpt = False, debug: DebugOpt = False,
           nice: Annotated[int, typer.Option("--nice", min=0, max=19, help="Lower this process's CPU priority "
                                             "by N (the console's trainer uses 10).")] = 0) -> None:
    """Continue every unfinished run of an audit from its last checkpoint.

    Also trains any rerun a console asked for through the audit directory."""
    global _debug
    _debug = _debug or debug
    from engine.audit import Audit

    if nice:
        os.nice(nice)
    try:
        argv = _alert_hook(on_alert)
        audit = Audit.open(audit_dir)
        if _executor(executor):  # where it trains, not what: config.yaml keeps its own
            audit.cfg.executor = executor
        if no_reuse:
            audit.cfg.reuse = False
        statuses = _train(audit, None, argv)
    except FaevalError as err:
        fail(err)
    _finish(audit, audit_dir, statuses, strict)


@app.command()
def stop(audit_dir: Annotated[Path, typer.Argument(help="Audit directory whose training to stop.")],
         wait: Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for the trainer to "
                                             "stop (0: do not wait).")] = 120.0,
         debug: DebugOpt = False) -> None:
    """Stop the process training an audit: each run at its next batch, keeping its checkpoint.

    Works through the audit directory, for a trainer started by a console, run or resume."""
    global _debug
    _debug = _debug or debug
    import time

    from engine.audit import Audit
    from engine.control import request_stop

    try:
        audit = Audit.open(audit_dir)
        if not audit.is_live():
            typer.echo(f"nothing trains {audit.path}; continue it with: faeval-tui resume {audit.path}")
            return
        request_stop(audit.path)
    except FaevalError as err:
        fail(err)
    deadline = time.monotonic() + wait
    while wait and audit.is_live():
        if time.monotonic() > deadline:
            typer.echo(f"asked {audit.path}'s trainer to stop; it is still running after {wait:g} s", err=True)
            raise typer.Exit(1)
        time.sleep(0.2)
    typer.echo(f"stopped; continue with: faeval-tui resume {audit.path}" if wait else
               f"asked {audit.path}'s trainer to stop")


@app.command()
def watch(audit_dir: Annotated[Path, typer.Argument(help="Audit directory to follow (read-only).")],
          no_bell: Annotated[bool, typer.Option("--no-bell", help="Do not ring the bell on alerts.")] = False,
          debug: DebugOpt = False) -> None:
    """Open the console read-only on an audit another process trains (or trained), following its files."""
    global _debug
    _debug = _debug or debug
    from .app import watch as watch_console

    try:
        code = watch_console(audit_dir, bell=not no_bell)
    except FaevalError as err:
        fail(err)
    if code:
        raise typer.Exit(code)  # the console crashed: its traceback is above


@app.command()
def presets() -> None:
    """List the shipped presets with a one-line description each."""
    from engine.config import list_presets

    items = list_presets()
    width = max(map(len, items), default=0)
    for name, desc in items.items():
        typer.echo(f"{name:<{width}}  {desc}")


EXPORT_FORMATS = ("markdown", "json", "latex")


@app.command()
def export(audit_dir: Annotated[Path, typer.Argument(help="Audit directory.")],
           format_: Annotated[str, typer.Option("--format", "-f", help="markdown (the report), json (runs, final "
                                                "records, verdicts and the tables' data) or latex (booktabs "
                                                "tables to \\input into a paper)")] = "markdown",
           out: Annotated[Optional[Path], typer.Option("--out", "-o",
                                                       help="Write to this file instead of stdout.")] = None,
           debug: DebugOpt = False) -> None:
    """Export an audit's report: every table as markdown (default) or LaTeX, or the runs and tables as JSON."""
    global _debug
    _debug = _debug or debug
    from engine.audit import Audit
    from engine.latex import render_latex
    from engine.markdown import render_markdown
    from engine.report import export_json
    from engine.runstore import atomic_write_bytes

    try:
        if format_ not in EXPORT_FORMATS:
            raise FaevalError(f"unknown export format {format_!r}",
                              "use --format markdown, --format json or --format latex")
        audit = Audit.open(audit_dir)
        for log in audit.logs():
            for problem in log.problems:  # also in the report; said here so a script sees it
                typer.echo(f"warning: {problem}", err=True)
        if format_ == "markdown":
            text = render_markdown(audit)
        elif format_ == "latex":
            text = render_latex(audit)
        else:
            text = json.dumps(export_json(audit), indent=2, allow_nan=False) + "\n"
        if out is None:
            sys.stdout.write(text)
        else:
            _check_export_target(out, audit.path)
            atomic_write_bytes(out, text.encode())
            typer.echo(str(out), err=True)
    except FaevalError as err:
        fail(err)


def _check_export_target(out: Path, audit_dir: Path) -> None:
    """A report may go anywhere but over the audit's own files: inside the audit directory only
    a report.* or a new file at its top level (records, config, checkpoints are the audit)."""
    if out.is_dir():
        raise FaevalError(f"--out {out} is a directory", f"give a file, e.g. --out {out / 'report.md'}")
    target, root = out.resolve(), audit_dir.resolve()
    if root not in target.parents:
        return
    if target.parent == root and (target.name.startswith("report.") or not target.exists()):
        return
    raise FaevalError(f"--out {out} is inside the audit and would overwrite or add to its own files "
                      f"({target.relative_to(root)})",
                      f"write the report elsewhere, or beside them as {audit_dir / 'report.md'}")


@app.command()
def figures(audit_dir: Annotated[Path, typer.Argument(help="Audit directory.")],
            out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for the figures "
                                                        "(default: <audit>/figures).")] = None,
            format_: Annotated[str, typer.Option("--format", "-f", help="svg, pdf or png")] = "png",
            debug: DebugOpt = False) -> None:
    """Draw an audit's figures for a paper (matplotlib), each with the CSV of the numbers it plots."""
    global _debug
    _debug = _debug or debug
    from engine.figures import write_figures

    try:
        for path in write_figures(audit_dir, out, format_):
            typer.echo(str(path))
    except FaevalError as err:
        fail(err)


MEASURE_FORMATS = ("markdown", "json")


@app.command()
def measure(run_dir: Annotated[Path, typer.Argument(help="A run directory of an audit, like runs/<audit>/dfa-s42.")],
            epoch: Annotated[Optional[int], typer.Option("--epoch", min=1, help="A kept epoch (config "
                                                         "keep_checkpoints); default: the last checkpoint's.")] = None,
            null_draws: Annotated[Optional[int], typer.Option("--null-draws", min=2, max=1000, help="Null-band "
                                                              "draws (default: the audit's).")] = None,
            rho_directions: Annotated[Optional[int], typer.Option("--rho-directions", min=1, max=4096, help="ρ "
                                                                  "directions per sample (default: the audit's)."
                                                                  )] = None,
            nudge: Annotated[bool, typer.Option("--nudge", help="Add the nudging test: Δℓ when h_l moves by "
                                                "−0.01·‖h_l‖·a_l/‖a_l‖.")] = False,
            format_: Annotated[str, typer.Option("--format", "-f", help="markdown (the per-layer table) or json "
                                                 "(every per-layer field)")] = "markdown",
            debug: DebugOpt = False) -> None:
    """Re-measure a run's saved checkpoint and print the per-layer table; writes nothing.

    It uses the run's own training feedback, data and diagnostic set: with the defaults it
    reproduces that epoch's record."""
    global _debug
    _debug = _debug or debug
    from engine.remeasure import remeasure

    try:
        if format_ not in MEASURE_FORMATS:
            raise FaevalError(f"unknown measure format {format_!r}", "use --format markdown or --format json")
        result = remeasure(run_dir, epoch, null_draws, rho_directions, nudge)
    except FaevalError as err:
        fail(err)
    if format_ == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(result.to_markdown())


@app.command()
def bench(json_: Annotated[Optional[Path], typer.Option("--json", help="Write every figure to this JSON file.")] = None,
          markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the tables as markdown.")] = None,
          quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes: checks the benchmark runs, "
                                              "measures nothing meaningful.")] = False,
          profile: Annotated[bool, typer.Option("--profile", help="Only profile bp, fa and dfa steps "
                                                "(torch.profiler, 1 thread and all): where the time outside "
                                                "the matmuls goes. About a minute.")] = False) -> None:
    """Measure training speed, diagnostics cost, console lag and peak memory on this machine."""
    from . import bench as bench_pkg

    if profile:
        result = bench_pkg.run_profiles(quick=quick, log=lambda msg: typer.echo(msg, err=True))
        sys.stdout.write(bench_pkg.profile_markdown(result))
    else:
        result = bench_pkg.run_bench(quick=quick, log=lambda msg: typer.echo(msg, err=True))
        bench_pkg.print_table(result)
    if json_ is not None:
        json_.write_text(json.dumps(result, indent=2) + "\n")
    if markdown is not None:
        markdown.write_text(bench_pkg.profile_markdown(result) if profile else bench_pkg.markdown(result))


def main() -> None:
    app()
