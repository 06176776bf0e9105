"""The leaderboard as markdown (``leaderboard.md``): github-style tables, user strings escaped per cell."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from tabulate import tabulate

from metabench.harness.analysis.formatting import (
    ACROSS_PAIR_HEADERS,
    CI_CONVENTION,
    ONLINE_MEASURE_TITLES,
    ONLINE_TEXT,
    PAIR_HEADERS,
    ROW_TEXT,
    across_pair_cells,
    across_summary_lines,
    compared_at_lines,
    empty_text,
    format_value,
    pair_cells,
    significance_text,
    vs_best_text,
)
from metabench.harness.analysis.labels import setting_title
from metabench.harness.analysis.leaderboard import Report, pairs_of

_SETTING_COLUMNS = ["dataset", "split", "ways", "shots", "queries"]


_MD_HEADERS = [
    "rank", "dataset", "ways", "shots", "queries", "label", "recipe", "metric", "mean", "ci95", "ci95 (t)",
    "vs best", "inner steps", "episodes", "seeds", "seed std", "fingerprint", "notes",
]  # fmt: skip


def _md_cells(row: dict) -> list[str]:
    metric = row["metric"]

    def number(x: float) -> str:
        return format_value(x, metric)

    def optional(x: float) -> str:
        return "-" if not math.isfinite(x) else number(x)

    return [
        "-" if not math.isfinite(row["rank"]) else f"{row['rank']:g}",
        _md(row["dataset"]),
        "-" if pd.isna(row["ways"]) else str(row["ways"]),
        str(row["shots"]),
        str(row["queries"]),
        _md(row["label"]),
        _md(str(row["recipe_hash"])[:12]),
        "accuracy (%)" if metric == "accuracy" else _md(metric),
        number(row["mean"]),
        number(row["ci95"]),
        optional(row["ci95_t"]),
        _md(vs_best_text(row)),
        str(row["inner_steps"]),
        str(row["episodes"]),
        str(row["seeds"]),
        optional(row["seed_std"]),
        _md(str(row["fingerprint"])[:12]),
        _md(row["notes"]),
    ]


def render_markdown(report: Report, figures: dict | None = None) -> str:
    """The leaderboard as markdown; ``figures`` maps figure keys to paths relative to the file."""
    figures = figures or {}
    counts = report.run_counts
    excluded = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("failed", "interrupted", "running"))
    parts = [
        "# metabench leaderboard\n\n"
        f"Results as of {report.generated} (the newest completed run), from `{_md(report.store_path)}`: "
        f"{counts.get('completed', 0)} completed run(s) (excluded: {excluded}).\n\n"
        + ROW_TEXT
        + "\n\n"
        + significance_text(report.alpha)
        + "\n"
    ]
    parts.extend(f"{_md(line)}\n" for line in compared_at_lines(report))
    if report.table.empty:
        parts.append(f"\n{_md(empty_text(report))}\n")
        return "\n".join([*parts, *_online_parts(report)])
    for key, title, rows in report.settings():
        parts.append(f"\n## {_md(title)}\n")
        cells = [_md_cells(row) for row in rows.to_dict("records")]
        parts.append(tabulate(cells, headers=_MD_HEADERS, tablefmt="github", disable_numparse=True))
        parts.append(f"\n{CI_CONVENTION}\n")
        pairs = pairs_of(report.pairs, key)
        if len(pairs):
            tested = int(np.isfinite(pairs["wilcoxon_p"].to_numpy(dtype=float)).sum())
            parts.append(
                f"Paired comparisons ({tested} tested pair(s); A − B in "
                f"{'accuracy points' if rows['metric'].iloc[0] == 'accuracy' else 'the metric unit'}; "
                "95% CI Student-t; d_z = Cohen's paired effect size; p-values two-sided, Holm-adjusted "
                "in parentheses):\n"
            )
            pair_rows = [[_md(c) for c in pair_cells(p, report.alpha)] for p in pairs.to_dict("records")]
            parts.append(tabulate(pair_rows, headers=PAIR_HEADERS, tablefmt="github", disable_numparse=True))
        if ("steps", key) in figures:
            parts.append(f"\n![{_md_alt(title)}: metric vs inner steps]({figures[('steps', key)]})\n")
        if ("prequential", key) in figures:
            parts.append(f"\n![{_md_alt(title)}: prequential, query metric vs support examples seen]({figures[('prequential', key)]})\n")
    parts.extend(_online_parts(report))
    parts.append("\n## Average ranks across settings\n")
    parts.append(_md(report.across_note) + "\n")
    across = report.across
    if across is not None:
        counts_per = report.across_values.notna().sum(axis=0)
        rank_rows = [[_md(name), f"{rank:.2f}", str(int(counts_per.get(name, 0)))] for name, rank in across.average_ranks.items()]
        parts.append(tabulate(rank_rows, headers=["method", "average rank", "settings"], tablefmt="github", disable_numparse=True))
        parts.append("\nRanks per setting (1 = best; ties share the average rank):\n")
        ordered = list(across.average_ranks.index)
        per_setting = [[_md(setting), *(f"{across.ranks.loc[setting, a]:g}" for a in ordered)] for setting in across.ranks.index]
        parts.append(tabulate(per_setting, headers=["setting", *(_md(a) for a in ordered)], tablefmt="github", disable_numparse=True))
        parts.append("")
        parts.extend(f"- {_md(line)}" for line in across_summary_lines(across))
        parts.extend(f"- Note: {_md(note)}" for note in across.notes)
        parts.append(
            "\nPairwise over settings (Benavoli et al. 2016): Wilcoxon signed-rank on the per-setting "
            "results (each oriented so that higher is better), Holm-corrected over the pairs; the "
            "Nemenyi column says whether the average ranks differ by at least CD.\n"
        )
        pair_rows = [[_md(c) for c in across_pair_cells(p, report.alpha)] for p in across.pairwise.to_dict("records")]
        parts.append(tabulate(pair_rows, headers=ACROSS_PAIR_HEADERS, tablefmt="github", disable_numparse=True))
        if "cd" in figures:
            parts.append(f"\n![critical-difference diagram]({figures['cd']})\n")
    curve_keys = [key for key in figures if isinstance(key, tuple) and key[0] == "curves"]
    if curve_keys:
        parts.append("\n## Meta-training curves\n")
        for key in curve_keys:
            parts.append(f"![{_md_alt(str(key[1]))}: meta-training curves]({figures[key]})\n")
    return "\n".join(parts).rstrip("\n") + "\n"


def _online_parts(report: Report) -> list[str]:
    """The online-adaptation section: each (setting, measure) of ``report.online`` ranked, with its paired comparisons."""
    if report.online is None or not len(report.online):
        return []
    parts = ["\n## Online adaptation\n", ONLINE_TEXT + "\n"]
    online, pairs = report.online, report.online_pairs
    for (measure, *key), rows in online.groupby(["measure", *_SETTING_COLUMNS], dropna=False, sort=False):
        key = tuple(None if pd.isna(k) else k for k in key)
        parts.append(f"\n### {_md(setting_title(*key))}: {_md(ONLINE_MEASURE_TITLES.get(measure, measure))}\n")
        parts.append(tabulate([_md_cells(row) for row in rows.to_dict("records")], headers=_MD_HEADERS, tablefmt="github", disable_numparse=True))
        mine = pairs_of(pairs[pairs["measure"] == measure], key)
        if len(mine):
            tested = int(np.isfinite(mine["wilcoxon_p"].to_numpy(dtype=float)).sum())
            parts.append(f"\nPaired comparisons ({tested} tested pair(s); A − B, episodes or stream tasks paired; "
                         "p-values two-sided, Holm-adjusted in parentheses):\n")
            pair_rows = [[_md(c) for c in pair_cells(p, report.alpha)] for p in mine.to_dict("records")]
            parts.append(tabulate(pair_rows, headers=PAIR_HEADERS, tablefmt="github", disable_numparse=True))
    return parts


def _md(text: object) -> str:
    """A user string made safe for one markdown table cell: ``|`` escaped, newlines as spaces."""
    return " ".join(str(text).split("\n")).replace("|", "\\|")


def _md_alt(text: str) -> str:
    return _md(text).replace("[", "(").replace("]", ")")
