"""Paper-reproduction tables: our results beside the published numbers they reproduce.

The published numbers ship with the package (``published_results.toml`` beside this module, in the
format of the shared reference file, with each number's source, evidence and uncertainty kind).
For every result in the store on a test split, one per recipe (config without its training seed)
and episode set, with the recipe's seeds pooled as in the leaderboard and labelled as there,
:func:`reproduction_table` looks up the published numbers of the same dataset, ways, shots, metric
and algorithm (our registered name, e.g. ``"maml"``, ``"mamlpp"``, ``"baseline"``), takes our
per-episode values at the paper's test-time inner-step count when we evaluated it, and gives a
verdict (:func:`verdict`):

* **inside the paper's interval**: our mean lies within the paper's ± (a 95% CI over episodes,
  or one standard deviation over seeds for MAML++);
* **statistically indistinguishable (two-interval rule)**: ``|ours - paper| <= sqrt(h_ours^2 +
  h_paper^2)`` with both 95% half widths (the Meta-Dataset leaderboard's rule; a seed std ``s``
  over ``n`` seeds becomes ``t_{0.975, n-1} s / sqrt(n)``; a paper without ± counts as 0, so the
  rule asks whether the paper's value lies in our CI);
* otherwise **below** or **above** the paper (with "better"/"worse" for the metric's direction);
* **not comparable** when our number is not finite, or when our 95% half width is at least the
  paper's value: such an interval admits zero and twice the paper's value alike, so no verdict is
  given (one diverging episode in 600 does this to an MSE).

A published number is compared only with recipes of the same algorithm *and* the options it names
(``ours_options``, e.g. the MAML paper's "first-order approximation" rows need
``algorithm.first_order = true`` and its "MAML" rows ``false``; see :data:`ALGORITHM_OPTIONS`).

The table also lists the protocol differences that remain (query-set size, test episodes,
meta-iterations run, meta-batch, seeds, split, which checkpoint was evaluated, and the paper's own
caveats), and every result without a published number, saying so rather than inventing one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats
from tabulate import tabulate

from metabench.harness.analysis.labels import assign_labels, label_ensembles, recipe_views, setting_title
from metabench.harness.analysis.leaderboard import results_as_of
from metabench.harness.analysis.pooling import seed_values
from metabench.harness.analysis.stats import mean_ci95, seed_summary
from metabench.harness.errors import MetabenchError
from metabench.harness.results.records import higher_is_better as metric_higher_is_better
from metabench.harness.results.store import ResultsStore

logger = logging.getLogger(__name__)

__all__ = [
    "Published", "PublishedResult", "PublishedResultsError", "Unpublished", "load_published",
    "reproduction_table", "verdict", "write_reproduction",
]  # fmt: skip

SHIPPED = "published_results.toml"
"""File name of the shipped published numbers inside ``metabench.harness``."""

ALGORITHM_ALIASES = {
    "maml": "maml",
    "maml++": "mamlpp",
    "mamlpp": "mamlpp",
    "baseline": "baseline",
    "baseline++": "baseline++",
    "pretrain on all tasks": "pretrain",
    "pretrain": "pretrain",
    "multitask": "multitask",
    "maml, first-order approximation": "maml",
}
"""Paper algorithm names (lower case) -> our registered names, for entries without an ``ours`` key."""

ALGORITHM_OPTIONS = {
    "maml": {"first_order": False},
    "maml, first-order approximation": {"first_order": True},
}
"""Paper algorithm names (lower case) -> the ``[algorithm]`` options a recipe must have to be compared
with that number, for entries without an ``ours_options`` table: the MAML paper's "MAML" rows are
second order, its "first-order approximation" rows first order, so FOMAML is never compared with
MAML's number."""

UNCERTAINTY_KINDS = {
    "ci95": "95% CI over test episodes",
    "std-seeds": "std over training seeds",
    "none": "none published",
}


class PublishedResultsError(MetabenchError, ValueError):
    """A published-results file that cannot be read; the message names the entry and the key."""


@dataclasses.dataclass(frozen=True)
class PublishedResult:
    """One published number.

    Attributes:
        paper: the citation, e.g. ``"Finn, Abbeel, Levine 2017 (MAML, ...)"``.
        dataset: as the paper names it (``"Omniglot"``); matched case-insensitively.
        ways: classes per episode; ``None`` for regression.
        shots: support examples per class (regression: per task).
        algorithm: the paper's name for the method.
        ours: our registered algorithm name that reproduces it, or ``None`` (not compared).
        ours_options: ``[algorithm]`` options our recipe must have to be compared (e.g.
            ``{"first_order": True}``); empty: any recipe of ``ours``.
        metric: ``"accuracy"`` (``value`` in percent) or ``"mse"``.
        value: the published number.
        pm: the published ± (percent for accuracy), or ``None``.
        pm_kind: ``"ci95"``, ``"std-seeds"`` or ``"none"`` (see :data:`UNCERTAINTY_KINDS`).
        pm_text: how the source describes the ±.
        pm_seeds: seeds behind a ``"std-seeds"`` ±.
        test_grad_steps: inner steps at test time the number is for, if known.
        evidence: ``primary-text``, ``official-repo``, ``secondary`` or ``secondary-unverified``.
        source: where the number was read.
        backbone: the paper's network, if given.
        protocol: the paper's protocol facts (``test_queries``, ``test_episodes``,
            ``meta_iterations``, ``meta_batch_size``, ``seeds``, ``split``, ``checkpoint``, ``notes``).
    """

    paper: str
    dataset: str
    ways: int | None
    shots: int
    algorithm: str
    ours: str | None
    ours_options: dict
    metric: str
    value: float
    pm: float | None
    pm_kind: str
    pm_text: str
    pm_seeds: int | None
    test_grad_steps: int | None
    evidence: str
    source: str
    backbone: str
    protocol: dict

    def half_width_95(self) -> float:
        """The paper's 95% half width for the two-interval rule (0 when none is published)."""
        if self.pm_kind == "ci95":
            return float(self.pm)
        if self.pm_kind == "std-seeds":
            n = self.pm_seeds or 3
            return float(_scipy_stats.t.ppf(0.975, n - 1)) * float(self.pm) / math.sqrt(n)
        return 0.0


@dataclasses.dataclass(frozen=True)
class Unpublished:
    """A setting we run for which no number was published, and why."""

    dataset: str
    ways: int | None
    shots: int
    ours: str
    reason: str
    ours_options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Published:
    """The contents of a published-results file."""

    results: tuple
    unpublished: tuple
    origin: str


def load_published(path: str | os.PathLike | None = None) -> Published:
    """Read published numbers: the shipped copy, or a file in the same (reference) format.

    Entries whose ways or shots are not integers (e.g. Meta-Dataset's ``"variable"``) are skipped.
    Entries without an ``ours`` key are matched through :data:`ALGORITHM_ALIASES`; entries whose
    algorithm has no alias are kept but never compared.

    Args:
        path: a TOML file with ``[[result]]`` (and optionally ``[[unpublished]]``) tables;
            ``None``: the shipped ``published_results.toml``.

    Raises:
        PublishedResultsError: the file is missing or malformed, or an entry lacks a required key
            or has a value of the wrong type (the message names the entry number and the key).
    """
    text, origin = _load_published_iv(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PublishedResultsError(f"Malformed TOML in {origin}: {err}. Fix the file's syntax.") from err
    results, skipped = [], 0
    for number, entry in enumerate(data.get("result", []), start=1):
        parsed = _parse_result(entry, number, origin)
        if parsed is None:
            skipped += 1
        else:
            results.append(parsed)
    if skipped:
        logger.debug("Skipped %d published result(s) of %s without integer ways/shots.", skipped, origin)
    unpublished = []
    for number, entry in enumerate(data.get("unpublished", []), start=1):
        where = f"{origin}, [[unpublished]] entry {number}"
        for key in ("dataset", "shots", "ours", "reason"):
            if key not in entry:
                raise PublishedResultsError(f"{where} lacks the key {key!r}; add it.")
        unpublished.append(
            Unpublished(str(entry["dataset"]), _optional_int(entry.get("ways"), "ways", where), int(entry["shots"]),
                        str(entry["ours"]), str(entry["reason"]), _ours_options(entry, where))
        )
    return Published(tuple(results), tuple(unpublished), origin)


def _load_published_iv(path) -> tuple[str, str]:
    """Validate :func:`load_published`'s path; returns the text and a description of its origin."""
    if path is None:
        resource = resources.files("metabench.harness").joinpath(SHIPPED)
        try:
            return resource.read_text(encoding="utf-8"), f"the shipped {SHIPPED}"
        except (FileNotFoundError, OSError) as err:
            raise PublishedResultsError(
                f"The shipped {SHIPPED} is missing from the metabench.harness package ({err}); reinstall "
                "metabench, or pass the path of a published-results file."
            ) from err
    path = Path(path)
    if not path.is_file():
        raise PublishedResultsError(f"No published-results file at {str(path)!r}; pass the path of a TOML file.")
    return path.read_text(encoding="utf-8"), str(path)


def _parse_result(entry: dict, number: int, origin: str) -> PublishedResult | None:
    where = f"{origin}, [[result]] entry {number}"
    for key in ("paper", "dataset", "shots", "algorithm", "source"):
        if key not in entry:
            raise PublishedResultsError(f"{where} lacks the key {key!r}; add it.")
    if not isinstance(entry["shots"], int) or ("ways" in entry and not isinstance(entry["ways"], int)):
        return None  # e.g. Meta-Dataset's variable-way, variable-shot episodes
    has_accuracy, has_mse = "accuracy_percent" in entry, "mse" in entry
    if has_accuracy == has_mse:
        raise PublishedResultsError(f"{where} needs exactly one of 'accuracy_percent' and 'mse'.")
    metric = "accuracy" if has_accuracy else "mse"
    value = _number(entry["accuracy_percent" if has_accuracy else "mse"], "value", where)
    if "ci95_percent" in entry:
        pm, kind, text = _number(entry["ci95_percent"], "ci95_percent", where), "ci95", str(entry.get("uncertainty", "95% CI"))
    elif "pm_percent" in entry:
        pm = _number(entry["pm_percent"], "pm_percent", where)
        text = str(entry.get("pm_kind", ""))
        kind = "std-seeds" if "std" in text.lower() and "seed" in text.lower() else "ci95"
    else:
        pm, kind, text = None, "none", "none published"
    ours = entry.get("ours") or ALGORITHM_ALIASES.get(str(entry["algorithm"]).strip().lower())
    ours_options = _ours_options(entry, where)
    protocol = entry.get("protocol", {})
    if not isinstance(protocol, dict):
        raise PublishedResultsError(f"{where}: 'protocol' must be a table ([result.protocol]); received {protocol!r}.")
    ways = None if metric == "mse" else _optional_int(entry.get("ways"), "ways", where)
    if metric == "accuracy" and ways is None:
        raise PublishedResultsError(f"{where} is a classification result without 'ways'; add it.")
    return PublishedResult(
        paper=str(entry["paper"]),
        dataset=str(entry["dataset"]),
        ways=ways,
        shots=int(entry["shots"]),
        algorithm=str(entry["algorithm"]),
        ours=str(ours) if ours else None,
        ours_options=ours_options,
        metric=metric,
        value=value,
        pm=pm,
        pm_kind=kind,
        pm_text=text,
        pm_seeds=_optional_int(entry.get("pm_seeds"), "pm_seeds", where),
        test_grad_steps=_optional_int(entry.get("test_grad_steps"), "test_grad_steps", where),
        evidence=str(entry.get("evidence", "")),
        source=str(entry["source"]),
        backbone=str(entry.get("backbone", "")),
        protocol=dict(protocol),
    )


def _ours_options(entry: dict, where: str) -> dict:
    """The entry's ``ours_options`` table, or the paper algorithm's entry in :data:`ALGORITHM_OPTIONS`."""
    options = entry.get("ours_options", ALGORITHM_OPTIONS.get(str(entry.get("algorithm", "")).strip().lower(), {}))
    if not isinstance(options, dict):
        raise PublishedResultsError(
            f"{where}: 'ours_options' must be a table of [algorithm] options, e.g. {{ first_order = true }}; "
            f"received {options!r}."
        )
    return dict(options)


def _options_match(required: dict, algorithm_config: dict) -> bool:
    """Whether a recipe's ``[algorithm]`` table has every required option value."""
    return all(algorithm_config.get(key) == value for key, value in required.items())


def _number(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PublishedResultsError(f"{where}: {key!r} must be a finite number; received {value!r}.")
    return float(value)


def _optional_int(value, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PublishedResultsError(f"{where}: {key!r} must be an integer; received {value!r}.")
    return int(value)


def verdict(
    ours: float,
    ours_half_width: float,
    paper: float,
    paper_half_width_95: float,
    *,
    paper_pm: float | None = None,
    pm_kind: str = "ci95",
    higher_is_better: bool = True,
) -> str:
    """How our number relates to a published one (all values in the same unit).

    Args:
        ours: our mean.
        ours_half_width: our 95% half width (of the kind that matches the paper's, see the module).
        paper: the published mean.
        paper_half_width_95: the paper's 95% half width (0 when none was published).
        paper_pm: the paper's ± as printed (its interval for the "inside" test); ``None`` if none.
        pm_kind: ``"ci95"``, ``"std-seeds"`` or ``"none"``.
        higher_is_better: ``True`` for accuracy, ``False`` for MSE.

    Returns:
        ``"inside the paper's interval"`` (``"inside the paper's ± (one seed std)"`` for a seed
        std), ``"statistically indistinguishable (two-interval rule)"``, ``"below the paper
        (worse)"``/``"... (better)"``, ``"above the paper (better)"``/``"... (worse)"``, or
        ``"not comparable: ..."`` when our number is not finite, or when our half width is at least
        the paper's value itself: such an interval cannot tell the paper's number from zero or from
        twice it, so "indistinguishable" would be true of any number (a few diverging episodes give
        this).

    Example::

        >>> verdict(98.2, 0.3, 98.7, 0.4, paper_pm=0.4)
        'statistically indistinguishable (two-interval rule)'
    """
    if not (math.isfinite(ours) and math.isfinite(ours_half_width)):
        return "not comparable: our result is not finite"
    if paper != 0 and ours_half_width >= abs(paper):
        return "not comparable: our 95% CI is as wide as the paper's value (a few episodes dominate our mean)"
    difference = ours - paper
    if paper_pm is not None and pm_kind != "none" and abs(difference) <= paper_pm:
        return "inside the paper's ± (one seed std)" if pm_kind == "std-seeds" else "inside the paper's interval"
    if abs(difference) <= math.hypot(ours_half_width, paper_half_width_95):
        return "statistically indistinguishable (two-interval rule)"
    better = (difference > 0) == higher_is_better
    return f"{'above' if difference > 0 else 'below'} the paper ({'better' if better else 'worse'})"


COMPARED_COLUMNS = (
    "dataset", "split", "ways", "shots", "queries", "label", "algorithm", "recipe_hash", "fingerprint", "paper", "paper_algorithm",
    "evidence", "source", "metric", "inner_steps", "paper_value", "paper_pm", "paper_pm_kind", "paper_pm_text",
    "paper_half95", "ours_mean", "ours_half95", "ours_interval", "seeds", "episodes", "difference", "verdict",
    "protocol_differences",
)  # fmt: skip
"""Columns of the first frame of :func:`reproduction_table`: accuracy in percent, MSE as is;
``label`` is the row's leaderboard label and ``recipe_hash`` its recipe; ``difference = ours_mean -
paper_value``; ``protocol_differences`` a list of sentences."""

UNMATCHED_COLUMNS = ("dataset", "split", "ways", "shots", "queries", "label", "algorithm", "recipe_hash", "metric",
                     "inner_steps", "mean", "ci95", "episodes", "seeds", "note")  # fmt: skip


def reproduction_table(
    episodes: pd.DataFrame, runs: pd.DataFrame, published: Published
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match our results with published numbers.

    Args:
        episodes: :meth:`ResultsStore.episode_metrics` of completed runs (all inner-step counts).
        runs: :meth:`ResultsStore.runs` (for the configs behind the protocol differences).
        published: from :func:`load_published`.

    Returns:
        ``(compared, unmatched)``: one row per (published number, our recipe on an episode set) with
        :data:`COMPARED_COLUMNS`, and one row per result of ours with no published number
        (:data:`UNMATCHED_COLUMNS`; ``note`` says why: no number published, the reason known
        for it, or a split other than test).
    """
    configs = {row.run_id: (row.config or {}) for row in runs.itertuples()}
    if "recipe_hash" not in episodes.columns:
        episodes = episodes.assign(recipe_hash="")
    keys = ["dataset", "split", "ways", "shots", "queries", "fingerprint", "recipe_hash", "algorithm", "metric", "headline_steps"]
    entries = []
    for key, group in episodes.groupby(keys, dropna=False, sort=False):
        key = dict(zip(keys, key))
        labels = [t for t in dict.fromkeys(group["label"]) if t] if "label" in group.columns else []
        entries.append(({**key, "inner_steps": int(key["headline_steps"]), "_config_label": labels[0] if labels else ""}, group))
    settings: dict = {}
    for entry, _ in entries:
        ways = None if pd.isna(entry["ways"]) else int(entry["ways"])
        settings.setdefault((entry["dataset"], entry["split"], ways, entry["shots"], entry["queries"]), []).append(entry)
    recipes = recipe_views(runs)
    for rows in settings.values():
        assign_labels(rows, recipes)
    compared, unmatched = [], []
    for key, group in entries:
        ways = None if pd.isna(key["ways"]) else int(key["ways"])
        algorithm_config = (configs.get(group["run_id"].iloc[0]) or {}).get("algorithm") or {}
        matches = [
            p for p in published.results
            if p.ours is not None and _canonical(p.ours) == _canonical(key["algorithm"])
            and _options_match(p.ours_options, algorithm_config)
            and _dataset(p.dataset) == _dataset(key["dataset"]) and p.ways == ways
            and p.shots == int(key["shots"]) and p.metric == key["metric"]
        ]  # fmt: skip
        recorded = sorted(int(s) for s in group["inner_steps"].unique())
        headline = int(key["headline_steps"])
        if matches and key["split"] == "test":
            for paper in matches:
                compared.append(_compare(paper, key, ways, group, recorded, headline, configs))
            continue
        ours = _our_numbers(group[group["inner_steps"] == headline], key)
        scale = 100.0 if key["metric"] == "accuracy" else 1.0
        if key["split"] != "test":
            note = f"evaluated on the {key['split']!r} split; published numbers are on the test split"
        else:
            reasons = [
                u.reason for u in published.unpublished
                if _canonical(u.ours) == _canonical(key["algorithm"]) and _options_match(u.ours_options, algorithm_config)
                and _dataset(u.dataset) == _dataset(key["dataset"])
                and u.ways == ways and u.shots == int(key["shots"])
            ]  # fmt: skip
            note = "no published number" + (f": {reasons[0]}" if reasons else "")
        note = "; ".join([note, *ours["notes"]])
        unmatched.append(
            {
                "dataset": key["dataset"], "split": key["split"], "ways": ways, "shots": int(key["shots"]),
                "queries": int(key["queries"]), "label": key["label"], "algorithm": key["algorithm"],
                "recipe_hash": key["recipe_hash"], "metric": key["metric"], "inner_steps": headline,
                "mean": ours["mean"] * scale, "ci95": ours["half"] * scale, "episodes": ours["episodes"],
                "seeds": ours["seeds"], "note": note,
            }
        )  # fmt: skip
    compared = pd.DataFrame(compared, columns=list(COMPARED_COLUMNS))
    unmatched = pd.DataFrame(unmatched, columns=list(UNMATCHED_COLUMNS))
    for frame in (compared, unmatched):
        frame["ways"] = frame["ways"].astype("Int64")
    return compared, unmatched


def _compare(paper: PublishedResult, key: dict, ways, group: pd.DataFrame, recorded: list, headline: int, configs: dict) -> dict:
    step = paper.test_grad_steps if paper.test_grad_steps in recorded else headline
    ours = _our_numbers(group[group["inner_steps"] == step], key)
    scale = 100.0 if paper.metric == "accuracy" else 1.0
    mean, half = ours["mean"] * scale, ours["half"] * scale
    interval = "95% CI over episodes"
    if paper.pm_kind == "std-seeds" and ours["seed_half"] is not None:
        half, interval = ours["seed_half"] * scale, f"95% t-CI over {ours['seeds']} seed means"
    differences = _protocol_differences(paper, key, group, recorded, step, ours, configs)
    return {
        "dataset": key["dataset"], "split": key["split"], "ways": ways, "shots": int(key["shots"]),
        "queries": int(key["queries"]), "label": key["label"], "algorithm": key["algorithm"],
        "recipe_hash": key["recipe_hash"], "fingerprint": key["fingerprint"],
        "paper": paper.paper, "paper_algorithm": paper.algorithm, "evidence": paper.evidence, "source": paper.source,
        "metric": paper.metric, "inner_steps": step, "paper_value": paper.value,
        "paper_pm": math.nan if paper.pm is None else paper.pm, "paper_pm_kind": paper.pm_kind,
        "paper_pm_text": paper.pm_text, "paper_half95": paper.half_width_95(), "ours_mean": mean,
        "ours_half95": half, "ours_interval": interval, "seeds": ours["seeds"], "episodes": ours["episodes"],
        "difference": mean - paper.value,
        "verdict": verdict(mean, half, paper.value, paper.half_width_95(), paper_pm=paper.pm, pm_kind=paper.pm_kind,
                           higher_is_better=metric_higher_is_better(paper.metric)),
        "protocol_differences": differences,
    }  # fmt: skip


def _our_numbers(rows: pd.DataFrame, key: dict) -> dict:
    """Mean and few-shot CI of the per-episode values (per seed first, then across seeds, as in the
    leaderboard), plus the seed t-CI when >= 2 seeds and the notes (e.g. determinism failures)."""
    pooled = seed_values(rows, key, warn=False)
    array = pooled.values.mean(axis=1)
    seeds = len(pooled.seeds)
    result = {"mean": math.nan, "half": math.nan, "episodes": int(array.size), "seeds": seeds, "seed_half": None,
              "notes": list(pooled.notes)}  # fmt: skip
    if array.size and np.isfinite(array).all():
        ci = mean_ci95(array, ddof=0)
        result.update(mean=ci.mean, half=ci.half_width)
        if seeds >= 2:
            summary = seed_summary(pooled.values.T)
            if summary.seed_ci is not None:
                result["seed_half"] = summary.seed_ci.half_width
    return result


def _protocol_differences(paper: PublishedResult, key: dict, group, recorded, step, ours, configs) -> list[str]:
    protocol = paper.protocol
    runs = list(dict.fromkeys(group["run_id"]))
    run_configs = [configs.get(run, {}) for run in runs]
    per = "per task" if paper.metric == "mse" else "per class"
    out = []
    if paper.test_grad_steps is not None and paper.test_grad_steps not in recorded:
        out.append(
            f"inner steps at test: the paper reports {paper.test_grad_steps}; we evaluated {recorded}, so ours "
            f"is at {step} (the headline)"
        )
    queries = protocol.get("test_queries")
    if queries is not None and int(queries) != int(key["queries"]):
        out.append(
            f"query set: the paper tests with {queries} {per}, we use {int(key['queries'])} "
            "(this changes the CI width, not the expected value)"
        )
    episodes = protocol.get("test_episodes")
    if episodes is not None and int(episodes) != ours["episodes"]:
        out.append(f"test episodes: the paper uses {episodes}, we use {ours['episodes']}")
    for name, label, path in (
        ("meta_iterations", "meta-training iterations run", ("train", "meta_iterations")),
        ("meta_batch_size", "meta-batch size", ("train", "meta_batch_size")),
    ):
        theirs = protocol.get(name)
        mine = sorted({_dig(c, path) for c in run_configs} - {None})
        if theirs is not None and mine and mine != [theirs]:
            shown = ", ".join(f"{m:,}" if isinstance(m, int) else str(m) for m in mine)
            out.append(f"{label}: ours {shown}, the paper's {theirs:,}")
    seeds = protocol.get("seeds")
    if seeds is not None and int(seeds) != ours["seeds"]:
        out.append(f"training seeds: the paper's number comes from {seeds}, ours from {ours['seeds']}")
    if protocol.get("split") and paper.metric == "accuracy":
        schemes = sorted({str(_dig(c, ("dataset", "split_scheme"))) for c in run_configs if _dig(c, ("dataset", "split_scheme"))})
        ours_split = f"split_scheme {', '.join(schemes)}" if schemes else "the dataset's default split"
        out.append(f"split: the paper's is {protocol['split']}; ours is {ours_split} (not the authors' random draw)")
    checkpoint = protocol.get("checkpoint")
    if checkpoint and not str(checkpoint).lower().startswith("final"):
        out.append(f"checkpoint: the paper evaluated the {checkpoint}; we evaluate the final weights")
    if paper.backbone:
        models = sorted({_model_text(c) for c in run_configs} - {""})
        if models:
            out.append(f"network: the paper's is {paper.backbone}; ours is {', '.join(models)}")
    notes = protocol.get("notes", [])
    out.extend(str(note) for note in ([notes] if isinstance(notes, str) else notes))
    out.extend(ours["notes"])
    ours_notes = []
    for text in group["notes"].unique():
        notes = json.loads(text) if text else {}
        formatted = "; ".join(f"{k}: {v}" for k, v in sorted(notes.items()) if v is not None)
        if formatted and formatted not in ours_notes:
            ours_notes.append(formatted)
    if ours_notes:
        out.append("our evaluation notes: " + " / ".join(ours_notes))
    return out


def _dig(config: dict, path: tuple):
    value = config
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _model_text(config: dict) -> str:
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or "name" not in model:
        return ""
    options = ", ".join(f"{k}={v}" for k, v in sorted(model.items()) if k != "name")
    return f"{model['name']} ({options})" if options else str(model["name"])


def _canonical(name: str) -> str:
    name = str(name).strip().lower()
    return ALGORITHM_ALIASES.get(name, name)


def _dataset(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


# ----------------------------------------------------------------------------------- writing


def write_reproduction(
    store: ResultsStore, out_dir: str | os.PathLike, *, published: Published | str | os.PathLike | None = None,
    source: str | None = None,
) -> Path:
    """Write ``out_dir/reproduction.md``: our results beside the published numbers.

    Args:
        store: the results store (completed runs only are read).
        out_dir: folder to write to; created if missing.
        published: a :class:`Published`, the path of a published-results file, or ``None`` for
            the shipped copy.
        source: how the file names where the runs came from (default: the store's path).

    Returns:
        The path written.
    """
    if not isinstance(published, Published):
        published = load_published(published)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = store.runs()
    compared, unmatched = reproduction_table(label_ensembles(store.episode_metrics(completed_only=True)), runs, published)
    path = out_dir / "reproduction.md"
    text = render_reproduction(compared, unmatched, store_path=source or str(store.path), origin=published.origin,
                               as_of=results_as_of(runs))
    path.write_text(text, encoding="utf-8")
    logger.info("Wrote the reproduction table (%d comparison(s), %d without a published number) to %s.",
                len(compared), len(unmatched), path)  # fmt: skip
    return path


def render_reproduction(compared: pd.DataFrame, unmatched: pd.DataFrame, *, store_path: str, origin: str, as_of: str) -> str:
    """The reproduction tables as markdown; ``as_of``: finish time of the newest completed run."""
    parts = [
        "# Paper reproduction\n",
        (
            f"Results as of {as_of} (the newest completed run), from `{_md(store_path)}`, by "
            "`metabench report --reproduction`; "
            f"published numbers from {_md(origin)} (each with its source and evidence level).\n"
        ),
        (
            "How to read it: accuracy in percent, MSE in the task's units. Each row is one recipe (config without "
            "its training seed; labelled as in the leaderboard, hash in the recipe column). **ours** is the mean "
            "over the test episodes (per seed first, repeats of a seed counted once, then the seeds averaged per "
            "episode) with its 95% CI (1.96 s/√n, ddof 0), at the "
            "paper's test-time inner-step count when we evaluated it. The **verdict**: *inside the paper's "
            "interval* when our mean lies within the published ± (for MAML++ that ± is one standard deviation "
            "over 3 seeds); *statistically indistinguishable* when |ours − paper| ≤ √(h_ours² + h_paper²) with "
            "both 95% half widths (the two-interval rule of the Meta-Dataset leaderboard; a seed std s over n "
            "seeds counts as t·s/√n, and a number published without ± as 0); *not comparable* when our number "
            "is not finite or our half width is at least the paper's value (such an interval fits any number); "
            "otherwise *below* or *above* the paper. A number is compared only with recipes of the same "
            "algorithm and options (the MAML paper's second-order rows never with first-order MAML). A paper's CI over episodes and ours measure episode noise only, not training-seed variance.\n"
        ),
    ]
    if compared.empty and unmatched.empty:
        parts.append("No completed runs in this store yet; nothing to compare.\n")
        return "\n".join(parts)
    parts.append("## Compared with published numbers\n")
    if compared.empty:
        parts.append("None of the results in this store has a published number (see below).\n")
    else:
        rows = []
        for n, r in enumerate(compared.to_dict("records"), start=1):
            rows.append([
                str(n), _md(_setting(r)), _md(r["label"]), _md(str(r["recipe_hash"])[:12]), _md(_short_paper(r["paper"])),
                _md(r["paper_algorithm"]), _fmt(r["paper_value"], r["metric"]), _pm(r), _md(r["evidence"]),
                f"{_fmt(r['ours_mean'], r['metric'])} ± {_fmt(r['ours_half95'], r['metric'])}", str(r["seeds"]),
                str(r["episodes"]), str(r["inner_steps"]), _signed(r["difference"], r["metric"]), _md(r["verdict"]),
            ])  # fmt: skip
        headers = ["#", "setting", "ours", "recipe", "paper", "paper's method", "paper", "paper's ± (kind)", "evidence",
                   "ours ± 95% CI", "seeds", "episodes", "inner steps", "ours − paper", "verdict"]  # fmt: skip
        parts.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
        parts.append("\n### Protocol differences that remain\n")
        for n, r in enumerate(compared.to_dict("records"), start=1):
            recipe = _md(str(r["recipe_hash"])[:12])
            parts.append(f"**{n}. {_md(r['label'])} (recipe {recipe}) on {_md(_setting(r))}, against {_md(_short_paper(r['paper']))} "
                         f"({_md(r['paper_algorithm'])}).** Source: {_md(r['source'])}.")  # fmt: skip
            if r["ours_interval"] != "95% CI over episodes":
                parts.append(f"- ours ± is the {r['ours_interval']}, to match the paper's seed std")
            differences = r["protocol_differences"] or ["none recorded"]
            parts.extend(f"- {_md(text)}" for text in differences)
            parts.append("")
    parts.append("## Results with no published number\n")
    if unmatched.empty:
        parts.append("Every result in this store has a published number above.\n")
    else:
        rows = [
            [_md(_setting(r)), _md(r["label"]), _md(str(r["recipe_hash"])[:12]),
             f"{_fmt(r['mean'], r['metric'])} ± {_fmt(r['ci95'], r['metric'])}", str(r["seeds"]), str(r["inner_steps"]),
             _md(r["note"])]
            for r in unmatched.to_dict("records")
        ]  # fmt: skip
        parts.append(tabulate(rows, headers=["setting", "ours", "recipe", "ours ± 95% CI", "seeds", "inner steps", "note"],
                              tablefmt="github", disable_numparse=True))  # fmt: skip
    return "\n".join(parts).rstrip("\n") + "\n"


def _setting(row: dict) -> str:
    return setting_title(row["dataset"], row["split"], row["ways"], row["shots"], row["queries"])


def _short_paper(paper: str) -> str:
    return paper.split(" (")[0] if " (" in paper else paper


def _fmt(value: float, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    return f"{value:.2f}" if metric == "accuracy" else f"{value:#.3g}"


def _signed(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{value:+.2f}" if metric == "accuracy" else f"{value:+#.3g}"


def _pm(row: dict) -> str:
    kind = row["paper_pm_kind"]
    if kind == "none":
        return "none published"
    text = "95% CI over episodes" if kind == "ci95" else "std over seeds"
    return f"± {_fmt(row['paper_pm'], row['metric'])} ({text})"


def _md(text: object) -> str:
    return " ".join(str(text).split("\n")).replace("|", "\\|")
