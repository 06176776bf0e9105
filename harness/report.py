"""Leaderboards from the results store: tables, paired comparisons, ranks across settings, figures.

Only completed runs are read. Each leaderboard row summarises one *recipe* (the resolved config
without its training seed and display keys, :func:`metabench.harness.config.recipe_hash`) on one
evaluation episode set (dataset, split, ways, shots, queries, fingerprint) at the evaluation's
headline inner-step count, with the few-shot 95% CI ``1.96 * s / sqrt(n)`` over episodes (``s``
with ddof 0, see :func:`metabench.harness.stats.mean_ci95`) and the Student-t CI beside it. Runs
pool only within one recipe, as its training seeds: each seed's per-episode values first (repeated
runs of one seed count once; repeats that differ are reported as a determinism failure), then
each episode's value averaged across the seeds, so the CI is still over episodes; the standard
deviation of the per-seed means is reported as ``seed_std``.

Each row is labelled with its algorithm plus what sets its recipe apart from the other recipes of
that algorithm in its setting (``maml (first_order=true)``, ``maml (inner_lr=0.1)``), or with the
config's ``label`` key when it has one; the recipe hash is shown beside the label.

Within a setting, rows evaluated on the same episode set (same fingerprint) are compared pairwise
on the per-episode values (:func:`metabench.harness.stats.paired_comparison`): Wilcoxon
signed-rank and paired t p-values, Holm-corrected over all pairs of the setting. The ``vs_best``
column marks the rows that are not significantly different from the best one. Results on
different episode sets are never paired; the comparison table says so. A pair evaluated at
different headline inner-step counts says so in its own row; ``steps=N`` (``metabench report
--steps N``) compares every recipe at inner step ``N`` instead.

Across settings, the largest complete table of methods (leaderboard labels) x episode sets is
ranked (Demšar 2006): average ranks, Friedman and Iman-Davenport tests (or why they were not
computed), the Nemenyi critical difference with its diagram, and pairwise Wilcoxon tests with
Holm's correction (:func:`metabench.harness.stats.compare_across_settings`).

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
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats
from tabulate import tabulate

from metabench.harness.config import HASH_NEUTRAL, recipe_view
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
    "dataset", "split", "ways", "shots", "queries", "label", "algorithm", "recipe_hash", "metric", "rank",
    "mean", "ci95", "ci95_t", "mean_percent", "ci95_percent", "inner_steps", "episodes", "seeds", "seed_std",
    "vs_best", "p_vs_best_holm", "fingerprint", "notes",
)  # fmt: skip
"""Columns of :func:`leaderboard_table` and of ``leaderboard.csv``.

``label`` names the row: the algorithm plus the recipe keys that set it apart from the other
recipes of that algorithm in the setting (``maml (first_order=true)``), or the config's ``label``;
unique within a setting. ``algorithm`` is the registered name (``" (top-k ensemble)"`` appended
for a checkpoint ensemble) and ``recipe_hash`` the full recipe hash (the markdown, HTML and LaTeX
show its first 12 characters). ``mean``/``ci95`` are in the metric's own unit (accuracy as a
fraction in [0, 1]); ``ci95_t`` is the Student-t half width (ddof 1; NaN for one episode);
``mean_percent``/``ci95_percent`` repeat mean and ci95 in percent for accuracy and are empty for
MSE; ``ways`` is empty for regression; ``rank`` is the position within the setting (1 = best, ties
averaged; empty when the mean is not finite); ``inner_steps`` the headline inner-step count the
row reports; ``episodes`` the number of episodes; ``seeds`` the number of distinct training seeds
pooled (repeated runs of a seed count once) and ``seed_std`` the standard deviation (ddof 1) of the
per-seed means (empty for one seed). ``vs_best`` is one of :data:`VS_BEST` and ``p_vs_best_holm``
the Holm-adjusted Wilcoxon p-value of the comparison with the setting's best row. ``notes`` holds
the evaluation notes and what the reader must know: determinism failures, episodes not shared by
every seed, a comparison with the best at different inner steps.
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
    "dataset", "split", "ways", "shots", "queries", "metric", "a", "b", "recipe_a", "recipe_b",
    "fingerprint_a", "fingerprint_b", "inner_steps_a", "inner_steps_b", "episodes", "mean_difference",
    "diff_low", "diff_high", "effect_size_dz", "wilcoxon_p", "wilcoxon_p_holm", "t_p", "t_p_holm",
    "significant", "note",
)  # fmt: skip
"""Columns of :func:`pairwise_table` and ``comparisons.csv``: one row per pair of leaderboard rows in a
setting, ``a`` ranked above ``b`` (their labels, recipe hashes, fingerprints and headline inner
steps); ``mean_difference = mean(a - b)`` over the shared episodes in the metric's unit,
``[diff_low, diff_high]`` its 95% Student-t CI, ``effect_size_dz`` Cohen's d_z; p-values are
two-sided, Holm-adjusted over the setting's tested pairs; ``note`` says why a pair was not tested
(different episode sets, non-finite values) or what was special about it, starting with
``steps A vs B`` when the two rows were evaluated at different inner-step counts."""

CI_CONVENTION = (
    "ci95 = 1.96 · s / √n over the n evaluation episodes, s = standard deviation with ddof=0 "
    "(np.std; the few-shot convention of the MAML and Closer-Look code). It measures "
    "episode-sampling noise only, not training-seed variance."
)

_GROUP = [
    "dataset", "split", "ways", "shots", "queries", "fingerprint", "recipe_hash", "algorithm", "metric", "headline_steps",
]  # fmt: skip
_SETTING = ["dataset", "split", "ways", "shots", "queries"]
LABEL_KEYS = 3
"""Recipe keys a label shows at most; more differing keys are summarised as ``+N``."""


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything a report shows, computed once from a store (see :func:`build_report`).

    Attributes:
        store_path: where the runs came from (the store's path, or the bundles' folder).
        generated: finish time of the newest completed run, ``"YYYY-mm-dd HH:MM:SS UTC"`` (see
            :func:`results_as_of`).
        run_counts: run status -> number of runs in the store.
        alpha: significance level used.
        table: leaderboard rows, columns :data:`LEADERBOARD_COLUMNS`, settings in order, best first.
        pairs: within-setting comparisons, columns :data:`PAIRWISE_COLUMNS`.
        steps: metric vs inner steps (:func:`steps_table`).
        curves: meta-training curves (:meth:`ResultsStore.training_curves`) with ``label``
            replaced by the run's leaderboard label (one colour per recipe).
        across: the across-settings analysis, or ``None`` when there is too little to rank.
        across_values: the table it ranked (rows: episode sets, columns: methods), or empty.
        across_note: which settings and methods were used or left out, or why nothing was ranked.
        compared_at: the inner-step count every row reports (``steps=N``), or ``None``: each
            evaluation's headline count.
        left_out: with ``compared_at``, one line per recipe left out for not recording that count.
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
    compared_at: int | None = None
    left_out: tuple = ()

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
    steps: int | None = None,
    source: str | None = None,
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
        steps: compare every recipe at this inner-step count instead of its headline one
            (recipes that did not record it are left out, see :func:`build_report`).
        source: how the files name where the runs came from (default: the store's path).

    Figures and ``across_settings.json`` left in ``out_dir`` by an earlier report are removed
    first, so a figure never outlives the results it showed.
    """
    from metabench.harness import figures as fig
    from metabench.harness.html import render_html

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

        written.append(write_reproduction(store, out_dir, published=published, source=source))
    logger.info("Wrote the report (%d row(s), %d file(s)) to %s.", len(report.table), len(written), out_dir)
    return written


_FIGURE_PATTERNS = ("cd_diagram.svg", "cd_diagram.png", "steps_*.svg", "steps_*.png", "curves_*.svg", "curves_*.png")


def _remove_stale_outputs(out_dir: Path) -> None:
    """Delete the figures and JSON an earlier report wrote, so none outlives the data it showed."""
    stale = [out_dir / "across_settings.json", *(p for pattern in _FIGURE_PATTERNS for p in (out_dir / "figures").glob(pattern))]
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
    :data:`LEADERBOARD_COLUMNS`). A store without completed runs gives a leaderboard that says so.
    No figures are drawn; :func:`write_report` writes them and the other formats.

    Args:
        store: the results store to read; failed, interrupted and running runs are ignored.
        out_dir: folder to write to; created if missing.
        alpha: significance level of the paired tests.
        steps: compare every recipe at this inner-step count (see :func:`build_report`).

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


def build_report(
    store: ResultsStore, *, alpha: float = DEFAULT_ALPHA, steps: int | None = None, source: str | None = None
) -> Report:
    """Read a store's completed runs and compute every table of the report.

    The report is a function of the runs alone (it is dated by its newest completed run, not by
    the clock), so rendering the same runs twice gives the same files byte for byte.

    Args:
        store: the results store; only completed runs are read.
        source: how the header names where the runs came from (default: the store's path), e.g.
            the bundle folder ``reports/runs`` of ``metabench report --from``.
        alpha: significance level of the paired tests and the Nemenyi critical difference.
        steps: ``None``: each row reports its evaluation's headline inner-step count. An integer
            ``N``: every row reports inner step ``N``, so rows compare at equal steps; evaluations
            that did not record ``N`` are left out (a warning and ``Report.left_out`` name them).
    """
    _build_report_iv(alpha, steps)
    episodes = label_ensembles(store.episode_metrics(completed_only=True))
    left_out: list[str] = []
    if steps is not None:
        episodes, left_out = at_inner_steps(episodes, steps)
    runs = store.runs()
    recipes = recipe_views(runs)
    table, pairs, labels = _analyse(episodes, alpha, recipes)
    across, values, note = across_settings(table, alpha=alpha)
    counts = runs["status"].value_counts() if len(runs) else pd.Series(dtype=int)
    return Report(
        store_path=source or str(store.path),
        generated=results_as_of(runs),
        run_counts={status: int(counts.get(status, 0)) for status in ("completed", "failed", "interrupted", "running")},
        alpha=alpha,
        table=table,
        pairs=pairs,
        steps=_steps_table(episodes, labels),
        curves=_labelled_curves(store.training_curves(completed_only=True), table),
        across=across,
        across_values=values,
        across_note=note,
        compared_at=steps,
        left_out=tuple(left_out),
    )


def _build_report_iv(alpha, steps) -> None:
    """Validate :func:`build_report`'s options."""
    if not (isinstance(alpha, float) and 0.0 < alpha < 1.0):
        raise ValueError(f"Received alpha={alpha!r}; expected a significance level strictly between 0 and 1, e.g. 0.05.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"Received steps={steps!r}; expected None or an inner-step count >= 0, e.g. 5.")


def recipe_views(runs: pd.DataFrame) -> dict[str, dict]:
    """Recipe hash -> :func:`metabench.harness.config.recipe_view` of a run's config, from
    :meth:`ResultsStore.runs`; the labels are computed from these views."""
    views: dict[str, dict] = {}
    if not len(runs) or "recipe_hash" not in runs.columns:
        return views
    for recipe, config in zip(runs["recipe_hash"], runs["config"]):
        if recipe not in views and isinstance(config, dict):
            views[recipe] = recipe_view(config)
    return views


def at_inner_steps(episodes: pd.DataFrame, steps: int) -> tuple[pd.DataFrame, list[str]]:
    """The evaluations that recorded inner step ``steps``, with it as their headline count.

    Returns:
        ``(episodes, left_out)``: the frame cut to those evaluations, ``headline_steps`` set to
        ``steps``; and one line per (setting, recipe, algorithm) left out, naming the inner-step
        counts it did record. Each left-out line is also logged as a warning.
    """
    if not len(episodes):
        return episodes, []
    recorded = episodes.loc[episodes["inner_steps"] == steps, "eval_id"].unique()
    has = episodes["eval_id"].isin(recorded).to_numpy()
    left_out = []
    missing = episodes[~has]
    keys = [*_SETTING, "recipe_hash", "algorithm"] if "recipe_hash" in episodes.columns else [*_SETTING, "algorithm"]
    for key, group in missing.groupby(keys, dropna=False, sort=False):
        key = dict(zip(keys, key))
        recipe = str(key.get("recipe_hash", ""))[:12]
        line = (
            f"{key['algorithm']} (recipe {recipe or '?'}) on {setting_title(*(key[k] for k in _SETTING))}: "
            f"recorded inner steps {sorted(int(x) for x in group['inner_steps'].unique())}, not {steps}"
        )
        left_out.append(line)
        logger.warning("Left out of the comparison at inner step %d: %s.", steps, line)
    cut = episodes[has].copy()
    cut["headline_steps"] = np.int64(steps)
    return cut, left_out


def leaderboard_table(episodes: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA, recipes: dict | None = None) -> pd.DataFrame:
    """Summarise per-episode metrics into leaderboard rows, sorted by setting then best first.

    Args:
        episodes: a frame shaped like :meth:`ResultsStore.episode_metrics` (one row per run,
            evaluation, inner-step count and episode). Only rows at each evaluation's headline
            inner-step count are used; pass completed runs only.
        alpha: significance level of the comparisons behind ``vs_best``.
        recipes: recipe hash -> recipe view (:func:`recipe_views`), for the labels; without it
            rows of one algorithm are told apart by their recipe hash.

    Returns:
        One row per (dataset, split, ways, shots, queries, fingerprint, recipe, algorithm, metric,
        headline steps), columns :data:`LEADERBOARD_COLUMNS`.
    """
    return _analyse(episodes, alpha, recipes or {})[0]


def pairwise_table(episodes: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA, recipes: dict | None = None) -> pd.DataFrame:
    """Every pair of leaderboard rows within each setting, compared on their shared episodes.

    Pairs on the same episode set (fingerprint) get the mean paired difference with its 95% CI,
    Cohen's d_z, and Wilcoxon signed-rank (zero differences split) and paired t p-values,
    Holm-adjusted over the tested pairs of the setting. Pairs on different episode sets, or with
    non-finite values, are listed untested with the reason in ``note``; pairs at different
    headline inner-step counts say so at the start of ``note``.

    Returns:
        Columns :data:`PAIRWISE_COLUMNS`, settings in leaderboard order.
    """
    return _analyse(episodes, alpha, recipes or {})[1]


def steps_table(episodes: pd.DataFrame, *, recipes: dict | None = None) -> pd.DataFrame:
    """Mean and few-shot 95% CI at every evaluated inner-step count, per leaderboard row.

    Returns:
        One row per (setting, fingerprint, recipe, algorithm, metric, headline steps, inner
        steps) with columns ``dataset, split, ways, shots, queries, fingerprint, recipe_hash,
        algorithm, label, metric, inner_steps, mean, ci95``; ``label`` is the row's leaderboard
        label, tagged with the fingerprint when the setting has several episode sets. Seeds are
        pooled as in the leaderboard. Non-finite episodes give NaN.
    """
    return _steps_table(episodes, _analyse(episodes, DEFAULT_ALPHA, recipes or {}, pairs=False)[2])


_STEPS_COLUMNS = [*_SETTING, "fingerprint", "recipe_hash", "algorithm", "label", "metric", "inner_steps", "mean", "ci95"]


def _steps_table(episodes: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """:func:`steps_table` with the labels (group key -> pair label) already computed."""
    episodes = _with_recipe(episodes)
    rows = []
    for key, group in _groups(episodes, _GROUP, ["inner_steps", "seed", "eval_id", "episode", "value"]):
        label = labels.get(_key_id(key))
        key = dict(zip(_GROUP, key))
        for steps, at_steps in group.groupby("inner_steps", sort=True):
            vector, _ = episode_values(at_steps, key, warn=False)
            finite = vector.size and bool(np.isfinite(vector.to_numpy()).all())
            ci = mean_ci95(vector.to_numpy(), ddof=0) if finite else None
            rows.append(
                {
                    **{name: _plain(key[name]) for name in _SETTING},
                    "fingerprint": key["fingerprint"],
                    "recipe_hash": key["recipe_hash"],
                    "algorithm": key["algorithm"],
                    "label": label or key["algorithm"],
                    "metric": key["metric"],
                    "inner_steps": int(steps),
                    "mean": ci.mean if ci else math.nan,
                    "ci95": ci.half_width if ci else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=_STEPS_COLUMNS)


def across_settings(table: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA) -> tuple[AcrossSettings | None, pd.DataFrame, str]:
    """Rank the methods across settings on the largest complete table the leaderboard allows.

    Rows are episode sets (setting + fingerprint) with at least two methods with finite means;
    columns are methods, i.e. leaderboard labels (a label names the same algorithm and the same
    distinguishing recipe keys in every setting); cells are the leaderboard means (MSE rows ranked
    lower-is-better). Demšar's tests need every method on every row, so methods are dropped one
    at a time (the one missing from most rows first) and the table with the most cells that has at
    least 2 rows and 2 methods is kept. What was left out is said in the note. With too few rows
    the Friedman and Iman-Davenport tests are not computed and the analysis says why.

    Returns:
        ``(analysis or None, the table ranked, a note for the reader)``.
    """
    finite = table[np.isfinite(table["mean"].to_numpy(dtype=float))] if len(table) else table
    if finite.empty:
        return None, pd.DataFrame(), "No finite results yet; nothing to rank across settings."
    keys = [*_SETTING, "fingerprint", "metric"]
    finite = finite.assign(
        _row=[_set_label(r) for r in finite.to_dict("records")],
        _method=[_method_label(label, fingerprint) for label, fingerprint in zip(finite["label"], finite["fingerprint"])],
    )
    several = finite.groupby(_SETTING, dropna=False)["fingerprint"].transform("nunique") > 1
    finite.loc[several, "_row"] = finite.loc[several, "_row"] + " [" + finite.loc[several, "fingerprint"].str[:8] + "]"
    finite = finite.drop_duplicates(subset=[*keys, "_method"], keep="first")
    values = finite.pivot_table(index="_row", columns="_method", values="mean", aggfunc="first", sort=False)
    values.columns.name = None
    lower = finite.drop_duplicates("_row").set_index("_row")["metric"].eq("mse")
    rows, methods = _largest_complete_block(values.notna())
    requirement = (
        "Ranking across settings needs at least 2 settings (episode sets) on which the same 2 or more "
        "methods have finite results"
    )
    if not rows:
        found = ", ".join(f"{r}: {', '.join(values.columns[values.loc[r].notna()])}" for r in values.index)
        return None, pd.DataFrame(), f"{requirement}; found {len(values)} setting(s) ({found})."
    block = values.loc[rows, methods]
    try:
        analysis = compare_across_settings(block, lower_is_better=lower.loc[rows], alpha=alpha)
    except StatsInputError as err:  # defensive: the block is complete by construction
        return None, pd.DataFrame(), f"{requirement}; {err}"
    left_methods = [a for a in values.columns if a not in methods]
    left_rows = [r for r in values.index if r not in rows]
    note = (
        f"Ranks over {len(rows)} setting(s) x {len(methods)} method(s): the largest table in which every "
        "method has a finite result on every setting. A method is a leaderboard label; rows with the "
        "same label in different settings count as one method."
    )
    if left_methods:
        note += " Methods left out (missing on some of these settings): " + ", ".join(left_methods) + "."
    if left_rows:
        note += " Settings left out (not every kept method ran there): " + "; ".join(left_rows) + "."
    return analysis, block, note


def _method_label(label: str, fingerprint: str) -> str:
    """A row's label without the episode-set tag a label gets when one recipe ran on two sets."""
    tag = f" [{str(fingerprint)[:8]}]"
    return label[: -len(tag)] if label.endswith(tag) else label


def setting_title(dataset, split, ways, shots, queries) -> str:
    """``"omniglot 5-way 1-shot (test split, 15 queries)"``, or ``"sinusoid 5-shot (...)"`` for regression."""
    shape = f"{shots}-shot" if ways is None or pd.isna(ways) else f"{ways}-way {shots}-shot"
    return f"{dataset} {shape} ({split} split, {queries} queries)"


# ----------------------------------------------------------------------------------- analysis


def _analyse(episodes: pd.DataFrame, alpha: float, recipes: dict, *, pairs: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Leaderboard rows (labelled, ranked, with vs-best marks), the within-setting pairs, and each
    row's pair label by group key (for the steps table). ``pairs=False`` skips the tests."""
    episodes = _with_recipe(episodes)
    heads = (episodes["inner_steps"] == episodes["headline_steps"]).to_numpy(dtype=bool)
    columns = ["run_id", "seed", "eval_id", "episode", "value", "notes"]
    if "label" in episodes.columns:
        columns.append("label")
    entries = []
    for key, group in _groups(episodes, _GROUP, columns, rows=heads):
        row, vector = _summarize(dict(zip(_GROUP, key)), group)
        row["_key"] = _key_id(key)
        entries.append((row, vector))
    entries.sort(key=lambda entry: _row_order(entry[0]))
    rows = [row for row, _ in entries]
    vectors = [vector for _, vector in entries]
    found: list[dict] = []
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and _setting_key(rows[end]) == _setting_key(rows[start]):
            end += 1
        index = list(range(start, end))
        assign_labels([rows[i] for i in index], recipes)
        _rank_rows(rows, index)
        if pairs:
            setting_pairs = _setting_pairs(rows, vectors, index, alpha)
            _mark_vs_best(rows, index, setting_pairs)
            found.extend(setting_pairs)
        start = end
    labels = {row["_key"]: row["_pair_label"] for row in rows}
    table = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    table["ways"] = table["ways"].astype("Int64")
    pair_frame = pd.DataFrame(found, columns=list(PAIRWISE_COLUMNS))
    pair_frame["ways"] = pair_frame["ways"].astype("Int64")
    return table, pair_frame, labels


def _with_recipe(episodes: pd.DataFrame) -> pd.DataFrame:
    """A frame without a ``recipe_hash`` column (built by hand) gets an empty one: one recipe."""
    return episodes if "recipe_hash" in episodes.columns else episodes.assign(recipe_hash="")


def _key_id(key: tuple) -> tuple:
    """A group key as plain Python values (``<NA>`` as ``None``), usable as a dictionary key."""
    return tuple(_plain(value) for value in key)


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


class SeedValues(NamedTuple):
    """Per-episode values of one recipe on one episode set, one column per training seed.

    Attributes:
        episodes: the episode numbers every seed covers, ascending.
        seeds: the distinct training seeds, ascending.
        values: float array ``[episodes, seeds]``; a seed run more than once contributes one
            column (its repeats averaged when they differ); NaN where a NaN was recorded.
        notes: what the reader must know: determinism failures, episodes not shared by every seed.
    """

    episodes: pd.Index
    seeds: list
    values: np.ndarray
    notes: list


def seed_values(group: pd.DataFrame, key: dict, *, warn: bool = True) -> SeedValues:
    """Per-seed per-episode values of one row from its runs (evaluations).

    Runs of one seed count once: identical repeats (same episodes, bit-identical values, NaN
    equal to NaN) are deduplicated; repeats that differ are averaged and reported as a
    determinism failure (a note, and a warning when ``warn``). Only the episodes every seed
    covers are kept (a note says so when some are dropped).

    Args:
        group: rows of :meth:`ResultsStore.episode_metrics` for one (episode set, recipe,
            algorithm, metric, inner-step count): columns ``seed, eval_id, episode, value``.
        key: names the row in warnings: ``algorithm``, ``dataset``, ``fingerprint``.
        warn: log warnings (the leaderboard does; the steps table does not repeat them).
    """
    notes = []
    episode_codes, episodes = pd.factorize(group["episode"].to_numpy(), sort=True)
    eval_codes, evaluations = pd.factorize(group["eval_id"].to_numpy())
    values = np.full((len(episodes), len(evaluations)), np.nan)
    present = np.zeros((len(episodes), len(evaluations)), dtype=bool)
    values[episode_codes, eval_codes] = group["value"].to_numpy(dtype=np.float64)
    present[episode_codes, eval_codes] = True
    _, first = np.unique(eval_codes, return_index=True)
    seeds, seed_codes = np.unique(group["seed"].to_numpy()[first], return_inverse=True)
    if len(seeds) == len(evaluations):  # no seed ran twice: one column per seed
        order = np.argsort(seed_codes)
        per_seed, covered = values[:, order], present[:, order]
    else:
        per_seed = np.full((len(episodes), len(seeds)), np.nan)
        covered = np.zeros((len(episodes), len(seeds)), dtype=bool)
        for s in range(len(seeds)):
            columns = np.flatnonzero(seed_codes == s)
            block, mask = values[:, columns], present[:, columns]
            identical = bool((mask == mask[:, :1]).all()) and np.array_equal(
                block, np.broadcast_to(block[:, :1], block.shape), equal_nan=True
            )
            if identical:
                per_seed[:, s], covered[:, s] = block[:, 0], mask[:, 0]
                continue
            shared = mask.all(axis=1)
            per_seed[shared, s] = block[shared].mean(axis=1)
            covered[:, s] = shared
            text = f"determinism failure: seed {_plain(seeds[s])} ran {len(columns)}x with different results"
            notes.append(text)
            if warn:
                logger.warning(
                    "Determinism failure: %s on %s (fingerprint %s), seed %s ran %d times with different "
                    "per-episode values; its repeats are averaged and count as one seed.",
                    key["algorithm"], key["dataset"], str(key["fingerprint"])[:12], _plain(seeds[s]), len(columns),
                )  # fmt: skip
    complete = covered.all(axis=1)
    if not complete.all():
        if warn:
            logger.warning(
                "Runs of %s on %s (fingerprint %s) cover different episodes; using the %d of %d "
                "episodes that all of them have.",
                key["algorithm"], key["dataset"], key["fingerprint"], int(complete.sum()), len(complete),
            )  # fmt: skip
        notes.append(f"runs cover different episodes; {int(complete.sum())} shared of {len(complete)}")
    return SeedValues(pd.Index(episodes[complete]), [_plain(x) for x in seeds], per_seed[complete], notes)


def episode_values(group: pd.DataFrame, key: dict, *, warn: bool = True) -> tuple[pd.Series, list[str]]:
    """Per-episode values of one recipe on one episode set: per seed first, then across seeds.

    Args:
        group: rows of :meth:`ResultsStore.episode_metrics` for one (episode set, recipe,
            algorithm, metric, inner-step count), possibly from several runs (evaluations).
        key: names the row in warnings: ``algorithm``, ``dataset``, ``fingerprint``.
        warn: log warnings (see :func:`seed_values`).

    Returns:
        ``(values, notes)``: a float Series indexed by episode number, the mean over the seeds of
        each seed's value (repeats of a seed counted once), restricted to the episodes every seed
        covers (NaN where any seed recorded NaN), and notes for the reader.
    """
    pooled = seed_values(group, key, warn=warn)
    return pd.Series(pooled.values.mean(axis=1), index=pooled.episodes), pooled.notes


def _summarize(key: dict, group: pd.DataFrame) -> tuple[dict, pd.Series]:
    """One leaderboard row and its per-episode vector from the headline-step rows of one group."""
    pooled = seed_values(group, key)
    notes = list(pooled.notes)
    values = pooled.values.mean(axis=1)
    vector = pd.Series(values, index=pooled.episodes)
    bad = int((~np.isfinite(values)).sum())
    mean = half_width = half_t = seed_std = math.nan
    if values.size and not bad:
        ci = mean_ci95(values, ddof=0)
        mean, half_width = ci.mean, ci.half_width
        if values.size >= 2:
            half_t = mean_ci_t(values).half_width
        if len(pooled.seeds) >= 2:
            seed_std = float(seed_summary(pooled.values.T).std)
    else:
        notes.append(f"{bad} of {values.size} episode values are NaN or infinite (diverged?)")
    config_labels = [text for text in dict.fromkeys(group["label"]) if text] if "label" in group.columns else []
    if len(config_labels) > 1:
        notes.append(f"seeds carry different labels ({', '.join(config_labels)}); shown: {config_labels[0]}")
    percent = key["metric"] == "accuracy"
    row = {
        **{name: _plain(key[name]) for name in _SETTING},
        "label": "",
        "algorithm": key["algorithm"],
        "recipe_hash": key["recipe_hash"],
        "metric": key["metric"],
        "rank": math.nan,
        "mean": mean,
        "ci95": half_width,
        "ci95_t": half_t,
        "mean_percent": 100.0 * mean if percent else math.nan,
        "ci95_percent": 100.0 * half_width if percent else math.nan,
        "inner_steps": int(key["headline_steps"]),
        "episodes": int(values.size),
        "seeds": len(pooled.seeds),
        "seed_std": seed_std,
        "vs_best": "",
        "p_vs_best_holm": math.nan,
        "fingerprint": key["fingerprint"],
        "notes": "; ".join(text for text in [_format_notes(group["notes"].unique()), *notes] if text),
        "_config_label": config_labels[0] if config_labels else "",
    }
    return row, vector


# ----------------------------------------------------------------------------------- labels


_TABLE_ORDER = {"algorithm": 0, "model": 1, "dataset": 2, "train": 3, "evaluation": 4, "engine": 5}
_RESERVED_NAMES = {"seed", "name", "label"}  # short names a reader would take for another key
_ABSENT = object()


def assign_labels(rows: list[dict], recipes: dict) -> None:
    """Label the rows of one setting, in place.

    Each row gets ``label``: its config's ``label`` when it has one, else the algorithm plus the
    recipe keys whose values differ between the (unlabelled) recipes of that algorithm in the
    setting (``maml (first_order=true)``; at most :data:`LABEL_KEYS` keys, in table order
    algorithm, model, dataset, train, evaluation, engine, then ``+N``). Labels are made
    unique within the setting: first by the recipe hash (``#1a2b3c4d``), then by the headline
    steps within one episode set, then by the episode set (``[fingerprint]``). ``_pair_label``
    is the label tagged with the fingerprint when the setting has several episode sets.

    Args:
        rows: dicts with ``algorithm``, ``recipe_hash``, ``fingerprint``, ``inner_steps`` and
            optionally ``_config_label``.
        recipes: recipe hash -> recipe view (:func:`recipe_views`); a recipe without a view
            shows no keys.
    """
    by_algorithm: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("_config_label"):
            row["label"] = _base_label(row["algorithm"], [], row["_config_label"])
        else:
            by_algorithm.setdefault(row["algorithm"], []).append(row)
    for algorithm, members in by_algorithm.items():
        hashes = list(dict.fromkeys(row["recipe_hash"] for row in members))
        parts = _distinguishing({h: recipes.get(h) for h in hashes}) if len(hashes) > 1 else {hashes[0]: []}
        for row in members:
            row["label"] = _base_label(algorithm, parts[row["recipe_hash"]], "")
    for members in _duplicates(rows, lambda row: row["label"]):
        if len({row["recipe_hash"] for row in members}) > 1:
            for row in members:
                row["label"] += f" #{str(row['recipe_hash'])[:8] or '?'}"
    for members in _duplicates(rows, lambda row: (row["label"], row["fingerprint"])):
        if len({row["inner_steps"] for row in members}) > 1:
            for row in members:
                row["label"] += f" @{row['inner_steps']} steps"
    for members in _duplicates(rows, lambda row: row["label"]):
        if len({row["fingerprint"] for row in members}) > 1:
            for row in members:
                row["label"] += f" [{str(row['fingerprint'])[:8]}]"
    for members in _duplicates(rows, lambda row: row["label"]):  # nothing else told them apart
        for n, row in enumerate(members[1:], start=2):
            row["label"] += f" ({n})"
    several_sets = len({row["fingerprint"] for row in rows}) > 1
    for row in rows:
        tag = f" [{str(row['fingerprint'])[:8]}]"
        row["_pair_label"] = row["label"] + tag if several_sets and not row["label"].endswith(tag) else row["label"]


def _duplicates(rows: list[dict], key) -> list[list[dict]]:
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return [members for members in groups.values() if len(members) > 1]


def _base_label(algorithm: str, parts: list[str], config_label: str) -> str:
    ensemble = algorithm.endswith(ENSEMBLE_SUFFIX)
    if config_label:
        return config_label + (ENSEMBLE_SUFFIX if ensemble else "")
    name = algorithm[: -len(ENSEMBLE_SUFFIX)] if ensemble else algorithm
    shown = parts[:LABEL_KEYS] + ([f"+{len(parts) - LABEL_KEYS}"] if len(parts) > LABEL_KEYS else [])
    shown += ["top-k ensemble"] if ensemble else []
    return f"{name} ({', '.join(shown)})" if shown else name


def _distinguishing(views: dict[str, dict | None]) -> dict[str, list[str]]:
    """Recipe hash -> ``["key=value", ...]`` for the keys whose values differ between the recipes.

    Keys are ``table.key`` paths of the recipe views, shown by their short name when no other key
    of these views has that name; values are written as in TOML. A key a view lacks is not shown
    for it; an option left out of the hash at its neutral value counts as that value.
    """
    flat = {recipe: _flatten(view or {}) for recipe, view in views.items()}
    for (table, key), neutral, _ in HASH_NEUTRAL:
        if any((table, key) in f for f in flat.values()):
            for recipe, f in flat.items():
                if isinstance((views[recipe] or {}).get(table), dict):
                    f.setdefault((table, key), neutral)
    paths = list(dict.fromkeys(path for f in flat.values() for path in f))
    differing = [path for path in paths if len({_canonical(f.get(path, _ABSENT)) for f in flat.values()}) > 1]
    differing.sort(key=lambda path: _TABLE_ORDER.get(path[0], 6) if len(path) == 2 else 7)
    names: dict[str, int] = {}
    for path in paths:
        names[path[-1]] = names.get(path[-1], 0) + 1

    def short(path: tuple) -> str:
        unambiguous = names[path[-1]] == 1 and path[-1] not in _RESERVED_NAMES
        return path[-1] if len(path) == 1 or unambiguous else ".".join(path)

    return {recipe: [f"{short(path)}={toml_value(f[path])}" for path in differing if path in f] for recipe, f in flat.items()}


def _flatten(view: dict) -> dict[tuple, object]:
    flat = {}
    for key, value in view.items():
        if isinstance(value, dict):
            flat.update({(key, inner): v for inner, v in value.items()})
        else:
            flat[(key,)] = value
    return flat


def _canonical(value) -> str:
    return "\0absent" if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)


def toml_value(value) -> str:
    """A config value as TOML writes it: ``true``, ``0.1``, ``"conv4"``, ``[0, 1]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


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
                "a": a["_pair_label"],
                "b": b["_pair_label"],
                "recipe_a": a["recipe_hash"],
                "recipe_b": b["recipe_hash"],
                "fingerprint_a": a["fingerprint"],
                "fingerprint_b": b["fingerprint"],
                "inner_steps_a": a["inner_steps"],
                "inner_steps_b": b["inner_steps"],
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
            broken = [row["_pair_label"] for row in (a, b) if not math.isfinite(row["mean"])]
            if broken:
                pair["note"] = f"not paired: {' and '.join(broken)} has non-finite episode values"
                continue
            shared = vectors[i].index.intersection(vectors[j].index)
            if len(shared) == 0:
                pair["note"] = "not paired: no episodes in common"
                continue
            result = paired_comparison(vectors[i].loc[shared].to_numpy(), vectors[j].loc[shared].to_numpy())
            notes = [result.note] if result.note else []
            if a["inner_steps"] != b["inner_steps"]:
                steps = f"steps {a['inner_steps']} vs {b['inner_steps']}"
                notes.insert(0, f"{steps}: at different inner-step counts; --steps N compares at equal ones")
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
            if row["inner_steps"] != rows[best]["inner_steps"]:
                steps = f"vs best at steps {row['inner_steps']} vs {rows[best]['inner_steps']} (this row vs the best)"
                row["notes"] = "; ".join(text for text in (row["notes"], steps) if text)
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


def _labelled_curves(curves: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Training curves with ``label`` set to the run's leaderboard label: one colour per recipe,
    one line per run. A recipe without a leaderboard row is labelled by its algorithm; two
    recipes of one dataset that would share a label get their recipe hash added."""
    if not len(curves):
        return curves.assign(label=pd.Series(dtype=str))
    names = {}
    if len(table):
        for recipe, algorithm, label, fingerprint in zip(table["recipe_hash"], table["algorithm"], table["label"], table["fingerprint"]):
            names.setdefault((recipe, algorithm), _method_label(label, fingerprint))
    recipes = curves["recipe_hash"] if "recipe_hash" in curves.columns else pd.Series("", index=curves.index)
    labels = pd.Series(
        [names.get((r, a), str(a)) for r, a in zip(recipes, curves["algorithm"])], index=curves.index, dtype=object
    )
    for _, part in curves.groupby("dataset", sort=False):
        pairs = pd.DataFrame({"label": labels.loc[part.index], "recipe": recipes.loc[part.index]})
        shared = pairs.groupby("label")["recipe"].transform("nunique") > 1
        labels.loc[shared[shared].index] = (
            pairs.loc[shared, "label"] + " #" + pairs.loc[shared, "recipe"].astype(str).str[:8]
        )
    return curves.assign(label=labels)


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
    return (
        *_setting_key(row), row["metric"], math.isnan(score), 0.0 if math.isnan(score) else score, row["algorithm"],
        str(row["recipe_hash"]), str(row["fingerprint"]), row["inner_steps"],
    )  # fmt: skip


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
        f"**vs best**: each row against the setting's best one on the same episodes (same "
        f"fingerprint): Wilcoxon signed-rank test on the per-episode differences (zero differences "
        f"split between the signs, Demšar 2006), Holm-corrected over all pairs of the setting, "
        f"alpha = {alpha:g}. \"≈ best\" = not significantly different from the best. Results on different "
        "episode sets are never paired, and a pair at different inner-step counts says so in its row. "
        "**ci95 (t)** is the Student-t interval (ddof 1); **seed std** the standard deviation (ddof 1) "
        "of the per-seed means, i.e. training-seed variability."
    )


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


_MD_PAIR_HEADERS = [
    "A", "B", "inner steps", "episodes", "A − B", "95% CI of A − B", "d_z", "Wilcoxon p (Holm)", "t p (Holm)", "result",
]  # fmt: skip
PAIR_HEADERS = _MD_PAIR_HEADERS
"""Headers of :func:`pair_cells`."""


def steps_cell(pair: dict) -> str:
    """``"3"`` when both rows of a pair report the same inner-step count, else ``"1 vs 10"``."""
    a, b = pair["inner_steps_a"], pair["inner_steps_b"]
    return str(a) if a == b else f"{a} vs {b}"



def pair_cells(pair: dict, alpha: float) -> list[str]:
    """Display cells of one within-setting pair (plain text; escape for the target format)."""
    metric = pair["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    unit_format = "{:+.2f}" if metric == "accuracy" else "{:+.4g}"
    tested = math.isfinite(pair["wilcoxon_p"]) or math.isfinite(pair["t_p"])
    if pair["note"].startswith("not paired"):
        return [pair["a"], pair["b"], steps_cell(pair), "-", "-", "-", "-", "-", "-", pair["note"]]
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
        pair["a"], pair["b"], steps_cell(pair), str(pair["episodes"]), difference, interval, effect,
        f"{format_p(pair['wilcoxon_p'])} ({format_p(pair['wilcoxon_p_holm'])})",
        f"{format_p(pair['t_p'])} ({format_p(pair['t_p_holm'])})", result,
    ]  # fmt: skip


def friedman_lines(across: AcrossSettings) -> list[str]:
    """Plain-text lines with Friedman's chi-square and the Iman-Davenport F, or why they were not
    computed; never an infinite statistic."""
    f = across.friedman
    if f.not_computed:
        return [f.not_computed]
    lines = [f"Friedman chi-square = {f.statistic:.3f} (df = {f.k - 1}), {p_text(f.pvalue)}"]
    if f.iman_davenport_not_computed:
        lines.append(f"Iman-Davenport F_F: {f.iman_davenport_not_computed}")
    else:
        lines.append(
            f"Iman-Davenport F_F = {f.iman_davenport_F:.3f} (df = {f.k - 1}, {(f.k - 1) * (f.n - 1)}), "
            f"{p_text(f.iman_davenport_pvalue)}"
        )
    return lines


def nemenyi_lines(across: AcrossSettings) -> list[str]:
    """Plain-text lines with the Nemenyi critical difference and its groups."""
    f = across.friedman
    lines = [
        f"Nemenyi critical difference CD = {across.q_alpha:.3f} · √(k(k+1)/(6N)) = {across.cd:.3f} "
        f"(k = {f.k}, N = {f.n}, alpha = {across.alpha:g})"
    ]
    if across.groups:
        lines.append("Not significantly different by Nemenyi (joined in the diagram): "
                     + "; ".join("{" + ", ".join(g) + "}" for g in across.groups))  # fmt: skip
    else:
        lines.append("Nemenyi: every pair of methods differs by at least CD.")
    return lines


def across_summary_lines(across: AcrossSettings) -> list[str]:
    """Plain-text lines with the Friedman, Iman-Davenport and Nemenyi numbers (:func:`friedman_lines`
    then :func:`nemenyi_lines`)."""
    return [*friedman_lines(across), *nemenyi_lines(across)]


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


ROW_TEXT = (
    "Each row is one recipe (the resolved config without its training seed; its hash is the recipe "
    "column) on one evaluation episode set (fingerprint) at the evaluation's headline inner-step count; "
    "accuracy is in percent, MSE in the task's units. The label is the algorithm plus the recipe keys that "
    "set the row apart from the other recipes of that algorithm in the setting, or the config's label. "
    "Runs pool only within a recipe, as its training seeds: each seed's per-episode values first "
    "(repeated runs of a seed count once; repeats that differ are a determinism failure, noted in the "
    "row), then each episode's value is averaged across the seeds (same fingerprint = same episodes), "
    "then the mean and CI are taken over the episodes."
)
"""How to read a leaderboard row (markdown and HTML)."""


def compared_at_lines(report: Report) -> list[str]:
    """What ``--steps N`` changed: the inner-step count every row reports and what was left out."""
    if report.compared_at is None:
        return []
    lines = [
        f"Compared at equal inner steps: every row reports inner step {report.compared_at} "
        f"(metabench report --steps {report.compared_at}), not its evaluation's headline count."
    ]
    if report.left_out:
        lines.append(f"Left out (inner step {report.compared_at} not recorded): " + "; ".join(report.left_out) + ".")
    return lines


def empty_text(report: Report) -> str:
    """What an empty leaderboard says."""
    if report.compared_at is not None and report.left_out:
        return f"No completed run recorded inner step {report.compared_at}; nothing to rank."
    return "No completed runs with evaluations in this store yet; nothing to rank."


def results_as_of(runs: pd.DataFrame) -> str:
    """The finish time (UTC) of the newest completed run in ``runs`` (``store.runs()``), or ``"no runs"``."""
    finished = runs.loc[runs["status"] == "completed", "finished_at"].dropna() if len(runs) else pd.Series(dtype=str)
    if finished.empty:
        return "no runs"
    newest = max(datetime.datetime.fromisoformat(t) for t in finished)
    return newest.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


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
        f"% metabench leaderboard, results as of {report.generated}, from {tex_escape(report.store_path)}.",
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
