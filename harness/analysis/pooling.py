"""Seed pooling: one recipe's per-episode values on one episode set, from its runs, one value per episode.

Runs pool only within one recipe, as its training seeds: each seed's per-episode values first
(repeated runs of one seed count once; repeats that differ are reported as a determinism failure),
then each episode's value averaged across the seeds, so a CI is still over episodes. The
leaderboard, the steps table and the reproduction table all pool this way.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


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
            text = f"determinism failure: seed {plain_value(seeds[s])} ran {len(columns)}x with different results"
            notes.append(text)
            if warn:
                logger.warning(
                    "Determinism failure: %s on %s (fingerprint %s), seed %s ran %d times with different "
                    "per-episode values; its repeats are averaged and count as one seed.",
                    key["algorithm"], key["dataset"], str(key["fingerprint"])[:12], plain_value(seeds[s]), len(columns),
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
    return SeedValues(pd.Index(episodes[complete]), [plain_value(x) for x in seeds], per_seed[complete], notes)


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


def plain_value(value):
    """numpy / pandas scalars as plain Python values; ``<NA>`` as ``None``."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
