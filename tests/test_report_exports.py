"""The LaTeX export, ``run --strict``'s exit code and ``--on-alert``'s hook, through the
engine and Typer's CliRunner on hand-written and tiny real audits."""
from __future__ import annotations

import json
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
from test_markdown import PINNED, md_tables, unescape
from test_tables import edge_audit, main_audit, record  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from engine.audit import Audit
from engine.config import Thresholds
from engine.hooks import HOOKS_LOG, AlertHook, alert_json, parse_command
from engine.latex import SYMBOLS, latex_text, render_latex, table_latex
from engine.markdown import render_markdown
from engine.tables import Table, audit_tables, page_tables
from engine.verdicts import DIAGNOSTICS, Alert, evaluate, new_alerts
from faeval_tui.cli import app
from tests.conftest import tiny

cli = CliRunner()


def sets(*keys: str) -> list[str]:
    return sum((["--set", k] for k in tiny(*keys)), [])


# ---- LaTeX ------------------------------------------------------------------------------

UNESCAPED_AMP = re.compile(r"(?<!\\)&")


def latex_blocks(text: str) -> list[dict]:
    """Every table environment: caption, column spec, header and body rows split on unescaped &."""
    out = []
    for env in re.findall(r"\\begin\{table\}\[htbp\]\n(.*?)\\end\{table\}", text, re.S):
        block = {"caption": re.search(r"\\caption\{(.*)\}\n", env)[1], "spec": None, "rows": [], "notes": env}
        tab = re.search(r"\\begin\{tabular\}\{([lr]+)\}\n\\toprule\n(.*?)\n\\midrule\n(.*?)\n\\bottomrule\n"
                        r"\\end\{tabular\}", env, re.S)
        if tab:
            block["spec"], block["header"] = tab[1], tab[2]
            block["rows"] = tab[3].split("\n")
        out.append(block)
    return out


def cells_of(row: str) -> list[str]:
    assert row.endswith(r" \\"), row
    return [c.strip() for c in UNESCAPED_AMP.split(row.removesuffix(r" \\"))]


def braces_balance(text: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]|\\textbackslash", "", text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


NUMBER = re.compile(r"[+\-−]?\d+(?:\.\d+)?(?:e[+\-]?\d+)?|nan|inf")


def numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell)


def test_latex_has_one_booktabs_table_per_table_or_part_with_its_caption_alignment_and_notes(main_audit):  # noqa: F811
    text = render_latex(main_audit, provenance=PINNED)
    tables = page_tables(audit_tables(main_audit))  # the wide ones split as in the markdown
    blocks = latex_blocks(text)
    assert [b["caption"] for b in blocks] == [
        "Audit (1 of 3): outcome", "Audit (2 of 3): credit alignment", "Audit (3 of 3): scale, reference and stability",
        "Per layer (1 of 2): alignment", "Per layer (2 of 2): norms", "Penalty sweep", "Reporting strategies",
        "Threshold sensitivity"] == [t.title for t in tables]
    for block, table in zip(blocks, tables):
        assert block["spec"] == "".join("r" if n else "l" for n in table.numeric())
        assert len(block["rows"]) == len(table.rows)
        assert block["notes"].count(r"\par" + "\n") == len(table.notes)
        assert (r"\par\smallskip{\footnotesize\raggedright" in block["notes"]) == bool(table.notes)
    assert blocks[0]["spec"] == "lrrlrrll"  # method λ n status acc gap verdict, first fire
    assert blocks[0]["header"] == r"method & $\lambda$ & n & status & acc \% & gap pp & verdict & first fire \\"
    assert blocks[2]["spec"] == "lrrrrrrl" and blocks[2]["header"] == (
        r"method & $\lambda$ & n & $\lVert h_L \rVert$ & $\lVert g_L \rVert$ & max growth & stability & "
        r"(c) mode \\")
    assert text.startswith("% faeval audit: golden\n% exported: 2026-01-01T00:00:00+00:00 by faeval-tui ")
    for key in ("audit-outcome", "audit-alignment", "audit-scale", "layers-alignment", "layers-norms", "penalty",
                "strategies", "sensitivity"):
        assert text.count(rf"\label{{tab:golden-{key}}}") == 1


@pytest.mark.parametrize("which", ["main", "edge"])
def test_latex_is_structurally_sound_and_its_numbers_are_the_markdowns(which, main_audit, edge_audit):  # noqa: F811
    audit = main_audit if which == "main" else edge_audit
    tex = render_latex(audit, provenance=PINNED)
    md = md_tables(render_markdown(audit, provenance=PINNED))
    assert braces_balance(tex)
    for line in tex.splitlines():
        if not line.startswith("%"):
            assert len(re.findall(r"(?<!\\)\$", line)) % 2 == 0, line  # math opened is closed on its line
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == len(page_tables(audit_tables(audit))) == 8
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == len(md)
    for block, parsed in zip([b for b in latex_blocks(tex) if b["spec"]], md):
        width = len(block["spec"])
        assert width == len(parsed["headers"])
        for row in [block["header"], *block["rows"]]:
            assert len(UNESCAPED_AMP.findall(row)) == width - 1, row
        for lrow, mrow in zip(block["rows"], parsed["rows"]):
            for lcell, mcell in zip(cells_of(lrow), mrow):
                assert numbers(lcell.replace("$-$", "−")) == numbers(unescape(mcell)), (lcell, mcell)


def test_latex_escapes_its_special_characters_in_cells_headers_and_notes():
    table = Table("audit", "A_b & 100% #1", ["method", "‖h_L‖", "λ"],
                  [["my_rule", "1.00 ± 0.50 †", "0.01"], [r"a\b{c}~d^e$f", "−inf ‡", "0"], ["[x]", "—", "0"]],
                  ["cos_l − ρ_l ≤ Γ; 50% of runs & #2 used λ · Σ_l ‖f_l‖²"])
    text = table_latex(table)
    assert r"\caption{A\_b \& 100\% \#1}" in text
    assert r"method & $\lVert h_L \rVert$ & $\lambda$ \\" in text
    assert r"my\_rule & 1.00 $\pm$ 0.50 $^\dagger$ & 0.01 \\" in text
    assert (r"a\textbackslash{}b\{c\}\textasciitilde{}d\textasciicircum{}e\$f & $-$inf $^\ddagger$ & 0 \\"
            in text)
    assert r"{[}x{]} & --- & 0 \\" in text  # a cell's [ is never the optional argument of \\ or \midrule
    assert (r"$\cos_l$ $-$ $\rho_l$ $\le$ $\Gamma$; 50\% of runs \& \#2 used $\lambda$ $\cdot$ $\Sigma_l$ "
            r"$\lVert f_l \rVert^2$\par") in text
    assert braces_balance(text)


def test_every_symbol_of_the_mapping_becomes_math_or_a_ligature_and_names_keep_their_underscores():
    assert latex_text("‖h_L‖") == r"$\lVert h_L \rVert$"
    for sym, expect in {"λ": r"$\lambda$", "ρ": r"$\rho$", "Γ": r"$\Gamma$", "±": r"$\pm$", "†": r"$^\dagger$",
                        "‡": r"$^\ddagger$", "−": "$-$"}.items():
        assert SYMBOLS[sym] == expect and latex_text(sym) == expect
    assert latex_text("S_full and g_L", names=True) == r"$S_{\mathrm{full}}$ and $g_L$"
    assert latex_text("resmlp_noln.fa-s42 and h_L", names=False) == r"resmlp\_noln.fa-s42 and h\_L"
    assert latex_text("resmlp_noln.fa-s42", names=True) == r"resmlp\_noln.fa-s42"  # not a protocol name
    assert latex_text("λ²") == r"$\lambda ^2$"  # adjacent math is one $…$


def test_export_latex_writes_the_same_text_to_stdout_and_to_out(new_audit, tmp_path):
    from tests.conftest import train

    audit = new_audit("methods=[bp,frozen]", "epochs=1")
    assert set(train(audit).values()) == {"finished"}
    env = {"FAEVAL_EXPORT_TIME": "2026-01-01T00:00:00+00:00"}
    res = cli.invoke(app, ["export", str(audit.path), "--format", "latex"], env=env)
    assert res.exit_code == 0, res.output
    out = tmp_path / "tables.tex"
    res2 = cli.invoke(app, ["export", str(audit.path), "-f", "latex", "--out", str(out)], env=env)
    assert res2.exit_code == 0 and out.read_text(encoding="utf-8") == res.stdout
    assert res2.stderr.strip() == str(out)
    shown = [t for t in page_tables(audit_tables(Audit.open(audit.path))) if t.rows]
    assert res.stdout.count(r"\toprule") == len(shown)  # no penalty reruns: that table is its note alone
    assert [t.key for t in shown if t.key.startswith("audit")][0] == "audit-outcome"  # split as in the markdown
    assert r"\caption{Penalty sweep}" in res.stdout and "no penalty reruns" in res.stdout
    bad = cli.invoke(app, ["export", str(audit.path), "--format", "pdf"])
    assert bad.exit_code == 2 and "--format latex" in bad.stderr


# ---- the alerts' text -------------------------------------------------------------------

def test_a_depth_alert_reads_accuracy_in_percent_like_the_tables_and_the_hook_keeps_fractions():
    th = Thresholds(persist={"d": 1})
    rec = evaluate(record(3, 0.7694, 0.95), th)
    (alert,) = new_alerts("fa-s42", [], rec, th)
    assert alert.headline == "(d) depth utility fired at epoch 3: accuracy 76.94% < frozen baseline 95.00%"
    assert (alert.value, alert.threshold) == (0.7694, 0.95)  # the hook's JSON: the record's own numbers
    margin = Thresholds(depth_margin=0.005, persist={"d": 2})
    recs = [evaluate(record(e, 0.7694, 0.95), margin) for e in (1, 2)]
    (alert,) = new_alerts("fa-s42", recs[:1], recs[1], margin)
    assert alert.headline == ("(d) depth utility fired at epoch 2 (fired on every epoch since 1): accuracy 76.94% "
                              "< 95.50% (frozen baseline 95.00% +0.50 pp)")
    assert alert.text.startswith("fa-s42: (d) depth utility fired at epoch 2") and "0.7694" not in alert.text


def test_scale_and_reference_alerts_keep_their_own_units():
    th = Thresholds(growth=50.0)
    rec = evaluate(record(1, 0.3, 0.28, growth=80.0, g_L=1e-9), th)
    alerts = {a.diagnostic: a.headline for a in new_alerts("fa-s1", [], rec, th)}
    assert alerts == {"a": "(a) scale stability fired at epoch 1: growth = 80.0 > 50.0",
                      "b": "(b) reference validity fired at epoch 1: g_L = 1.00e-9 < 1.00e-7"}


# ---- run --strict -----------------------------------------------------------------------

def test_run_strict_exits_3_naming_the_runs_that_walked_back(tmp_path):
    runs = tmp_path / "runs"
    res = cli.invoke(app, ["run", "--runs-dir", str(runs), "--strict",
                           *sets("methods=[bp,frozen]", "thresholds.depth_margin=0.5")])
    assert res.exit_code == 3, res.output
    [audit_dir] = runs.iterdir()
    assert res.stdout.strip().splitlines()[-1] == str(audit_dir)  # stdout still ends with the directory
    assert res.stderr.strip().splitlines()[-1] == "strict: 1 run walked back: bp-s42 (WALKED BACK via (d))"
    plain = cli.invoke(app, ["run", "--runs-dir", str(runs), *sets("methods=[bp,frozen]",
                                                                   "thresholds.depth_margin=0.5")])
    assert plain.exit_code == 0 and "strict:" not in plain.stderr  # without --strict nothing changes
    again = cli.invoke(app, ["resume", str(audit_dir), "--strict"])  # nothing left to train: the verdicts stand
    assert again.exit_code == 3 and again.stdout.strip() == str(audit_dir)
    assert "strict: 1 run walked back: bp-s42" in again.stderr


def test_run_strict_exits_0_when_no_run_walked_back(tmp_path):
    res = cli.invoke(app, ["run", "--runs-dir", str(tmp_path), "--strict",
                           *sets("methods=[bp,frozen]", "thresholds.depth_margin=-1")])
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().splitlines()[-1] == "strict: 0 runs walked back"


def test_a_run_that_did_not_finish_wins_over_strict(tmp_path, monkeypatch):
    import faeval_tui.headless

    real = faeval_tui.headless.run_headless

    def one_failed(audit, task=None, on_alert=None):
        return {**real(audit, task, on_alert), "frozen-s42": "failed"}

    monkeypatch.setattr(faeval_tui.headless, "run_headless", one_failed)
    res = cli.invoke(app, ["run", "--runs-dir", str(tmp_path), "--strict",
                           *sets("methods=[bp,frozen]", "thresholds.depth_margin=0.5")])
    assert res.exit_code == 1, res.output
    assert "strict: 1 run walked back: bp-s42 (WALKED BACK via (d))" in res.stderr


def test_the_exit_codes_are_in_the_help():
    for command in ("run", "resume"):
        res = cli.invoke(app, [command, "--help"], prog_name="faeval-tui", terminal_width=200)
        assert res.exit_code == 0
        text = " ".join(res.output.split())
        assert "--strict" in text and "--on-alert" in text
        assert ("Exit codes: 0 every run finished; 1 a run failed, diverged or was stopped (resume it); 2 an error "
                "the message names (bad input is refused before anything is written); 3 with --strict, every run "
                "finished and at least one ended WALKED BACK. 1 wins over 3.") in text


# ---- --on-alert -------------------------------------------------------------------------

def hook_script(tmp_path: Path, body: str = "") -> Path:
    """A hook that appends what it read on stdin, and its argv, to received.jsonl, then runs ``body``."""
    script = tmp_path / "hook.py"
    script.write_text("import json, sys\n"
                      "data = sys.stdin.read()\n"
                      f"with open({str(tmp_path / 'received.jsonl')!r}, 'a') as fh:\n"
                      "    fh.write(json.dumps({'stdin': data, 'argv': sys.argv[1:]}) + '\\n')\n"
                      "print('hook ran')\n" + body, encoding="utf-8")
    return script


def received(tmp_path: Path) -> list[dict]:
    path = tmp_path / "received.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_hook_gets_each_alert_as_json_on_stdin(tmp_path):
    script = hook_script(tmp_path)
    runs = tmp_path / "runs"
    res = cli.invoke(app, ["run", "--runs-dir", str(runs), "--on-alert", shlex.join([sys.executable, str(script)]),
                           *sets("methods=[bp]", "thresholds.growth=1.0001")])
    assert res.exit_code == 0, res.output
    [audit_dir] = runs.iterdir()
    [call] = received(tmp_path)  # (a) alerts once, at epoch 1 (persist 1); epoch 2 raises no new alert
    assert call["argv"] == []
    doc = json.loads(call["stdin"])
    growth = Audit.open(audit_dir).log("bp-s42").epochs[0].growth
    assert doc == {"run_id": "bp-s42", "epoch": 1, "diagnostic": "a", "value": growth, "threshold": 1.0001,
                   "headline": doc["headline"], "meaning": DIAGNOSTICS["a"].meaning, "since": None,
                   "audit": str(audit_dir.absolute())}
    assert doc["headline"].startswith("(a) scale stability fired at epoch 1: growth = ")
    log = (audit_dir / HOOKS_LOG).read_text()
    assert re.fullmatch(r"--- \S+ bp-s42 \(a\) epoch 1: .*hook\.py\nhook ran\n--- exited 0\n", log)


def test_shell_metacharacters_in_the_command_or_the_alert_never_execute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = hook_script(tmp_path)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} ; touch pwned1 '$(touch pwned2)' `touch pwned3`"
    argv = parse_command(command)
    assert argv == [sys.executable, str(script), ";", "touch", "pwned1", "$(touch pwned2)", "`touch", "pwned3`"]
    evil = "x; touch pwned4 && $(touch pwned5) | `touch pwned6` > pwned7"
    hook = AlertHook(argv, tmp_path / "audit")
    (tmp_path / "audit").mkdir()
    hook(Alert(evil, 1, "a", float("nan"), 50.0, evil, evil))
    hook.close()
    [call] = received(tmp_path)
    assert call["argv"] == argv[2:]  # the arguments as written, handed over untouched
    assert json.loads(call["stdin"]) == {"run_id": evil, "epoch": 1, "diagnostic": "a", "value": "NaN",
                                         "threshold": 50.0, "headline": evil, "meaning": evil, "since": None,
                                         "audit": str(tmp_path / "audit")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit", "hook.py", "received.jsonl"]  # no pwned*


def test_a_failing_hook_is_reported_once_and_the_audit_still_finishes(tmp_path):
    script = hook_script(tmp_path, "sys.stderr.write('boom\\n')\nsys.exit(1)\n")
    runs = tmp_path / "runs"
    res = cli.invoke(app, ["run", "--runs-dir", str(runs), "--on-alert", shlex.join([sys.executable, str(script)]),
                           *sets("methods=[bp,frozen]", "thresholds.growth=1.0001")])
    assert res.exit_code == 0, res.output  # both runs finished
    assert len(received(tmp_path)) == 2  # one (a) alert per run, each given to the hook
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: --on-alert")]
    assert len(warnings) == 1 and f"{shlex.join([sys.executable, str(script)])} exited 1" in warnings[0]
    [audit_dir] = runs.iterdir()
    log = (audit_dir / HOOKS_LOG).read_text()
    # stdout and stderr share the log; their order depends on buffering (PYTHONUNBUFFERED), not on us
    assert log.count("--- exited 1\n") == 2 and log.count("boom\n") == 2 and log.count("hook ran\n") == 2


def test_a_hook_that_hangs_is_killed_after_the_timeout(tmp_path):
    script = hook_script(tmp_path, "import time\ntime.sleep(600)\n")
    warned: list[str] = []
    hook = AlertHook([sys.executable, str(script)], tmp_path, timeout=1.0, warn=warned.append)
    alert = Alert("bp-s42", 3, "b", 1e-9, 1e-7, "(b) reference validity fired", "meaning")
    start = time.monotonic()
    hook(alert)
    assert time.monotonic() - start < 1.0  # the call returns at once: training does not wait
    hook.close()
    assert time.monotonic() - start < 60
    assert len(warned) == 1 and "timed out after 1 s and was killed" in warned[0]
    assert (tmp_path / HOOKS_LOG).read_text().endswith("--- timed out after 1 s and was killed\n")
    assert alert_json(alert, tmp_path)["value"] == 1e-9


@pytest.mark.parametrize("command, problem", [
    ("no-such-program-faeval --flag", "error: --on-alert program 'no-such-program-faeval' not found on PATH"),
    ("", "error: --on-alert is empty"),
    ("   ", "error: --on-alert is empty"),
    ("notify 'unclosed", "error: --on-alert \"notify 'unclosed\" cannot be split into arguments"),
])
def test_a_hook_that_cannot_run_is_refused_with_exit_2_before_anything_is_written(tmp_path, command, problem):
    runs = tmp_path / "runs"
    res = cli.invoke(app, ["run", "--runs-dir", str(runs), "--on-alert", command, *sets("methods=[bp]")])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(problem) and "Traceback" not in res.output
    assert not runs.exists()


def test_resume_refuses_a_missing_hook_program_and_leaves_the_audit_as_it_was(new_audit):
    audit = new_audit("methods=[bp]")
    before = sorted(p.name for p in audit.path.iterdir())
    res = cli.invoke(app, ["resume", str(audit.path), "--on-alert", "no-such-program-faeval"])
    assert res.exit_code == 2 and "not found on PATH" in res.stderr
    assert sorted(p.name for p in audit.path.iterdir()) == before
