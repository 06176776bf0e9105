"""The leaderboard as one self-contained HTML page: inline CSS, inline SVG figures, no scripts.

Every string that comes from a user (labels, algorithm, dataset and split names, notes, the store path)
passes through :func:`html.escape` before it reaches the page; the figures are matplotlib SVG,
whose writer escapes text too. The page needs no network and no files beside it.
"""

from __future__ import annotations

import html
import math

import pandas as pd

from metabench.harness.analysis.formatting import (
    ONLINE_MEASURE_TITLES,
    ONLINE_TEXT,
    CI_CONVENTION,
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

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
p.meta, p.note { color: #555; font-size: 0.88rem; }
nav ul { columns: 2; font-size: 0.9rem; padding-left: 1.2rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.86rem; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
tr.best td { background: #e8f5e9; font-weight: 600; }
tr.tie td { background: #f3faf3; }
tr.untested td { color: #777; }
details { margin: 0.5rem 0 1rem; }
summary { cursor: pointer; font-weight: 600; font-size: 0.92rem; }
figure { margin: 1rem 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.85rem; }
code { background: #f3f3f3; padding: 0 0.2rem; border-radius: 3px; }
""".strip()


def render_html(report: Report, svgs: dict | None = None) -> str:
    """The report as an HTML document.

    Args:
        report: from :func:`metabench.harness.analysis.leaderboard.build_report`.
        svgs: figure key -> ``<svg>`` markup (:func:`metabench.harness.analysis.figures.svg_markup`):
            ``"cd"``, ``("steps", setting key)`` and ``("curves", dataset)``. Missing keys are
            simply not shown.

    Returns:
        The page, UTF-8 text starting with ``<!DOCTYPE html>``.
    """
    svgs = svgs or {}
    e = _e
    counts = report.run_counts
    excluded = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("failed", "interrupted", "running"))
    body = [
        "<h1>metabench leaderboard</h1>",
        (
            f"<p class=\"meta\">Results as of {e(report.generated)} (the newest completed run), from <code>{e(report.store_path)}</code>: "
            f"{counts.get('completed', 0)} completed run(s) (excluded: {e(excluded)}).</p>"
        ),
        f"<p>{e(ROW_TEXT)}</p>",
        f"<p>{e(significance_text(report.alpha).replace('**', ''))}</p>",
        *(f'<p class="note">{e(line)}</p>' for line in compared_at_lines(report)),
    ]
    settings = report.settings()
    if report.table.empty:
        body.append(f"<p><strong>{e(empty_text(report))}</strong></p>")
        return _page([*body, *_online_sections(report)])
    body.append("<nav><ul>")
    for n, (_, title, _) in enumerate(settings):
        body.append(f'<li><a href="#setting-{n}">{e(title)}</a></li>')
    if len(report.online):
        body.append('<li><a href="#online">Online adaptation</a></li>')
    body.append('<li><a href="#ranks">Average ranks across settings</a></li>')
    if any(isinstance(k, tuple) and k[0] == "curves" for k in svgs):
        body.append('<li><a href="#curves">Meta-training curves</a></li>')
    body.append("</ul></nav>")
    for n, (key, title, rows) in enumerate(settings):
        body.append(f'<section id="setting-{n}"><h2>{e(title)}</h2>')
        body.append(_leaderboard_table(rows))
        body.append(f'<p class="note">{e(CI_CONVENTION)}</p>')
        pairs = _pairs_for(report.pairs, rows)
        if len(pairs):
            tested = int(pairs["wilcoxon_p"].notna().sum())
            body.append(f"<details open><summary>Paired comparisons ({tested} tested pair(s))</summary>")
            body.append(
                '<p class="note">A − B on the shared episodes (accuracy points, or the metric unit for MSE), '
                "its 95% Student-t CI, Cohen's d_z; two-sided p-values with the Holm-adjusted value in parentheses.</p>"
            )
            header = [h if h != "95% CI of A − B" else "95% CI" for h in PAIR_HEADERS]
            body_rows = []
            for pair in pairs.to_dict("records"):
                cells = pair_cells(pair, report.alpha)
                css = "untested" if pair["note"].startswith("not paired") else ""
                body_rows.append((css, cells))
            body.append(_table(header, body_rows, numeric={3, 4, 5, 6, 7, 8}, nowrap={2}))
            body.append("</details>")
        if ("steps", key) in svgs:
            body.append(f"<figure>{svgs[('steps', key)]}<figcaption>{e(title)}: metric against inner steps at "
                        "evaluation (band: 95% CI over episodes).</figcaption></figure>")  # fmt: skip
        if ("prequential", key) in svgs:
            body.append(f"<figure>{svgs[('prequential', key)]}<figcaption>{e(title)}: prequential evaluation, query metric "
                        "against the support examples seen; the legend gives each online metric (band: 95% CI over "
                        "episodes).</figcaption></figure>")  # fmt: skip
        body.append("</section>")
    body.extend(_online_sections(report))
    body.append('<section id="ranks"><h2>Average ranks across settings</h2>')
    body.append(f"<p>{e(report.across_note)}</p>")
    across = report.across
    if across is not None:
        counts_per = report.across_values.notna().sum(axis=0)
        rank_rows = [("", [name, f"{rank:.2f}", str(int(counts_per.get(name, 0)))]) for name, rank in across.average_ranks.items()]
        body.append(_table(["method", "average rank", "settings"], rank_rows, numeric={1, 2}))
        ordered = list(across.average_ranks.index)
        per_setting = [("", [str(s), *(f"{across.ranks.loc[s, a]:g}" for a in ordered)]) for s in across.ranks.index]
        body.append('<p class="note">Ranks per setting (1 = best; ties share the average rank):</p>')
        body.append(_table(["setting", *ordered], per_setting, numeric=set(range(1, len(ordered) + 1))))
        body.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in across_summary_lines(across)))
        body.append("".join(f"<li>Note: {e(note)}</li>" for note in across.notes) + "</ul>")
        if "cd" in svgs:
            body.append(f"<figure>{svgs['cd']}<figcaption>Critical-difference diagram (Demšar 2006): average ranks, "
                        "1 = best; algorithms joined by a bar are not significantly different by the Nemenyi test."
                        "</figcaption></figure>")  # fmt: skip
        body.append(
            '<p class="note">Pairwise over settings (Benavoli et al. 2016): Wilcoxon signed-rank on the per-setting '
            "results, oriented so that higher is better, Holm-corrected over the pairs.</p>"
        )
        header = ["A", "B", "rank difference", "Nemenyi", "wins / ties / losses of A", "Wilcoxon p (Holm)", "result"]
        body.append(_table(header, [("", across_pair_cells(p, report.alpha)) for p in across.pairwise.to_dict("records")],
                           numeric={2, 4, 5}))  # fmt: skip
    body.append("</section>")
    curve_keys = [k for k in svgs if isinstance(k, tuple) and k[0] == "curves"]
    if curve_keys:
        body.append('<section id="curves"><h2>Meta-training curves</h2>')
        for key in curve_keys:
            body.append(f"<figure>{svgs[key]}<figcaption>{e(key[1])}: mean outer loss and training metric per "
                        "logging window, one line per run.</figcaption></figure>")  # fmt: skip
        body.append("</section>")
    return _page(body)


def _leaderboard_table(rows: pd.DataFrame) -> str:
    header = ["rank", "label", "recipe", "mean", "ci95", "ci95 (t)", "vs best", "inner steps", "episodes", "seeds",
              "seed std", "fingerprint", "notes"]  # fmt: skip
    metric = rows["metric"].iloc[0]
    header[3] = "mean accuracy (%)" if metric == "accuracy" else f"mean {metric}"
    body = []
    for row in rows.to_dict("records"):
        css = {"best": "best", "not significantly different": "tie", "too few episodes to test": "tie"}.get(row["vs_best"], "")
        body.append(
            (
                css,
                [
                    "-" if not math.isfinite(row["rank"]) else f"{row['rank']:g}",
                    row["label"],
                    str(row["recipe_hash"])[:12],
                    format_value(row["mean"], row["metric"]),
                    format_value(row["ci95"], row["metric"]),
                    _optional(row["ci95_t"], row["metric"]),
                    vs_best_text(row),
                    str(row["inner_steps"]),
                    str(row["episodes"]),
                    str(row["seeds"]),
                    _optional(row["seed_std"], row["metric"]),
                    str(row["fingerprint"])[:12],
                    row["notes"],
                ],
            )
        )
    return _table(header, body, numeric={0, 3, 4, 5, 7, 8, 9, 10}, nowrap={2, 6})


def _optional(value: float, metric: str) -> str:
    return "-" if not math.isfinite(value) else format_value(value, metric)


def _table(header: list[str], rows: list[tuple[str, list]], numeric: set[int] = frozenset(), nowrap: set[int] = frozenset()) -> str:
    parts = ['<div class="scroll"><table><thead><tr>']
    parts += [f"<th>{_e(h)}</th>" for h in header]
    parts.append("</tr></thead><tbody>")
    for css, cells in rows:
        parts.append(f'<tr class="{_e(css)}">' if css else "<tr>")
        for i, cell in enumerate(cells):
            css = "num" if i in numeric else ("nowrap" if i in nowrap else "")
            parts.append(f'<td class="{css}">{_e(cell)}</td>' if css else f"<td>{_e(cell)}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _pairs_for(pairs: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    first = rows.iloc[0]
    mask = (pairs["dataset"] == first["dataset"]) & (pairs["split"] == first["split"])
    mask &= (pairs["shots"] == first["shots"]) & (pairs["queries"] == first["queries"])
    mask &= pairs["ways"].isna() if pd.isna(first["ways"]) else pairs["ways"].eq(first["ways"])
    return pairs[mask.fillna(False).astype(bool)]


def _page(body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>metabench leaderboard</title>\n"
        f"<style>\n{_CSS}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _online_sections(report) -> list[str]:
    """The online-adaptation section (``report.online``): each (setting, measure) ranked, with its pairs."""
    if not len(report.online):
        return []
    e = _e
    body = ['<section id="online"><h2>Online adaptation</h2>', f"<p>{e(ONLINE_TEXT.replace('`', ''))}</p>"]
    for (measure, *key), rows in report.online.groupby(["measure", "dataset", "split", "ways", "shots", "queries"], dropna=False, sort=False):
        key = tuple(None if pd.isna(k) else k for k in key)
        body.append(f"<h3>{e(setting_title(*key))}: {e(ONLINE_MEASURE_TITLES.get(measure, measure))}</h3>")
        body.append(_leaderboard_table(rows))
        pairs = pairs_of(report.online_pairs[report.online_pairs["measure"] == measure], key)
        if len(pairs):
            body.append(f"<details><summary>Paired comparisons ({int(pairs['wilcoxon_p'].notna().sum())} tested pair(s))</summary>")
            header = [h if h != "95% CI of A − B" else "95% CI" for h in PAIR_HEADERS]
            body_rows = [("untested" if p["note"].startswith("not paired") else "", pair_cells(p, report.alpha)) for p in pairs.to_dict("records")]
            body.append(_table(header, body_rows, numeric={3, 4, 5, 6, 7, 8}, nowrap={2}))
            body.append("</details>")
    body.append("</section>")
    return body
