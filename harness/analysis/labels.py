"""Names of leaderboard rows and settings.

Each row is labelled with its algorithm plus what sets its recipe apart from the other recipes of
that algorithm in its setting (``maml (first_order=true)``, ``maml (inner_lr=0.1)``), or with the
config's ``label`` key when it has one. A checkpoint ensemble (``harness.run.ensemble``) gets an
algorithm label of its own, so it is ranked beside, never averaged with, its run's last checkpoint.
"""

from __future__ import annotations

import json

import pandas as pd

from metabench.harness.config import HASH_NEUTRAL, recipe_view

LABEL_KEYS = 3
"""Recipe keys a label shows at most; more differing keys are summarised as ``+N``."""

ENSEMBLE_SUFFIX = " (top-k ensemble)"
"""Appended to the algorithm of a checkpoint ensemble's evaluations (:func:`label_ensembles`)."""


def label_ensembles(episodes: pd.DataFrame) -> pd.DataFrame:
    """Give checkpoint-ensemble evaluations (``harness.run.ensemble``) their own algorithm label, so an
    ensemble is ranked beside, never averaged with, its run's last checkpoint."""
    if not len(episodes):
        return episodes
    ensemble = episodes["notes"].fillna("").str.contains('"ensemble": "top-', regex=False)
    if ensemble.any():
        episodes = episodes.copy()
        episodes.loc[ensemble, "algorithm"] = episodes.loc[ensemble, "algorithm"] + ENSEMBLE_SUFFIX
    return episodes


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


def setting_title(dataset, split, ways, shots, queries) -> str:
    """``"omniglot 5-way 1-shot (test split, 15 queries)"``, or ``"sinusoid 5-shot (...)"`` for regression."""
    shape = f"{shots}-shot" if ways is None or pd.isna(ways) else f"{ways}-way {shots}-shot"
    return f"{dataset} {shape} ({split} split, {queries} queries)"


def method_label(label: str, fingerprint: str) -> str:
    """A row's label without the episode-set tag a label gets when one recipe ran on two sets."""
    tag = f" [{str(fingerprint)[:8]}]"
    return label[: -len(tag)] if label.endswith(tag) else label


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
