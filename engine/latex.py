"""The audit's tables as LaTeX (``faeval-tui export --format latex``): booktabs tables to
``\\input`` into a paper, one ``table`` environment per table of ``engine.tables``.

The cells are the same text the markdown and the console show, with LaTeX's special
characters escaped and the Unicode symbols the tables use turned into math
(``SYMBOLS``; ``‖h_L‖`` → ``$\\lVert h_L \\rVert$``). Numeric columns are right-aligned,
text columns left (``Table.numeric``). Each table's title is its caption and its notes a
footnote-size paragraph below the tabular. A table wider than a page is split into parts
as in the markdown export (``engine.tables.pages``), one ``table`` environment each,
labelled ``tab:<audit>-<key>-<part>``. Needs ``\\usepackage{booktabs}``; anything
else non-ASCII is left as UTF-8 text (LaTeX reads UTF-8 by default since 2018).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .config import AuditConfig
from .tables import Source, Table, audit_tables, config_of, page_tables, views

# LaTeX's special characters in text, and the characters OT1-encoded fonts print as others
ESCAPES = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
    "$": r"\$", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": "$<$", ">": "$>$", "|": "$|$",
    # braced: a cell starting with [ after \\ or \midrule would be read as their optional argument
    "[": "{[}", "]": "{]}",
}
# Unicode symbols of the tables, their headers and notes, as math (or a text ligature)
SYMBOLS = {
    "λ": r"$\lambda$", "ρ": r"$\rho$", "Γ": r"$\Gamma$", "Σ": r"$\Sigma$", "±": r"$\pm$",
    "†": r"$^\dagger$", "‡": r"$^\ddagger$", "−": "$-$", "≤": r"$\le$", "≥": r"$\ge$", "×": r"$\times$",
    "·": r"$\cdot$", "→": r"$\to$", "∈": r"$\in$", "²": "$^2$", "‖": r"$\Vert$", "—": "---", "–": "--",
    "…": r"\ldots{}",
}
GREEK = {"λ": r"\lambda", "ρ": r"\rho", "Γ": r"\Gamma", "Σ": r"\Sigma"}
# subscripted names in headers and notes (cos_l, g_L, ‖h_{l−1}‖, S_full): only these bases and
# subscripts, so a run or model name with an underscore (resmlp_noln) stays text
_BASE = r"[hgaf]|cos|mean|S|[λρΓΣ]"
_SUB = r"full|l−1|l-1|[lLn0-9]"
_NORM = re.compile(rf"‖({_BASE})_\{{?({_SUB})\}}?‖(²?)")
_NAME = re.compile(rf"(?<![A-Za-z0-9_.\-])({_BASE})_\{{?({_SUB})\}}?(?![A-Za-z0-9_]|\.[A-Za-z0-9])")
_NORM_OR_NAME = re.compile(f"{_NORM.pattern}|{_NAME.pattern}")
# columns whose cells are names and messages, never read for subscripted names
NAME_COLUMNS = frozenset({"model", "method", "run", "status"})


def _sub(sub: str) -> str:
    sub = sub.replace("−", "-")
    return sub if len(sub) == 1 else (r"{\mathrm{full}}" if sub == "full" else "{" + sub + "}")


def _base(base: str) -> str:
    if base == "cos":
        return r"\cos"
    return GREEK.get(base, base if len(base) == 1 else rf"\mathrm{{{base}}}")


def _text(text: str) -> list[tuple[bool, str]]:
    """(is math, LaTeX) pieces of plain text: escaped, with ``SYMBOLS`` as math."""
    out: list[tuple[bool, str]] = []
    for ch in text:
        sym = SYMBOLS.get(ch) or ESCAPES.get(ch)
        if sym and sym.startswith("$") and sym.endswith("$") and len(sym) > 1:
            out.append((True, sym[1:-1]))
        else:
            out.append((False, sym or ch))
    return out


def _pieces(text: str, names: bool) -> list[tuple[bool, str]]:
    """``text`` as (is math, LaTeX) pieces: norms ``‖x_y‖`` always, other subscripted names
    only with ``names`` (headers, notes)."""
    out: list[tuple[bool, str]] = []
    pos = 0
    for m in (_NORM_OR_NAME if names else _NORM).finditer(text):
        out += _text(text[pos:m.start()])
        if m.group(1):  # ‖x_y‖, maybe squared
            out.append((True, rf"\lVert {_base(m.group(1))}_{_sub(m.group(2))} \rVert" + ("^2" if m.group(3) else "")))
        else:
            out.append((True, f"{_base(m.group(4))}_{_sub(m.group(5))}"))
        pos = m.end()
    return out + _text(text[pos:])


def latex_text(text: str, names: bool = False) -> str:
    """``text`` as LaTeX: special characters escaped, symbols as math (adjacent math joined
    into one ``$…$``). ``names``: also the subscripted names of the protocol (``cos_l`` →
    ``$\\cos_l$``, ``g_L`` → ``$g_L$``), for headers, captions, notes and cells other than
    ``NAME_COLUMNS``' (a run or model name keeps its underscores as text)."""
    parts: list[str] = []
    math: list[str] = []
    for is_math, piece in _pieces(text, names):
        if is_math:
            math.append(piece)
            continue
        if math:
            parts.append("$" + " ".join(math) + "$")
            math = []
        parts.append(piece)
    if math:
        parts.append("$" + " ".join(math) + "$")
    return "".join(parts)


def table_latex(table: Table, label: str = "faeval") -> str:
    """One ``table`` environment: caption, label, the booktabs tabular, the notes."""
    lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{latex_text(table.title, names=True)}}}",
             rf"\label{{tab:{label}-{table.key}}}"]
    if table.rows:
        spec = "".join("r" if right else "l" for right in table.numeric())
        width = len(table.headers)
        lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                  " & ".join(latex_text(h, names=True) for h in table.headers) + r" \\", r"\midrule"]
        names = [h not in NAME_COLUMNS for h in table.headers]
        for row in table.rows:
            cells = [latex_text(c, names=n) for c, n in zip(row, names)] + [""] * (width - len(row))
            lines.append(" & ".join(cells[:width]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\smallskip{\footnotesize\raggedright")
        lines += [latex_text(note, names=True) + r"\par" for note in table.notes]
        lines.append("}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_tables_latex(tables: Sequence[Table], label: str = "faeval") -> str:
    """The tables, each wider than a page split into parts as in the markdown (``page_tables``)."""
    return "\n".join(table_latex(t, label) for t in page_tables(tables))


def render_latex(source: Source, cfg: AuditConfig | None = None,
                 provenance: Mapping[str, str] | None = None) -> str:
    """Every table of an audit as LaTeX, after comment lines naming the audit and the export
    (the markdown header's provenance and preset lines)."""
    from .markdown import preset_line, provenance_line

    cfg = cfg or config_of(source)
    runs = views(source, cfg)
    name = getattr(getattr(source, "path", None), "name", None) or cfg.name
    head = [f"% faeval audit: {name}", "% " + provenance_line(cfg, provenance).removeprefix("- "),
            "% " + preset_line(cfg).removeprefix("- "), r"% needs \usepackage{booktabs}"]
    head = [line.replace("**", "").replace("\n", " ") for line in head]
    return "\n".join(head) + "\n\n" + render_tables_latex(audit_tables(runs, cfg), _label(name))


def _label(name: str) -> str:
    """A label prefix from the audit's name: letters, digits, '-' and '.' only."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "-", name).strip("-") or "faeval"
