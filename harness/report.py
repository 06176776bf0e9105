"""Leaderboards from the results store: one markdown section and CSV rows per benchmark setting.

Only completed runs are read. Each row summarises one algorithm on one evaluation episode set
(dataset, split, ways, shots, queries, fingerprint) at the evaluation's headline inner-step count,
with the few-shot 95% CI ``1.96 * s / sqrt(n)`` over episodes (``s`` with ddof 0, see
:func:`metabench.harness.stats.mean_ci95`). Several runs of one algorithm on the same episodes
(e.g. training seeds) are combined by averaging each episode's value across the runs first, so
the CI is still over episodes.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from metabench.harness.stats import mean_ci95
from metabench.harness.store import ResultsStore

logger = logging.getLogger(__name__)

LEADERBOARD_COLUMNS = (
    "dataset", "split", "ways", "shots", "queries", "algorithm", "metric", "mean", "ci95",
    "mean_percent", "ci95_percent", "inner_steps", "episodes", "seeds", "runs", "fingerprint", "notes",
)  # fmt: skip
"""Columns of :func:`leaderboard_table` and of ``leaderboard.csv``.

``mean``/``ci95`` are in the metric's own unit (accuracy as a fraction in [0, 1]);
``mean_percent``/``ci95_percent`` repeat them in percent for accuracy and are empty for MSE;
``ways`` is empty for regression; ``episodes`` is the number of episodes per run; ``seeds`` the
number of distinct training seeds and ``runs`` the number of completed runs in the row.
"""

CI_CONVENTION = (
    "ci95 = 1.96 · s / √n over the n evaluation episodes, s = standard deviation with ddof=0 "
    "(np.std; the few-shot convention of the MAML and Closer-Look code). It measures "
    "episode-sampling noise only, not training-seed variance."
)

_GROUP = ["dataset", "split", "ways", "shots", "queries", "fingerprint", "algorithm", "metric", "headline_steps"]


def write_leaderboard(store: ResultsStore, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``out_dir/leaderboard.md`` and ``out_dir/leaderboard.csv`` from a store's completed runs.

    The markdown has a header naming the store and the time, then one section per setting
    (dataset, split, ways, shots, queries) with a github-style table sorted best first (accuracy
    descending, MSE ascending) and a line under it stating the CI convention. Accuracy is shown in
    percent with 2 decimals, MSE with 4 significant digits, fingerprints by their first 12
    characters. The CSV holds the same rows with raw numbers and full fingerprints (see
    :data:`LEADERBOARD_COLUMNS`). A store without completed runs gives a leaderboard that says so.

    Args:
        store: the results store to read; failed, interrupted and running runs are ignored.
        out_dir: folder to write to; created if missing.

    Returns:
        ``[markdown_path, csv_path]``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = leaderboard_table(store.episode_metrics(completed_only=True))
    md_path = out_dir / "leaderboard.md"
    csv_path = out_dir / "leaderboard.csv"
    md_path.write_text(_markdown(table, _header(store)), encoding="utf-8")
    table.to_csv(csv_path, index=False)
    logger.info("Wrote leaderboard (%d row(s)) to %s and %s.", len(table), md_path, csv_path)
    return [md_path, csv_path]


def leaderboard_table(episodes: pd.DataFrame) -> pd.DataFrame:
    """Summarise per-episode metrics into leaderboard rows, sorted by setting then best first.

    Args:
        episodes: a frame shaped like :meth:`ResultsStore.episode_metrics` (one row per run,
            evaluation, inner-step count and episode). Only rows at each evaluation's headline
            inner-step count are used; pass completed runs only.

    Returns:
        One row per (dataset, split, ways, shots, queries, fingerprint, algorithm, metric,
        headline steps), columns :data:`LEADERBOARD_COLUMNS`.
    """
    heads = episodes[episodes["inner_steps"] == episodes["headline_steps"]]
    rows = [
        _summarize(dict(zip(_GROUP, key)), group)
        for key, group in heads.groupby(_GROUP, dropna=False, sort=False)
    ]
    rows.sort(key=_row_order)
    table = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    table["ways"] = table["ways"].astype("Int64")
    return table


def _summarize(key: dict, group: pd.DataFrame) -> dict:
    """One leaderboard row from the headline-step rows of one (setting, fingerprint, algorithm)."""
    notes = []
    matrix = group.pivot(index="episode", columns="eval_id", values="value")  # [episodes, evaluations]
    covered = group.groupby("episode")["eval_id"].nunique()
    complete = covered.index[covered == matrix.shape[1]]
    if len(complete) < len(matrix):
        logger.warning(
            "Runs of %s on %s (fingerprint %s) cover different episodes; using the %d of %d "
            "episodes that all of them have.",
            key["algorithm"], key["dataset"], key["fingerprint"], len(complete), len(matrix),
        )  # fmt: skip
        notes.append(f"runs cover different episodes; {len(complete)} shared of {len(matrix)}")
        matrix = matrix.loc[complete]
    per_episode = matrix.to_numpy(dtype=np.float64).mean(axis=1)  # NaN in any run stays NaN
    bad = int((~np.isfinite(per_episode)).sum())
    if per_episode.size and not bad:
        ci = mean_ci95(per_episode, ddof=0)
        mean, half_width = ci.mean, ci.half_width
    else:
        mean = half_width = math.nan
        notes.append(f"{bad} of {per_episode.size} episode values are NaN or infinite (diverged?)")
    percent = key["metric"] == "accuracy"
    ways = key["ways"]
    return {
        "dataset": key["dataset"],
        "split": key["split"],
        "ways": None if pd.isna(ways) else int(ways),
        "shots": int(key["shots"]),
        "queries": int(key["queries"]),
        "algorithm": key["algorithm"],
        "metric": key["metric"],
        "mean": mean,
        "ci95": half_width,
        "mean_percent": 100.0 * mean if percent else math.nan,
        "ci95_percent": 100.0 * half_width if percent else math.nan,
        "inner_steps": int(key["headline_steps"]),
        "episodes": int(per_episode.size),
        "seeds": int(group["seed"].nunique()),
        "runs": int(group["run_id"].nunique()),
        "fingerprint": key["fingerprint"],
        "notes": "; ".join(text for text in [_format_notes(group["notes"].unique()), *notes] if text),
    }


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


def _header(store: ResultsStore) -> str:
    runs = store.runs()
    counts = runs["status"].value_counts() if len(runs) else pd.Series(dtype=int)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    excluded = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in ("failed", "interrupted", "running"))
    return (
        "# metabench leaderboard\n\n"
        f"Generated {now} from results store `{_md(str(store.path))}`: "
        f"{int(counts.get('completed', 0))} completed run(s) (excluded: {excluded}).\n\n"
        "Each row is one algorithm on one evaluation episode set (fingerprint) at the evaluation's "
        "headline inner-step count; accuracy is in percent, MSE in the task's units. When a row has "
        "several runs (e.g. seeds), each episode's value is first averaged across the runs (same "
        "fingerprint = same episodes), then the mean and CI are taken over the episodes.\n"
    )


def _markdown(table: pd.DataFrame, header: str) -> str:
    parts = [header]
    if table.empty:
        parts.append("\nNo completed runs with evaluations in this store yet; nothing to rank.\n")
        return "\n".join(parts)
    setting = ["dataset", "split", "ways", "shots", "queries"]
    for key, rows in table.groupby(setting, dropna=False, sort=False):
        dataset, split, ways, shots, queries = key
        shape = f"{shots}-shot" if pd.isna(ways) else f"{ways}-way {shots}-shot"
        parts.append(f"\n## {_md(dataset)} {shape} ({_md(split)} split, {queries} queries)\n")
        cells = [_md_cells(row) for row in rows.to_dict("records")]
        parts.append(tabulate(cells, headers=_MD_HEADERS, tablefmt="github", disable_numparse=True))
        parts.append(f"\n{CI_CONVENTION}\n")
    return "\n".join(parts)


_MD_HEADERS = [
    "dataset", "ways", "shots", "queries", "algorithm", "metric", "mean", "ci95",
    "inner steps", "episodes", "seeds", "runs", "fingerprint", "notes",
]  # fmt: skip


def _md_cells(row: dict) -> list[str]:
    accuracy = row["metric"] == "accuracy"
    number = (lambda x: f"{100.0 * x:.2f}") if accuracy else (lambda x: f"{x:#.4g}")
    return [
        _md(row["dataset"]),
        "-" if pd.isna(row["ways"]) else str(row["ways"]),
        str(row["shots"]),
        str(row["queries"]),
        _md(row["algorithm"]),
        "accuracy (%)" if accuracy else _md(row["metric"]),
        number(row["mean"]),
        number(row["ci95"]),
        str(row["inner_steps"]),
        str(row["episodes"]),
        str(row["seeds"]),
        str(row["runs"]),
        _md(str(row["fingerprint"])[:12]),
        _md(row["notes"]),
    ]


def _md(text: object) -> str:
    """A user string made safe for one markdown table cell: ``|`` escaped, newlines as spaces."""
    return " ".join(str(text).split("\n")).replace("|", "\\|")
