"""The report's files, written from a store's completed runs (``metabench report``).

:func:`write_report` writes ``leaderboard.md``, ``.csv``, ``.tex`` and ``.html`` (self-contained,
figures inline), ``comparisons.csv``, ``across_settings.json`` and ``figures/*.svg|png``, and with
``reproduction=True`` ``reproduction.md``, and with prequential results ``prequential.csv`` and a
``figures/prequential_<setting>`` figure per setting, with online results (prequential or the drifting
stream) ``online.csv`` and ``online_comparisons.csv``; :func:`write_leaderboard` writes only the markdown and
the CSV. What the tables hold is computed by :func:`metabench.harness.analysis.leaderboard.build_report`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from metabench.harness.analysis import figures as fig
from metabench.harness.analysis.html import render_html
from metabench.harness.analysis.latex import render_tex
from metabench.harness.analysis.leaderboard import DEFAULT_ALPHA, build_report, steps_of
from metabench.harness.analysis.markdown import render_markdown
from metabench.harness.analysis.reproduction import write_reproduction
from metabench.harness.results.store import ResultsStore

logger = logging.getLogger(__name__)


def write_report(
    store: ResultsStore,
    out_dir: str | os.PathLike,
    *,
    alpha: float = DEFAULT_ALPHA,
    reproduction: bool = False,
    published=None,
    steps: int | None = None,
    source: str | None = None,
) -> list[Path]:
    """Write the full report to ``out_dir``; returns the paths written.

    Files: ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.tex`` (tables for a paper; needs
    ``\\usepackage{booktabs}``), ``leaderboard.html`` (self-contained: inline CSS and SVG, every
    user string escaped), ``comparisons.csv`` (:data:`~metabench.harness.analysis.leaderboard.PAIRWISE_COLUMNS`), ``across_settings.json``
    (when settings could be ranked) and ``figures/``: ``cd_diagram``, ``steps_<setting>`` and
    ``curves_<dataset>`` as SVG and PNG. When the store holds prequential results
    (``evaluation.prequential``): ``prequential.csv``
    (:data:`~metabench.harness.analysis.leaderboard.PREQUENTIAL_COLUMNS`) and
    ``figures/prequential_<setting>``, the query metric against the examples seen. With ``reproduction=True`` also ``reproduction.md``
    (:func:`metabench.harness.analysis.reproduction.write_reproduction`).

    Args:
        store: the results store; only completed runs are read.
        out_dir: folder to write to; created if missing.
        alpha: significance level of the paired tests and the Nemenyi critical difference.
        reproduction: also write the paper-reproduction table.
        published: published results for the reproduction table: a
            :class:`metabench.harness.analysis.reproduction.Published`, the path of a TOML file in the same
            format, or ``None`` for the shipped copy.
        steps: compare every recipe at this inner-step count instead of its headline one
            (recipes that did not record it are left out, see
            :func:`~metabench.harness.analysis.leaderboard.build_report`).
        source: how the files name where the runs came from (default: the store's path).

    Figures and ``across_settings.json`` left in ``out_dir`` by an earlier report are removed
    first, so a figure never outlives the results it showed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(store, alpha=alpha, steps=steps, source=source)
    _remove_stale_outputs(out_dir)
    written: list[Path] = []
    figure_paths: dict = {}
    svgs: dict = {}

    def add_figure(key, figure, stem: str) -> None:
        svg = fig.svg_text(figure)  # rendered once: the .svg file and the HTML's inline copy
        paths = fig.save_figure(figure, out_dir / "figures" / stem, svg=svg)
        written.extend(paths)
        figure_paths[key] = paths[0].relative_to(out_dir).as_posix()
        svgs[key] = fig.svg_markup(svg)

    if report.across is not None:
        across = report.across
        title = f"Average ranks over {across.friedman.n} settings (CD at alpha = {alpha:g})"
        add_figure("cd", fig.cd_diagram(across.average_ranks, across.cd, groups=across.groups, title=title), "cd_diagram")
    for key, title, _ in report.settings():
        steps = steps_of(report.steps, key)
        if len(steps) and steps.groupby("label")["inner_steps"].nunique().max() >= 2:
            figure = fig.steps_figure(steps, metric=str(steps["metric"].iloc[0]), title=title)
            add_figure(("steps", key), figure, f"steps_{_slug(title)}")
        curve = steps_of(report.prequential, key)
        if len(curve):  # prequential results: query metric against examples seen, online metric in the legend
            figure = fig.prequential_figure(curve, metric=str(curve["metric"].iloc[0]), title=f"{title}: prequential")
            add_figure(("prequential", key), figure, f"prequential_{_slug(title)}")
    for dataset, curves in report.curves.groupby("dataset", sort=False):
        if len(curves):
            figure = fig.learning_curves_figure(curves, title=f"{dataset}: meta-training", metric_name="training metric")
            add_figure(("curves", dataset), figure, f"curves_{_slug(str(dataset))}")

    md_path, csv_path = out_dir / "leaderboard.md", out_dir / "leaderboard.csv"
    md_path.write_text(render_markdown(report, figure_paths), encoding="utf-8")
    report.table.to_csv(csv_path, index=False)
    tex_path = out_dir / "leaderboard.tex"
    tex_path.write_text(render_tex(report), encoding="utf-8")
    html_path = out_dir / "leaderboard.html"
    html_path.write_text(render_html(report, svgs), encoding="utf-8")
    pairs_path = out_dir / "comparisons.csv"
    report.pairs.to_csv(pairs_path, index=False)
    written = [md_path, csv_path, tex_path, html_path, pairs_path, *written]
    if len(report.prequential):
        prequential_path = out_dir / "prequential.csv"
        report.prequential.to_csv(prequential_path, index=False)
        written.append(prequential_path)
    if len(report.online):
        for name, frame in (("online.csv", report.online), ("online_comparisons.csv", report.online_pairs)):
            frame.to_csv(out_dir / name, index=False)
            written.append(out_dir / name)
    if report.across is not None:
        json_path = out_dir / "across_settings.json"
        payload = {"settings": list(report.across_values.index), **report.across.as_dict(), "note": report.across_note}
        json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.insert(5, json_path)
    if reproduction:
        written.append(write_reproduction(store, out_dir, published=published, source=source))
    logger.info("Wrote the report (%d row(s), %d file(s)) to %s.", len(report.table), len(written), out_dir)
    return written


_FIGURE_PATTERNS = (
    "cd_diagram.svg", "cd_diagram.png", "steps_*.svg", "steps_*.png", "curves_*.svg", "curves_*.png",
    "prequential_*.svg", "prequential_*.png",
)


def _remove_stale_outputs(out_dir: Path) -> None:
    """Delete the figures and JSON an earlier report wrote, so none outlives the data it showed."""
    stale = [out_dir / "across_settings.json", out_dir / "prequential.csv", out_dir / "online.csv", out_dir / "online_comparisons.csv", *(p for pattern in _FIGURE_PATTERNS for p in (out_dir / "figures").glob(pattern))]
    for path in stale:
        if path.is_file():
            path.unlink()


def write_leaderboard(
    store: ResultsStore, out_dir: str | os.PathLike, *, alpha: float = DEFAULT_ALPHA, steps: int | None = None
) -> list[Path]:
    """Write ``out_dir/leaderboard.md`` and ``out_dir/leaderboard.csv`` from a store's completed runs.

    The markdown has a header naming the store and the time, then one section per setting
    (dataset, split, ways, shots, queries) with a github-style table sorted best first (accuracy
    descending, MSE ascending), a line under it stating the CI convention, and the paired
    comparisons of the setting; then the average ranks across settings. Accuracy is shown in
    percent with 2 decimals, MSE with 4 significant digits, fingerprints by their first 12
    characters. The CSV holds the same rows with raw numbers and full fingerprints (see
    :data:`~metabench.harness.analysis.leaderboard.LEADERBOARD_COLUMNS`). A store without completed runs gives a leaderboard that says so.
    No figures are drawn; :func:`write_report` writes them and the other formats.

    Args:
        store: the results store to read; failed, interrupted and running runs are ignored.
        out_dir: folder to write to; created if missing.
        alpha: significance level of the paired tests.
        steps: compare every recipe at this inner-step count (see
            :func:`~metabench.harness.analysis.leaderboard.build_report`).

    Returns:
        ``[markdown_path, csv_path]``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(store, alpha=alpha, steps=steps)
    md_path = out_dir / "leaderboard.md"
    csv_path = out_dir / "leaderboard.csv"
    md_path.write_text(render_markdown(report), encoding="utf-8")
    report.table.to_csv(csv_path, index=False)
    logger.info("Wrote leaderboard (%d row(s)) to %s and %s.", len(report.table), md_path, csv_path)
    return [md_path, csv_path]


def _slug(text: str) -> str:
    """A file-name-safe, collision-resistant version of a user string."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:60] or "x"
    return f"{cleaned}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:6]}"
