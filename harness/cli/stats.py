"""`metabench stats TABLE.csv`: Demšar's across-settings analysis of any results table.

Rows of the CSV are settings (or data sets), columns methods, the first column the row names
(see :func:`metabench.harness.analysis.stats.read_results_table` for what a cell may hold). Prints the
average ranks, Friedman's chi-square, the Iman-Davenport F (or "not computed" and why: too few
rows, or identical rankings on every row), the Nemenyi critical difference and the pairwise
Wilcoxon table (Holm-corrected); ``--json`` prints the same numbers as JSON;
``--out DIR`` also writes ``stats.json``, ``stats.md`` and the critical-difference diagram
(``cd_diagram.svg`` and ``.png``). Rows with missing cells are dropped with a warning. A malformed
table is an error (exit status 2) that names the line, row or column to fix.

The ``leaderboard.csv`` that ``metabench report`` writes is read as what it stands for: rows are its
episode sets, columns its labels, cells its means, each row ranked in its metric's direction (MSE:
lower is better), on the largest complete block of settings x methods, as the report's own
across-settings section does.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tabulate import tabulate

logger = logging.getLogger("metabench")

#: Columns that make a CSV a leaderboard written by `metabench report` (besides ``label`` or ``algorithm``).
LEADERBOARD_KEYS = {"dataset", "split", "ways", "shots", "queries", "metric", "mean", "fingerprint"}


def register(commands) -> None:
    stats = commands.add_parser(
        "stats",
        help="average ranks, Friedman/Iman-Davenport, Nemenyi CD and pairwise Wilcoxon for a results CSV",
        description=(
            "Rank the methods (columns) of a results table over its rows (settings or data sets), as in "
            "Demšar (2006): average ranks (ties averaged), Friedman chi-square and Iman-Davenport F, the "
            "Nemenyi critical difference, and pairwise Wilcoxon signed-rank tests with Holm's correction "
            "(Benavoli et al. 2016). The first column holds the row names; cells may be written 98.7, "
            "98.7%% or 98.7 ± 0.4 (the ± is ignored); empty, NA, nan or - cells are missing, and rows "
            "with a missing cell are dropped (a warning lists them). The leaderboard.csv of `metabench report` "
            "is read as its settings x labels, each setting ranked in its metric's direction."
        ),
    )
    stats.add_argument("table", metavar="TABLE.csv",
                       help="rows = settings, columns = methods, first column = row names; or a leaderboard.csv of `metabench report`")
    stats.add_argument("--lower-is-better", action="store_true", help="smaller scores are better (e.g. error, MSE)")
    stats.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    stats.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    stats.add_argument("--out", metavar="DIR", help="also write stats.json, stats.md and cd_diagram.svg/.png to DIR")
    stats.set_defaults(handler=_stats)


def _stats(args) -> int:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.analysis.stats import StatsInputError, compare_across_settings, read_results_table

    if not 0.0 < args.alpha < 1.0:
        raise StatsInputError(f"Received --alpha {args.alpha}; expected a significance level strictly between 0 and 1, e.g. 0.05.")
    result = _leaderboard_analysis(Path(args.table), args)
    if result is None:
        table = read_results_table(args.table)
        result = compare_across_settings(table, lower_is_better=args.lower_is_better, alpha=args.alpha)
        payload = {"table": str(args.table), **result.as_dict(), "lower_is_better": bool(args.lower_is_better)}
        direction = "lower is better" if args.lower_is_better else "higher is better"
    else:
        payload = {"table": str(args.table), **result.as_dict()}
        lower = set(result.lower_is_better.tolist())
        direction = {frozenset({True}): "lower is better", frozenset({False}): "higher is better"}.get(
            frozenset(lower), "lower is better for MSE rows, higher for accuracy and return rows")
    if args.json:
        print(json.dumps(payload, indent=2, allow_nan=False))
    else:
        _print_tables(result, direction)
    if args.out:
        for path in _write(result, payload, Path(args.out), args, direction):
            print(path, file=sys.stderr if args.json else sys.stdout)
    return 0


def _leaderboard_analysis(path: Path, args):
    """The across-settings analysis of ``path`` when it is a report's leaderboard.csv; else None."""
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    import pandas as pd

    from metabench.harness.analysis.leaderboard import across_settings
    from metabench.harness.analysis.stats import StatsInputError

    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = {cell.strip() for cell in next(csv.reader(handle), [])}
    except (OSError, UnicodeDecodeError):
        return None  # read_results_table says what is wrong with the file
    if not LEADERBOARD_KEYS <= header or not header & {"label", "algorithm"}:
        return None
    frame = pd.read_csv(path, encoding="utf-8-sig", dtype={"fingerprint": str, "label": str, "algorithm": str})
    if "label" not in frame.columns:  # leaderboards written before rows had labels
        frame["label"] = frame["algorithm"]
    frame["ways"] = frame["ways"].astype("Int64")  # empty for regression
    if args.lower_is_better:
        logger.warning("Ignoring --lower-is-better: a leaderboard's metric column decides each row (mse: lower is better; accuracy, return: higher).")
    analysis, _, note = across_settings(frame, alpha=args.alpha)
    if analysis is None:
        raise StatsInputError(f"{path} (a leaderboard of `metabench report`): {note}")
    return analysis._replace(notes=(*analysis.notes, note))


def _print_tables(result, direction: str) -> None:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.analysis.formatting import across_pair_cells, nemenyi_lines

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # no wrapping when piped
    friedman = result.friedman
    ranks = Table(title=f"Average ranks over {friedman.n} rows", caption=f"{direction}; 1 = best, ties averaged")
    ranks.add_column("method")
    ranks.add_column("average rank", justify="right")
    for name, rank in result.average_ranks.items():
        ranks.add_row(name, f"{rank:.3f}")
    console.print(ranks)
    summary = Table(title=f"Friedman / Iman-Davenport / Nemenyi (k = {friedman.k}, N = {friedman.n}, alpha = {result.alpha:g})")
    summary.add_column("statistic")
    summary.add_column("value", justify="right")
    summary.add_column("p", justify="right")
    chi2 = "not computed" if friedman.not_computed else f"{friedman.statistic:.4f}"
    summary.add_row(f"Friedman chi-square (df = {friedman.k - 1})", chi2, _p(friedman.pvalue))
    ff = "not computed" if friedman.iman_davenport_not_computed else f"{friedman.iman_davenport_F:.4f}"
    summary.add_row(f"Iman-Davenport F_F (df = {friedman.k - 1}, {(friedman.k - 1) * (friedman.n - 1)})", ff,
                    _p(friedman.iman_davenport_pvalue))  # fmt: skip
    summary.add_row("Nemenyi q_alpha", f"{result.q_alpha:.4f}", "")
    summary.add_row("Nemenyi critical difference CD", f"{result.cd:.4f}", "")
    console.print(summary)
    for reason in dict.fromkeys(r for r in (friedman.not_computed, friedman.iman_davenport_not_computed) if r):
        console.print(reason if reason == friedman.not_computed else f"Iman-Davenport F_F: {reason}")
    for line in nemenyi_lines(result)[1:]:
        console.print(line)
    pairs = Table(title="Pairwise: Nemenyi on average ranks; Wilcoxon signed-rank over rows, Holm-corrected")
    for column in ("A", "B", "rank difference", "Nemenyi", "wins / ties / losses of A", "Wilcoxon p (Holm)", "result"):
        pairs.add_column(column, justify="right" if column in ("rank difference", "Wilcoxon p (Holm)") else "left")
    for pair in result.pairwise.to_dict("records"):
        pairs.add_row(*across_pair_cells(pair, result.alpha))
    console.print(pairs)
    for note in result.notes:
        console.print(f"Note: {note}")


def _write(result, payload: dict, out: Path, args, direction: str) -> list[Path]:
    # Deferred: `metabench --help` and `list` load no pandas, matplotlib or Keras (see metabench.harness.cli).
    from metabench.harness.analysis.figures import cd_diagram, save_figure
    from metabench.harness.analysis.formatting import ACROSS_PAIR_HEADERS, across_pair_cells, across_summary_lines

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "stats.json"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md = [
        f"# Ranks across settings: {_md(Path(args.table).name)}\n",
        (
            f"{result.friedman.k} methods over {result.friedman.n} rows, "
            f"{direction}, alpha = {result.alpha:g} "
            "(Demšar 2006; pairwise Wilcoxon with Holm, Benavoli et al. 2016).\n"
        ),
        tabulate([[_md(n), f"{r:.3f}"] for n, r in result.average_ranks.items()], headers=["method", "average rank"],
                 tablefmt="github", disable_numparse=True),
        "",
        *(f"- {_md(line)}" for line in across_summary_lines(result)),
        *(f"- Note: {_md(note)}" for note in result.notes),
        "",
        tabulate([[_md(c) for c in across_pair_cells(p, result.alpha)] for p in result.pairwise.to_dict("records")],
                 headers=ACROSS_PAIR_HEADERS, tablefmt="github", disable_numparse=True),
        "",
        "![critical-difference diagram](cd_diagram.svg)",
    ]
    md_path = out / "stats.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    title = f"Average ranks over {result.friedman.n} rows (CD at alpha = {result.alpha:g})"
    figures = save_figure(cd_diagram(result.average_ranks, result.cd, groups=result.groups, title=title), out / "cd_diagram")
    return [json_path, md_path, *figures]


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _md(text: object) -> str:
    return " ".join(str(text).split("\n")).replace("|", "\\|")
