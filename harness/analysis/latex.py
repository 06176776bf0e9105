"""The leaderboard as LaTeX (``leaderboard.tex``): one ``booktabs`` table per setting plus the ranks."""

from __future__ import annotations

import math

import pandas as pd

from metabench.harness.analysis.formatting import ONLINE_MEASURE_TITLES, format_value, p_text, vs_best_text
from metabench.harness.analysis.labels import setting_title
from metabench.harness.analysis.leaderboard import Report

_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
}  # fmt: skip


def tex_escape(text: object) -> str:
    """A user string made safe for LaTeX text mode."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in " ".join(str(text).split()))


def render_tex(report: Report) -> str:
    """The leaderboard as LaTeX tables (``booktabs``), one ``table`` per setting plus the ranks."""
    lines = [
        f"% metabench leaderboard, results as of {report.generated}, from {tex_escape(report.store_path)}.",
        "% Needs \\usepackage{booktabs}. Bold: the best mean and those not significantly different from it",
        f"% (paired Wilcoxon signed-rank on the same episodes, Holm-corrected, alpha = {report.alpha:g}).",
        "",
    ]
    if report.table.empty and report.online.empty:
        lines.append("% No completed runs with evaluations in this store yet.")
        return "\n".join(lines) + "\n"
    for key, title, rows in report.settings():
        lines += _setting_table(title, rows)
    for (measure, *key), rows in report.online.groupby(["measure", "dataset", "split", "ways", "shots", "queries"], dropna=False, sort=False):
        key = tuple(None if pd.isna(k) else k for k in key)
        lines += _setting_table(f"{setting_title(*key)}: {ONLINE_MEASURE_TITLES.get(measure, measure)}", rows)
    across = report.across
    if across is not None:
        f = across.friedman
        if f.not_computed:
            tests = f"Friedman and Iman--Davenport {tex_escape(f.not_computed)}"
        else:
            tests = f"Friedman $\\chi^2_F = {f.statistic:.2f}$, ${p_text(f.pvalue)}$; Iman--Davenport "
            if f.iman_davenport_not_computed:
                tests += tex_escape(f.iman_davenport_not_computed)
            else:
                tests += f"$F_F = {f.iman_davenport_F:.2f}$, ${p_text(f.iman_davenport_pvalue)}$"
        lines += [
            "\\begin{table}[ht]",
            "\\centering",
            (
                f"\\caption{{Average ranks over {f.n} settings (1 = best). {tests}; "
                f"Nemenyi $CD = {across.cd:.2f}$ at $\\alpha = {across.alpha:g}$.}}"
            ),
            "\\begin{tabular}{lr}",
            "\\toprule",
            "Method & Average rank \\\\",
            "\\midrule",
        ]
        lines += [f"{tex_escape(name)} & {rank:.2f} \\\\" for name, rank in across.average_ranks.items()]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def _setting_table(title: str, rows) -> list[str]:
    """One ``booktabs`` table of leaderboard rows (best first) under ``title``."""
    lines = []
    metric = rows["metric"].iloc[0]
    unit = "accuracy (\\%)" if metric == "accuracy" else tex_escape(metric)
    lines += [
        "\\begin{table}[ht]",
        "\\centering",
        (
            f"\\caption{{{tex_escape(title)}: mean {unit} with the 95\\% CI over episodes "
            f"($1.96\\,s/\\sqrt{{n}}$); bold = best or not significantly different from it.}}"
        ),
        "\\begin{tabular}{rllrrrrrl}",
        "\\toprule",
        "Rank & Label & Recipe & Mean & CI95 & Steps & Episodes & Seeds & vs best \\\\",
        "\\midrule",
    ]
    for row in rows.to_dict("records"):
        mean = format_value(row["mean"], metric)
        if row["vs_best"] in ("best", "not significantly different", "too few episodes to test"):
            mean = f"\\textbf{{{mean}}}"
        rank = "--" if not math.isfinite(row["rank"]) else f"{row['rank']:g}"
        mark = tex_escape(vs_best_text(row)).replace("≈", "$\\approx$").replace("\\textless{}", "$<$")
        lines.append(
            f"{rank} & {tex_escape(row['label'])} & \\texttt{{{tex_escape(str(row['recipe_hash'])[:12])}}} & {mean} & "
            f"{format_value(row['ci95'], metric)} & {row['inner_steps']} & {row['episodes']} & {row['seeds']} & {mark} \\\\"
        )
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return lines
