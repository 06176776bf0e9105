"""Leaderboards from the results store: tables, paired comparisons, ranks across settings, figures.

Only completed runs are read. Each leaderboard row summarises one algorithm on one evaluation
episode set (dataset, split, ways, shots, queries, fingerprint) at the evaluation's headline
inner-step count, with the few-shot 95% CI ``1.96 * s / sqrt(n)`` over episodes (``s`` with
ddof 0, see :func:`metabench.harness.stats.mean_ci95`) and the Student-t CI beside it. Several
runs of one algorithm on the same episodes (e.g. training seeds) are combined by averaging each
episode's value across the runs first, so the CI is still over episodes; the standard deviation
of the per-seed means is reported as ``seed_std``.

Within a setting, algorithms evaluated on the same episode set (same fingerprint) are compared
pairwise on the per-episode values (:func:`metabench.harness.stats.paired_comparison`): Wilcoxon
signed-rank and paired t p-values, Holm-corrected over all pairs of the setting. The ``vs_best``
column marks the algorithms that are not significantly different from the best one. Results on
different episode sets are never paired; the comparison table says so.

Across settings, the largest complete table of algorithms x episode sets is ranked (Demšar 2006):
average ranks, Friedman and Iman-Davenport tests, the Nemenyi critical difference with its
diagram, and pairwise Wilcoxon tests with Holm's correction
(:func:`metabench.harness.stats.compare_across_settings`).

:func:`write_report` writes ``leaderboard.md``, ``.csv``, ``.tex`` and ``.html`` (self-contained,
figures inline), ``comparisons.csv``, ``across_settings.json`` and ``figures/*.svg|png``;
:func:`write_leaderboard` writes only the markdown and the CSV.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats
from tabulate import tabulate

from metabench.harness.stats import (
    AcrossSettings,
    StatsInputError,
    compare_across_settings,
    holm,
    mean_ci95,
    mean_ci_t,
    paired_comparison,
    seed_summary,
)
from metabench.harness.store import ResultsStore

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.05
"""Family-wise significance level of the paired tests and of the Nemenyi critical difference."""

LEADERBOARD_COLUMNS = (
    "dataset", "split", "ways", "shots", "queries", "algorithm", "metric", "rank", "mean", "ci95",
    "ci95_t", "mean_percent", "ci95_percent", "inner_steps", "episodes", "seeds", "runs", "seed_std",
    "vs_best", "p_vs_best_holm", "fingerprint", "notes",
)  # fmt: skip
"""Columns of :func:`leaderboard_table` and of ``leaderboard.csv``.

``mean``/``ci95`` are in the metric's own unit (accuracy as a fraction in [0, 1]); ``ci95_t`` is
the Student-t half width (ddof 1; NaN for one episode); ``mean_percent``/``ci95_percent`` repeat
mean and ci95 in percent for accuracy and are empty for MSE; ``ways`` is empty for regression;
``rank`` is the position within the setting (1 = best, ties averaged; empty when the mean is not
finite); ``episodes`` is the number of episodes per run; ``seeds`` the number of distinct training
seeds, ``runs`` the number of completed runs in the row and ``seed_std`` the standard deviation
(ddof 1) of the per-seed means (empty for one seed). ``vs_best`` is one of :data:`VS_BEST` and
``p_vs_best_holm`` the Holm-adjusted Wilcoxon p-value of the comparison with the setting's best row.
"""

VS_BEST = {
    "best": "the best mean of the setting",
    "not significantly different": "paired test against the best does not reject (Holm-adjusted Wilcoxon p > alpha)",
    "too few episodes to test": "paired with the best on fewer than 2 episodes: cannot be told apart",
    "significantly worse": "paired test against the best rejects (Holm-adjusted Wilcoxon p <= alpha)",
    "not paired: other episode set": "evaluated on a different episode set (fingerprint) than the best",
    "not ranked: non-finite values": "some episode values are NaN or infinite",
}
"""The values of the ``vs_best`` column and what each means."""

PAIRWISE_COLUMNS = (
    "dataset", "split", "ways", "shots", "queries", "metric", "a", "b", "fingerprint_a", "fingerprint_b",
    "episodes", "mean_difference", "diff_low", "diff_high", "effect_size_dz", "wilcoxon_p",
    "wilcoxon_p_holm", "t_p", "t_p_holm", "significant", "note",
)  # fmt: skip
"""Columns of :func:`pairwise_table` and ``comparisons.csv``: one row per pair of leaderboard rows in a
setting, ``a`` ranked above ``b``; ``mean_difference = mean(a - b)`` over the shared episodes in the
metric's unit, ``[diff_low, diff_high]`` its 95% Student-t CI, ``effect_size_dz`` Cohen's d_z;
p-values are two-sided, Holm-adjusted over the setting's tested pairs; ``note`` says why a pair
was not tested (different episode sets, non-finite values) or what was special about it."""

CI_CONVENTION = (
    "ci95 = 1.96 · s / √n over the n evaluation episodes, s = standard deviation with ddof=0 "
    "(np.std; the few-shot convention of the MAML and Closer-Look code). It measures "
    "episode-sampling noise only, not training-seed variance."
)

_GROUP = ["dataset", "split", "ways", "shots", "queries", "fingerprint", "algorithm", "metric", "headline_steps"]
_SETTING = ["dataset", "split", "ways", "shots", "queries"]


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything a report shows, computed once from a store (see :func:`build_report`).

    Attributes:
        store_path: the store read.
        generated: UTC time of the computation, ``"YYYY-mm-dd HH:MM:SS UTC"``.
        run_counts: run status -> number of runs in the store.
        alpha: significance level used.
        table: leaderboard rows, columns :data:`LEADERBOARD_COLUMNS`, settings in order, best first.
        pairs: within-setting comparisons, columns :data:`PAIRWISE_COLUMNS`.
        steps: metric vs inner steps: setting columns plus ``fingerprint, label, metric,
            inner_steps, mean, ci95``.
        curves: meta-training curves (:meth:`ResultsStore.training_curves`) plus a ``label``.
        across: the across-settings analysis, or ``None`` when there is too little to rank.
        across_values: the table it ranked (rows: episode sets, columns: algorithms), or empty.
        across_note: which settings and algorithms were used or left out, or why nothing was ranked.
    """

    store_path: str
    generated: str
    run_counts: dict
    alpha: float
    table: pd.DataFrame
    pairs: pd.DataFrame
    steps: pd.DataFrame
    curves: pd.DataFrame
    across: AcrossSettings | None
    across_values: pd.DataFrame
    across_note: str

    def settings(self) -> list[tuple[tuple, str, pd.DataFrame]]:
        """``(setting key, title, leaderboard rows)`` for each setting, in order."""
        return [(key, setting_title(*key), rows) for key, rows in _by_setting(self.table)]


def write_report(
    store: ResultsStore,
    out_dir: str | os.PathLike,
    *,
    alpha: float = DEFAULT_ALPHA,
    reproduction: bool = False,
    published=None,
) -> list[Path]:
    """Write the full report to ``out_dir``; returns the paths written.

    Files: ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.tex`` (tables for a paper; needs
    ``\\usepackage{booktabs}``), ``leaderboard.html`` (self-contained: inline CSS and SVG, every
    user string escaped), ``comparisons.csv`` (:data:`PAIRWISE_COLUMNS`), ``across_settings.json``
    (when settings could be ranked) and ``figures/``: ``cd_diagram``, ``steps_<setting>`` and
    ``curves_<dataset>`` as SVG and PNG. With ``reproduction=True`` also ``reproduction.md``
    (:func:`metabench.harness.reproduction.write_reproduction`).

    Args:
        store: the results store; only completed runs are read.
        out_dir: folder to write to; created if missing.
        alpha: significance level of the paired tests and the Nemenyi critical difference.
        reproduction: also write the paper-reproduction table.
        published: published results for the reproduction table: a
            :class:`metabench.harness.reproduction.Published`, the path of a TOML file in the same
            format, or ``None`` for the shipped copy.

    Figures and ``across_settings.json`` left in ``out_dir`` by an earlier report are removed
    first, so a figure never outlives the results it showed.
    """
    from metabench.harness import figures as fig
    from metabench.harness.html import render_html

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(store, alpha=alpha)
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
        steps = _steps_of(report.steps, key)
        if len(steps) and steps.groupby("label")["inner_steps"].nunique().max() >= 2:
            figure = fig.steps_figure(steps, metric=str(steps["metric"].iloc[0]), title=title)
            add_figure(("steps", key), figure, f"steps_{_slug(title)}")
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
    if report.across is not None:
        json_path = out_dir / "across_settings.json"
        payload = {"settings": list(report.across_values.index), **report.across.as_dict(), "note": report.across_note}
        json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        written.insert(5, json_path)
    if reproduction:
        from metabench.harness.reproduction import write_reproduction

        written.append(write_reproduction(store, out_dir, published=published))
    logger.info("Wrote the report (%d row(s), %d file(s)) to %s.", len(report.table), len(written), out_dir)
    return written


_FIGURE_PATTERNS = ("cd_diagram.svg", "cd_diagram.png", "steps_*.svg", "steps_*.png", "curves_*.svg", "curves_*.png")


def _remove_stale_outputs(out_dir: Path) -> None:
    """Delete the figures and JSON an earlier report wrote, so none outlives the data it showed."""
    stale = [out_dir / "across_settings.json", *(p for pattern in _FIGURE_PATTERNS for p in (out_dir / "figures").glob(pattern))]
    for path in stale:
        if path.is_file():
            path.unlink()


def write_leaderboard(store: ResultsStore, out_dir: str | os.PathLike, *, alpha: float = DEFAULT_ALPHA) -> list[Path]:
    """Write ``out_dir/leaderboard.md`` and ``out_dir/leaderboard.csv`` from a store's completed runs.

    The markdown has a header naming the store and the time, then one section per setting
    (dataset, split, ways, shots, queries) with a github-style table sorted best first (accuracy
    descending, MSE ascending), a line under it stating the CI convention, and the paired
    comparisons of the setting; then the average ranks across settings. Accuracy is shown in
    percent with 2 decimals, MSE with 4 significant digits, fingerprints by their first 12
    characters. The CSV holds the same rows with raw numbers and full fingerprints (see
    :data:`LEADERBOARD_COLUMNS`). A store without completed runs gives a leaderboard that says so.
    No figures are drawn; :func:`write_report` writes them and the other formats.

    Args:
        store: the results store to read; failed, interrupted and running runs are ignored.
        out_dir: folder to write to; created if missing.
        alpha: significance level of the paired tests.

    Returns:
        ``[markdown_path, csv_path]``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(store, alpha=alpha)
    md_path = out_dir / "leaderboard.md"
    csv_path = out_dir / "leaderboard.csv"
    md_path.write_text(render_markdown(report), encoding="utf-8")
    report.table.to_csv(csv_path, index=False)
    logger.info("Wrote leaderboard (%d row(s)) to %s and %s.", len(report.table), md_path, csv_path)
    return [md_path, csv_path]


ENSEMBLE_SUFFIX = " (top-k ensemble)"


def label_ensembles(episodes: pd.DataFrame) -> pd.DataFrame:
    """Give checkpoint-ensemble evaluations (``harness.ensemble``) their own algorithm label, so an
    ensemble is ranked beside, never averaged with, its run's last checkpoint."""
    if not len(episodes):
        return episodes
    ensemble = episodes["notes"].fillna("").str.contains('"ensemble": "top-', regex=False)
    if ensemble.any():
        episodes = episodes.copy()
        episodes.loc[ensemble, "algorithm"] = episodes.loc[ensemble, "algorithm"] + ENSEMBLE_SUFFIX
    return episodes


def build_report(store: ResultsStore, *, alpha: float = DEFAULT_ALPHA) -> Report:
    """Read a store's completed runs and compute every table of the report."""
    if not (isinstance(alpha, float) and 0.0 < alpha < 1.0):
        raise ValueError(f"Received alpha={alpha!r}; expected a significance level strictly between 0 and 1, e.g. 0.05.")
    episodes = label_ensembles(store.episode_metrics(completed_only=True))
    table, pairs = _analyse(episodes, alpha)
    across, values, note = across_settings(table, alpha=alpha)
    runs = store.runs()
    counts = runs["status"].value_counts() if len(runs) else pd.Series(dtype=int)
    return Report(
        store_path=str(store.path),
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        run_counts={status: int(counts.get(status, 0)) for status in ("completed", "failed", "interrupted", "running")},
        alpha=alpha,
        table=table,
        pairs=pairs,
        steps=steps_table(episodes),
        curves=_labelled_curves(store.training_curves(completed_only=True)),
        across=across,
        across_values=values,
        across_note=note,
    )


def leaderboard_table(episodes: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
    """Summarise per-episode metrics into leaderboard rows, sorted by setting then best first.

    Args:
        episodes: a frame shaped like :meth:`ResultsStore.episode_metrics` (one row per run,
            evaluation, inner-step count and episode). Only rows at each evaluation's headline
            inner-step count are used; pass completed runs only.
        alpha: significance level of the comparisons behind ``vs_best``.

    Returns:
        One row per (dataset, split, ways, shots, queries, fingerprint, algorithm, metric,
        headline steps), columns :data:`LEADERBOARD_COLUMNS`.
    """
    return _analyse(episodes, alpha)[0]


def pairwise_table(episodes: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
    """Every pair of leaderboard rows within each setting, compared on their shared episodes.

    Pairs on the same episode set (fingerprint) get the mean paired difference with its 95% CI,
    Cohen's d_z, and Wilcoxon signed-rank (zero differences split) and paired t p-values,
    Holm-adjusted over the tested pairs of the setting. Pairs on different episode sets, or with
    non-finite values, are listed untested with the reason in ``note``.

    Returns:
        Columns :data:`PAIRWISE_COLUMNS`, settings in leaderboard order.
    """
    return _analyse(episodes, alpha)[1]


def steps_table(episodes: pd.DataFrame) -> pd.DataFrame:
    """Mean and few-shot 95% CI at every evaluated inner-step count, per leaderboard row.

    Returns:
        One row per (setting, fingerprint, algorithm, metric, headline steps, inner steps) with
        columns ``dataset, split, ways, shots, queries, fingerprint, algorithm, label, metric,
        inner_steps, mean, ci95``; ``label`` is the algorithm, tagged with the fingerprint when
        the setting has several episode sets. Non-finite episodes give NaN.
    """
    columns = [*_SETTING, "fingerprint", "algorithm", "label", "metric", "inner_steps", "mean", "ci95"]
    rows = []
    for key, group in _groups(episodes, _GROUP, ["inner_steps", "eval_id", "episode", "value"]):
        key = dict(zip(_GROUP, key))
        for steps, at_steps in group.groupby("inner_steps", sort=True):
            vector, _ = episode_values(at_steps, key, warn=False)
            finite = vector.size and bool(np.isfinite(vector.to_numpy()).all())
            ci = mean_ci95(vector.to_numpy(), ddof=0) if finite else None
            rows.append(
                {
                    **{name: _plain(key[name]) for name in _SETTING},
                    "fingerprint": key["fingerprint"],
                    "algorithm": key["algorithm"],
                    "label": key["algorithm"],
                    "metric": key["metric"],
                    "inner_steps": int(steps),
                    "mean": ci.mean if ci else math.nan,
                    "ci95": ci.half_width if ci else math.nan,
                    "_headline": int(key["headline_steps"]),
                }
            )
    frame = pd.DataFrame(rows, columns=[*columns, "_headline"])
    for index in frame.groupby(_SETTING, dropna=False, sort=False).groups.values():
        part = frame.loc[index]
        several_sets = part["fingerprint"].nunique() > 1
        several_heads = part.groupby(["fingerprint", "algorithm"])["_headline"].nunique().max() > 1
        if several_sets or several_heads:
            frame.loc[index, "label"] = [
                _label(a, f if several_sets else None, h if several_heads else None)
                for a, f, h in zip(part["algorithm"], part["fingerprint"], part["_headline"])
            ]
    return frame[columns]


def across_settings(table: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA) -> tuple[AcrossSettings | None, pd.DataFrame, str]:
    """Rank the algorithms across settings on the largest complete table the leaderboard allows.

    Rows are episode sets (setting + fingerprint) with at least two algorithms with finite
    means; columns are algorithms; cells are the leaderboard means (MSE rows ranked lower-is-
    better). Demšar's tests need every algorithm on every row, so algorithms are dropped one at
    a time (the one missing from most rows first) and the table with the most cells that has at
    least 2 rows and 2 algorithms is kept. What was left out is said in the note.

    Returns:
        ``(analysis or None, the table ranked, a note for the reader)``.
    """
    finite = table[np.isfinite(table["mean"].to_numpy(dtype=float))] if len(table) else table
    if finite.empty:
        return None, pd.DataFrame(), "No finite results yet; nothing to rank across settings."
    keys = [*_SETTING, "fingerprint", "metric"]
    finite = finite.assign(_row=[_set_label(r) for r in finite.to_dict("records")])
    several = finite.groupby(_SETTING, dropna=False)["fingerprint"].transform("nunique") > 1
    finite.loc[several, "_row"] = finite.loc[several, "_row"] + " [" + finite.loc[several, "fingerprint"].str[:8] + "]"
    finite = finite.drop_duplicates(subset=[*keys, "algorithm"], keep="first")  # best headline-steps variant
    values = finite.pivot_table(index="_row", columns="algorithm", values="mean", aggfunc="first", sort=False)
    lower = finite.drop_duplicates("_row").set_index("_row")["metric"].eq("mse")
    rows, algorithms = _largest_complete_block(values.notna())
    requirement = (
        "Ranking across settings needs at least 2 settings (episode sets) on which the same 2 or more "
        "algorithms have finite results"
    )
    if not rows:
        found = ", ".join(f"{r}: {', '.join(values.columns[values.loc[r].notna()])}" for r in values.index)
        return None, pd.DataFrame(), f"{requirement}; found {len(values)} setting(s) ({found})."
    block = values.loc[rows, algorithms]
    try:
        analysis = compare_across_settings(block, lower_is_better=lower.loc[rows], alpha=alpha)
    except StatsInputError as err:  # defensive: the block is complete by construction
        return None, pd.DataFrame(), f"{requirement}; {err}"
    left_algorithms = [a for a in values.columns if a not in algorithms]
    left_rows = [r for r in values.index if r not in rows]
    note = (
        f"Ranks over {len(rows)} setting(s) x {len(algorithms)} algorithm(s): the largest table in "
        "which every algorithm has a finite result on every setting."
    )
    if left_algorithms:
        note += " Algorithms left out (missing on some of these settings): " + ", ".join(left_algorithms) + "."
    if left_rows:
        note += " Settings left out (not every kept algorithm ran there): " + "; ".join(left_rows) + "."
    return analysis, block, note


def setting_title(dataset, split, ways, shots, queries) -> str:
    """``"omniglot 5-way 1-shot (test split, 15 queries)"``, or ``"sinusoid 5-shot (...)"`` for regression."""
    shape = f"{shots}-shot" if ways is None or pd.isna(ways) else f"{ways}-way {shots}-shot"
    return f"{dataset} {shape} ({split} split, {queries} queries)"


# ----------------------------------------------------------------------------------- analysis


def _analyse(episodes: pd.DataFrame, alpha: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leaderboard rows (with ranks and vs-best marks) and the within-setting pairs."""
    heads = (episodes["inner_steps"] == episodes["headline_steps"]).to_numpy(dtype=bool)
    entries = []
    for key, group in _groups(episodes, _GROUP, ["run_id", "seed", "eval_id", "episode", "value", "notes"], rows=heads):
        key = dict(zip(_GROUP, key))
        entries.append(_summarize(key, group))
    entries.sort(key=lambda entry: _row_order(entry[0]))
    rows = [row for row, _ in entries]
    vectors = [vector for _, vector in entries]
    pairs: list[dict] = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and _setting_key(rows[end]) == _setting_key(rows[start]):
            end += 1
        index = list(range(start, end))
        _label_rows(rows, index)
        _rank_rows(rows, index)
        setting_pairs = _setting_pairs(rows, vectors, index, alpha)
        _mark_vs_best(rows, index, setting_pairs)
        pairs.extend(setting_pairs)
        start = end
    table = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    table["ways"] = table["ways"].astype("Int64")
    pair_frame = pd.DataFrame(pairs, columns=list(PAIRWISE_COLUMNS))
    pair_frame["ways"] = pair_frame["ways"].astype("Int64")
    return table, pair_frame


def _groups(frame: pd.DataFrame, keys: list[str], columns: list[str], rows: np.ndarray | None = None):
    """``(key, group)`` pairs as ``frame[rows].groupby(keys, dropna=False, sort=False)`` yields them,
    each group cut to ``columns``.

    In a frame from :meth:`ResultsStore.episode_metrics` every key is constant within an
    evaluation (``eval_id``), so the evaluations are grouped instead of the rows: the same groups
    with the same keys, in the same order, rows in frame order, in a fraction of the time on a
    sweep-sized store (millions of rows). Frames where that does not hold take the plain groupby.
    """

    def plain():
        subset = frame if rows is None else frame[rows]
        return ((key, group[columns]) for key, group in subset.groupby(keys, dropna=False, sort=False))

    if "eval_id" not in frame.columns or frame.empty:
        yield from plain()
        return
    codes, _ = pd.factorize(frame["eval_id"].to_numpy())  # codes in order of first appearance
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    _, first_start = np.unique(codes[starts], return_index=True)
    evaluations = frame.iloc[starts[first_start]][keys].reset_index(drop=True)  # one row per evaluation
    spread = evaluations.take(codes)
    if not all(frame[k].reset_index(drop=True).equals(spread[k].reset_index(drop=True)) for k in keys):
        yield from plain()
        return
    grouped = evaluations.groupby(keys, dropna=False, sort=False)
    positions = np.arange(len(frame)) if rows is None else np.flatnonzero(rows)
    row_group = grouped.ngroup().to_numpy()[codes][positions]
    order = positions[np.argsort(row_group, kind="stable")]  # by group, frame order within each
    bounds = np.r_[0, np.cumsum(np.bincount(row_group, minlength=grouped.ngroups))]
    keys_of = [key for key, _ in grouped]
    present = [g for g in range(grouped.ngroups) if bounds[g + 1] > bounds[g]]
    present.sort(key=lambda g: order[bounds[g]])  # groups in order of their first row, as groupby has them
    cut = frame[columns]
    for g in present:
        yield keys_of[g], cut.iloc[order[bounds[g] : bounds[g + 1]]]


def episode_values(group: pd.DataFrame, key: dict, *, warn: bool = True) -> tuple[pd.Series, list[str]]:
    """Per-episode values of one algorithm on one episode set, averaged over its runs.

    Args:
        group: rows of :meth:`ResultsStore.episode_metrics` for one (episode set, algorithm,
            metric, inner-step count), possibly from several runs (evaluations).
        key: names the group in the warning: ``algorithm``, ``dataset``, ``fingerprint``.
        warn: log a warning when the runs cover different episodes.

    Returns:
        ``(values, notes)``: a float Series indexed by episode number, restricted to the episodes
        every run covers (NaN where any run recorded NaN), and notes for the reader.
    """
    notes = []
    matrix = group.pivot(index="episode", columns="eval_id", values="value")  # [episodes, evaluations]
    covered = group.groupby("episode")["eval_id"].nunique()
    complete = covered.index[covered == matrix.shape[1]]
    if len(complete) < len(matrix):
        if warn:
            logger.warning(
                "Runs of %s on %s (fingerprint %s) cover different episodes; using the %d of %d "
                "episodes that all of them have.",
                key["algorithm"], key["dataset"], key["fingerprint"], len(complete), len(matrix),
            )  # fmt: skip
        notes.append(f"runs cover different episodes; {len(complete)} shared of {len(matrix)}")
        matrix = matrix.loc[complete]
    vector = pd.Series(matrix.to_numpy(dtype=np.float64).mean(axis=1), index=matrix.index)  # NaN in any run stays NaN
    return vector, notes


def _summarize(key: dict, group: pd.DataFrame) -> tuple[dict, pd.Series]:
    """One leaderboard row and its per-episode vector from the headline-step rows of one group."""
    vector, notes = episode_values(group, key)
    values = vector.to_numpy()
    bad = int((~np.isfinite(values)).sum())
    mean = half_width = half_t = seed_std = math.nan
    if values.size and not bad:
        ci = mean_ci95(values, ddof=0)
        mean, half_width = ci.mean, ci.half_width
        if values.size >= 2:
            half_t = mean_ci_t(values).half_width
        seed_std = _seed_std(group, vector.index)
    else:
        notes.append(f"{bad} of {values.size} episode values are NaN or infinite (diverged?)")
    percent = key["metric"] == "accuracy"
    row = {
        **{name: _plain(key[name]) for name in _SETTING},
        "algorithm": key["algorithm"],
        "metric": key["metric"],
        "rank": math.nan,
        "mean": mean,
        "ci95": half_width,
        "ci95_t": half_t,
        "mean_percent": 100.0 * mean if percent else math.nan,
        "ci95_percent": 100.0 * half_width if percent else math.nan,
        "inner_steps": int(key["headline_steps"]),
        "episodes": int(values.size),
        "seeds": int(group["seed"].nunique()),
        "runs": int(group["run_id"].nunique()),
        "seed_std": seed_std,
        "vs_best": "",
        "p_vs_best_holm": math.nan,
        "fingerprint": key["fingerprint"],
        "notes": "; ".join(text for text in [_format_notes(group["notes"].unique()), *notes] if text),
    }
    return row, vector


def _seed_std(group: pd.DataFrame, episodes: pd.Index) -> float:
    """Standard deviation (ddof 1) of the per-seed means on the shared episodes; NaN for one seed."""
    if group["seed"].nunique() < 2:
        return math.nan
    per_seed = group[group["episode"].isin(episodes)].pivot_table(
        index="seed", columns="episode", values="value", aggfunc="mean"
    )  # [seeds, episodes]: runs of one seed averaged first
    return float(seed_summary(per_seed.to_numpy(dtype=np.float64)).std)


def _label_rows(rows: list[dict], index: list[int]) -> None:
    """Give each row of a setting a unique display label: the algorithm, tagged when ambiguous."""
    several_sets = len({rows[i]["fingerprint"] for i in index}) > 1
    for i in index:
        row = rows[i]
        duplicate_here = sum(
            1 for j in index if rows[j]["algorithm"] == row["algorithm"] and rows[j]["fingerprint"] == row["fingerprint"]
        ) > 1  # fmt: skip
        row["_label"] = _label(
            row["algorithm"], row["fingerprint"] if several_sets else None, row["inner_steps"] if duplicate_here else None
        )


def _label(algorithm: str, fingerprint: str | None, steps: int | None) -> str:
    label = str(algorithm)
    if fingerprint is not None:
        label += f" [{str(fingerprint)[:8]}]"
    if steps is not None:
        label += f" @{steps} steps"
    return label


def _rank_rows(rows: list[dict], index: list[int]) -> None:
    """Rank the rows of one setting by mean (1 = best, ties averaged); non-finite means stay NaN."""
    finite = [i for i in index if math.isfinite(rows[i]["mean"])]
    if not finite:
        return
    scores = np.array([rows[i]["mean"] if rows[i]["metric"] == "mse" else -rows[i]["mean"] for i in finite])
    for i, rank in zip(finite, _scipy_stats.rankdata(scores, method="average")):
        rows[i]["rank"] = float(rank)


def _setting_pairs(rows: list[dict], vectors: list[pd.Series], index: list[int], alpha: float) -> list[dict]:
    """Every pair of rows of one setting (better-ranked first), tested where the episodes are shared."""
    pairs = []
    for position, i in enumerate(index):
        for j in index[position + 1 :]:
            a, b = rows[i], rows[j]
            pair = {
                **{name: a[name] for name in _SETTING},
                "metric": a["metric"],
                "a": a["_label"],
                "b": b["_label"],
                "fingerprint_a": a["fingerprint"],
                "fingerprint_b": b["fingerprint"],
                "episodes": 0,
                **dict.fromkeys(("mean_difference", "diff_low", "diff_high", "effect_size_dz", "wilcoxon_p",
                                 "wilcoxon_p_holm", "t_p", "t_p_holm"), math.nan),
                "significant": False,
                "note": "",
                "_i": i,
                "_j": j,
            }
            pairs.append(pair)
            if a["fingerprint"] != b["fingerprint"]:
                pair["note"] = (
                    f"not paired: different episode sets (fingerprints {str(a['fingerprint'])[:8]} and "
                    f"{str(b['fingerprint'])[:8]}); results on different episodes are never paired"
                )
                continue
            if a["metric"] != b["metric"]:
                pair["note"] = f"not paired: different metrics ({a['metric']} and {b['metric']})"
                continue
            broken = [row["_label"] for row in (a, b) if not math.isfinite(row["mean"])]
            if broken:
                pair["note"] = f"not paired: {' and '.join(broken)} has non-finite episode values"
                continue
            shared = vectors[i].index.intersection(vectors[j].index)
            if len(shared) == 0:
                pair["note"] = "not paired: no episodes in common"
                continue
            result = paired_comparison(vectors[i].loc[shared].to_numpy(), vectors[j].loc[shared].to_numpy())
            notes = [result.note] if result.note else []
            if len(shared) < max(len(vectors[i]), len(vectors[j])):
                notes.append(f"on the {len(shared)} episodes both have")
            pair.update(
                episodes=int(result.n),
                mean_difference=result.mean_difference,
                diff_low=result.ci_low,
                diff_high=result.ci_high,
                effect_size_dz=result.effect_size,
                wilcoxon_p=result.wilcoxon_pvalue,
                t_p=result.t_pvalue,
                note="; ".join(notes),
            )
    if pairs:
        w_holm = holm([p["wilcoxon_p"] for p in pairs])
        t_holm = holm([p["t_p"] for p in pairs])
        for pair, w, t in zip(pairs, w_holm, t_holm):
            pair["wilcoxon_p_holm"], pair["t_p_holm"] = float(w), float(t)
            pair["significant"] = bool(w <= alpha)
    return pairs


def _mark_vs_best(rows: list[dict], index: list[int], pairs: list[dict]) -> None:
    """Fill ``vs_best`` and ``p_vs_best_holm`` of one setting's rows from its pairs."""
    finite = [i for i in index if math.isfinite(rows[i]["mean"])]
    best = finite[0] if finite else None
    by_pair = {(p["_i"], p["_j"]): p for p in pairs}
    for i in index:
        row = rows[i]
        if not math.isfinite(row["mean"]):
            row["vs_best"] = "not ranked: non-finite values"
        elif i == best:
            row["vs_best"] = "best"
        elif row["fingerprint"] != rows[best]["fingerprint"]:
            row["vs_best"] = "not paired: other episode set"
        else:
            pair = by_pair[(min(best, i), max(best, i))]
            p = pair["wilcoxon_p_holm"]
            row["p_vs_best_holm"] = p
            if math.isnan(p):
                row["vs_best"] = "too few episodes to test"
            else:
                row["vs_best"] = "significantly worse" if pair["significant"] else "not significantly different"
    for pair in pairs:
        pair.pop("_i")
        pair.pop("_j")


def _largest_complete_block(present: pd.DataFrame) -> tuple[list, list]:
    """Rows and columns of the complete (all-True) sub-table with the most cells, >= 2 x 2, greedily."""
    coverage = present.sum(axis=0)
    columns = sorted(present.columns, key=lambda c: (-int(coverage[c]), str(c)))
    best_rows, best_columns = [], []
    while len(columns) >= 2:
        part = present[columns]
        rows = list(part.index[part.all(axis=1)])
        if len(rows) >= 2 and len(rows) * len(columns) > len(best_rows) * len(best_columns):
            best_rows, best_columns = rows, list(columns)
        relevant = part[part.sum(axis=1) >= 2]
        missing = (~relevant).sum(axis=0)
        if relevant.empty or int(missing.max()) == 0:
            break
        columns.remove(missing.idxmax())
    return best_rows, best_columns


def _labelled_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Training curves with a ``label`` (the algorithm: one colour per algorithm, one line per run)."""
    return curves.assign(label=curves["algorithm"].astype(str) if len(curves) else pd.Series(dtype=str))


def _steps_of(steps: pd.DataFrame, key: tuple) -> pd.DataFrame:
    dataset, split, ways, shots, queries = key
    mask = (steps["dataset"] == dataset) & (steps["split"] == split) & (steps["shots"] == shots) & (steps["queries"] == queries)
    mask &= steps["ways"].isna() if ways is None else steps["ways"].eq(ways)
    return steps[mask.fillna(False).astype(bool)]


def _by_setting(table: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    groups = []
    for key, rows in table.groupby(_SETTING, dropna=False, sort=False):
        dataset, split, ways, shots, queries = key
        groups.append(((dataset, split, None if pd.isna(ways) else int(ways), int(shots), int(queries)), rows))
    return groups


def _set_label(row: dict) -> str:
    ways = row["ways"]
    shape = f"{row['shots']}-shot" if ways is None or pd.isna(ways) else f"{ways}-way {row['shots']}-shot"
    return f"{row['dataset']} {shape} ({row['split']}, {row['queries']} q)"


def _plain(value):
    """numpy / pandas scalars as plain Python values; ``<NA>`` as ``None``."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _format_notes(notes_json: np.ndarray) -> str:
    """Notes of the runs in a row as ``"key: value; ..."``; differing notes joined by ``" / "``."""
    texts = []
    for text in notes_json:
        notes = json.loads(text) if text else {}
        formatted = "; ".join(f"{k}: {v}" for k, v in sorted(notes.items()))
        if formatted and formatted not in texts:
            texts.append(formatted)
    return " / ".join(texts)


def _setting_key(row: dict) -> tuple:
    ways = row["ways"]
    return (row["dataset"], row["split"], ways is None, ways or 0, row["shots"], row["queries"])


def _row_order(row: dict) -> tuple:
    mean = row["mean"]
    score = mean if row["metric"] == "mse" else -mean  # best first: low MSE, high accuracy
    return (*_setting_key(row), row["metric"], math.isnan(score), 0.0 if math.isnan(score) else score, row["algorithm"])


def _slug(text: str) -> str:
    """A file-name-safe, collision-resistant version of a user string."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:60] or "x"
    return f"{cleaned}_{hashlib.sha1(text.encode('utf-8')).hexdigest()[:6]}"


# ----------------------------------------------------------------------------------- formatting


def format_value(value: float, metric: str) -> str:
    """Accuracy fraction as percent with 2 decimals, anything else with 4 significant digits."""
    return f"{100.0 * value:.2f}" if metric == "accuracy" else f"{value:#.4g}"


def format_p(p: float) -> str:
    """A p-value for a table: ``"<0.001"``, 2 significant digits, or ``"-"`` when not computed."""
    if p is None or not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def p_text(p: float) -> str:
    """``"p < 0.001"`` or ``"p = 0.43"`` for prose and table cells."""
    text = format_p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def vs_best_text(row: dict) -> str:
    """The short text of a row's ``vs_best`` mark, with its p-value."""
    mark, p = row["vs_best"], row["p_vs_best_holm"]
    if mark == "not significantly different":
        return f"≈ best ({p_text(p)})"
    if mark == "significantly worse":
        return f"worse ({p_text(p)})"
    if mark == "too few episodes to test":
        return "≈ best (too few episodes to test)"
    if mark == "not ranked: non-finite values":
        return "-"
    return mark


def significance_text(alpha: float) -> str:
    """The paragraph that explains ``vs best`` and the paired comparisons."""
    return (
        f"**vs best**: each algorithm against the setting's best one on the same episodes (same "
        f"fingerprint): Wilcoxon signed-rank test on the per-episode differences (zero differences "
        f"split between the signs, Demšar 2006), Holm-corrected over all pairs of the setting, "
        f"alpha = {alpha:g}. \"≈ best\" = not significantly different from the best. Results on different "
        "episode sets are never paired. **ci95 (t)** is the Student-t interval (ddof 1); **seed std** "
        "the standard deviation (ddof 1) of the per-seed means, i.e. training-seed variability."
    )


_MD_HEADERS = [
    "rank", "dataset", "ways", "shots", "queries", "algorithm", "metric", "mean", "ci95", "ci95 (t)",
    "vs best", "inner steps", "episodes", "seeds", "seed std", "runs", "fingerprint", "notes",
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
        _md(row["algorithm"]),
        "accuracy (%)" if metric == "accuracy" else _md(metric),
        number(row["mean"]),
        number(row["ci95"]),
        optional(row["ci95_t"]),
        _md(vs_best_text(row)),
        str(row["inner_steps"]),
        str(row["episodes"]),
        str(row["seeds"]),
        optional(row["seed_std"]),
        str(row["runs"]),
        _md(str(row["fingerprint"])[:12]),
        _md(row["notes"]),
    ]


_MD_PAIR_HEADERS = ["A", "B", "episodes", "A − B", "95% CI of A − B", "d_z", "Wilcoxon p (Holm)", "t p (Holm)", "result"]


def pair_cells(pair: dict, alpha: float) -> list[str]:
    """Display cells of one within-setting pair (plain text; escape for the target format)."""
    metric = pair["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    unit_format = "{:+.2f}" if metric == "accuracy" else "{:+.4g}"
    tested = math.isfinite(pair["wilcoxon_p"]) or math.isfinite(pair["t_p"])
    if pair["note"].startswith("not paired"):
        return [pair["a"], pair["b"], "-", "-", "-", "-", "-", "-", pair["note"]]
    difference = unit_format.format(scale * pair["mean_difference"])
    if math.isfinite(pair["diff_low"]):
        interval = f"[{unit_format.format(scale * pair['diff_low'])}, {unit_format.format(scale * pair['diff_high'])}]"
    else:
        interval = "-"
    dz = pair["effect_size_dz"]
    effect = "-" if math.isnan(dz) else ("±inf" if math.isinf(dz) else f"{dz:+.2f}")
    if not tested:
        result = "not tested: " + (pair["note"] or "too few episodes")
    elif pair["significant"]:
        result = f"different at alpha = {alpha:g}"
    else:
        result = "not significantly different"
    if tested and pair["note"]:
        result += f" ({pair['note']})"
    return [
        pair["a"], pair["b"], str(pair["episodes"]), difference, interval, effect,
        f"{format_p(pair['wilcoxon_p'])} ({format_p(pair['wilcoxon_p_holm'])})",
        f"{format_p(pair['t_p'])} ({format_p(pair['t_p_holm'])})", result,
    ]  # fmt: skip


def across_summary_lines(across: AcrossSettings) -> list[str]:
    """Plain-text lines with the Friedman, Iman-Davenport and Nemenyi numbers."""
    f = across.friedman
    ff = "inf" if math.isinf(f.iman_davenport_F) else f"{f.iman_davenport_F:.3f}"
    lines = [
        f"Friedman chi-square = {f.statistic:.3f} (df = {f.k - 1}), {p_text(f.pvalue)}",
        f"Iman-Davenport F_F = {ff} (df = {f.k - 1}, {(f.k - 1) * (f.n - 1)}), {p_text(f.iman_davenport_pvalue)}",
        (
            f"Nemenyi critical difference CD = {across.q_alpha:.3f} · √(k(k+1)/(6N)) = {across.cd:.3f} "
            f"(k = {f.k}, N = {f.n}, alpha = {across.alpha:g})"
        ),
    ]
    if across.groups:
        lines.append("Not significantly different by Nemenyi (joined in the diagram): "
                     + "; ".join("{" + ", ".join(g) + "}" for g in across.groups))  # fmt: skip
    else:
        lines.append("Nemenyi: every pair of algorithms differs by at least CD.")
    return lines


ACROSS_PAIR_HEADERS = ["A", "B", "rank difference", "Nemenyi", "wins / ties / losses of A", "Wilcoxon p (Holm)", "result"]


def across_pair_cells(pair: dict, alpha: float) -> list[str]:
    """Display cells of one across-settings pair (plain text)."""
    return [
        pair["a"],
        pair["b"],
        f"{pair['rank_difference']:.2f}",
        "different" if pair["nemenyi_significant"] else "-",
        f"{pair['wins']} / {pair['ties']} / {pair['losses']}",
        f"{format_p(pair['wilcoxon_p'])} ({format_p(pair['wilcoxon_p_holm'])})",
        f"different at alpha = {alpha:g}" if pair["wilcoxon_significant"] else "not significantly different",
    ]


def render_markdown(report: Report, figures: dict | None = None) -> str:
    """The leaderboard as markdown; ``figures`` maps figure keys to paths relative to the file."""
    figures = figures or {}
    counts = report.run_counts
    excluded = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("failed", "interrupted", "running"))
    parts = [
        "# metabench leaderboard\n\n"
        f"Generated {report.generated} from results store `{_md(report.store_path)}`: "
        f"{counts.get('completed', 0)} completed run(s) (excluded: {excluded}).\n\n"
        "Each row is one algorithm on one evaluation episode set (fingerprint) at the evaluation's "
        "headline inner-step count; accuracy is in percent, MSE in the task's units. When a row has "
        "several runs (e.g. seeds), each episode's value is first averaged across the runs (same "
        "fingerprint = same episodes), then the mean and CI are taken over the episodes.\n\n"
        + significance_text(report.alpha)
        + "\n"
    ]
    if report.table.empty:
        parts.append("\nNo completed runs with evaluations in this store yet; nothing to rank.\n")
        return "\n".join(parts)
    for key, title, rows in report.settings():
        parts.append(f"\n## {_md(title)}\n")
        cells = [_md_cells(row) for row in rows.to_dict("records")]
        parts.append(tabulate(cells, headers=_MD_HEADERS, tablefmt="github", disable_numparse=True))
        parts.append(f"\n{CI_CONVENTION}\n")
        pairs = _pairs_of(report.pairs, key)
        if len(pairs):
            tested = int(np.isfinite(pairs["wilcoxon_p"].to_numpy(dtype=float)).sum())
            parts.append(
                f"Paired comparisons ({tested} tested pair(s); A − B in "
                f"{'accuracy points' if rows['metric'].iloc[0] == 'accuracy' else 'the metric unit'}; "
                "95% CI Student-t; d_z = Cohen's paired effect size; p-values two-sided, Holm-adjusted "
                "in parentheses):\n"
            )
            pair_rows = [[_md(c) for c in pair_cells(p, report.alpha)] for p in pairs.to_dict("records")]
            parts.append(tabulate(pair_rows, headers=_MD_PAIR_HEADERS, tablefmt="github", disable_numparse=True))
        if ("steps", key) in figures:
            parts.append(f"\n![{_md_alt(title)}: metric vs inner steps]({figures[('steps', key)]})\n")
    parts.append("\n## Average ranks across settings\n")
    parts.append(_md(report.across_note) + "\n")
    across = report.across
    if across is not None:
        counts_per = report.across_values.notna().sum(axis=0)
        rank_rows = [[_md(name), f"{rank:.2f}", str(int(counts_per.get(name, 0)))] for name, rank in across.average_ranks.items()]
        parts.append(tabulate(rank_rows, headers=["algorithm", "average rank", "settings"], tablefmt="github", disable_numparse=True))
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


def _pairs_of(pairs: pd.DataFrame, key: tuple) -> pd.DataFrame:
    dataset, split, ways, shots, queries = key
    mask = (pairs["dataset"] == dataset) & (pairs["split"] == split) & (pairs["shots"] == shots) & (pairs["queries"] == queries)
    mask &= pairs["ways"].isna() if ways is None else pairs["ways"].eq(ways)
    return pairs[mask.fillna(False).astype(bool)]


def _md(text: object) -> str:
    """A user string made safe for one markdown table cell: ``|`` escaped, newlines as spaces."""
    return " ".join(str(text).split("\n")).replace("|", "\\|")


def _md_alt(text: str) -> str:
    return _md(text).replace("[", "(").replace("]", ")")


# ----------------------------------------------------------------------------------- LaTeX

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
        f"% metabench leaderboard, generated {report.generated} from {tex_escape(report.store_path)}.",
        "% Needs \\usepackage{booktabs}. Bold: the best mean and those not significantly different from it",
        f"% (paired Wilcoxon signed-rank on the same episodes, Holm-corrected, alpha = {report.alpha:g}).",
        "",
    ]
    if report.table.empty:
        lines.append("% No completed runs with evaluations in this store yet.")
        return "\n".join(lines) + "\n"
    for key, title, rows in report.settings():
        metric = rows["metric"].iloc[0]
        unit = "accuracy (\\%)" if metric == "accuracy" else tex_escape(metric)
        lines += [
            "\\begin{table}[ht]",
            "\\centering",
            (
                f"\\caption{{{tex_escape(title)}: mean {unit} with the 95\\% CI over episodes "
                f"($1.96\\,s/\\sqrt{{n}}$); bold = best or not significantly different from it.}}"
            ),
            "\\begin{tabular}{rlrrrrl}",
            "\\toprule",
            "Rank & Algorithm & Mean & CI95 & Episodes & Seeds & vs best \\\\",
            "\\midrule",
        ]
        for row in rows.to_dict("records"):
            mean = format_value(row["mean"], metric)
            if row["vs_best"] in ("best", "not significantly different", "too few episodes to test"):
                mean = f"\\textbf{{{mean}}}"
            rank = "--" if not math.isfinite(row["rank"]) else f"{row['rank']:g}"
            mark = tex_escape(vs_best_text(row)).replace("≈", "$\\approx$").replace("\\textless{}", "$<$")
            lines.append(
                f"{rank} & {tex_escape(row['algorithm'])} & {mean} & {format_value(row['ci95'], metric)} & "
                f"{row['episodes']} & {row['seeds']} & {mark} \\\\"
            )
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    across = report.across
    if across is not None:
        f = across.friedman
        ff = "\\infty" if math.isinf(f.iman_davenport_F) else f"{f.iman_davenport_F:.2f}"
        lines += [
            "\\begin{table}[ht]",
            "\\centering",
            (
                f"\\caption{{Average ranks over {f.n} settings (1 = best). Friedman $\\chi^2_F = {f.statistic:.2f}$, "
                f"${p_text(f.pvalue)}$; Iman--Davenport $F_F = {ff}$, ${p_text(f.iman_davenport_pvalue)}$; "
                f"Nemenyi $CD = {across.cd:.2f}$ at $\\alpha = {across.alpha:g}$.}}"
            ),
            "\\begin{tabular}{lr}",
            "\\toprule",
            "Algorithm & Average rank \\\\",
            "\\midrule",
        ]
        lines += [f"{tex_escape(name)} & {rank:.2f} \\\\" for name, rank in across.average_ranks.items()]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)
