"""Leaderboards from the results store: tables, paired comparisons, ranks across settings.

Only completed runs are read. Each leaderboard row summarises one *recipe* (the resolved config
without its training seed and display keys, :func:`metabench.harness.config.recipe_hash`) on one
evaluation episode set (dataset, split, ways, shots, queries, fingerprint) at the evaluation's
headline inner-step count, with the few-shot 95% CI ``1.96 * s / sqrt(n)`` over episodes (``s``
with ddof 0, see :func:`metabench.harness.analysis.stats.mean_ci95`) and the Student-t CI beside it.
Runs pool only within one recipe, as its training seeds (:mod:`metabench.harness.analysis.pooling`);
the standard deviation of the per-seed means is reported as ``seed_std``. Rows are labelled by
:mod:`metabench.harness.analysis.labels`; the recipe hash is shown beside the label.

Within a setting, rows evaluated on the same episode set (same fingerprint) are compared pairwise
on the per-episode values (:func:`metabench.harness.analysis.stats.paired_comparison`): Wilcoxon
signed-rank and paired t p-values, Holm-corrected over all pairs of the setting. The ``vs_best``
column marks the rows that are not significantly different from the best one. Results on
different episode sets are never paired; the comparison table says so. A pair evaluated at
different headline inner-step counts says so in its own row; ``steps=N`` (``metabench report
--steps N``) compares every recipe at inner step ``N`` instead.

Across settings, the largest complete table of methods (leaderboard labels) x episode sets is
ranked (Demšar 2006): average ranks, Friedman and Iman-Davenport tests (or why they were not
computed), the Nemenyi critical difference, and pairwise Wilcoxon tests with Holm's correction
(:func:`metabench.harness.analysis.stats.compare_across_settings`).

:func:`build_report` computes all of it as a :class:`Report`; :mod:`metabench.harness.analysis.report`
writes it to files.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from metabench.harness.analysis.labels import assign_labels, label_ensembles, method_label, recipe_views, setting_title
from metabench.harness.analysis.pooling import episode_values, plain_value, seed_values
from metabench.harness.analysis.stats import (
    AcrossSettings,
    StatsInputError,
    compare_across_settings,
    holm,
    mean_ci95,
    mean_ci_t,
    paired_comparison,
    seed_summary,
)
from metabench.harness.results.records import ONLINE_METRICS, PREQUENTIAL_METRICS, SEEN_METRICS, STREAM_METRICS, base_metric
from metabench.harness.results.store import ResultsStore

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

_GROUP = [
    "dataset", "split", "ways", "shots", "queries", "fingerprint", "recipe_hash", "algorithm", "metric", "headline_steps",
]  # fmt: skip

_SETTING = ["dataset", "split", "ways", "shots", "queries"]


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
        prequential: prequential results (:func:`prequential_table`), empty when the store has none.
        online: the online-adaptation leaderboard (:func:`online_table`): one row per (setting, online
            measure, recipe), ranked, with ``vs_best``; empty when the store has no online results.
        online_pairs: its paired comparisons within each (setting, measure), columns
            :data:`PAIRWISE_COLUMNS` plus ``measure``.
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
    prequential: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=list(PREQUENTIAL_COLUMNS)))
    online: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=[*LEADERBOARD_COLUMNS, "measure"]))
    online_pairs: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(columns=[*PAIRWISE_COLUMNS, "measure"]))

    def settings(self) -> list[tuple[tuple, str, pd.DataFrame]]:
        """``(setting key, title, leaderboard rows)`` for each setting, in order."""
        return [(key, setting_title(*key), rows) for key, rows in _by_setting(self.table)]


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
    online, online_pairs = online_table(store.episode_metrics(completed_only=True, metrics=ONLINE_MEASURES), alpha=alpha, recipes=recipes)
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
        prequential=prequential_table(store.episode_metrics(completed_only=True, metrics=PREQUENTIAL_METRICS), table),
        online=online,
        online_pairs=online_pairs,
    )


ONLINE_MEASURES = ONLINE_METRICS + STREAM_METRICS
"""The online measures the report ranks and pairs: the prequential online metric of each setting, and the
drifting stream's average, last-part, re-test and forgetting MSE (:data:`~metabench.harness.results.records.STREAM_METRICS`)."""


def online_table(episodes: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA, recipes: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The online-adaptation leaderboard: each measure of :data:`ONLINE_MEASURES` ranked as the leaderboard is.

    For each measure and setting, one row per recipe at its headline inner steps, with the paired tests
    of the leaderboard (per-episode values; for the stream, per stream task, so learners pair task by
    task on one stream): Wilcoxon and t p-values Holm-adjusted over the pairs of that (setting, measure),
    and ``vs_best`` against its best row. Lower is better for every MSE measure (forgetting too).

    Args:
        episodes: rows of :meth:`ResultsStore.episode_metrics` (``metrics=ONLINE_MEASURES``).
        recipes: recipe views by hash (:func:`~metabench.harness.analysis.labels.recipe_views`), for the labels.

    Returns:
        ``(rows, pairs)``: columns :data:`LEADERBOARD_COLUMNS` and :data:`PAIRWISE_COLUMNS`, each plus
        ``measure`` (the stored metric name, e.g. ``stream_last_mse``); ``metric`` holds its unit
        (``accuracy`` or ``mse``).
    """
    tables, pairs = [pd.DataFrame(columns=[*LEADERBOARD_COLUMNS, "measure"])], [pd.DataFrame(columns=[*PAIRWISE_COLUMNS, "measure"])]
    for measure in ONLINE_MEASURES:
        part = episodes[episodes["metric"] == measure] if len(episodes) else episodes
        if not len(part):
            continue
        table, pair_frame, _ = _analyse(part.assign(metric=base_metric(measure)), alpha, recipes or {})
        tables.append(table.assign(measure=measure))
        pairs.append(pair_frame.assign(measure=measure))
    nonempty = [t for t in tables if len(t)] or tables[:1]
    rows = pd.concat(nonempty, ignore_index=True)
    pair_rows = pd.concat([p for p in pairs if len(p)] or pairs[:1], ignore_index=True)
    for frame in (rows, pair_rows):
        frame["ways"] = frame["ways"].astype("Int64")
    return rows, pair_rows


PREQUENTIAL_COLUMNS = (
    *_SETTING, "fingerprint", "recipe_hash", "algorithm", "label", "metric", "seen", "mean", "ci95",
    "online_mean", "online_ci95", "online_steps", "episodes",
)  # fmt: skip
"""Columns of :func:`prequential_table` and ``prequential.csv``: one row per (setting, prequential episode
set, recipe, algorithm, examples seen). ``metric`` is the plain metric (``accuracy`` or ``mse``);
``mean``/``ci95`` the query metric after adapting on the first ``seen`` arrivals (few-shot 95% CI over
episodes, seeds pooled as in the leaderboard); ``online_mean``/``online_ci95`` the row's online metric
(every scored arrival predicted before its label is used) at ``online_steps`` inner steps, the same on
every row of a recipe; ``label`` the recipe's leaderboard label in the setting (its algorithm when it
has none)."""


def prequential_table(episodes: pd.DataFrame, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The prequential results of a store: query metric against examples seen, with the online metric.

    Args:
        episodes: rows of :meth:`ResultsStore.episode_metrics` with the prequential metrics
            (``metrics=PREQUENTIAL_METRICS``); other metrics are ignored.
        table: the leaderboard (:func:`leaderboard_table`), for the rows' labels.

    Returns:
        Columns :data:`PREQUENTIAL_COLUMNS`, in the order the store holds the runs, ``seen`` ascending.
    """
    if not len(episodes):
        return pd.DataFrame(columns=list(PREQUENTIAL_COLUMNS))
    episodes = _with_recipe(episodes)
    labels = {}
    if table is not None and len(table):
        for row in table.to_dict("records"):
            labels.setdefault((*(plain_value(row[k]) for k in _SETTING), row["recipe_hash"], row["algorithm"]), row["label"])
    online, curves = {}, []
    for key, group in _groups(episodes, _GROUP, ["inner_steps", "seed", "eval_id", "episode", "value"]):
        key = dict(zip(_GROUP, key))
        where = (*(plain_value(key[k]) for k in _SETTING), key["fingerprint"], key["recipe_hash"], key["algorithm"])
        if key["metric"] in ONLINE_METRICS:
            vector, _ = episode_values(group[group["inner_steps"] == key["headline_steps"]], key, warn=False)
            online[where] = (_ci(vector.to_numpy()), int(key["headline_steps"]))
        elif key["metric"] in SEEN_METRICS:
            for seen, at in group.groupby("inner_steps", sort=True):
                vector, _ = episode_values(at, key, warn=False)
                curves.append((where, key, int(seen), _ci(vector.to_numpy()), len(vector)))
    rows = []
    for where, key, seen, ci, count in curves:
        (online_mean, online_half), online_steps = online.get(where, ((math.nan, math.nan), -1))
        rows.append(
            {
                **dict(zip(_SETTING, where[: len(_SETTING)])),
                "fingerprint": key["fingerprint"],
                "recipe_hash": key["recipe_hash"],
                "algorithm": key["algorithm"],
                "label": labels.get((*where[: len(_SETTING)], key["recipe_hash"], key["algorithm"]), key["algorithm"]),
                "metric": base_metric(key["metric"]),
                "seen": seen,
                "mean": ci[0],
                "ci95": ci[1],
                "online_mean": online_mean,
                "online_ci95": online_half,
                "online_steps": online_steps,
                "episodes": count,
            }
        )
    frame = pd.DataFrame(rows, columns=list(PREQUENTIAL_COLUMNS))
    frame["ways"] = frame["ways"].astype("Int64")
    lines = frame["recipe_hash"].astype(str) + "/" + frame["fingerprint"].astype(str)
    shared = frame.assign(_line=lines).groupby([*_SETTING, "label"], dropna=False)["_line"].transform("nunique") > 1
    frame.loc[shared, "label"] = frame.loc[shared, "label"] + " #" + frame.loc[shared, "recipe_hash"].astype(str).str[:8]
    return frame


def _ci(values: np.ndarray) -> tuple[float, float]:
    """``(mean, few-shot 95% half width)`` of per-episode values; NaNs when any is not finite or none is given."""
    if not values.size or not np.isfinite(values).all():
        return math.nan, math.nan
    ci = mean_ci95(values, ddof=0)
    return ci.mean, ci.half_width


def _build_report_iv(alpha, steps) -> None:
    """Validate :func:`build_report`'s options."""
    if not (isinstance(alpha, float) and 0.0 < alpha < 1.0):
        raise ValueError(f"Received alpha={alpha!r}; expected a significance level strictly between 0 and 1, e.g. 0.05.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"Received steps={steps!r}; expected None or an inner-step count >= 0, e.g. 5.")


def results_as_of(runs: pd.DataFrame) -> str:
    """The finish time (UTC) of the newest completed run in ``runs`` (``store.runs()``), or ``"no runs"``."""
    finished = runs.loc[runs["status"] == "completed", "finished_at"].dropna() if len(runs) else pd.Series(dtype=str)
    if finished.empty:
        return "no runs"
    newest = max(datetime.datetime.fromisoformat(t) for t in finished)
    return newest.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


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
                    **{name: plain_value(key[name]) for name in _SETTING},
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
    columns are methods, i.e. recipes at their headline inner steps (one recipe scored in several
    settings is one method, whatever keys its label needs to stand apart in each setting), named by
    the shortest of their leaderboard labels; cells are the leaderboard means (MSE rows ranked
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
    finite = finite.assign(_row=[_set_label(r) for r in finite.to_dict("records")], _method=_method_names(finite))
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
        "method has a finite result on every setting. A method is a recipe (named by its shortest "
        "leaderboard label); its rows in different settings count as one method."
    )
    if left_methods:
        note += " Methods left out (missing on some of these settings): " + ", ".join(left_methods) + "."
    if left_rows:
        note += " Settings left out (not every kept method ran there): " + "; ".join(left_rows) + "."
    return analysis, block, note


def _method_names(rows: pd.DataFrame) -> list[str]:
    """Each leaderboard row's method for the ranking across settings: its algorithm, recipe and headline steps,
    named by the shortest label that identity has in any setting (``#recipe`` added where two
    methods would share a name). Rows without a recipe hash are known by their label alone."""
    labels = [method_label(label, fingerprint) for label, fingerprint in zip(rows["label"], rows["fingerprint"])]
    identities = [
        (str(recipe), algorithm, int(steps)) if isinstance(recipe, str) and recipe else ("", algorithm, label)
        for recipe, algorithm, steps, label in zip(rows["recipe_hash"], rows["algorithm"], rows["inner_steps"], labels)
    ]  # fmt: skip
    shortest: dict = {}
    for identity, label in zip(identities, labels):
        if identity not in shortest or len(label) < len(shortest[identity]):
            shortest[identity] = label
    clashes = pd.Series(list(shortest.values())).value_counts()
    names = {
        identity: f"{name} #{identity[0][:8]}" if clashes[name] > 1 and identity[0] else name
        for identity, name in shortest.items()
    }  # fmt: skip
    return [names[identity] for identity in identities]


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
    return tuple(plain_value(value) for value in key)


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
        **{name: plain_value(key[name]) for name in _SETTING},
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
            names.setdefault((recipe, algorithm), method_label(label, fingerprint))
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


def steps_of(steps: pd.DataFrame, key: tuple) -> pd.DataFrame:
    dataset, split, ways, shots, queries = key
    mask = (steps["dataset"] == dataset) & (steps["split"] == split) & (steps["shots"] == shots) & (steps["queries"] == queries)
    mask &= steps["ways"].isna() if ways is None else steps["ways"].eq(ways)
    return steps[mask.fillna(False).astype(bool)]


def pairs_of(pairs: pd.DataFrame, key: tuple) -> pd.DataFrame:
    dataset, split, ways, shots, queries = key
    mask = (pairs["dataset"] == dataset) & (pairs["split"] == split) & (pairs["shots"] == shots) & (pairs["queries"] == queries)
    mask &= pairs["ways"].isna() if ways is None else pairs["ways"].eq(ways)
    return pairs[mask.fillna(False).astype(bool)]


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
